"""Memory of a large refit: the fit and the suggestions' scoring of the pool hold a bounded number of (rows, tags)
arrays, measured with tracemalloc (numpy reports its buffers to it). Before these bounds, the 100k x 200 refit of
python -m bench.scale peaked at 2,036 MiB: eight (rows, tags) float64 temporaries of the whole pool at once, and
float64 copies of the out-of-fold scores and logits in the fit."""

from __future__ import annotations

import tracemalloc
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import numpy as np

from modelkit.heads import Head
from trainer.fitting import Report, fit_head
from trainer.selftraining import POOL_BLOCK, pool_probabilities

F64 = 8  # bytes


@contextmanager
def traced() -> Iterator[Callable[[], int]]:
    """Bytes allocated at the peak of the block above what was allocated when it began."""
    tracemalloc.start()
    start = tracemalloc.get_traced_memory()[0]
    try:
        yield lambda: tracemalloc.get_traced_memory()[1] - start
    finally:
        tracemalloc.stop()


def test_a_large_ridge_fit_holds_about_four_rows_x_tags_arrays_besides_the_matrix() -> None:
    # 10k items x 200 tags, one positive each (an exclusive head, as the bench's): the fit keeps one centred
    # float32 copy of the matrix, the labels, float32 out-of-fold scores and the logits (then probabilities)
    # in float64: 4.5 (rows, tags) float64 arrays' worth here; 8.7 before float64 copies were taken out.
    n, k, dim = 10_000, 200, 384
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(k, dim))
    tags = rng.integers(0, k, size=n)
    x = (centres[tags] + 3.0 * rng.normal(size=(n, dim))).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    reports = [Report(i, int(t), True) for i, t in enumerate(tags)]
    with traced() as peak:
        result = fit_head(x, reports, list(range(k)))
        used = peak()
    assert {t.method for t in result.tags} == {"ridge"} and result.exclusive
    assert used < x.nbytes + 6 * n * k * F64, used / (n * k * F64)


def test_the_pool_is_scored_in_blocks_with_the_heads_probabilities() -> None:
    n, k, dim = 5 * POOL_BLOCK, 100, 64
    rng = np.random.default_rng(1)
    pool = rng.normal(size=(n, dim)).astype(np.float32)
    head = Head(model_id="m", version=1, tag_ids=np.arange(k), weights=rng.normal(size=(k, dim)).astype(np.float32),
                bias=rng.normal(size=k).astype(np.float32), calibration=np.tile([0.5, -1.0], (k, 1)).astype(np.float32),
                thresholds=np.full(k, 0.5, dtype=np.float32), exclusive=True, none_logit=-2.0)
    columns = list(range(0, k, 3))
    want = head.probabilities(pool)[:, columns]
    with traced() as peak:
        got = pool_probabilities(head, pool, columns)
        used = peak()
    np.testing.assert_allclose(got, want, atol=1e-5)  # float32 products summed in other blocks: rounding only
    # The answer plus one block's temporaries (about eight (block, tags) float64 arrays); the whole pool at once
    # held 16 of them per row.
    assert used < got.nbytes + 10 * POOL_BLOCK * k * F64, used / (POOL_BLOCK * k * F64)
