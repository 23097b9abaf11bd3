#!/usr/bin/env bash
# Fine-tune a pretrained model on an image folder (class sub-folders, or train/ val/ test/ inside).
#   DATA_ROOT=/data/flowers bash scripts/finetune_folder.sh [more tlrun overrides]
# Knobs: DATA_ROOT (required), MODEL=mobilenet_v2, FREEZE=partial, EPOCHS=10, DEVICE=auto (cpu|cuda|mps),
#        AMP=off (bf16|fp16 on GPU), BATCH=64, TLRUN=tlrun (e.g. ".venv/bin/tlrun", or "python -m tlrun").
set -euo pipefail
if [ -z "${DATA_ROOT:-}" ]; then
  echo "finetune_folder.sh: set DATA_ROOT=<folder of class sub-folders>" >&2
  exit 2
fi
read -r -a TLRUN_CMD <<< "${TLRUN:-tlrun}"
exec "${TLRUN_CMD[@]}" data=imagefolder data.root="$DATA_ROOT" model="${MODEL:-mobilenet_v2}" \
  freeze="${FREEZE:-partial}" train.epochs="${EPOCHS:-10}" train.batch_size="${BATCH:-64}" \
  device="${DEVICE:-auto}" device.amp="${AMP:-off}" "$@"
