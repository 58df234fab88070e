#!/usr/bin/env bash
# The claims study of the README ("Claims"): studies/claims.json (cross-entropy, coarse-first, temperature starts,
# both, and HierarchicalLoss's breed weight) on the PETS sample and on Fashion-MNIST 1% and 10%, each epoch's
# validation in curves.csv, then the Claims table (results/claims/claims.md) and the curve plots.
# Each sweep resumes from its sweep.csv; PETS needs the sample (scripts/pets_sample.py) or PETS under FASTAI_HOME.
#   scripts/claims_study.sh            # all three, one after the other
#   scripts/claims_study.sh pets       # or one of pets, pct1, pct10; then `python scripts/claims_report.py`
set -euo pipefail
cd "$(dirname "$0")/.."
study="--study studies/claims.json --lr 1e-2"
fashion="$study --dataset fashion-mnist --seeds 0,1,2,3,4"
run() {
  case "$1" in
    pets) fastai-hier sweep $study --arch tf_efficientnet_lite0 --per-breed 10 --size 128 --resize squish --bs 32 \
            --epochs 0 --freeze-epochs 8 --bn-freeze --no-aug --cache --folds 5 --seeds 0,1,2,3,4,5 --out results/claims/pets ;;
    pct1) fastai-hier sweep $fashion --train-pct 1 --epochs 16 --bs 32 --out results/claims/fashion_mnist_pct1 ;;
    pct10) fastai-hier sweep $fashion --train-pct 10 --epochs 8 --bs 128 --out results/claims/fashion_mnist_pct10 ;;
  esac
}
if [ $# -gt 0 ]; then run "$1"; else for s in pets pct1 pct10; do run $s; done; python scripts/claims_report.py; fi
