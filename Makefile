# Two commands do all the set-up on a fresh machine (Python 3.10+ and pip):
#   make test   installs into .venv and runs lint + the test suite
#   make demo   installs into .venv and runs the main job on the embedded default
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python

.PHONY: setup test demo lint

setup: $(VENV)/.installed

$(VENV)/.installed: setup.py
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --upgrade pip
	$(PY) -m pip install -e '.[test,diffusers]'
	touch $@

lint: setup
	$(PY) -m ruff check .

test: lint
	$(PY) -m pytest -q

demo: setup
	$(PY) scripts/demo.py
