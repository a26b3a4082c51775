#!/usr/bin/env bash
# The one prepared GPU check of the train issue (see cluster/gpu_check.py): images/s per GPU of
# ResNet-50 at bf16 with nvJPEG decoding (DALI where installed), at 64 and 256 pairs per GPU, with
# and without --compile, beside the model alone on synthetic tensors and the data-wait share.
# Needs only what the lent machine has (torch, torchvision, numpy, pillow, pyarrow, pyyaml, tqdm,
# matplotlib, scikit-image): run from the repository root as  bash cluster/gpu_check.sh
# Writes gpu-check.json and gpu-check.png to $OUT (or ./gpu-check) and prints one summary line.
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
if command -v nvidia-smi > /dev/null; then nvidia-smi --query-gpu=name,memory.total --format=csv,noheader; fi
exec timeout 330 python3 -m cluster.gpu_check --out "${OUT:-gpu-check}" "$@"
