("The package's architecture as the development page (`nbs/86_development.md`) states it: one room a module, imports "
 "from the ground up, no private name across modules")
import ast, re
from pathlib import Path
import pytest

ROOT = Path(__file__).resolve().parents[1]
PKG = ROOT/'fastai_hier'
PAGE = ROOT/'nbs'/'86_development.md'   # its Architecture table

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

def table_rows() -> list:
    "The rows of the development page's Architecture table, as lists of cells"
    text = PAGE.read_text()
    sec = text[text.index('## Architecture'):]
    return [[c.strip() for c in l.strip('|').split('|')] for l in sec[:sec.index('\n\n', sec.index('|'))].splitlines()
            if l.startswith('| `')]

def arch_table() -> dict:
    "module -> imports, from the development page's Architecture table"
    return {cells[0].strip('`'): set(re.findall(r'`([\w.]+)`', cells[3])) for cells in table_rows()
            if cells[0] != '`all`'}

def test_table_notebooks_are_the_sources():
    "Each module's notebook in the Architecture table is the one whose `default_exp` writes it"
    import json
    for mod,nb,*_ in ([c.strip('`') for c in r] for r in table_rows()):
        first = json.loads((ROOT/'nbs'/f'{nb}.ipynb').read_text())['cells'][0]
        assert ''.join(first['source']).strip() == f'#| default_exp {mod}', (mod, nb)

def test_no_private_name_crosses_a_module():
    assert {m: p for m,t in modules().items() if (p := private_imports(t))} == {}

def test_table_is_the_import_graph():
    table = arch_table()
    graph = {m: imports(m, t) for m,t in modules().items() if m != 'all'}
    assert set(table) == set(graph), (f"modules not in the Architecture table: {set(graph)-set(table)}; in it but "
                                      f"gone: {set(table)-set(graph)}")
    assert ({m: sorted(table[m]) for m in graph if table[m] != graph[m]}
            == {m: sorted(graph[m]) for m in graph if table[m] != graph[m]})

def test_imports_run_one_way():
    "Each module imports only modules of the rows above it in the Architecture table: no circle, nothing upward"
    order = list(arch_table())
    graph = {m: imports(m, t) for m,t in modules().items() if m != 'all'}
    def rank(m): return order.index(m) if m in order else max(order.index(o) for o in order if o.startswith(m + '.'))
    upward = {m: sorted(o for o in deps if rank(o) >= rank(m) and not o.startswith(m + '.'))
              for m,deps in graph.items()}
    assert {m: u for m,u in upward.items() if u} == {}

def nbdev_lines(tree:ast.Module) -> set:
    ("Line numbers of what nbdev writes itself rather than copies from a cell: `__all__`, which it wraps at 120 "
     "without counting `__all__ = `")
    alls = [n for n in tree.body
            if isinstance(n, ast.Assign) and [getattr(t, 'id', None) for t in n.targets] == ['__all__']]
    return {i for n in alls for i in range(n.lineno, n.end_lineno + 1)}

def test_lines_and_raises():
    ("No line of the package over 120 characters, but for what nbdev writes itself (`nbdev_lines`: the code cells are "
     "checked by `test_no_long_code_lines`); no module over 400 lines; a `raise` on its own line")
    files = [f for f in sorted(PKG.rglob('*.py')) if f.name != '_modidx.py']
    lines = [l for f in files for l in f.read_text().splitlines()]
    long = {}
    for f in files:
        skip = nbdev_lines(ast.parse(f.read_text()))
        long.update({f'{f.relative_to(ROOT)}:{i}': len(l) for i,l in enumerate(f.read_text().splitlines(), 1)
                     if len(l) > 120 and i not in skip})
    assert long == {}, f"lines over 120 characters: {long}"
    sizes = {f.name: len(f.read_text().splitlines()) for f in files}
    assert {f: n for f,n in sizes.items() if n > 400} == {}
    one_liners = [l.strip() for l in lines if re.match(r'\s*(if|elif|else|except|for|while|with)\b.*:\s*raise\b', l)]
    assert one_liners == []

def test_no_long_code_lines():
    "No line over 120 characters in the notebooks' code cells, `scripts/*.py`, `bench/*.py` or `tests/*.py`"
    import json
    long = {}
    for nb in sorted((ROOT/'nbs').glob('*.ipynb')):
        for k,c in enumerate(json.loads(nb.read_text())['cells']):
            if c['cell_type'] != 'code': continue
            long.update({f'{nb.relative_to(ROOT)} cell {k}:{i}': len(l)
                         for i,l in enumerate(''.join(c['source']).splitlines(), 1) if len(l) > 120})
    for f in sorted(p for d in ('scripts', 'bench', 'tests') for p in (ROOT/d).glob('*.py')):
        long.update({f'{f.relative_to(ROOT)}:{i}': len(l) for i,l in enumerate(f.read_text().splitlines(), 1)
                     if len(l) > 120})
    assert long == {}, f"lines over 120 characters: {long}"

def test_every_subpackage_is_packaged():
    "A wheel holds every subpackage: the `include` of `[tool.setuptools.packages.find]` matches them all"
    import tomllib, setuptools
    include = tomllib.loads((ROOT/'pyproject.toml').read_text())['tool']['setuptools']['packages']['find']['include']
    dirs = {'.'.join(p.parent.relative_to(ROOT).parts) for p in PKG.rglob('__init__.py')}
    assert set(setuptools.find_packages(str(ROOT), include=include)) == dirs

def fill_imports(page=PAGE):
    ("Rewrite the imports column of the development page's Architecture table from the package: "
     "`python tests/test_architecture.py`")
    graph = {m: sorted(imports(m, t)) for m,t in modules().items() if m != 'all'}
    def _row(m):
        cells = [x.strip() for x in m[0].strip('|').split('|')]
        mod = cells[0].strip('`')
        if mod in graph: cells[3] = ', '.join(f'`{o}`' for o in graph[mod]) or '(fastai only)'
        return '| ' + ' | '.join(cells) + ' |'
    page.write_text(re.sub(r'^\| `[\w.]+` \|.*\|$', _row, page.read_text(), flags=re.M))

if __name__ == '__main__': fill_imports()
