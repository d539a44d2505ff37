# Two promises of README: `make demo` and `make test`, both from a fresh clone.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed-stamp
DATASET ?= DLRSD

.PHONY: install test demo clean-demo

$(STAMP): requirements.txt requirements-dev.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -r requirements-dev.txt
	touch $(STAMP)

install: $(STAMP)

test: install
	TF_CPP_MIN_LOG_LEVEL=2 $(PY) -m pytest -q tests

demo: install
	$(PY) demo.py --dataset $(DATASET)

clean-demo:
	rm -rf dumps/demo
