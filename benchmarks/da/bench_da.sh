#!/usr/bin/env bash
# Domain-adaptation benchmark (source-only, DANN, MMD, CORAL, oracle over seeds; prints benchmarks/da/README.md's table).
# Knobs: PAIRS=cvdigits:cvdigits_m,digits:cvdigits,cvdigits:digits SEEDS=0,1,2 EPOCHS=12 JOBS=2
#        OPTIMIZER=adam (sgd: the DANN paper's recipe) OUT=benchmarks/da/results EXTRA="k=v ..." PYTHON=.venv/bin/python
set -euo pipefail
cd "$(dirname "$0")/../.."
PYTHON=${PYTHON:-.venv/bin/python}
exec "$PYTHON" benchmarks/da/bench_da.py --pairs "${PAIRS:-cvdigits:cvdigits_m,digits:cvdigits,cvdigits:digits}" \
  --seeds "${SEEDS:-0,1,2}" --epochs "${EPOCHS:-12}" --jobs "${JOBS:-2}" --optimizer "${OPTIMIZER:-adam}" \
  --out "${OUT:-benchmarks/da/results}" --extra "${EXTRA:-}" "$@"
