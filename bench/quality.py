"""Tag quality against plain logistic regression on the same frozen embeddings, and the levers of issue 17.

Per track and examples per tag n (4, 8, 16), over many random splits (``n`` training items per tag, every other
item held out): macro-F1 of the tags returned for the held-out items (one tag or unknown; unknown = no tag) for
- ``LR``: a plain scikit-learn ``LogisticRegression()`` (defaults, multinomial) on the embeddings, its argmax;
- ``ours``: Kashf's head as the trainer fits it (``trainer.fitting.fit_head``) and the services tag with it
  (``modelkit.heads.tag_vectors``);
- ``+title`` (text): each tag's title, embedded like a text (e5 ``query:``), as one more positive example
  (``fit_head``'s ``titles``, ``FitConfig.title_examples``);
- ``+demean``, ``+whiten``, ``+whiten+norm``, ``+stretch`` (any track; after ``LR``, ``ours`` or ``+title``, e.g.
  ``+title+whiten``, ``LR+whiten``): the embeddings (and titles) mapped before the fit, the queries alike: minus the
  mean, then unit again (``+demean``); shrinkage whitening ``(x - mean) (Cov + lambda tr(Cov)/d I)^-1/2``, affine, so
  it would fold into the linear head (``+whiten``, ``=LAMBDA`` picks lambda, else ``--whiten-lambda``), unit again
  with ``+norm``; its opposite, ``(x - mean) (Cov / (tr(Cov)/d))^(a/2)`` (``+stretch=a``, affine too: the top
  principal directions outweigh the rest). The mean and Cov are of every item of the track, labels unused
  (transductive), or of the split's training items with ``@train`` (``+whiten@train=0.1``);
- ``+ngrams`` (text): hashed character 2-4-grams beside the embedding (``beta`` weight, both blocks unit norm);
- ``zero-shot`` (text): the nearest tag title by cosine, no example at all (the n = 0 row);
- ``+self``, ``+title+self`` (with ``--pool``): self-training (``trainer.selftraining``) on an unlabelled pool, the
  head (with titles) given ``fit_head``'s ``pool``. ``--pool`` splits each split's held-out items in two at random:
  the pool (unlabelled, what a dataset's kept tag-call inputs would be) and the queries every method is scored
  on, so the pool never holds a query;
- ``+flip``, ``+flip+centre``, ``+crops`` (photos): test-time augmentation, the unit mean embedding of each item and
  its mirror image (and its central 80 %; and its four corner 80 %s), for the training items and the queries alike;
- ``+augment`` (photos): training-time augmentation, each training item's seven views as seven examples; the queries
  as they are; ``+augment-pseudo``: its six other views as pseudo-examples (figures and none logit from the fit
  without them, as ``trainer.selftraining`` does with the pool);
- ``+logits`` (photos): the image model's centred ImageNet logits, unit, at ``--logit-weight`` beside the embedding;
- ``LR`` + a photo lever: plain LR with that lever.
Delta = method - LR per split (and lever - ours); mean, sd over splits and s.e. of the mean. Tracks: Persian reviews
(``tests/unit/trainer/reviews.py``), English product reviews (``bench/quality_reviews_en.py``), English topic posts
(``bench/quality_texts.py``), photo variants (``bench.heads.image_track``), views of 12 photos
(``bench/quality_photos.py``). Run: ``python -m bench.quality`` (``--seeds dev`` for the tuning splits,
``--text-tracks en-reviews`` for some text tracks only).
"""

from __future__ import annotations

import argparse
import hashlib
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
from sklearn.feature_extraction.text import HashingVectorizer
from sklearn.linear_model import LogisticRegression
from threadpoolctl import threadpool_limits

from bench.heads import DEV_SEEDS, IMAGE_MODEL, REPO, REPORT_SEEDS, TEXT_MODEL, image_track, set_f1, split
from bench.quality_photos import TTA, PhotoTrack, closeness, photo_track, unit
from modelkit.heads import Head, tag_vectors
from shared.schemas.inference import UNKNOWN_TAG_ID, TagRef
from trainer import fitting
from trainer.fitting import FitConfig, Report, fit_head
from trainer.selftraining import merge

NS = (4, 8, 16)


@dataclass(frozen=True)
class QTrack:
    name: str
    x: np.ndarray  # (items, dim) unit rows
    y: np.ndarray  # (items,) class index
    texts: list[str] | None  # raw texts (text tracks)
    titles: np.ndarray | None  # (tags, dim) embedded tag titles (text tracks)
    model_id: str
    features: dict[str, np.ndarray] = field(default_factory=dict)  # lever name -> (items, d) unit rows (photos)
    views: np.ndarray | None = None  # (views, items, dim) unit rows: each item's test-time views (photos)
    pool: np.ndarray | None = None  # rows of the split's unlabelled pool (--pool), never scored


def macro_f1(pred: np.ndarray, y: np.ndarray, n_tags: int) -> float:
    """Macro-F1 of one predicted class per item (-1 = unknown, no tag) against the true class."""
    eye = np.eye(n_tags + 1, dtype=bool)[:, :n_tags]
    return set_f1(eye[np.where(pred < 0, n_tags, pred)], np.eye(n_tags, dtype=bool)[y])[1]


def plain_lr(x_train: np.ndarray, y_train: np.ndarray, x_test: np.ndarray) -> np.ndarray:
    out: np.ndarray = LogisticRegression().fit(x_train, y_train).predict(x_test)
    return out


def kashf(x_train: np.ndarray, y_train: np.ndarray, x_test: np.ndarray, n_tags: int,
          config: FitConfig | None = None, titles: np.ndarray | None = None,
          pool: np.ndarray | None = None) -> np.ndarray:
    """The class the head returns first for each test row (-1 for unknown), fitted and scored as in production.

    ``titles``: (n_tags, dim) embedded tag titles passed to the fit (``FitConfig.title_examples``); ``pool``:
    unlabelled items for self-training (``fit_head``'s ``pool``)."""
    refs = [TagRef(id=t + 1, title=f"tag {t}") for t in range(n_tags)]
    reports = [Report(row, int(t) + 1, True) for row, t in enumerate(y_train)]
    by_tag = {t + 1: titles[t] for t in range(n_tags)} if titles is not None else None
    return answers(fit_head(x_train, reports, [r.id for r in refs], config, by_tag, pool).head("m", 1), x_test,
                   n_tags)


def answers(head: Head, x_test: np.ndarray, n_tags: int) -> np.ndarray:
    """The class ``head`` (tags 1..n_tags) returns first for each test row as the services tag (-1: unknown)."""
    refs = [TagRef(id=t + 1, title=f"tag {t}") for t in range(n_tags)]
    rows = tag_vectors(head, x_test, refs)
    return np.array([-1 if row[0].id == UNKNOWN_TAG_ID else row[0].id - 1 for row in rows])


_ARABIC = str.maketrans({"ي": "ی", "ك": "ک", "\u200c": " ", **{chr(0x06F0 + d): str(d) for d in range(10)},
                         **{chr(0x0660 + d): str(d) for d in range(10)}})


def normalise(text: str) -> str:
    return re.sub(r"\s+", " ", text.translate(_ARABIC)).strip().lower()


def ngrams(texts: Sequence[str], n_features: int = 2 ** 12) -> np.ndarray:
    """Hashed character 2-4-grams (within words), unit rows; a fixed hash, so no fitted vocabulary."""
    vec = HashingVectorizer(analyzer="char_wb", ngram_range=(2, 4), n_features=n_features, alternate_sign=False,
                            norm="l2", preprocessor=normalise)
    out: np.ndarray = vec.transform(list(texts)).toarray()
    return out


def with_ngrams(x: np.ndarray, grams: np.ndarray, beta: float) -> np.ndarray:
    out: np.ndarray = np.hstack([x, beta * grams]) / np.sqrt(1.0 + beta * beta)
    return out


Method = Callable[[QTrack, np.ndarray, np.ndarray], np.ndarray]


@dataclass(frozen=True)
class Transform:
    """A map of the embeddings fitted before the head: see ``+demean`` and ``+whiten`` in the module docstring."""

    whiten: bool  # False: minus the mean only
    lam: float  # shrinkage, in units of the mean eigenvalue of Cov
    norm: bool  # unit rows again after the map
    train_only: bool  # statistics of the split's training items, else of every item of the track
    power: float = -0.5  # of the shrunk eigenvalues: -1/2 whitens, a/2 > 0 stretches (+stretch=a)

    def fit(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        """(mean, P) of ``x``'s rows: P = (Cov + lam tr(Cov)/d I)^power when whitening (power < 0), else
        (Cov / (tr(Cov)/d))^power; None for minus the mean only."""
        mean = x.mean(axis=0)
        if not self.whiten:
            return mean, None
        centred = x - mean
        values, vectors = np.linalg.eigh(centred.T @ centred / len(x))
        values = np.maximum(values, 0.0)
        mean_value = max(float(values.mean()), 1e-12)
        shrunk = values + self.lam * mean_value if self.power < 0 else values / mean_value
        out: np.ndarray = (vectors * shrunk ** self.power) @ vectors.T
        return mean, out

    def apply(self, x: np.ndarray, mean: np.ndarray, p: np.ndarray | None) -> np.ndarray:
        z = x - mean
        if p is not None:
            z = z @ p
        return unit(z) if self.norm else z


_TRANSFORM = re.compile(r"\+(demean|whiten|stretch)(@train)?(?:=([0-9.eE+-]+?))?(\+norm)?$")


def parse_transformed(name: str, lam: float) -> tuple[str, Transform] | None:
    """``(base method, transform)`` of a name such as ``+title+whiten@train=0.1+norm``; None for other names."""
    base = "LR" if name.startswith("LR") else "+title" if name.startswith("+title") else "ours"
    rest = name.removeprefix("LR").removeprefix("+title")
    m = _TRANSFORM.fullmatch(rest)
    if m is None:
        return None
    value = float(m[3]) if m[3] else None
    if m[1] == "stretch":
        return base, Transform(True, 0.0, m[4] is not None, m[2] is not None, (value or 1.0) / 2)
    whiten = m[1] == "whiten"
    # Minus the mean alone is no change for the head (it centres the items itself, intercept unpenalised).
    return base, Transform(whiten, lam if value is None else value, m[4] is not None or not whiten, m[2] is not None)


def transformed(base: Method, transform: Transform) -> Method:
    """``base`` on the embeddings (and titles) mapped by ``transform``, its statistics fitted per track or split."""
    fitted: dict[int, tuple[np.ndarray, np.ndarray | None]] = {}

    def method(t: QTrack, tr: np.ndarray, te: np.ndarray) -> np.ndarray:
        if transform.train_only:
            stats = transform.fit(t.x[tr])
        else:
            if id(t) not in fitted:
                fitted[id(t)] = transform.fit(t.x)
            stats = fitted[id(t)]
        titles = None if t.titles is None else transform.apply(t.titles, *stats)
        mapped = QTrack(t.name, transform.apply(t.x, *stats), t.y, t.texts, titles, t.model_id)
        return base(mapped, tr, te)
    return method


def methods(beta: float, config: FitConfig | None = None) -> dict[str, Method]:
    """name -> f(track, train rows, test rows) -> predicted class per test row (``method_of`` adds the
    transformed ones)."""
    def lr(t: QTrack, tr: np.ndarray, te: np.ndarray) -> np.ndarray:
        return plain_lr(t.x[tr], t.y[tr], t.x[te])

    def ours(t: QTrack, tr: np.ndarray, te: np.ndarray) -> np.ndarray:
        return kashf(t.x[tr], t.y[tr], t.x[te], int(t.y.max()) + 1, config)

    def title(t: QTrack, tr: np.ndarray, te: np.ndarray) -> np.ndarray:
        assert t.titles is not None
        return kashf(t.x[tr], t.y[tr], t.x[te], len(t.titles), config, titles=t.titles)

    def pooled(t: QTrack, tr: np.ndarray, te: np.ndarray) -> np.ndarray:
        assert t.pool is not None
        return kashf(t.x[tr], t.y[tr], t.x[te], int(t.y.max()) + 1, config, pool=t.x[t.pool])

    def title_pooled(t: QTrack, tr: np.ndarray, te: np.ndarray) -> np.ndarray:
        assert t.titles is not None and t.pool is not None
        return kashf(t.x[tr], t.y[tr], t.x[te], len(t.titles), config, titles=t.titles, pool=t.x[t.pool])

    grams_of: dict[int, np.ndarray] = {}

    def grams(t: QTrack, tr: np.ndarray, te: np.ndarray) -> np.ndarray:
        assert t.texts is not None
        g = grams_of.setdefault(id(t), ngrams(t.texts))
        z = with_ngrams(t.x, g, beta)
        return kashf(z[tr], t.y[tr], z[te], int(t.y.max()) + 1, config)

    def lr_grams(t: QTrack, tr: np.ndarray, te: np.ndarray) -> np.ndarray:
        assert t.texts is not None
        z = with_ngrams(t.x, grams_of.setdefault(id(t), ngrams(t.texts)), beta)
        return plain_lr(z[tr], t.y[tr], z[te])

    def on(name: str, fit: Callable[[np.ndarray, np.ndarray, np.ndarray, int], np.ndarray]) -> Method:
        def method(t: QTrack, tr: np.ndarray, te: np.ndarray) -> np.ndarray:
            z = t.features[name]
            return fit(z[tr], t.y[tr], z[te], int(t.y.max()) + 1)
        return method

    def lr_on(x_train: np.ndarray, y_train: np.ndarray, x_test: np.ndarray, _: int) -> np.ndarray:
        return plain_lr(x_train, y_train, x_test)

    def augmented(fit: Callable[[np.ndarray, np.ndarray, np.ndarray, int], np.ndarray]) -> Method:
        def method(t: QTrack, tr: np.ndarray, te: np.ndarray) -> np.ndarray:
            assert t.views is not None
            x_train = t.views[:, tr].reshape(-1, t.views.shape[-1])
            return fit(x_train, np.tile(t.y[tr], len(t.views)), t.x[te], int(t.y.max()) + 1)
        return method

    def augment_pseudo(t: QTrack, tr: np.ndarray, te: np.ndarray) -> np.ndarray:
        """Each training item's other views as pseudo-examples (like self-training's), the none logit of the
        fit without them."""
        assert t.views is not None
        n_tags = int(t.y.max()) + 1
        fit = config or FitConfig()
        reports = [Report(row, int(c) + 1, True) for row, c in enumerate(t.y[tr])]
        extra = t.views[1:, tr].reshape(-1, t.views.shape[-1])
        labels = np.tile(t.y[tr] + 1, len(t.views) - 1).tolist()
        with threadpool_limits(limits=fit.blas_threads, user_api="blas"):
            first = fitting._fit(t.x[tr], reports, list(range(1, n_tags + 1)), fit, None)
            second = fitting._fit(t.x[tr], reports, list(range(1, n_tags + 1)), fit, None, (extra, labels))
        head = replace(merge(first, second, len(extra)), none_logit=first.none_logit).head("m", 1)
        return answers(head, t.x[te], n_tags)

    photo = {lever: on(lever, kashf) for lever in PHOTO_LEVERS} | {
        "LR" + lever: on(lever, lr_on) for lever in PHOTO_LEVERS}
    photo |= {"+augment": augmented(kashf), "LR+augment": augmented(lr_on), "+augment-pseudo": augment_pseudo}
    return {"LR": lr, "ours": ours, "+title": title, "+ngrams": grams, "LR+ngrams": lr_grams, "+self": pooled,
            "+title+self": title_pooled} | photo


PHOTO_LEVERS = ("+flip", "+flip+centre", "+crops", "+logits")


def fit_config(overrides: str) -> FitConfig:
    """``FitConfig`` with ``KEY=VALUE,...`` overrides (a tuple field's values separated by ``/``), e.g.
    ``self_fraction=0.5`` or ``default_c=10,c_grid=10``."""
    config = FitConfig()
    changes: dict[str, object] = {}
    for item in filter(None, overrides.split(",")):
        key, _, value = item.partition("=")
        if key not in FitConfig.__dataclass_fields__:
            raise SystemExit(f"FitConfig has no field {key!r}")
        current = getattr(config, key)
        if isinstance(current, tuple):
            changes[key] = tuple(float(v) for v in value.split("/"))
        elif isinstance(current, bool):
            changes[key] = value.lower() in ("1", "true", "yes")
        else:
            changes[key] = type(current)(value)
    return replace(config, **changes)  # type: ignore[arg-type]


def method_of(name: str, every: dict[str, Method], lam: float) -> Method:
    """The method called ``name``: one of ``every``, or a transformed one (``parse_transformed``)."""
    if name in every:
        return every[name]
    parsed = parse_transformed(name, lam)
    if parsed is None:
        raise SystemExit(f"unknown method {name!r}")
    return transformed(every[parsed[0]], parsed[1])


def applies(track: QTrack, method: str) -> bool:
    """Whether the track has what the method needs: texts and titles for the text levers, the lever's
    features (or the items' views) for the photo levers; LR and ours apply everywhere."""
    if method in ("LR", "ours"):
        return True
    if method.endswith("+self"):
        return track.pool is not None and (method == "+self" or track.titles is not None)
    if (parsed := parse_transformed(method, 0.0)) is not None:
        return applies(track, parsed[0])
    if method.removeprefix("LR") in PHOTO_LEVERS:
        return method.removeprefix("LR") in track.features
    if method.removeprefix("LR") in ("+augment", "+augment-pseudo"):
        return track.views is not None
    return track.texts is not None and (method != "+title" or track.titles is not None)


def zero_shot(t: QTrack) -> float:
    assert t.titles is not None
    return macro_f1((t.x @ t.titles.T).argmax(1), t.y, len(t.titles))


def reference(method: str, names: Sequence[str]) -> str | None:
    """The method a lever's delta is printed against besides LR: the head without it (``ours``, or ``+title``
    for a map of the embeddings on the head with titles); None for plain LR's levers or when it is not run."""
    if method == "ours" or method.startswith("LR"):
        return None
    if method == "+title+self":
        return "+title" if "+title" in names else None
    parsed = parse_transformed(method, 0.0)
    ref = parsed[0] if parsed is not None and parsed[0] in names else "ours"
    return ref if ref in names else None


def pool_split(te: np.ndarray, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(pool, queries): the held-out rows ``te`` halved at random (the pool gets the smaller half)."""
    shuffled = np.random.default_rng(seed + 7).permutation(te)
    return np.sort(shuffled[:len(te) // 2]), np.sort(shuffled[len(te) // 2:])


def run(track: QTrack, ns: Sequence[int], seeds: Sequence[int], chosen: dict[str, Method],
        out: Callable[[str], None] = print, pool: bool = False) -> None:
    n_tags = int(track.y.max()) + 1
    empty = np.zeros(0, dtype=np.int64)
    names = [m for m in chosen if applies(replace(track, pool=empty if pool else None), m)]
    out(f"\n{track.name}: {n_tags} tags, {len(track.y)} items, {track.model_id}; {len(seeds)} splits "
        f"(seeds {seeds[0]}..{seeds[-1]}){'; half the held-out items an unlabelled pool' if pool else ''}; "
        "macro-F1 mean +- sd; delta vs LR: mean +- sd (s.e.)")
    out(f"{'n/tag':>5} " + " ".join(f"{m:>13}" for m in names) + " | "
        + " ".join(f"{'d ' + m:>22}" for m in names if m != "LR")
        + "".join(f" {m + ' - ' + r:>22}" for m in names if (r := reference(m, names))))
    if track.titles is not None:
        out(f"{0:>5} zero-shot (nearest title): macro-F1 {zero_shot(track):.3f} (chance {1 / n_tags:.3f})")
    for n in ns:
        start = time.perf_counter()
        f1 = {m: [] for m in names}  # type: dict[str, list[float]]
        for seed in seeds:
            tr, te = split(track.y, n, seed)
            current = track
            if pool:
                rows, te = pool_split(te, seed)
                current = replace(track, pool=rows)
            for m in names:
                f1[m].append(macro_f1(chosen[m](current, tr, te), track.y[te], n_tags))
        cells = [f"{np.mean(f1[m]):.3f}+-{np.std(f1[m], ddof=1):.3f}" for m in names]
        deltas = []
        for m in names[1:]:
            d = np.array(f1[m]) - np.array(f1["LR"])
            deltas.append(f"{d.mean():+.3f}+-{d.std(ddof=1):.3f} ({d.std(ddof=1) / np.sqrt(len(d)):.3f})")
        for m in names:
            if ref := reference(m, names):
                d = np.array(f1[m]) - np.array(f1[ref])
                deltas.append(f"{d.mean():+.3f}+-{d.std(ddof=1):.3f} ({d.std(ddof=1) / np.sqrt(len(d)):.3f})")
        out(f"{n:>5} " + " ".join(f"{c:>13}" for c in cells) + " | " + " ".join(f"{c:>22}" for c in deltas)
            + f"   ({time.perf_counter() - start:.0f} s)")


def timing(cases: Sequence[tuple[int, int]] = ((120, 6), (480, 20), (10_000, 50)), repeats: int = 5) -> None:
    """Fit time (best of ``repeats``) with and without titles on bench.refit's e5-like items, one report each
    (titles are used below FitConfig.title_max_rows reported items only), and with titles and a pool of
    ``FitConfig.self_pool_max`` unlabelled items of the same tags (self-training, below self_max_rows only)."""
    from bench.refit import e5_like

    pool_size = FitConfig().self_pool_max
    print(f"\nfit time, e5-like items (bench.refit), best of {repeats}: items x tags, no titles, titles, "
          f"titles + a pool of {pool_size}")
    for n, tags in cases:
        data = e5_like(n, tags, seed=0, n_test=pool_size)
        reports = [Report(i, int(np.flatnonzero(row)[0]) + 1, True) for i, row in enumerate(data["y"])]
        # A title lands near its tag's items, as e5 titles do: the tag's centroid, unit length.
        first = data["y"].argmax(1)
        titles = {t + 1: c / np.linalg.norm(c) for t in range(tags) if (c := data["x"][first == t].mean(0)).any()}
        took, pseudo = [], 0
        for by_tag, pool in ((None, None), (titles, None), (titles, data["x_test"])):
            best = np.inf
            for _ in range(repeats):
                start = time.perf_counter()
                result = fit_head(data["x"], reports, list(range(1, tags + 1)), None, by_tag, pool)
                best = min(best, time.perf_counter() - start)
            took.append(best)
            pseudo = max(pseudo, result.pseudo_labels)
        print(f"{n:>6} x {tags:<3} {took[0]:7.2f} s {took[1]:7.2f} s {took[2]:7.2f} s ({pseudo} pseudo-examples)")


def ceiling(tracks: Sequence[QTrack], repeats: int = 3) -> None:
    """Macro-F1 with most of each track labelled: 5-fold cross-validation (4/5 of every tag's items train), plain
    LR against the head (with titles on text tracks), ``repeats`` shuffles; what 8 or 16 per tag cannot beat."""
    from sklearn.model_selection import StratifiedKFold

    print(f"\nwith 4/5 of each track labelled (5-fold CV, {repeats} shuffles): plain LR, head (+ titles)")
    for t in tracks:
        k = int(t.y.max()) + 1
        lr, head = [], []
        for rep in range(repeats):
            for tr, te in StratifiedKFold(5, shuffle=True, random_state=rep).split(t.x, t.y):
                lr.append(macro_f1(plain_lr(t.x[tr], t.y[tr], t.x[te]), t.y[te], k))
                head.append(macro_f1(kashf(t.x[tr], t.y[tr], t.x[te], k, titles=t.titles), t.y[te], k))
        print(f"{t.name}: about {int(np.bincount(t.y).min() * 0.8)} per tag, LR {np.mean(lr):.3f}, "
              f"head {np.mean(head):.3f}")


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()[:12]


TEXT_TRACKS = ("fa-reviews", "en-reviews", "en-topics")


def text_tracks(models_dir: Path, keys: Sequence[str] = TEXT_TRACKS) -> list[QTrack]:
    """The text tracks named by ``keys`` (of ``TEXT_TRACKS``), in that order."""
    from bench.quality_reviews_en import REVIEWS
    from bench.quality_texts import TOPICS
    from modelkit.onnx.text import TextEncoder
    from tests.unit.trainer.reviews import TAGS

    encoder = TextEncoder(models_dir / TEXT_MODEL, device="cpu")
    every = {"fa-reviews": ("text-fa (reviews)", TAGS), "en-reviews": ("text-en (reviews)", REVIEWS),
             "en-topics": ("text-en (topics)", TOPICS)}
    out = []
    for name, groups in (every[k] for k in keys):
        texts = [t for group in groups.values() for t in group]
        y = np.array([i for i, group in enumerate(groups.values()) for _ in group])
        out.append(QTrack(name, encoder.encode(texts), y, texts, encoder.encode(list(groups)), encoder.model_id))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--models-dir", type=Path, default=REPO / "models")
    parser.add_argument("--track", choices=("text", "image", "photos", "all"), default="all",
                        help="image: bench.heads' photo variants; photos: bench.quality_photos' harder views")
    parser.add_argument("--seeds", choices=("report", "dev"), default="report")
    parser.add_argument("--text-tracks", default=",".join(TEXT_TRACKS), help=f"some of {','.join(TEXT_TRACKS)}")
    parser.add_argument("--splits", type=int, default=None, help="use only the first N splits")
    parser.add_argument("--beta", type=float, default=0.3, help="weight of the n-gram block")
    parser.add_argument("--logit-weight", type=float, default=0.3, help="weight of the ImageNet-logit block")
    parser.add_argument("--whiten-lambda", type=float, default=0.1, help="+whiten's shrinkage (x mean eigenvalue)")
    parser.add_argument("--methods", default="LR,ours,+title,+ngrams," + ",".join(PHOTO_LEVERS))
    parser.add_argument("--timing", action="store_true", help="only the fit time with and without titles")
    parser.add_argument("--fit", default="", help="FitConfig overrides for every head method, KEY=VALUE,... "
                                                  "(a tuple's values separated by /), e.g. self_fraction=0.5")
    parser.add_argument("--ceiling", action="store_true",
                        help="only LR and the head with 4/5 of each track labelled (5-fold cross-validation)")
    parser.add_argument("--pool", action="store_true",
                        help="half of each split's held-out items an unlabelled pool (for +self), the rest queries")
    args = parser.parse_args()
    if args.timing:
        timing()
        return
    if args.ceiling:
        photos = photo_track(args.models_dir / IMAGE_MODEL)
        ceiling([*text_tracks(args.models_dir, args.text_tracks.split(",")), photos_track(photos, args.logit_weight)])
        return
    seeds = list(REPORT_SEEDS if args.seeds == "report" else DEV_SEEDS)[:args.splits]
    config = fit_config(args.fit)
    every = methods(args.beta, config)
    chosen = {m: method_of(m, every, args.whiten_lambda)
              for m in ["LR"] + [m for m in args.methods.split(",") if m != "LR"]}
    print(f"models: {TEXT_MODEL} ({_cpu_sha(args.models_dir / TEXT_MODEL)}), "
          f"{IMAGE_MODEL} ({_cpu_sha(args.models_dir / IMAGE_MODEL)}); fit {args.fit or 'defaults'}; beta {args.beta}, "
          f"logit weight {args.logit_weight}, whiten lambda {args.whiten_lambda}")
    if args.track in ("text", "all"):
        for track in text_tracks(args.models_dir, args.text_tracks.split(",")):
            run(track, NS, seeds, chosen, pool=args.pool)
    if args.track in ("image", "all"):
        t = image_track(args.models_dir)
        run(QTrack("image (photo variants)", t.x, t.y, None, None, t.model_id), NS, seeds, chosen, pool=args.pool)
    if args.track in ("photos", "all"):
        photos = photo_track(args.models_dir / IMAGE_MODEL)  # cached under .kashf/bench
        print(f"\nphotos: {closeness(photos)}")
        run(photos_track(photos, args.logit_weight), NS, seeds, chosen, pool=args.pool)


def photos_track(t: PhotoTrack, logit_weight: float) -> QTrack:
    """bench.quality_photos' views with the photo levers' features."""
    return QTrack(f"photos (views of {len(t.names)} photos)", t.embedding(), t.y, None, None, t.model_id,
                  lever_features(t, logit_weight), t.embeddings)


def lever_features(t: PhotoTrack, logit_weight: float) -> dict[str, np.ndarray]:
    """Unit rows per photo lever: the mean embedding of the item and its mirror image (and its central 80 %; and
    its four corners), and the embedding beside the item's centred, unit ImageNet logits at ``logit_weight``."""
    x = t.embedding()
    logits = unit(t.logits[0] - t.logits[0].mean(1, keepdims=True))
    return {"+flip": t.embedding(("plain", "mirror")), "+flip+centre": t.embedding(("plain", "mirror", "centre")),
            "+crops": t.embedding(TTA),
            "+logits": np.hstack([x, logit_weight * logits]) / np.sqrt(1.0 + logit_weight ** 2)}


def _cpu_sha(model_dir: Path) -> str:
    import json

    manifest = json.loads((model_dir / "manifest.json").read_text())
    name = manifest.get("cpu_file", "")
    return f"{name} sha256 {_sha(model_dir / name)}" if name else "?"


if __name__ == "__main__":
    main()
