# Two commands do all the set-up on a fresh machine with Python 3.11+:
#   make lab    create .venv, install chatlab with everything, open the lessons in JupyterLab
#   make test   the same set-up, then every test and every notebook (pytest --nbval)
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.chatlab-installed
# JupyterLab refuses to run as root unless told to (containers, CI machines).
ROOT_FLAG := $(if $(filter 0,$(shell id -u)),--allow-root,)

.PHONY: install lab test notebooks bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

lab: $(STAMP)
	$(BIN)/jupyter lab $(ROOT_FLAG) --ServerApp.root_dir=notebooks

test: $(STAMP)
	$(BIN)/python -m pytest

# Re-run every lesson in place to refresh its stored outputs; read `git diff notebooks/` after.
notebooks: $(STAMP)
	$(BIN)/jupyter nbconvert --to notebook --execute --inplace \
		--ExecutePreprocessor.timeout=120 --ExecutePreprocessor.record_timing=False \
		--ExecutePreprocessor.store_widget_state=False \
		notebooks/[0-9]*.ipynb

# Measure every server model (ring, latency, churn, capacity); the table is printed, the JSON
# and the plots go to benchmarks/results/. Long: run it on a quiet machine.
bench: $(STAMP)
	$(BIN)/python benchmarks/run.py
	$(BIN)/python benchmarks/thread_cost.py

clean:
	rm -rf $(VENV) build *.egg-info tests/browser/screenshots
