"""Zero-shot text tagging (tag titles alone, no report) as Kashf serves it, on bench/quality.py's two text tracks.

Texts and titles are normalised and embedded as the text service does (``shared.textnorm``, e5 ``query:``); the
head is ``trainer.zeroshot.zero_shot_fit``'s and the tags are chosen by ``modelkit.heads.tag_vectors``. Per track:
- macro-F1 of the returned tag (unknown = no tag) and of the plain nearest title; chance is 1 / tags;
- calibration of the answered tag's probability: mean probability against accuracy, expected calibration error
  (10 bins) and log loss; the scale with the lowest log loss on each track and on both pooled (how
  ``FitConfig.zero_shot_scale`` was chosen);
- how often "unknown" comes: on the track's own texts, on the other track's texts (another language, other
  topics) and on each tag's texts for the head of the other tags (leave one tag out).
Run: ``python -m bench.zeroshot`` (``--scale`` / ``--floor`` try other settings).
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy.optimize import minimize_scalar

from bench.heads import REPO, TEXT_MODEL
from bench.quality import macro_f1
from modelkit.heads import tag_vectors
from shared.schemas.inference import UNKNOWN_TAG_ID, TagRef
from shared.textnorm import normalize_text
from trainer.fitresult import FitConfig
from trainer.zeroshot import zero_shot_fit


@dataclass(frozen=True)
class Track:
    name: str
    x: np.ndarray  # (items, dim) unit rows
    y: np.ndarray  # (items,) tag index
    titles: np.ndarray  # (tags, dim)


def tracks(models_dir: Path) -> list[Track]:
    from bench.quality_texts import TOPICS
    from modelkit.onnx.text import TextEncoder
    from tests.unit.trainer.reviews import TAGS

    encoder = TextEncoder(models_dir / TEXT_MODEL, device="cpu")

    def embed(texts: Sequence[str]) -> np.ndarray:
        out: np.ndarray = encoder.encode([normalize_text(t) for t in texts])
        return out

    out = []
    for name, groups in (("text-fa (reviews)", TAGS), ("text-en (topics)", TOPICS)):
        texts = [t for group in groups.values() for t in group]
        y = np.array([i for i, group in enumerate(groups.values()) for _ in group])
        out.append(Track(name, embed(texts), y, embed(list(groups))))
    return out


def served(x: np.ndarray, titles: np.ndarray, config: FitConfig) -> tuple[np.ndarray, np.ndarray]:
    """The tag index each row is answered with (-1 for unknown) and its probability, as the service tags."""
    refs = [TagRef(id=t + 1, title=f"tag {t}") for t in range(len(titles))]
    head = zero_shot_fit({t + 1: titles[t] for t in range(len(titles))}, [r.id for r in refs], config).head("m", 1)
    rows = tag_vectors(head, x, refs)
    pred = np.array([-1 if row[0].id == UNKNOWN_TAG_ID else row[0].id - 1 for row in rows])
    return pred, head.probabilities(x).max(axis=1)


def margins(t: Track) -> tuple[np.ndarray, np.ndarray]:
    """Nearest title's cosine lead over the second, and whether the nearest title is the right one."""
    s = np.sort(t.x @ t.titles.T, axis=1)
    return s[:, -1] - s[:, -2], (t.x @ t.titles.T).argmax(1) == t.y


def log_loss(p: np.ndarray, ok: np.ndarray) -> float:
    p = np.clip(p, 1e-9, 1 - 1e-9)
    return float(-np.mean(np.where(ok, np.log(p), np.log(1 - p))))


def ece(p: np.ndarray, ok: np.ndarray, bins: int = 10) -> float:
    which = np.minimum((p * bins).astype(int), bins - 1)
    return float(sum(abs(p[which == b].mean() - ok[which == b].mean()) * (which == b).mean()
                     for b in range(bins) if (which == b).any()))


def best_scale(pairs: Sequence[tuple[np.ndarray, np.ndarray]]) -> float:
    m, ok = np.concatenate([p[0] for p in pairs]), np.concatenate([p[1] for p in pairs])
    return float(minimize_scalar(lambda a: log_loss(1 / (1 + np.exp(-a * m)), ok), bounds=(1.0, 1000.0),
                                 method="bounded").x)


def report(all_tracks: Sequence[Track], config: FitConfig) -> None:
    print(f"scale {config.zero_shot_scale:g}, floor {config.zero_shot_floor:g}")
    for i, t in enumerate(all_tracks):
        k = len(t.titles)
        pred, p = served(t.x, t.titles, config)
        nearest = (t.x @ t.titles.T).argmax(1)
        answered = pred >= 0
        ok = pred == t.y
        other = np.concatenate([o.x for j, o in enumerate(all_tracks) if j != i])
        left_out = [served(t.x[t.y == c], np.delete(t.titles, c, axis=0), config)[0] for c in range(k)]
        print(f"\n{t.name}: {k} tags, {len(t.y)} texts; chance macro-F1 {1 / k:.3f}")
        print(f"  macro-F1 served {macro_f1(pred, t.y, k):.3f} (nearest title {macro_f1(nearest, t.y, k):.3f})")
        print(f"  answered tag: mean probability {p[answered].mean():.3f}, accuracy {ok[answered].mean():.3f}, "
              f"ECE {ece(p[answered], ok[answered]):.3f}, log loss {log_loss(p[answered], ok[answered]):.3f}; "
              f"best scale here {best_scale([margins(t)]):.0f}")
        print(f"  unknown: own texts {np.mean(~answered):.3f}, other track's texts "
              f"{np.mean(served(other, t.titles, config)[0] < 0):.3f}, a left-out tag's texts "
              f"{np.mean(np.concatenate(left_out) < 0):.3f}")
    print(f"\nbest scale, both tracks pooled: {best_scale([margins(t) for t in all_tracks]):.0f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--models-dir", type=Path, default=REPO / "models")
    parser.add_argument("--scale", type=float, default=FitConfig.zero_shot_scale)
    parser.add_argument("--floor", type=float, default=FitConfig.zero_shot_floor)
    args = parser.parse_args()
    report(tracks(args.models_dir), FitConfig(zero_shot_scale=args.scale, zero_shot_floor=args.floor))


if __name__ == "__main__":
    main()
