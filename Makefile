# One command each: `make demo` (set up + run the main job), `make test` (set up + run all tests).
# `make setup` runs the README's install commands, with the pip the venv brings (CI runs the same).
PYTHON ?= python3
VENV   ?= .venv
PY      = $(VENV)/bin/python
STAMP   = $(VENV)/.installed
AMENT   = $(VENV)/.ament-linked

.PHONY: setup demo test clean

setup: $(AMENT)

$(STAMP): setup.py setup.cfg pyproject.toml requirements.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q -e ".[ros,bags,dev]"
	touch $(STAMP)

# an editable install skips setup.py's data_files: link them into the venv so launch_ros finds the
# package (AMENT_PREFIX_PATH=$(VENV)); again when a launch, config, DDS profile or launcher file is added
$(AMENT): $(STAMP) package.xml $(wildcard launch/*.launch.py config/*.yaml config/sequences/*.yaml \
                                          tta_perception/ros/dds/*.xml)
	$(PY) -m tta_perception.install_ament --prefix $(VENV)
	touch $(AMENT)

demo: $(AMENT)
	$(VENV)/bin/tta-perception demo

test: $(AMENT)
	$(PY) -m pytest -q test

clean:
	rm -rf $(VENV) runs .pytest_cache
