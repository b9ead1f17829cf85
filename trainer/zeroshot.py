"""A text dataset's head from its tag titles alone (zero-shot), for when no tag has a positive report yet.

Each tag scores a text by the cosine between the two e5 embeddings (the title embedded like a text, "query: "
form): ``z_t = scale * (cos_t - floor)`` in the ordinary head format, exclusive (the titles compete, see
``modelkit.heads.exclusive_probabilities``, ``none_logit`` 0) at threshold 0.5. The nearest title is answered with
``p = sigmoid(scale * min(cos_top - cos_second, cos_top - floor))``, and "unknown" when even the nearest title is
below ``floor``. Both constants come from ``python -m bench.quality --zero-shot`` (``FitConfig`` says which).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from trainer.fitresult import FitConfig, FitResult, NothingToFit, TagFit

THRESHOLD = 0.5  # with none_logit 0 and an exclusive head: answered when nearest and above the floor
MIN_TAGS = 2  # one title alone has nothing to compete with: every text would be "nearest" to it


def zero_shot_fit(titles: Mapping[int, np.ndarray], tag_ids: Sequence[int],
                  config: FitConfig | None = None) -> FitResult:
    """The zero-shot head of ``tag_ids`` (every tag of the dataset, as a fit has: an inactive one still
    competes) from ``titles``, tag id -> the title's embedding. NothingToFit below ``MIN_TAGS`` titles."""
    config = config or FitConfig()
    ids = [t for t in dict.fromkeys(tag_ids) if t in titles]
    if len(ids) < MIN_TAGS:
        raise NothingToFit(f"tagging from tag titles alone needs at least {MIN_TAGS} tags")
    rows = np.stack([np.asarray(titles[t], dtype=np.float64).reshape(-1) for t in ids])
    norms = np.linalg.norm(rows, axis=1, keepdims=True)
    if not np.all(norms > 0):
        raise NothingToFit("a tag title has an empty embedding")
    rows = rows / norms
    fits = [TagFit(tag_id=t, weights=rows[i], bias=-config.zero_shot_floor,
                   calibration=(config.zero_shot_scale, 0.0), threshold=THRESHOLD, counts=None,
                   positives=0, negatives=0, c=None, method="zero_shot")
            for i, t in enumerate(ids)]
    return FitResult(tags=fits, dim=rows.shape[1], report_count=0, skipped=[t for t in tag_ids if t not in titles],
                     exclusive=True, none_logit=0.0, zero_shot=True)
