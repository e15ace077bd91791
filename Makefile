# Two commands on a fresh machine: `make demo` and `make test`. Both create the virtual
# environment on first use (pinned by constraints.txt, CPU-only torch) and reuse it after.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
TORCH_INDEX ?= https://download.pytorch.org/whl/cpu

.PHONY: demo test lint bench clean

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	# torch's CPU build: from a wheel pip finds locally where there is one, else from PyTorch's CPU index.
	$(PY) -m pip install --quiet -c constraints.txt "torch==2.13.0+cpu" || \
	  $(PY) -m pip install --quiet -c constraints.txt --extra-index-url $(TORCH_INDEX) "torch==2.13.0+cpu"
	$(PY) -m pip install --quiet -c constraints.txt -e ".[dev,simulation,flower]"
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/securefl demo

test: $(STAMP)
	# every core: tests/conftest.py keeps the tests that start Ray on one worker
	$(PY) -m pytest -q -n auto --dist loadgroup
	$(PY) -m pytest -q benchmarks --benchmark-disable
	$(VENV)/bin/ruff check securefl tests examples benchmarks

lint: $(STAMP)
	$(VENV)/bin/ruff check securefl tests examples benchmarks

bench: $(STAMP)
	$(PY) -m pytest benchmarks/ -q --benchmark-columns=median,iqr,ops --benchmark-sort=name

clean:
	rm -rf $(VENV) build *.egg-info
