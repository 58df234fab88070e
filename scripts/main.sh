#!/usr/bin/env bash
# The main job (README "Development"): every method of studies/fashion_mnist.json against cross-entropy on 10% of
# Fashion-MNIST's training images, 5 seeds, scored on the official test set. Installs what it needs (scripts/setup.sh),
# trains every run into a new folder under runs/ (ignored by git), and says where it wrote and how long it took.
#   scripts/main.sh            # a new folder runs/fashion_mnist-pct10-<date>-<time>
#   scripts/main.sh DIR        # or DIR: a DIR with a sweep.csv resumes where it stopped
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/setup.sh
out="${1:-runs/fashion_mnist-pct10-$(date +%Y%m%d-%H%M%S)}"
start=$(date +%s)
fastai-hier sweep --dataset fashion-mnist --train-pct 10 --study studies/fashion_mnist.json --epochs 8 --bs 128 --lr 1e-2 \
  --seeds 0,1,2,3,4 --out "$out"
echo "The main job wrote $out/ (sweep.csv, curves.csv, summary.md, paired.csv, paired.png, curves.png, reach.csv) in $(( ($(date +%s) - start) / 60 )) min."
