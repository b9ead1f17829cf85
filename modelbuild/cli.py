"""`python -m modelbuild` / `kashf-models`: build, export-st, export-openclip, fp16."""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

from modelbuild.build import DEFAULT_CACHE, build_target, default_targets, openclip_target, st_target


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m modelbuild", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True)

    def common(sp: argparse.ArgumentParser) -> None:
        sp.add_argument("--out", type=Path, default=Path("models"), help="models folder (default: models)")
        sp.add_argument("--cache-dir", type=Path, default=DEFAULT_CACHE, help=f"default: {DEFAULT_CACHE}")
        sp.add_argument("--force", action="store_true", help="rebuild even when up to date")

    b = sub.add_parser("build", help="build the default text and image models")
    common(b)
    b.add_argument("--only", choices=["text", "image"])

    st = sub.add_parser("export-st", help="export a local sentence-transformers folder")
    common(st)
    st.add_argument("path", type=Path)
    st.add_argument("--name", required=True)
    st.add_argument("--prefix", default="", help='text prefix, e.g. "query: " for e5 models')
    st.add_argument("--max-length", type=int, default=512)
    st.add_argument("--no-int8", action="store_true", help="skip the dynamically quantised CPU file")
    st.add_argument("--int8-scales", choices=["row", "call"], default="row",
                    help="activation scales per text (default: a text's vector ignores its batch-mates) "
                         "or one per model call (quantize_dynamic as is: batch-dependent)")

    oc = sub.add_parser("export-openclip", help="export an open_clip model (both towers) from local files")
    common(oc)
    oc.add_argument("--model", required=True,
                    help="open_clip architecture name, e.g. ViT-B-32, with --checkpoint; or local-dir:FOLDER, a "
                         "folder with open_clip_config.json and the weights (as open_clip models are published)")
    oc.add_argument("--checkpoint", type=Path, help="weights file of a named architecture")
    oc.add_argument("--name", required=True)
    f16 = sub.add_parser("fp16", help="add a float16 GPU file to a built text model (make models-gpu)")
    f16.add_argument("model_dir", type=Path, help="e.g. models/text/multilingual-e5-small")
    return p


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    # never reach a model hub: weights come from local files and registry packages only
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    start = time.perf_counter()
    if args.command == "fp16":
        from modelbuild.fp16 import convert_fp16

        try:
            worst = convert_fp16(args.model_dir)
        except (RuntimeError, FileNotFoundError) as exc:
            print(f"error: {args.model_dir}: {exc}", file=sys.stderr, flush=True)
            return 1
        print(f"{args.model_dir}: fp16 GPU file written, worst cosine to fp32 {worst:.6f}; "
              f"done in {time.perf_counter() - start:.1f}s", flush=True)
        return 0
    cache = Path(args.cache_dir).expanduser()
    if args.command == "build":
        targets = [t for t in default_targets() if args.only in (None, t.modality)]
    elif args.command == "export-st":
        targets = [st_target(args.path, args.name, args.prefix, args.max_length, not args.no_int8,
                             row_scales=args.int8_scales == "row")]
    else:
        try:
            targets = [openclip_target(args.model, args.checkpoint, args.name)]
        except FileNotFoundError as exc:
            print(f"error: image/{args.name}: {exc}", file=sys.stderr, flush=True)
            return 1
    for target in targets:
        try:
            result = build_target(target, args.out, cache, force=args.force)
        except (RuntimeError, FileNotFoundError) as exc:  # missing packages, failed checks: say it plainly
            print(f"error: {target.modality}/{target.name}: {exc}", file=sys.stderr, flush=True)
            return 1
        print(f"{target.modality}/{target.name}: {result}", flush=True)
    print(f"done in {time.perf_counter() - start:.1f}s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
