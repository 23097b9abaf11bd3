#!/usr/bin/env bash
# Few-shot benchmark on held-out classes (MAML, meta-distill, ProtoNet, KD-then-finetune). Knobs:
#   DATA=fashion_mnist EPOCHS=5 EPISODES=200 DEVICE=cpu OUT=benchmarks/meta/results EXTRA="..." PYTHON=.venv/bin/python
# On 2 shared CPU cores (about 33 min for the six rows):
#   EPOCHS=2 EPISODES=100 EXTRA="device.threads=1 data.max_per_class=300 distill.episodes_per_epoch=60 distill.val_episodes=20"
set -euo pipefail
cd "$(dirname "$0")/../.."
PYTHON=${PYTHON:-.venv/bin/python}
exec "$PYTHON" benchmarks/meta/bench_meta.py --data "${DATA:-fashion_mnist}" --epochs "${EPOCHS:-5}" \
  --episodes "${EPISODES:-200}" --out "${OUT:-benchmarks/meta/results}" --extra "${EXTRA:-}" --device "${DEVICE:-cpu}" "$@"
