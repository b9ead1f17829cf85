"""Head quality: our fit against a plain LogisticRegression() on the same e5 embeddings, held-out reviews.

Baseline: one-vs-rest ``LogisticRegression()`` (defaults) per tag, predicting at 0.5, ranking by its
probability. Variants show what each choice buys. Run: ``python -m bench.heads`` (needs ``make models``).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

from shared.inference.text import TextEncoder
from tests.unit.trainer.sentences import TAGS
from tests.unit.trainer.test_quality import compare, e5_like_vectors
from trainer.service import FitConfig

REPO = Path(__file__).resolve().parent.parent

VARIANTS: dict[str, FitConfig] = {
    "ours (default)": FitConfig(),
    "no implicit negatives": FitConfig(implicit_negatives=False),
    "per-tag Platt": FitConfig(calibration="per_tag"),
    "C=1": FitConfig(default_c=1.0),
    "C=1000": FitConfig(default_c=1000.0),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--models-dir", type=Path, default=REPO / "models")
    parser.add_argument("--synthetic", action="store_true", help="clustered vectors instead of e5")
    args = parser.parse_args()
    if args.synthetic:
        x, y = e5_like_vectors()
        source = "synthetic e5-like vectors"
    else:
        encoder = TextEncoder(args.models_dir / "text/multilingual-e5-small", device="cpu")
        x = encoder.encode([t for group in TAGS.values() for t in group])
        y = np.array([i for i, group in enumerate(TAGS.values()) for _ in group])
        source = encoder.model_id
    print(f"{len(TAGS)} tags x {len(y) // len(TAGS)} reviews, {source}; mean of 8 random splits")
    print(f"{'per tag':>7}  {'variant':<24}{'macro-F1':>9}{'top-1':>7}{'1st tag':>8}   plain LR macro-F1 / top-1")
    for per_tag in (2, 4, 8):
        for name, config in VARIANTS.items():
            start = time.perf_counter()
            ours, plain = compare(x, y, per_tag, config)
            took = time.perf_counter() - start
            print(f"{per_tag:>7}  {name:<24}{ours.macro_f1:>9.3f}{ours.top1:>7.3f}{ours.first_tag:>8.3f}"
                  f"   {plain.macro_f1:.3f} / {plain.top1:.3f}   ({took:.1f} s)")


if __name__ == "__main__":
    main()
