"""``kashf eval``'s figures: per-tag precision, recall and F1 of tag sets against the truth, macro-F1, and a
confusion matrix of each true tag against the top predicted tag."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

UNKNOWN = "unknown"  # what a row with no predicted tag counts as in the confusion matrix


@dataclass
class TagScore:
    tag: str
    tp: int = 0
    fp: int = 0
    fn: int = 0

    @property
    def support(self) -> int:
        return self.tp + self.fn

    @property
    def precision(self) -> float:
        return self.tp / (self.tp + self.fp) if self.tp + self.fp else 0.0

    @property
    def recall(self) -> float:
        return self.tp / (self.tp + self.fn) if self.tp + self.fn else 0.0

    @property
    def f1(self) -> float:
        p, r = self.precision, self.recall
        return 2 * p * r / (p + r) if p + r else 0.0


@dataclass
class Evaluation:
    tags: list[TagScore]
    examples: int
    exact: int  # examples whose predicted tag set equals the true one
    rows: list[str] = field(default_factory=list)  # the confusion matrix: true tags
    columns: list[str] = field(default_factory=list)  # top predicted tags, then unknown
    confusion: list[list[int]] = field(default_factory=list)

    @property
    def macro_f1(self) -> float:
        return sum(t.f1 for t in self.tags) / len(self.tags) if self.tags else 0.0

    @property
    def micro_f1(self) -> float:
        tp, fp, fn = (sum(getattr(t, k) for t in self.tags) for k in ("tp", "fp", "fn"))
        return 2 * tp / (2 * tp + fp + fn) if tp else 0.0


def evaluate(truth: Sequence[Sequence[str]], predicted: Sequence[Sequence[str]]) -> Evaluation:
    """``predicted[i]``: the tags answered for example i, most probable first (the unknown tag left out)."""
    if len(truth) != len(predicted):
        raise ValueError("truth and predictions differ in length")
    scores: dict[str, TagScore] = {}
    exact = 0
    for true, pred in zip(truth, predicted, strict=True):
        t, p = set(true), set(pred)
        exact += t == p
        for tag in t | p:
            score = scores.setdefault(tag, TagScore(tag))
            score.tp += tag in t and tag in p
            score.fp += tag in p and tag not in t
            score.fn += tag in t and tag not in p
    true_tags = list(dict.fromkeys(tag for row in truth for tag in row))
    other = sorted({row[0] for row in predicted if row} - set(true_tags))
    columns = [*true_tags, *other, UNKNOWN]
    column = {label: i for i, label in enumerate(columns)}
    confusion = [[0] * len(columns) for _ in true_tags]
    for true, pred in zip(truth, predicted, strict=True):
        top = pred[0] if pred else UNKNOWN
        for tag in true:
            confusion[true_tags.index(tag)][column[top]] += 1
    order = [*true_tags, *sorted(set(scores) - set(true_tags))]
    return Evaluation([scores[t] for t in order], len(truth), exact, true_tags, columns, confusion)


def plot_confusion(result: Evaluation, path: str, title: str) -> None:
    """The confusion matrix as a PNG; needs matplotlib (ImportError otherwise)."""
    import matplotlib  # optional: `pip install kashf-client[plot]`

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    matrix = result.confusion
    fig, ax = plt.subplots(figsize=(2.0 + 0.8 * len(result.columns), 1.5 + 0.6 * len(result.rows)))
    ax.imshow(matrix, cmap="Blues")
    ax.set_xticks(range(len(result.columns)), result.columns, rotation=45, ha="right")
    ax.set_yticks(range(len(result.rows)), result.rows)
    ax.set_xlabel("predicted (top tag)")
    ax.set_ylabel("true tag")
    ax.set_title(title)
    peak = max((v for row in matrix for v in row), default=0)
    for i, row in enumerate(matrix):
        for j, value in enumerate(row):
            ax.text(j, i, str(value), ha="center", va="center", color="white" if value > peak / 2 else "black")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
