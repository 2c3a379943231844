#!/usr/bin/env bash
# Gradescope runs this once, as root, when it builds the autograder's image (Ubuntu 22.04):
# a Python of 3.11 or newer, and chatlab (from the chatlab/ folder of the autograder zip) in a
# venv of its own. The grader needs only the standard library; nothing else is installed.
set -euo pipefail

ROOT=${AUTOGRADER_ROOT:-/autograder}
apt-get update
apt-get install -y --no-install-recommends python3.11 python3.11-venv
python3.11 -m venv "$ROOT/chatlab-venv"
"$ROOT/chatlab-venv/bin/python" -m pip install --no-cache-dir "$ROOT/source/chatlab"
"$ROOT/chatlab-venv/bin/python" -m chatlab.grade --help >/dev/null  # it imports
