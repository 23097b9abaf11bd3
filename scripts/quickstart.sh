#!/usr/bin/env bash
# One command from a fresh clone to a finished run: set up, then run the embedded default job
# (ImageNet-pretrained MobileNetV2 fine-tuned on scikit-learn's digits, fully offline).
# Extra arguments go to tlrun, e.g. scripts/quickstart.sh model=resnet18 model.weights=null
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
"${VENV:-.venv}/bin/tlrun" "$@"
