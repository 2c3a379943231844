# Two commands do all the set-up on a fresh machine with Python 3.11+:
#   make lab    create .venv, install chatlab with everything, open the lessons in JupyterLab
#   make test   the same set-up, then the lint (ruff, mypy) and every test and notebook (pytest --nbval)
# Every install takes the versions pinned in constraints.txt, so a classroom gets the same
# JupyterLab, ipywidgets and matplotlib; `make constraints` refreshes the pins.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.chatlab-installed
# JupyterLab refuses to run as root unless told to (containers, CI machines).
ROOT_FLAG := $(if $(filter 0,$(shell id -u)),--allow-root,)

.PHONY: install lab lint test notebooks bench constraints clean handout

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -c constraints.txt -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

lab: $(STAMP)
	$(BIN)/jupyter lab $(ROOT_FLAG) --ServerApp.root_dir=notebooks

# ruff and mypy read their settings from pyproject.toml (they check chatlab/).
lint: $(STAMP)
	$(BIN)/ruff check chatlab
	$(BIN)/ruff format --check chatlab
	$(BIN)/mypy

test: lint
	$(BIN)/python -m pytest

# Re-run every lesson and lab in place to refresh its stored outputs (nbconvert runs each notebook
# in its own folder, so a lab imports its skeleton); read `git diff notebooks/` after.
notebooks: $(STAMP)
	$(BIN)/jupyter nbconvert --to notebook --execute --inplace \
		--ExecutePreprocessor.timeout=120 --ExecutePreprocessor.record_timing=False \
		--ExecutePreprocessor.store_widget_state=False \
		notebooks/[0-9]*.ipynb notebooks/labs/lab[0-9]_*.ipynb

# Measure every server model (ring, latency, churn, capacity); the table is printed, the JSON
# and the plots go to benchmarks/results/; then what a hop between two servers through Redis costs
# (benchmarks/cluster.py). Long: run it on a quiet machine.
bench: $(STAMP)
	$(BIN)/python benchmarks/run.py
	$(BIN)/python benchmarks/thread_cost.py
	$(BIN)/python benchmarks/cluster.py

# Pin the newest versions that satisfy pyproject.toml: a fresh venv, the dev set-up, pip freeze.
# Then run `make clean test` and commit constraints.txt if everything passes.
constraints:
	rm -rf .venv-pin
	$(PYTHON) -m venv .venv-pin
	.venv-pin/bin/python -m pip install --quiet --upgrade pip
	.venv-pin/bin/python -m pip install --quiet -e '.[dev]'
	echo "# Made by 'make constraints' on $$(date -u +%Y-%m-%d) with $$(.venv-pin/bin/python --version)." > constraints.txt
	.venv-pin/bin/python -m pip freeze --exclude-editable >> constraints.txt
	rm -rf .venv-pin

# The kit for students (INSTRUCTORS.md): everything committed at HEAD except the labs' reference
# solutions, as a zip to hand out. Uncommitted changes are not in it. STARTS=no also leaves out
# notebooks/labs/start/ (lab N's start file holds lab N-1 solved): then no earlier lab's solution
# is in the handout, and every student carries their own file from lab to lab.
HANDOUT ?= chatlab-handout.zip
STARTS ?= yes
HANDOUT_EXCLUDE := ':(exclude)notebooks/labs/solutions' $(if $(filter no,$(STARTS)),':(exclude)notebooks/labs/start',)
handout:
	git archive --format=zip --prefix=chatlab/ -o $(HANDOUT) HEAD -- . $(HANDOUT_EXCLUDE)

clean:
	rm -rf $(VENV) build *.egg-info tests/browser/screenshots
