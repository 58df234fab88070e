#!/usr/bin/env bash
# The GPU check (nbs/84_scale_and_speed.md): the loss benchmark on CUDA, host synchronisation, a resnet18 step,
# fine_tune on the PETS sample with to_fp16() and the three callbacks, check_loss on the GPU.
# Under 5 minutes on one GPU, offline; needs the repository, an installed environment and the PETS sample (scripts/pets_sample.py).
#   bench/gpu_check.sh [OUT.md]      (default: bench/results_gpu.md)
set -euo pipefail
cd "$(dirname "$0")/.."
python bench/gpu_check.py --device cuda --out "${1:-bench/results_gpu.md}"
