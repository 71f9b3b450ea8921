#!/usr/bin/env bash
# Build a GLUE leaderboard submission from --do_test runs: template, export, validation, zip.
#
#   scripts/make_submission.sh IN OUT [-f tsv]
#
# IN holds one run folder per task (IN/rte/test_preds.csv, IN/mnli/mm_test_preds.csv, IN/ax/...).
# OUT gets the eleven .tsv files and, only if they all pass validation, OUT/submission.zip.
# Python: $PYTHON if set, else the repository's .venv, else python3.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
if [ -z "${PYTHON:-}" ]; then
    if [ -x "$root/.venv/bin/python" ]; then PYTHON="$root/.venv/bin/python"; else PYTHON=python3; fi
fi
PYTHONPATH="$root${PYTHONPATH:+:$PYTHONPATH}" exec "$PYTHON" -m stilts.cli.make_submission "$@"
