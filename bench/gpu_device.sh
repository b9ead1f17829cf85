#!/usr/bin/env bash
# The one-shot script that ran `python -m bench.gpu_text` on a lent GPU machine (the workplace's device tool).
# That machine reaches no registry and takes at most 64 MiB per call, so what it needs travels in parts:
#   bench/gpu_device.sh pack DIR        (here) DIR holds cuda.so.zst (onnxruntime-gpu's CUDA provider, zstd),
#                                       ort_rest.zip (the rest of the wheel), model.fp16.onnx.zst, model/
#                                       (manifest.json, tokenizer.json.zst) and wheels/ (the stack's
#                                       dependencies for the machine's Python); writes .gpu-parts/part-NN
#   bench/gpu_device.sh stash           (there, one call per part, .gpu-parts carried) keeps the part in /tmp
#   bench/gpu_device.sh run             (there, last call) unpacks, installs into /tmp/site and runs the bench
set -euo pipefail
PARTS=/tmp/kashf-parts
WORK=/tmp/kashf-gpu
case "${1:-}" in
  pack)
    rm -rf .gpu-parts && mkdir -p .gpu-parts
    tar -C "$2" -cf - . | split -b 60m -d -a 2 - .gpu-parts/part-
    ls -la .gpu-parts ;;
  stash)
    mkdir -p "$PARTS" && cp .gpu-parts/part-* "$PARTS"/ && ls -la "$PARTS" && df -h /tmp | tail -1 ;;
  run)
    [ -d .gpu-parts ] && cp .gpu-parts/part-* "$PARTS"/
    rm -rf "$WORK" && mkdir -p "$WORK" /tmp/site && cat "$PARTS"/part-* | tar -C "$WORK" -xf -
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
      "$WORK"/wheels/*.whl
    export PYTHONPATH=/tmp/site:$PWD PATH=/tmp/site/bin:$PATH
    python3 - "$WORK" <<'EOF'
import sys, zipfile, zstandard
from pathlib import Path
work = Path(sys.argv[1])
zipfile.ZipFile(work / "ort_rest.zip").extractall("/tmp/site")
model = work / "models" / "text" / "multilingual-e5-small"
model.mkdir(parents=True)
(model / "manifest.json").write_bytes((work / "model" / "manifest.json").read_bytes())
unz = zstandard.ZstdDecompressor(max_window_size=1 << 31)
for src, dst in [(work / "cuda.so.zst", Path("/tmp/site/onnxruntime/capi/libonnxruntime_providers_cuda.so")),
                 (work / "model.fp16.onnx.zst", model / "model.fp16.onnx"),
                 (work / "model" / "tokenizer.json.zst", model / "tokenizer.json")]:
    with src.open("rb") as fin, dst.open("wb") as fout:
        unz.copy_stream(fin, fout)
    print("unpacked", dst, dst.stat().st_size)
EOF
    # onnxruntime-gpu finds cuBLAS, cuRAND and the CUDA runtime in the machine's nvidia-* wheels.
    LD_LIBRARY_PATH=$(python3 -c "import glob,os,site; print(':'.join(sorted({os.path.dirname(p) for s in site.getsitepackages() for p in glob.glob(s+'/nvidia/**/lib*.so*', recursive=True)})))")
    export LD_LIBRARY_PATH KASHF_MODELS_DIR="$WORK/models" TOKENIZERS_PARALLELISM=false PYTHONUNBUFFERED=1
    nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv
    python3 -c "import onnxruntime as o; print(o.__version__, o.__file__, o.get_available_providers())"
    python3 -m bench.gpu_text "${@:2}" ;;
  *) echo "usage: $0 pack DIR | stash | run [bench.gpu_text args]" >&2; exit 2 ;;
esac
