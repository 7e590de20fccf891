# `make test`, `make demo` and `make study` create (or reuse) .venv, install requirements.txt, and run.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.requirements-installed

.PHONY: test demo study venv clean-demo

venv: $(STAMP)

$(STAMP): requirements.txt
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -r requirements.txt
	@touch $(STAMP)

test: $(STAMP)
	$(PY) -m pytest

demo: $(STAMP)
	PYTHON=$(PY) bash scripts/demo.sh

# knobs: STUDY_SEEDS, STUDY_SCALE, STUDY_OUT, STUDY_ACCELERATOR, ... (scripts/study.py)
study: $(STAMP)
	$(PY) scripts/study.py

clean-demo:
	rm -rf demo_output
