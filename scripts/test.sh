#!/usr/bin/env bash
# The project's test command (README "Quick start"; `.ci/run` calls it): export check, notebook tests, pytest.
set -euo pipefail
cd "$(dirname "$0")/.."

# fastai's data folder, seeded with the PETS sample (links, so that nothing writes into it): `untar_data(URLs.PETS)` then needs no download
if [ -z "${FASTAI_HOME:-}" ]; then
  export FASTAI_HOME="$(mktemp -d)"
  python scripts/pets_sample.py "$FASTAI_HOME"
fi

nbdev-export
if [ -n "$(git status --porcelain -- fastai_hier)" ]; then
  git status --short -- fastai_hier; git diff --stat -- fastai_hier
  echo "fastai_hier/ is not what nbdev-export writes from nbs/: edit the notebooks, run nbdev-export, and commit both." >&2
  exit 1
fi
nbdev-test --n-workers 2
python -m pytest tests/
