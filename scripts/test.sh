#!/usr/bin/env bash
# The project's test command (README "Development"; `.ci/run` calls it): installs what it needs (scripts/setup.sh), then
# the export check, the notebook tests, the documentation site's build and pytest (tests/test_site.py opens the site).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/setup.sh

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
# cells flagged `#| fashion` need Debian's dataset-fashion-mnist
if [ -d /usr/share/datasets/fashion-mnist ]; then flags="--flags fashion"
else flags=""; echo "Fashion-MNIST is not installed: its notebook cells and tests are skipped (apt-get install -y dataset-fashion-mnist)." >&2; fi
nbdev-test --n-workers 2 $flags
python scripts/build_docs.py
python -m pytest tests/
