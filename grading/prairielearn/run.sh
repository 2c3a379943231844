#!/usr/bin/env bash
# PrairieLearn's external grader runs this (the entrypoint of the question's
# externalGradingOptions) for every submission: grade the student's chat server with chatlab's
# grader, from /grade/student, and write /grade/results/results.json (gradable, score from 0
# to 1, message, output, and one test per check with points, max_points, the hint as message).
# Run as root, it starts the server as an unprivileged user, with limits.
#
# Settings (environment, or chatlab-grade.env in the question's tests/ folder, /grade/tests):
#   CHATLAB_STAGES       stages to grade (default: all four: threads routing framing slow)
#   CHATLAB_SERVER_FILE  the submitted file to run (default: the only *.py submitted)
#   CHATLAB_TIMEOUT      seconds to wait for any one line (default: 2)
#   CHATLAB_USER         who runs the server when this script runs as root (default: nobody)
#   CHATLAB_PYTHON       the Python with chatlab installed (default: python3)
#   CHATLAB_SERVER_PYTHON  the Python that runs the submission (default: CHATLAB_PYTHON)
#   PL_GRADE_ROOT        PrairieLearn's folder (default: /grade; the kit's tests use a temporary one)
set -uo pipefail

ROOT=${PL_GRADE_ROOT:-/grade}
if [ -f "$ROOT/tests/chatlab-grade.env" ]; then . "$ROOT/tests/chatlab-grade.env"; fi
PYTHON=${CHATLAB_PYTHON:-python3}
SERVER_PYTHON=${CHATLAB_SERVER_PYTHON:-$PYTHON}
STAGES=${CHATLAB_STAGES:-threads routing framing slow}
TIMEOUT=${CHATLAB_TIMEOUT:-2}
RUN_AS=${CHATLAB_USER:-nobody}
RESULTS=$ROOT/results
mkdir -p "$RESULTS"

not_gradable() {  # results.json for a submission that cannot be graded at all
    "$PYTHON" - "$RESULTS/results.json" "$1" <<'PY'
import json, sys
with open(sys.argv[1], "w", encoding="utf-8") as results:
    json.dump({"gradable": False, "score": 0.0, "message": sys.argv[2], "output": "", "tests": []}, results, indent=2)
PY
}

# The submitted server: the file named in the settings, or the only *.py submitted.
if [ -n "${CHATLAB_SERVER_FILE:-}" ]; then
    server=$ROOT/student/$CHATLAB_SERVER_FILE
else
    mapfile -t found < <(find "$ROOT/student" -maxdepth 1 -type f -name '*.py' | sort)
    server=${found[0]:-}
    if [ "${#found[@]}" -gt 1 ]; then
        not_gradable "Submit exactly one .py file (your server); found: $(basename -a "${found[@]}" | tr '\n' ' ')"
        exit 0
    fi
fi
if [ -z "$server" ] || [ ! -f "$server" ]; then
    not_gradable "No server file found: submit your server's .py file${CHATLAB_SERVER_FILE:+ (named $CHATLAB_SERVER_FILE)}."
    exit 0
fi

# A copy of the submission that the unprivileged user may read, in a folder it may enter.
work=$(mktemp -d)
chmod 755 "$work"
cp -R "$ROOT/student/." "$work/"
chmod -R a+rX "$work"
as_user=()
if [ "$(id -u)" = 0 ]; then as_user=(--user "$RUN_AS"); fi

cd "$work" || exit 1
# shellcheck disable=SC2086  # STAGES is a list of words
"$PYTHON" -m chatlab.grade --quiet --limits "${as_user[@]}" --stage $STAGES --timeout "$TIMEOUT" \
    --format prairielearn --output "$RESULTS/results.json" --server-log "$work/server.log" \
    -- "$SERVER_PYTHON" "$work/$(basename "$server")" --port '{port}' 2>"$work/grader.err"
status=$?
if [ ! -s "$RESULTS/results.json" ]; then
    not_gradable "The grader could not grade this submission (status $status): $(tail -n 5 "$work/grader.err")"
fi
# For the course staff (the grading job's log): what the server said.
echo "chatlab-grade: status $status; the server's output follows"
cat "$work/server.log" 2>/dev/null
rm -rf "$work"
exit 0
