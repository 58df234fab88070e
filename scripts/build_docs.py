"""The documentation site, built offline from the notebooks' committed outputs (nothing is executed but what nbdev
runs to render `show_doc`):

    python scripts/build_docs.py          # writes _site/ (git ignores it); open _site/index.html

1. nbdev's own processing (`nbdev.serve.proc_nbs`, into `_proc/`): hidden and export cells left out, `show_doc`
   rendered, backticked names linked to their entries. It needs no Quarto.
2. Each processed notebook, and each markdown page of `nbs/`, becomes a MyST page in `_docsrc/`, named as nbdev names
   it (`00_hierarchy.ipynb` -> `hierarchy.html`): the title block as a heading, `#| echo: false` as a hidden input,
   `show_doc`'s output as the page's own markdown with the anchor nbdev's links point at, `<!-- include: FILE -->`
   lines replaced by FILE (the generated result tables), links to the published site made relative.
3. Sphinx with MyST-NB and the Furo theme writes the HTML into `_site/`, with a search page and the left navigation
   in the notebooks' order; MathJax 3 comes from npm's `mathjax` package in `node_modules/` (`scripts/setup.sh`
   installs it from `package.json`), copied into the site, so no page loads anything from elsewhere.
"""
import functools, importlib, json, re, shutil, subprocess, sys, tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
NBS, SRC, SITE = ROOT/'nbs', ROOT/'_docsrc', ROOT/'_site'
MATHJAX = ROOT/'node_modules'/'mathjax'/'es5'
PROJECT = tomllib.loads((ROOT/'pyproject.toml').read_text())['project']
DOC_URL = PROJECT['urls']['Documentation']           # nbdev links every documented name to a page under it
# the left navigation's sections, by a page's number (`31_temperature` is in the `3` section)
SECTIONS = {'0': 'Hierarchies', '1': 'Losses', '2': 'Metrics and predictions', '3': 'Callbacks', '4': 'Inspecting',
            '5': 'Data', '6': 'The command', '7': 'Guides', '8': 'Results', '9': 'The package'}

def include(text:str) -> str:
    "`text` with each `<!-- include: FILE -->` line replaced by FILE (a path from the repository root)"
    return re.sub(r'^<!-- include: (\S+) -->$', lambda m: (ROOT/m[1]).read_text().strip(), text, flags=re.M)

def page_name(path:Path) -> str:
    "The page nbdev writes for a page: without its number (`31_temperature` -> `temperature`)"
    return re.sub(r'^\d+_', '', path.stem)

def sources() -> list:
    "The notebooks and markdown pages of `nbs/`, in the navigation's order: `index` first, then by file name"
    fs = sorted(p for p in NBS.iterdir() if p.suffix in ('.ipynb', '.md') and not p.name.startswith(('.', '_')))
    return sorted(fs, key=lambda p: (p.stem != 'index', p.name))

def relative_links(md:str) -> str:
    "Links into the published site made relative (every page sits in the site's root); links to no API entry undone"
    md = md.replace(DOC_URL.rstrip('/') + '/', '')
    return re.sub(r'\[(`[^`]+`)\]\(([\w.]+\.html#[^)\s]+)\)', lambda m: m[1] if m[2] in not_api() else m[0], md)

@functools.cache
def not_api() -> set:
    ("The pages nbdev links to but that document nothing: private names (`check._Probe`) and the names a module "
     "exports but not in `__all__` (`decode.decodes`, a method `@Categorize` registers), which have no `show_doc`")
    from fastai_hier._modidx import d
    res = set()
    for mod,syms in d['syms'].items():
        public = set(getattr(importlib.import_module(mod), '__all__', []))
        for sym,(page,_) in syms.items():
            parts = sym[len(mod)+1:].split('.')
            if parts[0].startswith('_') or (len(parts) == 1 and parts[0] not in public): res.add(page)
    return res

def source_links(md:str) -> str:
    "`show_doc`'s `[source](URL){...}` (Quarto's attributes) as an HTML link; nbdev gives no line number here"
    return re.sub(r'\[source\]\((\S+?)(#LNone)?\)\{[^}]*\}', r'<a class="source-link" href="\1">[source]</a>', md)

def anchored(md:str) -> str:
    ("Each `show_doc` heading with the anchor nbdev's links use (`#hierarchy.check_vocab`) where Sphinx's own differs "
     "(`#hierarchy-check-vocab`)")
    def _anchor(m):
        a = m[2].lower()
        return (f'<span id="{a}"></span>\n\n' if re.sub(r'[^a-z0-9]+', '-', a).strip('-') != a else '') + m[0]
    return re.sub(r'^(#{2,4}) (\S+)$', _anchor, md, flags=re.M)

def directives(src:str) -> tuple:
    "Quarto's cell options left by nbdev (`#| echo: false`) as a dict, and the code without them"
    lines = src.split('\n')
    opts = {}
    while lines and lines[0].startswith('#|'):
        k, _, v = lines.pop(0)[2:].partition(':')
        opts[k.strip()] = v.strip().lower()
    return opts, '\n'.join(lines)

def md_cell(src:str, i:int) -> dict: return {'cell_type': 'markdown', 'id': f'md{i}', 'metadata': {}, 'source': src}

def title_block(front:str) -> str:
    "nbdev's front matter (YAML between `---` lines) as the page's heading and description"
    import yaml
    fm = yaml.safe_load(front.strip().strip('-'))
    return f"# {fm['title']}\n\n> {fm['description']}" if fm.get('description') else f"# {fm['title']}"

def convert_nb(proc:Path) -> dict:
    "A notebook processed by nbdev, as MyST-NB renders it"
    nb = json.loads(proc.read_text())
    cells = []
    for i,c in enumerate(nb['cells']):
        src = ''.join(c['source'])
        if c['cell_type'] == 'raw' and src.startswith('---'): cells.append(md_cell(title_block(src), i)); continue
        if c['cell_type'] == 'markdown':
            if src.startswith('<!-- WARNING: THIS FILE WAS AUTOGENERATED'): continue
            cells.append(md_cell(relative_links(include(src)), i)); continue
        if c['cell_type'] != 'code': continue
        opts, code = directives(src)
        if opts.get('include') == 'false': continue
        if opts.get('output') == 'asis':             # `show_doc`: its markdown becomes the page's
            md = ''.join(''.join(o['data']['text/markdown']) for o in c.get('outputs', [])
                         if 'text/markdown' in o.get('data', {}))
            cells.append(md_cell(relative_links(anchored(source_links(md.removeprefix('---\n')))), i)); continue
        tags = ['remove-input'] * (opts.get('echo') == 'false') + ['remove-output'] * (opts.get('output') == 'false')
        cells.append({**c, 'id': f'code{i}', 'source': code, 'metadata': {'tags': tags}})
    return {**nb, 'cells': cells}

def convert_md(path:Path) -> str:
    "A markdown page of `nbs/`, with its includes, and its backticked names linked as nbdev links a notebook's"
    from nbdev.doclinks import NbdevLookup
    return relative_links(NbdevLookup().linkify(include(path.read_text())))

def toctrees(names:list) -> str:
    "Hidden tables of contents for the root page: Sphinx's left navigation, one section per number"
    groups = {}
    for p in names: groups.setdefault(SECTIONS.get(p.name[0], 'More'), []).append(page_name(p))
    return '\n\n'.join(f"```{{toctree}}\n:hidden:\n:caption: {cap}\n\n" + '\n'.join(ps) + '\n```'
                       for cap,ps in groups.items())

CONF = '''# written by scripts/build_docs.py
project = {name!r}
html_title = {name!r}
extensions = ['myst_nb', 'sphinx.ext.mathjax', 'sphinx.ext.githubpages']
myst_enable_extensions = ['dollarmath', 'amsmath', 'colon_fence', 'html_image']
myst_all_links_external = True     # links are pages as nbdev writes them (`hierarchy.html#hierarchy`), left as they are
nb_execution_mode = 'off'          # the notebooks' committed outputs
nb_output_stderr = 'remove'
nb_merge_streams = True
html_theme = 'furo'
html_copy_source = False
html_show_sourcelink = False
mathjax_path = 'mathjax/tex-chtml.js'   # relative to _static/: vendored from npm's `mathjax`, no CDN
html_static_path = ['_static']
html_css_files = ['site.css']
suppress_warnings = ['myst.header', 'mystnb.unknown_mime_type']
exclude_patterns = ['_doctrees', '_html', 'jupyter_execute', '.jupyter_cache']
'''

CSS = '''/* written by scripts/build_docs.py: the result tables are wide, so the page is too, and their text smaller */
@media (min-width: 90em) { .content { width: 56em; } }
article table.docutils { font-size: 0.8em; }
'''

def build(force:bool=False) -> Path:
    "Process, convert and render every page into `_site/`; returns the home page"
    from nbdev.serve import proc_nbs
    if not (MATHJAX/'tex-chtml.js').exists():
        sys.exit(f"{MATHJAX} is missing: run `npm ci` (scripts/setup.sh does), which installs npm's `mathjax` there")
    proc = proc_nbs(n_workers=2, force=force)
    shutil.rmtree(SRC, ignore_errors=True)
    SRC.mkdir()
    pages = sources()
    for p in pages:
        if p.suffix == '.ipynb':
            nb = convert_nb(proc/p.name)
            if p.stem == 'index': nb['cells'].append(md_cell(toctrees(pages[1:]), 'nav'))
            (SRC/f'{page_name(p)}.ipynb').write_text(json.dumps(nb, indent=1, ensure_ascii=False))
        else: (SRC/f'{page_name(p)}.md').write_text(convert_md(p))
    (SRC/'conf.py').write_text(CONF.format(name=PROJECT['name'].replace('-', '_')))
    (SRC/'_static').mkdir()
    (SRC/'_static'/'site.css').write_text(CSS)
    # into _docsrc/ first: MyST-NB writes its `jupyter_execute/` beside the output folder
    subprocess.run([sys.executable, '-m', 'sphinx', '-b', 'html', '-q', '-j', '2', '-d', str(SRC/'_doctrees'),
                    str(SRC), str(SRC/'_html')], check=True)
    shutil.rmtree(SITE, ignore_errors=True)
    shutil.move(SRC/'_html', SITE)
    skip = shutil.ignore_patterns('*-full*.js', 'tex-svg*', 'tex-mml*', 'mml-*', 'node-main*', 'svg*', 'svg')
    shutil.copytree(MATHJAX, SITE/'_static'/'mathjax', ignore=skip)
    return SITE/'index.html'

if __name__ == '__main__':
    print(f"The site is in {build(force='--force' in sys.argv).parent}/ (open index.html)")
