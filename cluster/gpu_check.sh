#!/usr/bin/env bash
# The one prepared GPU check of the train issue: images/s per GPU for ResNet-50 at bf16 with each
# GPU decoding backend offered there (nvjpeg; dali where installed), and the data-wait share.
# Meant for a lent GPU machine whose image has torch and torchvision but not this package's other
# dependencies: carry their wheels in .whl/ (pyarrow, ray, webdataset, requests, pyyaml, tqdm,
# matplotlib, scikit-image and their needs), then run:  bash cluster/gpu_check.sh
set -euo pipefail
if compgen -G ".whl/*.whl" > /dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl
  export PYTHONPATH=/tmp/site:$PWD
else
  export PYTHONPATH=$PWD
fi
nvidia-smi --query-gpu=name,memory.total --format=csv
python3 -m cluster bench loader train --workdir /tmp/iipa-bench --json "${OUT:-.}/bench-gpu.json"
