#!/usr/bin/env bash
# KD benchmark (student alone vs KD over seeds + the 4x4 T x alpha sweep's cost). Knobs:
#   DATA=fashion_mnist SEEDS=0,1,2 EPOCHS=20 OUT=outputs/bench_kd EXTRA="data.max_per_class=500 ..."
#   DEVICE=cpu TEACHER_EPOCHS=8 TEACHER_SIZE=96 SWEEP_EPOCHS=5 PYTHON=.venv/bin/python
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-.venv/bin/python}
exec "$PYTHON" scripts/bench_kd.py --data "${DATA:-fashion_mnist}" --seeds "${SEEDS:-0,1,2}" \
  --epochs "${EPOCHS:-20}" --out "${OUT:-outputs/bench_kd}" --extra "${EXTRA:-data.max_per_class=500}" \
  --device "${DEVICE:-cpu}" --teacher-epochs "${TEACHER_EPOCHS:-8}" --teacher-size "${TEACHER_SIZE:-96}" \
  --sweep-epochs "${SWEEP_EPOCHS:-5}" "$@"
