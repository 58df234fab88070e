#!/usr/bin/env bash
# The Fashion-MNIST study of nbs/80_fashion_mnist_study.md: every method of studies/fashion_mnist.json against cross-entropy, 5 seeds, evaluated on the
# official test set, in three regimes of training data. Needs `apt-get install -y dataset-fashion-mnist`. About an hour on 2 CPU cores;
# each sweep resumes from its CSV if interrupted.
set -euo pipefail
cd "$(dirname "$0")/.."
study="--dataset fashion-mnist --study studies/fashion_mnist.json --lr 1e-2 --seeds 0,1,2,3,4"
fastai-hier sweep $study --train-pct 1 --epochs 16 --bs 32 --out results/fashion_mnist/pct1
fastai-hier sweep $study --train-pct 10 --epochs 8 --bs 128 --out results/fashion_mnist/pct10
fastai-hier sweep $study --epochs 3 --bs 256 --out results/fashion_mnist/full
python scripts/fashion_mnist_report.py
