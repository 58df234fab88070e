#!/usr/bin/env bash
# What the main job and the tests need on a fresh Debian machine, installed only where missing (so a second run is
# quick): Debian's Fashion-MNIST and WordNet, Chromium (the site's browser test) and npm, torch, this package with its
# dev extras, and npm's MathJax for the documentation site (package.json). Sourced by main.sh and test.sh.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
missing=""
for pkg in dataset-fashion-mnist wordnet-base chromium chromium-driver; do
  dpkg -s "$pkg" >/dev/null 2>&1 || missing="$missing $pkg"
done
command -v npm >/dev/null || missing="$missing npm"
if [ -n "$missing" ]; then
  if [ "$(id -u)" -eq 0 ] && command -v apt-get >/dev/null; then apt-get update -qq && apt-get install -y -qq $missing
  else echo "Not root, so not installed: Debian's$missing (apt-get install -y$missing); what needs them says so." >&2
  fi
fi
python -c "import torch, torchvision; assert torch.__version__.startswith('2.14.1') and torchvision.__version__.startswith('0.29.1')" 2>/dev/null \
  || pip install -q torch==2.14.1 torchvision==0.29.1
# editable, from this checkout (a clone elsewhere may have pointed the install at itself)
python - <<'PY' 2>/dev/null || pip install -q -e ".[dev]"
import importlib.util, pathlib, sys, nbdev, pytest, sphinx, myst_nb, furo
spec = importlib.util.find_spec('fastai_hier')
sys.exit(spec is None or pathlib.Path(spec.origin).resolve().parents[1] != pathlib.Path.cwd().resolve())
PY
# the site's MathJax, from package-lock.json into node_modules/ (git ignores it)
[ -f node_modules/mathjax/es5/tex-chtml.js ] || npm ci --no-audit --no-fund --loglevel=error
