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

from dataclasses import replace

import numpy as np

from modelkit.heads import Head
from trainer.fitresult import FitConfig, FitResult

POOL_BLOCK = 4096  # pool rows per block of probabilities


def applies(result: FitResult, real_rows: int, pool_rows: int, config: FitConfig) -> bool:
    """Whether a first fit of ``real_rows`` reported items self-trains on a pool of ``pool_rows``."""
    return (config.self_training and result.exclusive and pool_rows > 0 and len(result.tags) >= 2
            and real_rows < config.self_max_rows and not result.zero_shot)


def pseudo_labels(head: Head, pool: np.ndarray, positives: np.ndarray, config: FitConfig) -> tuple[np.ndarray,
                                                                                                   np.ndarray]:
    """(pool rows, column of ``head.tag_ids``) of the pseudo-examples: per column, the most confident
    ``config.self_fraction`` of the rows the exclusive ``head`` answers with it, at most ``config.self_cap`` x
    ``positives[column]``; rows it answers unknown for (probability under 0.5) are never taken."""
    top = np.empty(len(pool), dtype=np.int64)
    confidence = np.empty(len(pool))
    for start in range(0, len(pool), POOL_BLOCK):
        probs = head.probabilities(pool[start:start + POOL_BLOCK])
        top[start:start + len(probs)] = probs.argmax(axis=1)
        confidence[start:start + len(probs)] = probs.max(axis=1)
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
