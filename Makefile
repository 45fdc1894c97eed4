# Two entry points: `make demo` (train + evaluate on a synthetic dataset) and `make test`.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: install test demo bench clean

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip

$(STAMP): pyproject.toml | $(PY)
	$(PY) -m pip install -q -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

test: $(STAMP)
	$(VENV)/bin/ruff check src tests bench
	$(PY) -m pytest -q

demo: $(STAMP)
	$(VENV)/bin/mammodetr demo --out runs/demo --overwrite  # an earlier demo is moved to runs/demo.replaced-*

bench: $(STAMP)
	$(PY) bench/model_speed.py

clean:
	rm -rf $(VENV) runs build *.egg-info src/*.egg-info
