#!/usr/bin/env bash
# The claims study (nbs/83_advice_study.md): studies/claims.json (cross-entropy, coarse-first, temperature starts,
# both, and HierarchicalLoss's breed weight) on the PETS sample and on Fashion-MNIST 1% and 10%, each epoch's
# validation in curves.csv, then the Claims table (results/claims/claims.md) and the curve plots. Fashion-MNIST also
# runs studies/claims_groups.json into the same folders: coarse-first at its middle level (6 groups), which PETS lacks;
# and scripts/transfer_study.py probes whether a high starting temperature's features transfer better.
# Each sweep resumes from its sweep.csv; PETS needs the sample (scripts/pets_sample.py) or PETS under FASTAI_HOME.
#   scripts/claims_study.sh            # every part, one after the other, then the report
#   scripts/claims_study.sh pets       # or one of pets, pct1, pct10, transfer; then `python scripts/claims_report.py`
#   scripts/claims_study.sh cache      # the PETS study's time with and without FeatureCache, on the same slice of
#                                      # its trainings (--shard 1/30), side by side: results/claims/cache_timing.csv
set -euo pipefail
cd "$(dirname "$0")/.."
fashion="--lr 1e-2 --dataset fashion-mnist --seeds 0,1,2,3,4"
pets="--study studies/claims.json --lr 1e-2 --arch tf_efficientnet_lite0 --per-breed 10 --size 128 --resize squish"
pets="$pets --bs 32 --epochs 0 --freeze-epochs 8 --bn-freeze --no-aug --folds 5 --seeds 0,1,2,3,4,5"
timed() { # seconds of one sweep of the slice into a fresh folder
  local out; out=$(mktemp -d); local t0; t0=$(date +%s.%N)
  fastai-hier sweep $pets --shard 1/30 "$@" --out "$out" > /dev/null
  python -c "print(round($(date +%s.%N) - $t0, 1))"; rm -rf "$out"
}
run() {
  case "$1" in
    pets) fastai-hier sweep $pets --cache --out results/claims/pets ;;
    cache) row="1/30,13,$(timed),$(timed --cache)" # both measured before the file is written
           printf 'slice,trainings,seconds_without_cache,seconds_with_cache\n%s\n' "$row" \
             > results/claims/cache_timing.csv ;;
    pct1) for s in "" _groups; do fastai-hier sweep $fashion --study studies/claims$s.json --train-pct 1 --epochs 16 \
            --bs 32 --out results/claims/fashion_mnist_pct1; done ;;
    pct10) for s in "" _groups; do fastai-hier sweep $fashion --study studies/claims$s.json --train-pct 10 --epochs 8 \
             --bs 128 --out results/claims/fashion_mnist_pct10; done ;;
    transfer) python scripts/transfer_study.py --train-pct 1 --epochs 16 --bs 32 --out results/claims/transfer_pct1
              python scripts/transfer_study.py --train-pct 10 --epochs 8 --bs 128 --out results/claims/transfer_pct10 ;;
  esac
}
if [ $# -gt 0 ]; then run "$1"
else for s in pets cache pct1 pct10 transfer; do run $s; done; python scripts/claims_report.py
fi
