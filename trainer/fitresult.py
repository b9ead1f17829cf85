"""What a fit takes and gives: its knobs, a report, each tag's classifier and the whole head."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Literal

import numpy as np

from modelkit.heads import Head
from trainer.evaluation import NULL_FIGURES, Counts, micro_average


@dataclass(frozen=True)
class FitConfig:
    """Knobs of the fit; defaults chosen on bench/heads.py's tuning splits (seeds 0-19), not its report splits."""

    cv_folds: int = 5
    # C is on features rescaled to unit RMS norm; weak regularisation ranked best on e5 embeddings.
    default_c: float = 100.0
    c_grid: tuple[float, ...] = (10.0, 100.0, 1000.0)
    grid_min_examples: int = 10  # picking C by CV is noise below this many examples of each class
    implicit_negatives: bool = True  # items positive for other tags count as negatives
    implicit_weight: float = 1.0
    max_iter: int = 1000
    seed: int = 0
    # Platt slopes stay bounded on tiny, perfectly separated folds.
    platt_c: float = 1.0
    calibration: Literal["pooled", "per_tag"] = "pooled"
    # "auto": a head of 2+ tags is exclusive (the tags compete, see modelkit.heads) when no item is
    # reported positive for two of them.
    exclusive: Literal["auto", "never"] = "auto"
    # The exclusive head's "none" logit: the out-of-fold choice shrunk toward none_prior by prior_weight
    # pseudo-examples per tag (with 2 examples the out-of-fold choice is noise: then the top tag wins).
    none_prior: float = -4.0
    prior_weight: float = 8.0
    # Ridge (trainer.ridge) replaces per-tag logistic regression from this many reported items AND
    # items x tags: below, the per-tag fits take a few seconds at most (bench/refit.py).
    ridge_min_rows: int = 500
    ridge_min_cells: int = 20_000
    # Ridge penalty = alpha x the mean eigenvalue of the fold's Gram matrix (alphas ascending); the largest
    # alpha whose out-of-fold average precision is within ridge_tolerance of the best wins (near-duplicate
    # reports make CV favour weak penalties, which held-out e5 items did not confirm).
    ridge_alphas: tuple[float, ...] = (0.01, 0.03, 0.1, 0.3, 1.0, 3.0)
    ridge_default_alpha: float = 0.3
    ridge_tolerance: float = 0.002
    # BLAS threads for the whole fit (None: the library's default). The per-tag fits' small products lose more
    # to thread hand-offs than they gain; ridge's large ones lost 5-10x with the cores shared (10k x 10: 10 s
    # with OpenBLAS's 2 threads, 1-2 s with one, at load average 8 on 2 cores: python -m bench.scale).
    blas_threads: int | None = 1
    # Tag titles (when the caller passes their embeddings to fit_head: text datasets, e5 "query: " form) join
    # the fit as one positive example of their tag, never evaluated nor suggested: +0.05 macro-F1 at 4 examples
    # per tag, +0.01 at 8, none at 16 (bench/quality.py's text tracks). Only below title_max_rows reported items,
    # where one example per tag still counts (and the matrix copy is small).
    title_examples: bool = True
    title_max_rows: int = 500
    # Zero-shot heads (trainer.zeroshot: titles alone, no positive report yet): p = sigmoid(scale x cosine
    # margin), "unknown" below the floor cosine. e5-small's cosines all lie near 0.8, so the scale is large:
    # 80 is near the pooled log-loss optimum of bench/quality.py's two text tracks (--zero-shot), and the floor
    # keeps 98-99% of their texts while turning away texts far from every title.
    zero_shot_scale: float = 80.0
    zero_shot_floor: float = 0.78
    # Self-training (trainer.selftraining) on the dataset's unlabelled pool (kept tag-call inputs), for exclusive
    # heads below self_max_rows reported items: the first fit's most confident self_fraction of the pool items
    # answered with each tag, at most self_cap x the tag's positives, join a second fit as pseudo-examples
    # (0.75 ranked best of 0.25, 0.5, 0.75 and "as many as the reports" on the tuning splits of bench/quality.py's
    # review tracks, half the held-out items as the pool: --pool --seeds dev --fit self_fraction=F, README "Tag
    # quality"). The trainer reads at most self_pool_max pool items, the newest.
    self_training: bool = True
    self_fraction: float = 0.75
    self_cap: float = 4.0
    self_max_rows: int = 500
    self_pool_max: int = 5000


@dataclass(frozen=True)
class Report:
    """One label: the row of the item in the embedding matrix, the tag and its polarity."""

    row: int
    tag_id: int
    positive: bool


@dataclass(frozen=True)
class TagFit:
    """The fitted classifier of one tag, in the space of the raw (L2-normalised) embeddings."""

    tag_id: int
    weights: np.ndarray  # (dim,)
    bias: float
    calibration: tuple[float, float]
    threshold: float
    counts: Counts | None  # cross-validated, None when too few reports
    positives: int
    negatives: int
    c: float | None  # regularisation chosen (C, or the ridge alpha); None for the prototype fallback
    method: str  # "logistic" | "ridge" | "prototype"
    # Calibrated out-of-fold probabilities at the rows explicitly reported for this tag (positive or
    # negative), for suggest_labels' suspects (trainer.suggestions); None without cross-validation.
    oof_rows: np.ndarray | None = None  # (m,) rows of the fit's embedding matrix
    oof_probabilities: np.ndarray | None = None  # (m,)

    @property
    def evaluation(self) -> dict[str, Any]:
        return self.counts.figures() if self.counts is not None else dict(NULL_FIGURES)


@dataclass(frozen=True)
class FitResult:
    tags: list[TagFit]
    dim: int
    report_count: int
    skipped: list[int] = field(default_factory=list)  # tags with no positive report: not in the head
    exclusive: bool = False  # at most one tag per item (no item was reported positive for two tags)
    none_logit: float = 0.0
    # Exclusive heads: out-of-fold (true tag, answered tag) counts in the order of ``tags``, plus a last row
    # (no true tag) and column (unknown), see trainer.evaluation.exclusive_confusion; None otherwise.
    matrix: np.ndarray | None = None
    zero_shot: bool = False  # fitted from the tag titles alone (trainer.zeroshot), no report
    pseudo_labels: int = 0  # pool items that joined the fit as pseudo-examples (trainer.selftraining)

    @property
    def mode(self) -> str:
        """How the head was made: "trained" (from reports) or "zero_shot" (from tag titles)."""
        return "zero_shot" if self.zero_shot else "trained"

    def head(self, model_id: str, version: int) -> Head:
        k = len(self.tags)
        return Head(
            model_id=model_id,
            version=version,
            tag_ids=np.array([t.tag_id for t in self.tags], dtype=np.int64),
            weights=(np.stack([t.weights for t in self.tags]) if k else np.zeros((0, self.dim))).astype(np.float32),
            bias=np.array([t.bias for t in self.tags], dtype=np.float32),
            calibration=np.array([t.calibration for t in self.tags], dtype=np.float32).reshape(k, 2),
            thresholds=np.array([t.threshold for t in self.tags], dtype=np.float32),
            exclusive=self.exclusive,
            none_logit=self.none_logit,
        )

    def confusion(self) -> dict[str, Any] | None:
        """The out-of-fold confusion counts stored with the version (JSON); None when nothing was evaluated.

        Exclusive: ``{"exclusive": true, "tag_ids": [...], "matrix": [[...], ...]}``, (k + 1) x (k + 1), row i
        the items of true tag ``tag_ids[i]`` (last row: items with no tag), column j those answered with
        ``tag_ids[j]`` (last column: unknown). Otherwise ``{"exclusive": false, "tag_ids": [...], "counts":
        [{"tp", "fp", "fn", "tn"} | null, ...]}``, each tag at the threshold the other folds chose (as its
        figures), null for a tag with too few reports to evaluate."""
        tag_ids = [t.tag_id for t in self.tags]
        if self.exclusive:
            if self.matrix is None:
                return None
            return {"exclusive": True, "tag_ids": tag_ids, "matrix": self.matrix.astype(int).tolist()}
        if all(t.counts is None for t in self.tags):
            return None
        return {"exclusive": False, "tag_ids": tag_ids,
                "counts": [None if t.counts is None else asdict(t.counts) for t in self.tags]}

    def dataset_evaluation(self, active: set[int] | None = None) -> dict[str, Any]:
        """Micro-average over the evaluated (active) tags; null figures when none could be evaluated."""
        return micro_average(t.counts for t in self.tags if active is None or t.tag_id in active)


class NothingToFit(ValueError):
    """No tag of the dataset has a positive report."""


@dataclass(frozen=True)
class Scored:
    """Stage one of a fit, for the tags with both classes: final scores and out-of-fold ones, per column."""

    columns: list[int]  # columns of ``Labels.codes``
    weights: np.ndarray  # (k, dim), raw embedding space
    bias: np.ndarray  # (k,)
    c: list[float]
    method: str
    oof: np.ndarray  # (rows, k) out-of-fold scores; NaN outside a tag's training set or without CV
    folds: np.ndarray  # (rows, k) int8 fold of each row in CV, -1 where none
