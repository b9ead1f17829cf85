"""Every tag's training labels at once: one code per (reported item, tag), built without a loop over reports."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np

ABSENT, NEGATIVE, POSITIVE, IMPLICIT = -1, 0, 1, 2  # IMPLICIT: a negative because the item has other tags


class Labelled(Protocol):
    """What a label needs: ``trainer.fitting.Report`` has these fields."""

    @property
    def row(self) -> int: ...
    @property
    def tag_id(self) -> int: ...
    @property
    def positive(self) -> bool: ...


@dataclass(frozen=True)
class Labels:
    """Codes of the reported rows (ascending) for each tag of ``tag_ids``, in that order."""

    rows: np.ndarray  # (n,) int64, rows of the embedding matrix with at least one report
    tag_ids: list[int]
    codes: np.ndarray  # (n, tags) int8: ABSENT, NEGATIVE, POSITIVE or IMPLICIT
    reported_positive: np.ndarray  # (n, tags) bool: some report of the pair is positive (a later one may not be)
    multi_tag_rows: int  # rows reported positive for two or more tags (any tag, listed or not)

    def column(self, j: int, implicit_weight: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Rows, 0/1 labels and sample weights of tag ``j``'s training set."""
        code = self.codes[:, j]
        keep = code != ABSENT
        kept = code[keep]
        y = (kept == POSITIVE).astype(np.int64)
        w = np.where(kept == IMPLICIT, implicit_weight, 1.0)
        return self.rows[keep], y, w


def build_labels(reports: Sequence[Labelled], tag_ids: Sequence[int], implicit_negatives: bool) -> Labels:
    """The last report of an (item, tag) pair decides its label; with ``implicit_negatives`` an item
    reported positive for some tag is a negative of every tag it was not reported for."""
    count = len(reports)
    listed = list(dict.fromkeys(int(t) for t in tag_ids))
    index = {t: j for j, t in enumerate(listed)}
    report_rows = np.fromiter((r.row for r in reports), dtype=np.int64, count=count)
    report_tags = np.fromiter((r.tag_id for r in reports), dtype=np.int64, count=count)
    column = np.fromiter((index.get(r.tag_id, -1) for r in reports), dtype=np.int64, count=count)
    positive = np.fromiter((r.positive for r in reports), dtype=bool, count=count)
    rows, at = np.unique(report_rows, return_inverse=True)
    codes = np.full((len(rows), len(listed)), ABSENT, dtype=np.int8)
    # Distinct (item, tag) pairs reported positive, over every tag, listed or not.
    pairs = np.unique(np.stack([at[positive], report_tags[positive]]), axis=1)
    per_row = np.bincount(pairs[0], minlength=len(rows))
    if implicit_negatives:
        codes[per_row > 0] = IMPLICIT
    # Last report per (row, column) wins: unique over the reversed reports keeps the last occurrence.
    mine = np.flatnonzero(column >= 0)[::-1]
    _, first = np.unique(at[mine] * max(len(listed), 1) + column[mine], return_index=True)
    last = mine[first]
    codes[at[last], column[last]] = np.where(positive[last], POSITIVE, NEGATIVE)
    reported_positive = np.zeros(codes.shape, dtype=bool)
    hits = np.flatnonzero(positive & (column >= 0))
    reported_positive[at[hits], column[hits]] = True
    return Labels(rows=rows, tag_ids=listed, codes=codes, reported_positive=reported_positive,
                  multi_tag_rows=int(np.sum(per_row >= 2)))
