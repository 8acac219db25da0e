# One command each: `make demo` (set up + run the main job), `make test` (set up + run all tests).
PYTHON ?= python3
VENV   ?= .venv
PY      = $(VENV)/bin/python
STAMP   = $(VENV)/.installed

.PHONY: setup demo test clean

setup: $(STAMP)

$(STAMP): setup.py requirements.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q -e ".[ros,bags,dev]"
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/tta-perception demo

test: $(STAMP)
	$(PY) -m pytest -q test

clean:
	rm -rf $(VENV) runs .pytest_cache
