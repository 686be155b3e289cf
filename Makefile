# Two commands a new user needs: `make demo` (the main job) and `make test` (the test suite).
# Each creates .venv when missing and installs what is needed; a stamp keyed on pyproject.toml
# makes the install step a no-op when nothing changed.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
# Torch is pinned to the build this machine installs from disk; override elsewhere, e.g.
#   make test TORCH_SPEC="torch torchvision"
TORCH_SPEC ?= torch==2.14.1 torchvision==0.29.1
STAMP := $(VENV)/.medvl-installed-$(shell cat pyproject.toml Makefile | cksum | cut -d' ' -f1)

.PHONY: install demo test lint bench clean

$(PY):
	$(PYTHON) -m venv $(VENV)

$(STAMP): $(PY)
	$(PIP) install -q --disable-pip-version-check $(TORCH_SPEC)
	$(PIP) install -q --disable-pip-version-check -e ".[dev]"
	rm -f $(VENV)/.medvl-installed-*
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/medvl demo --out runs/demo

test: $(STAMP)
	$(PY) -m pytest -q

lint: $(STAMP)
	$(VENV)/bin/ruff check src tests benchmarks

clean:
	rm -rf $(VENV) runs .pytest_cache
