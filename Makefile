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

.PHONY: install demo test lint bench clean browser

# Headless Chromium for the report/web-page browser tests (Debian package). Installed when we are
# root with apt-get (CI, fresh machines); otherwise those tests skip and say why.
browser:
	@if command -v chromium >/dev/null 2>&1; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
		echo "installing Debian chromium for the browser tests"; \
		(apt-get update -qq && apt-get install -y -qq chromium >/dev/null) || echo "warning: chromium install failed; browser tests will skip"; \
	else echo "note: install Debian 'chromium' to run the browser tests (they skip without it)"; fi

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

test: $(STAMP) | browser
	$(PY) -m pytest -q

lint: $(STAMP)
	$(VENV)/bin/ruff check src tests benchmarks

clean:
	rm -rf $(VENV) runs .pytest_cache
