("The package's architecture as the README states it: one room a module, imports from the ground up, no "
 "private name across modules")
import ast, re
from pathlib import Path
import pytest

ROOT = Path(__file__).resolve().parents[1]
PKG = ROOT/'fastai_hier'

def modules() -> dict:
    ("Module name (without `fastai_hier.`) -> parsed source, for every module but the generated index "
     "and the package façades")
    res = {}
    for f in sorted(PKG.rglob('*.py')):
        if f.name in ('_modidx.py', '__init__.py', '__main__.py'): continue
        res['.'.join(f.relative_to(PKG).with_suffix('').parts)] = ast.parse(f.read_text())
    return res

def imports(name:str, tree:ast.Module) -> set:
    "The package modules `name` imports (a subpackage façade counts as its modules)"
    here = name.split('.')[:-1]
    res = set()
    for n in ast.walk(tree):
        if isinstance(n, ast.ImportFrom) and n.level:
            base = here[:len(here)-n.level+1]
            res.add('.'.join(base + ([n.module] if n.module else [])))
    return res

def private_imports(tree:ast.Module) -> list:
    return [a.name for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.level for a in n.names
            if a.name.startswith('_')]

def readme_table() -> dict:
    "module -> imports, from the README's Architecture table"
    text = (ROOT/'README.md').read_text()
    sec = text[text.index('### Architecture'):]
    sec = sec[:sec.index('\n\n', sec.index('|'))]
    rows = [l for l in sec.splitlines() if l.startswith('| `')]
    res = {}
    for r in rows:
        cells = [c.strip() for c in r.strip('|').split('|')]
        if cells[0] != '`all`': res[cells[0].strip('`')] = set(re.findall(r'`([\w.]+)`', cells[3]))
    return res

def test_readme_notebooks_are_the_sources():
    "Each module's notebook in the README's table is the one whose `default_exp` writes it"
    import json
    text = (ROOT/'README.md').read_text()
    sec = text[text.index('### Architecture'):]
    rows = [[c.strip().strip('`') for c in l.strip('|').split('|')]
            for l in sec[:sec.index('\n\n', sec.index('|'))].splitlines()
            if l.startswith('| `')]
    for mod,nb,*_ in rows:
        first = json.loads((ROOT/'nbs'/f'{nb}.ipynb').read_text())['cells'][0]
        assert ''.join(first['source']).strip() == f'#| default_exp {mod}', (mod, nb)

def test_no_private_name_crosses_a_module():
    assert {m: p for m,t in modules().items() if (p := private_imports(t))} == {}

def test_readme_table_is_the_import_graph():
    table = readme_table()
    graph = {m: imports(m, t) for m,t in modules().items() if m != 'all'}
    assert set(table) == set(graph), (f"modules not in the README's table: {set(graph)-set(table)}; in it but "
                                      f"gone: {set(table)-set(graph)}")
    assert ({m: sorted(table[m]) for m in graph if table[m] != graph[m]}
            == {m: sorted(graph[m]) for m in graph if table[m] != graph[m]})

def test_imports_run_one_way():
    "Each module imports only modules of the rows above it in the README's table: no circle, nothing upward"
    order = list(readme_table())
    graph = {m: imports(m, t) for m,t in modules().items() if m != 'all'}
    def rank(m): return order.index(m) if m in order else max(order.index(o) for o in order if o.startswith(m + '.'))
    upward = {m: sorted(o for o in deps if rank(o) >= rank(m) and not o.startswith(m + '.'))
              for m,deps in graph.items()}
    assert {m: u for m,u in upward.items() if u} == {}

def test_lines_and_raises():
    "Under 1% of the package's lines over 120 characters; no module over 400 lines; a `raise` on its own line"
    lines = [l for f in PKG.rglob('*.py') if f.name != '_modidx.py' for l in f.read_text().splitlines()]
    long = [l for l in lines if len(l) > 120]
    assert len(long) < 0.01*len(lines), f"{len(long)} of {len(lines)} lines are over 120 characters"
    sizes = {f.name: len(f.read_text().splitlines()) for f in PKG.rglob('*.py') if f.name != '_modidx.py'}
    assert {f: n for f,n in sizes.items() if n > 400} == {}
    one_liners = [l.strip() for l in lines if re.match(r'\s*(if|elif|else|except|for|while|with)\b.*:\s*raise\b', l)]
    assert one_liners == []

def test_every_subpackage_is_packaged():
    "A wheel holds every subpackage: the `include` of `[tool.setuptools.packages.find]` matches them all"
    import tomllib, setuptools
    include = tomllib.loads((ROOT/'pyproject.toml').read_text())['tool']['setuptools']['packages']['find']['include']
    dirs = {'.'.join(p.parent.relative_to(ROOT).parts) for p in PKG.rglob('__init__.py')}
    assert set(setuptools.find_packages(str(ROOT), include=include)) == dirs

def fill_imports(nb=ROOT/'nbs'/'index.ipynb'):
    ("Rewrite the imports column of the Architecture table in the README's source from the package: "
     "`python tests/test_architecture.py`")
    import json
    graph = {m: sorted(imports(m, t)) for m,t in modules().items() if m != 'all'}
    d = json.loads(nb.read_text())
    for c in d['cells']:
        src = ''.join(c['source'])
        if '### Architecture' not in src: continue
        def _row(m):
            cells = [x.strip() for x in m[0].strip('|').split('|')]
            mod = cells[0].strip('`')
            if mod in graph: cells[3] = ', '.join(f'`{o}`' for o in graph[mod]) or '(fastai only)'
            return '| ' + ' | '.join(cells) + ' |'
        c['source'] = re.sub(r'^\| `[\w.]+` \|.*\|$', _row, src, flags=re.M).splitlines(keepends=True)
    nb.write_text(json.dumps(d, indent=1, ensure_ascii=False) + '\n')

if __name__ == '__main__': fill_imports()
