("The documentation site (`scripts/build_docs.py`), served on 127.0.0.1 and opened in Debian's headless Chromium: "
 "pages render, the search runs, no internal link or image is broken")
import functools, http.server, os, re, shutil, subprocess, tempfile, threading
from html.parser import HTMLParser
from pathlib import Path
from urllib.error import HTTPError
from urllib.parse import urldefrag, urljoin, urlparse
from urllib.request import urlopen
import pytest
import build_docs # scripts/ is on the path (conftest.py)

SITE = build_docs.SITE
CHROMIUM = shutil.which('chromium') or shutil.which('chromium-browser')
FLAGS = ['--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
         '--disable-background-networking', '--disable-component-update', '--disable-sync']

@pytest.fixture(scope='module')
def url():
    "The site's root URL, served from `_site/` (built first where it is missing; `scripts/test.sh` builds it afresh)"
    if not (SITE/'index.html').exists(): build_docs.build()
    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args): pass
    srv = http.server.ThreadingHTTPServer(('127.0.0.1', 0), functools.partial(Quiet, directory=str(SITE)))
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    yield f'http://127.0.0.1:{srv.server_address[1]}/'
    srv.shutdown()

def chromium(*args) -> str:
    "Run headless Chromium with a fresh profile, its scripts given 10 s of page time; its standard output"
    if CHROMIUM is None: pytest.skip("Debian's chromium is not installed (apt-get install -y chromium chromium-driver)")
    with tempfile.TemporaryDirectory() as profile:
        res = subprocess.run([CHROMIUM, *FLAGS, f'--user-data-dir={profile}', '--virtual-time-budget=10000', *args],
                             capture_output=True, text=True, timeout=180)
    assert res.returncode == 0, res.stderr[-2000:]
    return res.stdout

def screenshot(url:str, name:str) -> Path:
    "A 1400x1000 screenshot of `url` in `_site/_screenshots/`, checked to be more than a blank page"
    from PIL import Image
    out = SITE/'_screenshots'/f'{name}.png'
    out.parent.mkdir(exist_ok=True)
    out.unlink(missing_ok=True)
    chromium('--window-size=1400,1000', f'--screenshot={out}', '--hide-scrollbars', url)
    im = Image.open(out).convert('L')
    assert im.size == (1400, 1000) and len(set(im.getdata())) > 20, f"{out} is blank"
    return out

def test_home_page_renders(url):
    screenshot(url, 'home')
    dom = chromium('--dump-dom', url)
    assert '<h1>fastai_hier' in dom and '<table class="fastprogress">' in dom   # the example's training table
    nav = re.findall(r'class="reference internal" href="(\w+)\.html"', dom[dom.index('sidebar-tree'):])
    # the left navigation lists every page in the notebooks' order
    assert nav == [build_docs.page_name(p) for p in build_docs.sources()[1:]], nav

def test_api_page_renders(url):
    ("HierarchicalLoss's page: its `show_doc` entry, and its math typeset by the vendored MathJax, with no script from "
     "elsewhere")
    screenshot(url + 'hierarchical_loss.html', 'hierarchical_loss')
    dom = chromium('--dump-dom', url + 'hierarchical_loss.html')
    assert re.search(r'<section id="hierarchicalloss">\s*<h3>HierarchicalLoss', dom)
    assert '<mjx-container' in dom         # typeset in the browser
    assert [s for s in re.findall(r'<script[^>]*src="([^"]+)"', dom) if '//' in s] == []   # from the site only

def test_search_finds_coarse_to_fine(url):
    "The search page's script runs the index in the browser, and its first results hold CoarseToFine's page"
    dom = chromium('--dump-dom', url + 'search.html?q=CoarseToFine')
    hits = re.findall(r'<li[^>]*><a href="([\w.]+)\.html[^"]*"', dom[dom.index('id="search-results"'):])
    assert 'coarse_to_fine' in hits[:5], hits[:10]

class _Refs(HTMLParser):
    "The links (`a href`, `link href`), images and scripts of a page, and its element ids"
    def __init__(self):
        super().__init__()
        self.refs, self.ids = [], set()
    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if 'id' in a: self.ids.add(a['id'])
        if tag == 'a' and 'name' in a: self.ids.add(a['name'])
        ref = a.get('href') if tag in ('a', 'link') else a.get('src') if tag in ('img', 'script', 'source') else None
        if ref: self.refs.append((tag, ref))

def test_no_broken_internal_link(url):
    "Every page the site holds, fetched over HTTP: each internal link, image and script resolves, anchors included"
    pages = {url + p.relative_to(SITE).as_posix() for p in SITE.rglob('*.html') if '_static' not in p.parts}
    parsed, broken, todo = {}, [], sorted(pages)
    def fetch(u):
        if u not in parsed:
            try: body = urlopen(u).read()
            except HTTPError as e: parsed[u] = e.code; return parsed[u]
            p = _Refs()
            if u.endswith('.html'): p.feed(body.decode())
            parsed[u] = p
        return parsed[u]
    for page in todo: fetch(page)
    for page in todo:
        for tag,ref in parsed[page].refs:
            target = urljoin(page, ref)
            if urlparse(target).netloc != urlparse(url).netloc: continue
            doc, frag = urldefrag(target)
            doc = doc.split('?')[0]
            res = fetch(doc)
            if isinstance(res, int): broken.append(f'{page[len(url):]}: {tag} {ref} ({res})')
            elif frag and doc.endswith('.html') and frag not in res.ids:
                broken.append(f'{page[len(url):]}: {ref} (no #{frag})')
    assert len(pages) > 30 and broken == [], '\n'.join(broken)
