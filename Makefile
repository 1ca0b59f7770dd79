# `make demo` and `make test` create .venv on first use and install the pinned set in requirements.txt.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
export MUJOCO_GL ?= egl
export PYOPENGL_PLATFORM ?= egl
export HF_HUB_OFFLINE ?= 1

.PHONY: install demo test bench clean

$(STAMP): requirements.txt pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -r requirements.txt
	$(BIN)/pip install --no-deps gym-pusht==0.1.8
	$(BIN)/pip install --no-deps rerun-sdk==0.41.0  # declares numpy>=2; its other deps are in requirements.txt
	$(BIN)/pip install --no-deps --no-build-isolation -e .
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/genpolicy demo

test: $(STAMP)
	$(BIN)/python -m pytest -q -x tests

bench: $(STAMP)
	$(BIN)/python benchmarks/bc_metaworld.py

clean:
	rm -rf $(VENV)
