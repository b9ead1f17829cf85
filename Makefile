# Kashf developer entry points. `make up` runs the whole stack; `make test` runs every test.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
MODELS_DIR ?= models
export KASHF_MODELS_DIR ?= $(abspath $(MODELS_DIR))

.PHONY: install lock models models-gpu up test test-unit test-integration lint bench clean

# The virtualenv holds the services, the dev tools and the model-build tools (torch 2.14.1, torchvision 0.29.1 and
# open-clip-torch: PyPI's x86-64 torch is a CUDA build, about 7 GB of venv; README "Your own models"), at the
# versions of the lock requirements/dev.txt (hash-checked: pip refuses any file whose sha256 is not listed there),
# then the two local packages (kashf, the client) as editable installs without dependencies. `make lock` refreshes
# the lock.
$(BIN)/.installed: requirements/dev.txt pyproject.toml client/pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --disable-pip-version-check --require-hashes -r requirements/dev.txt
	$(BIN)/python -m pip install -q --disable-pip-version-check --no-deps -e . -e client
	touch $@

install: $(BIN)/.installed

# Re-resolves the locks under requirements/ from pyproject.toml (and client/pyproject.toml, requirements/extra.in),
# with every file's sha256: dev.txt (make install, CI: extras dev + build), build.txt (the image's model build: cpu +
# build), runtime.txt and runtime-gpu.txt (the shipped images: the cpu or the gpu extra, no build tools). Pins that
# still satisfy pyproject stay; `make lock UPGRADE=1` moves every package to its newest release. The resolution
# reads PyPI alone (PIP_CONFIG_FILE=/dev/null drops a machine's local mirrors and find-links), for Linux x86_64 and
# this Python (3.11), the platform of the images and CI. The three image locks are held to dev.txt's versions.
# pip-tools 7.5.2 on pip 25.2: 7.6.2 asks PyPI for pypi.org/<name>/json (a 404), then downloads every file of
# every platform to hash it; 7.5.2 does not run on pip 26.
LOCK_TOOLS := .venv-lock
LOCK_COMPILE = env -u PIP_FIND_LINKS PIP_CONFIG_FILE=/dev/null CUSTOM_COMPILE_COMMAND="make lock" \
	$(LOCK_TOOLS)/bin/pip-compile -q --generate-hashes --strip-extras --allow-unsafe --no-emit-index-url \
	--index-url https://pypi.org/simple $(if $(UPGRADE),--upgrade)

$(LOCK_TOOLS)/bin/pip-compile:
	$(PYTHON) -m venv $(LOCK_TOOLS)
	$(LOCK_TOOLS)/bin/python -m pip install -q --disable-pip-version-check pip==25.2 pip-tools==7.5.2

lock: $(LOCK_TOOLS)/bin/pip-compile
	$(LOCK_COMPILE) --extra dev --extra build -o requirements/dev.txt \
		pyproject.toml client/pyproject.toml requirements/extra.in
	@# dev's `kashf[embedded,cpu]` names the project itself, which pip-compile writes as an unhashable
	@# `kashf @ file:///...` line; make install installs it with -e instead.
	sed -i '/^# WARNING: pip install will require the following package to be hashed/,/kashf (pyproject\.toml)$$/d' \
		requirements/dev.txt
	$(LOCK_COMPILE) --extra cpu --extra build -c requirements/dev.txt -o requirements/build.txt \
		pyproject.toml requirements/extra.in
	$(LOCK_COMPILE) --extra cpu -c requirements/dev.txt -o requirements/runtime.txt pyproject.toml
	$(LOCK_COMPILE) --extra gpu -c requirements/dev.txt -o requirements/runtime-gpu.txt pyproject.toml

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
	$(BIN)/python -m bench.quality --pool --methods LR,ours,+title,+self,+title+self

clean:
	rm -rf .kashf .pytest_cache .mypy_cache .ruff_cache
