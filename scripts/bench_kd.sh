#!/usr/bin/env bash
# KD benchmark (student alone vs KD over seeds + the 4x4 T x alpha sweep's cost). Knobs:
#   DATA=fashion_mnist SEEDS=0,1,2 EPOCHS=50 OUT=outputs/bench_kd DEVICE=cpu PYTHON=.venv/bin/python
#   EXTRA="data.max_per_class=100 <augmentation>"   (every run: teacher and students)
#   TEACHER_MODEL=mobilenet_v2 TEACHER_SIZE=64 TEACHER_EPOCHS=15 TEACHER_EXTRA="..." (teacher run only)
#   TEACHER_PER_SEED=1 (one teacher per seed, on that seed's training split; default: the seed-0 teacher)
#   TEMPERATURE=4 ALPHA=0.9 TEACHER_LOGITS=auto (auto: online with the random augmentation of EXTRA)
#   SWEEP_EPOCHS=5 SWEEP_TEACHER_LOGITS=cached (the sweep computes the teacher's train logits once)
# Default setting: Fashion-MNIST, 100 images per class, random-resized-crop (scale 0.5-1) + flips for
# teacher and student, the online teacher seeing the student's augmented view, 50 student epochs,
# Hinton's T=4, alpha=0.9.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-.venv/bin/python}
AUGMENT="data.augment.random_resized_crop=true data.augment.crop_scale_min=0.5 data.augment.hflip=true"
exec "$PYTHON" scripts/bench_kd.py --data "${DATA:-fashion_mnist}" --seeds "${SEEDS:-0,1,2}" \
  --epochs "${EPOCHS:-50}" --out "${OUT:-outputs/bench_kd}" --extra "${EXTRA:-data.max_per_class=100 $AUGMENT}" \
  --device "${DEVICE:-cpu}" --teacher-model "${TEACHER_MODEL:-mobilenet_v2}" --teacher-epochs "${TEACHER_EPOCHS:-15}" \
  --teacher-size "${TEACHER_SIZE:-64}" --teacher-extra "${TEACHER_EXTRA:-}" --temperature "${TEMPERATURE:-4}" \
  --alpha "${ALPHA:-0.9}" --teacher-logits "${TEACHER_LOGITS:-auto}" --sweep-epochs "${SWEEP_EPOCHS:-5}" \
  --sweep-teacher-logits "${SWEEP_TEACHER_LOGITS:-cached}" ${TEACHER_PER_SEED:+--teacher-per-seed} "$@"
