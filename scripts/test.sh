#!/usr/bin/env bash
# Set up (as README says) and run the test suite: one pytest worker per CPU core (pytest-xdist; --dist
# loadscope keeps a module on one worker, so its module-scoped runs are built once), the 15 slowest tests
# listed at the end. TESTS=slow runs the slow tier instead (the benchmark scripts end to end; .ci/run runs
# both), spread test by test (--dist load: its long tests share no module fixtures, and one module holds most
# of them), TESTS=all both at once. Extra arguments go to pytest (e.g. -k resume, -n 0).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
dist=loadscope
case "${TESTS:-fast}" in
  fast) markers=(-m "not slow") ;;
  slow) markers=(-m slow); dist=load ;;
  all) markers=() ;;
  *) echo "test.sh: TESTS must be fast, slow or all" >&2; exit 2 ;;
esac
"${VENV:-.venv}/bin/python" -m pytest -q -n auto --dist "$dist" --durations=15 "${markers[@]}" "$@"
