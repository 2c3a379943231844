# A few commands do all the set-up on a fresh machine with Python 3.11+:
#   make install  create .venv and install the kit (chatlab-kit, imported as chatlab) with
#                 everything, editable: pip install -c constraints.txt -e '.[dev]'
#   make lab      the same set-up, then open the lessons in JupyterLab
#   make test     the same set-up, then the lint (ruff, mypy) and every test and notebook (pytest --nbval),
#                 in six workers
#   make wheel    build the kit's wheel into dist/, to install without a clone
# Every install takes the versions pinned in constraints.txt, so a classroom gets the same
# JupyterLab, ipywidgets and matplotlib; `make constraints` refreshes the pins.
# CI (.ci/run) and the Dev Container (.devcontainer/devcontainer.json) set up with `make install`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.chatlab-installed
# JupyterLab refuses to run as root unless told to (containers, CI machines).
ROOT_FLAG := $(if $(filter 0,$(shell id -u)),--allow-root,)
# More options for JupyterLab: the Dev Container passes --ip=0.0.0.0 --no-browser.
LAB_FLAGS ?=

.PHONY: install lab lint test notebooks bench constraints clean handout wheel site

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -c constraints.txt -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

lab: $(STAMP)
	$(BIN)/jupyter lab $(ROOT_FLAG) --ServerApp.root_dir=notebooks $(LAB_FLAGS)

# The wheel (dist/chatlab_kit-VERSION-py3-none-any.whl): `pip install FILE.whl` anywhere installs
# the servers, the client, the grader and the fault link (no dependencies); add the lessons'
# with `pip install 'FILE.whl[lessons]'`.
# build/ goes first: setuptools would put a stale copy of a removed module into the wheel.
wheel:
	rm -rf build
	$(PYTHON) -m pip wheel --quiet --no-deps --wheel-dir dist .

# ruff and mypy read their settings from pyproject.toml: ruff checks and formats the kit, the tests
# and the benchmarks (not the corpus of student servers); mypy checks chatlab/.
lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

# Six workers (pytest-xdist) even on two cores: much of the suite waits for servers, kernels and
# a browser. The root conftest.py says which tests share a worker and queues the slowest first.
# On the 2-core CI machine a fresh clone's pytest took 5:04-5:30 in six runs (11.5 min when
# issue 20 was filed); eight workers brought out new timing races, so six.
# TEST_WORKERS=0 runs in one process.
TEST_WORKERS ?= 6
test: lint
	$(BIN)/python -m pytest -n $(TEST_WORKERS)

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
# The explanation at the top of constraints.txt and the block kept by hand at its end (pins for
# systems where a frozen pin has no wheel) stay; the frozen pins of that block's packages go.
# Then run `make clean test`, check the other systems (below), and commit constraints.txt.
# pip's --platform changes only which wheels it accepts, not the markers it evaluates, so the
# other systems are checked with uv (https://docs.astral.sh/uv/, `pip install uv`), for example:
#   uv pip compile pyproject.toml --extra dev -c constraints.txt --only-binary :all: \
#       --python-version 3.11.9 --python-platform x86_64-pc-windows-msvc   (and x86_64-apple-darwin,
#       aarch64-apple-darwin, aarch64-manylinux_2_28; and --python-version 3.11.2, 3.13)
constraints:
	rm -rf .venv-pin
	$(PYTHON) -m venv .venv-pin
	.venv-pin/bin/python -m pip install --quiet --upgrade pip
	.venv-pin/bin/python -m pip install --quiet -e '.[dev]'
	.venv-pin/bin/python -m pip freeze --exclude-editable > .venv-pin/frozen.txt
	sed -n '/^# --- Kept by hand/,$$p' constraints.txt > .venv-pin/by-hand.txt
	{ echo "# Made by 'make constraints' on $$(date -u +%Y-%m-%d) with $$(.venv-pin/bin/python --version), on $$(uname -s) $$(uname -m)."; \
	  sed -n '2,/^[^#]/{/^#/p}' constraints.txt; \
	  awk -F '[=;]' 'NR == FNR { if (!/^#/) kept[tolower($$1)]; next } !(tolower($$1) in kept)' \
	      .venv-pin/by-hand.txt .venv-pin/frozen.txt; \
	  cat .venv-pin/by-hand.txt; } > .venv-pin/constraints.txt
	mv .venv-pin/constraints.txt constraints.txt
	@echo "constraints.txt: now check the pins kept by hand at its end against these frozen ones:"
	@sed -n 's/^\([A-Za-z0-9_.-]*\)==.*/^\1==/p' .venv-pin/by-hand.txt | sort -u > .venv-pin/kept.txt
	@grep -i -f .venv-pin/kept.txt .venv-pin/frozen.txt || true
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

# The course website, made from the stored notebooks (nothing runs) and from README.md and
# INSTRUCTORS.md as they are now: Sphinx with MyST-NB and the Furo theme, pinned in
# site/requirements.txt. Open build/site/html/index.html; tests/browser/test_site.py checks it.
SITE_STAMP := $(VENV)/.chatlab-site-installed

$(SITE_STAMP): $(STAMP) site/requirements.txt
	$(BIN)/python -m pip install --quiet -c constraints.txt -r site/requirements.txt
	touch $(SITE_STAMP)

site: $(SITE_STAMP)
	$(BIN)/python site/build.py

clean:
	rm -rf $(VENV) build dist *.egg-info tests/browser/screenshots
