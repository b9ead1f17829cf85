"""Two-tower (open_clip) models for the end-to-end tests, made in seconds without a hub: a tiny CLIP
architecture trained briefly on the test photos and their titles, saved as an open_clip folder
(open_clip_config.json and weights, as open_clip models are published), and exported as the operator's
command `python -m modelbuild export-openclip --model local-dir:FOLDER` does."""

from __future__ import annotations

import json
from pathlib import Path

from PIL import Image

from tests.integration.media import photos, variant

SIZE = 64
MEAN, STD = (0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711)  # OpenAI CLIP's
CONFIG = {
    "model_cfg": {
        "embed_dim": 64,
        "vision_cfg": {"image_size": SIZE, "layers": 2, "width": 64, "head_width": 32, "patch_size": 16},
        "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 2},
    },
    "preprocess_cfg": {"mean": list(MEAN), "std": list(STD), "interpolation": "bicubic", "resize_mode": "shortest"},
}
TITLES = {"cat": "a cat", "coffee": "a cup of coffee", "rocket": "a rocket", "astronaut": "an astronaut"}
TRAIN_VARIANTS = range(8)
UNSEEN_VARIANTS = range(10, 13)
# Seeds whose model put every unseen view nearest its own title, by 0.7 cosine or more over the next title
# (seeds 1 to 8 all got every unseen view right, the smallest margin 0.16).
SEED_A, SEED_B = 6, 7


def view(name: str, k: int) -> Image.Image:
    """View ``k`` of the named test photo, at the size the reports and tag calls send."""
    return variant(photos()[name], k, size=128)


def train_tiny_clip(folder: Path, seed: int, steps: int = 120) -> Path:
    """Train the tiny CLIP so each photo's views sit next to its title (cosine well above the others), then save
    it as an open_clip folder. A different ``seed`` gives different weights, so another model id."""
    import open_clip
    import torch
    import torch.nn.functional as F

    torch.manual_seed(seed)
    model = open_clip.CLIP(**CONFIG["model_cfg"])  # type: ignore[arg-type]
    pre = open_clip.image_transform(SIZE, is_train=False, mean=MEAN, std=STD, interpolation="bicubic")
    names = list(TITLES)
    pixels = torch.stack([pre(view(name, k)) for name in names for k in TRAIN_VARIANTS])
    labels = torch.tensor([i for i, _ in enumerate(names) for _ in TRAIN_VARIANTS])
    tokens = open_clip.SimpleTokenizer(context_length=CONFIG["model_cfg"]["text_cfg"]["context_length"])(  # type: ignore[index]
        [TITLES[n] for n in names])
    model.token_embedding.weight.requires_grad_(False)  # four titles: learning 49408 word vectors only costs time
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    model.train()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny matrices: a second thread mostly waits for a busy core
    try:
        for _ in range(steps):
            logits = 10.0 * model.encode_image(pixels, normalize=True) @ model.encode_text(tokens, normalize=True).T
            loss = F.cross_entropy(logits, labels)
            opt.zero_grad()
            loss.backward()
            opt.step()
    finally:
        torch.set_num_threads(threads)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "open_clip_config.json").write_text(json.dumps(CONFIG))
    torch.save(model.state_dict(), folder / "open_clip_pytorch_model.bin")
    return folder


def export(folder: Path, models: Path, name: str, cache: Path) -> Path:
    """What `python -m modelbuild export-openclip --model local-dir:FOLDER --name NAME` does (in this process:
    torch is imported already; tests/unit/models/test_export_tools.py runs the command itself)."""
    from modelbuild.build import build_target, openclip_target

    assert build_target(openclip_target(f"local-dir:{folder}", None, name), models, cache) == "built"
    return models / "image" / name
