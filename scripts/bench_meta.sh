#!/usr/bin/env bash
# Few-shot benchmark on held-out classes (MAML, meta-distill, ProtoNet, KD-then-finetune). Knobs:
#   DATA=fashion_mnist EPOCHS=5 EPISODES=200 DEVICE=cpu OUT=outputs/bench_meta EXTRA="..." PYTHON=.venv/bin/python
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-.venv/bin/python}
exec "$PYTHON" scripts/bench_meta.py --data "${DATA:-fashion_mnist}" --epochs "${EPOCHS:-5}" \
  --episodes "${EPISODES:-200}" --out "${OUT:-outputs/bench_meta}" --extra "${EXTRA:-}" --device "${DEVICE:-cpu}" "$@"
