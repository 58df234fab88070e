"README.md is rendered from nbs/index.ipynb (nbdev's own `nbdev-readme` needs Quarto, which cannot be installed here)"
import json, re, sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT/'scripts'))   # as conftest.py does, for `python tests/test_readme.py`
from build_docs import include

def render(nb=ROOT/'nbs'/'index.ipynb') -> str:
    ("Markdown cells with `<!-- include: FILE -->` lines replaced by FILE and paths from `nbs/` made paths from the "
     "root, code cells fenced as Python without `#| ` directives, `#| hide` cells left out")
    out = []
    for c in json.loads(nb.read_text())['cells']:
        src = ''.join(c['source'])
        if src.startswith('#| hide'): continue # the notebook's tests of the README's code
        src = re.sub(r'\]\(\.\./', '](', include(src))   # `../results/x.png` from nbs/ is `results/x.png` here
        if c['cell_type'] == 'code':
            src = '```python\n' + '\n'.join(l for l in src.split('\n') if not l.startswith('#|')).strip() + '\n```'
        out.append(src)
    return '\n\n'.join(out) + '\n'

def test_readme_is_rendered_from_index():
    assert (ROOT/'README.md').read_text() == render(), ("README.md is out of date: edit nbs/index.ipynb and run "
                                                        "`python tests/test_readme.py`")

if __name__ == '__main__': (ROOT/'README.md').write_text(render())
