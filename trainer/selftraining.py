"""Self-training on the dataset's unlabelled pool (its kept tag-call inputs): pure numpy, no I/O.

A few-shot exclusive head (``FitResult.exclusive``, below ``FitConfig.self_max_rows`` reported items) tags the
pool; per answered tag, its most confident ``self_fraction`` of the pool items it answers (at most ``self_cap``
times the tag's reported positives) join a second fit as positive pseudo-examples, like tag titles: they shape
the weights, the calibration and the none logit, never the figures. The figures, thresholds, confusion matrix
and suspects' out-of-fold probabilities stay those of the first fit, which never saw a pseudo label (the second
fit's cross-validation would score each reported item with pseudo labels its own report helped to choose).
Items the head answers "unknown" for are never pseudo-labelled. bench/quality.py's ``+self`` (``--pool``)
measures it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

import numpy as np

from modelkit.heads import Head
from trainer.fitresult import FitConfig, FitResult

# Pool rows scored at a time: a head's probabilities hold several (rows, tags) float64 temporaries, 1.5 GiB
# at once for a pool of 100k items and 200 tags (python -m bench.scale).
POOL_BLOCK = 8192


def pool_probabilities(head: Head, pool: np.ndarray, columns: Sequence[int]) -> np.ndarray:
    """``head.probabilities(pool)[:, columns]``, ``POOL_BLOCK`` rows at a time (self-training, suggestions)."""
    out = np.empty((len(pool), len(columns)))
    for start in range(0, len(pool), POOL_BLOCK):
        out[start:start + POOL_BLOCK] = head.probabilities(pool[start:start + POOL_BLOCK])[:, columns]
    return out


def may_apply(reports: Sequence[tuple[int, bool]], config: FitConfig) -> bool:
    """Before a fit, from its reports' (item id, positive): whether it may self-train, so whether the trainer
    reads the pool. Not with the switch off, from ``self_max_rows`` reported items, nor when an item is reported
    positive for two tags (a multi-label head); ``applies`` decides after the fit."""
    if not config.self_training or len({item for item, _ in reports}) >= config.self_max_rows:
        return False
    positive = [item for item, is_positive in reports if is_positive]
    return len(positive) == len(set(positive))


def applies(result: FitResult, real_rows: int, pool_rows: int, config: FitConfig) -> bool:
    """Whether a first fit of ``real_rows`` reported items self-trains on a pool of ``pool_rows`` (an exclusive
    head has two tags or more)."""
    return config.self_training and result.exclusive and pool_rows > 0 and real_rows < config.self_max_rows


def pseudo_labels(head: Head, pool: np.ndarray, positives: np.ndarray, config: FitConfig) -> tuple[np.ndarray,
                                                                                                   np.ndarray]:
    """(pool rows, column of ``head.tag_ids``) of the pseudo-examples: per column, the most confident
    ``config.self_fraction`` of the rows the exclusive ``head`` answers with it, at most ``config.self_cap`` x
    ``positives[column]``; rows it answers unknown for (probability under 0.5) are never taken."""
    probs = pool_probabilities(head, pool, range(len(head.tag_ids)))
    top, confidence = probs.argmax(axis=1), probs.max(axis=1)
    rows, columns = [], []
    for j in range(len(head.tag_ids)):
        answered = np.flatnonzero((top == j) & (confidence >= 0.5))
        take = min(round(config.self_fraction * len(answered)), int(config.self_cap * positives[j]))
        # Stable sort: equal confidences keep the pool's order, so the choice is reproducible.
        chosen = answered[np.argsort(-confidence[answered], kind="stable")[:take]]
        rows.append(np.sort(chosen))
        columns.append(np.full(len(chosen), j, dtype=np.int64))
    return np.concatenate(rows), np.concatenate(columns)


def merge(first: FitResult, second: FitResult, pseudo: int) -> FitResult:
    """The second fit's classifiers (weights, bias, calibration, none logit) with the first fit's figures."""
    by_tag = {t.tag_id: t for t in second.tags}
    tags = [replace(t, weights=by_tag[t.tag_id].weights, bias=by_tag[t.tag_id].bias,
                    calibration=by_tag[t.tag_id].calibration) for t in first.tags]
    return replace(first, tags=tags, none_logit=second.none_logit, pseudo_labels=pseudo)
