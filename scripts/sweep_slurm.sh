#!/usr/bin/env bash
# A sweep on a SLURM cluster through submitit: one array task per job, one GPU each.
#   PARTITION=gpu DATA_ROOT=/data/flowers bash scripts/sweep_slurm.sh
# Knobs: LAUNCHER=slurm_gpu (submitit_local runs the same sweep on this machine), PARTITION,
#        MODELS=mobilenet_v2,efficientnet_lite0, FREEZES=all,partial, SEEDS=0,1,2, EPOCHS=10,
#        DATA_ROOT (an image folder; unset = the offline digits), DEVICE=auto, TLRUN=tlrun.
# Preempted jobs keep checkpoints/last.pt and exit 75: rerun a job's command with train.resume=auto.
set -euo pipefail
read -r -a TLRUN_CMD <<< "${TLRUN:-tlrun}"
LAUNCHER=${LAUNCHER:-slurm_gpu}
ARGS=(-m "hydra/launcher=$LAUNCHER" "model=${MODELS:-mobilenet_v2,efficientnet_lite0}" "freeze=${FREEZES:-all,partial}"
      "seed=${SEEDS:-0,1,2}" "train.epochs=${EPOCHS:-10}" "device=${DEVICE:-auto}")
if [ "$LAUNCHER" = slurm_gpu ]; then
  if [ -z "${PARTITION:-}" ]; then
    echo "sweep_slurm.sh: set PARTITION=<your SLURM GPU partition> (or LAUNCHER=submitit_local)" >&2
    exit 2
  fi
  ARGS+=("hydra.launcher.partition=$PARTITION")
fi
if [ -n "${DATA_ROOT:-}" ]; then
  ARGS+=(data=imagefolder "data.root=$DATA_ROOT")
fi
exec "${TLRUN_CMD[@]}" "${ARGS[@]}" "$@"
