"""The documentation site, built as `make docs` builds it and opened in a real headless browser (Debian's chromium,
driven by playwright): every page loads with no console error and no request leaving the site, the API reference
lists every public name of every module, and the notebooks' saved figures are on their pages. The notebook pages show
what an exported cell defines (signature, docstring, documented arguments, a link to the source), never the cell's
source; every link in README.md and every link between the site's pages resolves, anchors included.

Skipped with a message when chromium (or playwright) is missing; `.ci/run` installs chromium. Two screenshots of
rendered pages are written to `_proc/screenshots/` (or `$MEDRECIPES_SCREENSHOTS`)."""
import ast, json, os, re, shutil, subprocess, sys
from pathlib import Path
import pytest

ROOT = Path(__file__).resolve().parents[1]
import importlib.util
_spec = importlib.util.spec_from_file_location('medrecipes_docs_build', ROOT/'docs'/'build.py')
docs_build = importlib.util.module_from_spec(_spec); _spec.loader.exec_module(docs_build)   # not `build`: a PyPI package has that name

CHROMIUM = next((p for p in (os.environ.get('CHROMIUM'), '/usr/bin/chromium', shutil.which('chromium'),
                             shutil.which('chromium-browser')) if p and Path(p).exists()), None)
SHOTS = Path(os.environ.get('MEDRECIPES_SCREENSHOTS', ROOT/'_proc'/'screenshots'))


def module_all() -> dict:
    "`{module: __all__}` of every public module, read from the sources (not imported)."
    res = {}
    for p in sorted((ROOT/'medrecipes').rglob('*.py')):
        parts = p.relative_to(ROOT).with_suffix('').parts
        if any(s.startswith('_') for s in parts[1:-1]) or (parts[-1].startswith('_') and parts[-1] != '__init__'): continue
        name = '.'.join(parts[:-1] if parts[-1] == '__init__' else parts)
        for node in ast.parse(p.read_text()).body:
            if isinstance(node, ast.Assign) and any(getattr(t, 'id', '') == '__all__' for t in node.targets):
                res[name] = ast.literal_eval(node.value)
    return res


@pytest.fixture(scope='session')
def site(tmp_path_factory, worker_id='master'):
    """The site, built once per test session (shared by pytest-xdist workers through a lock) in a fresh folder, with
    the same script as `make docs`."""
    from filelock import FileLock
    root = tmp_path_factory.getbasetemp().parent if os.environ.get('PYTEST_XDIST_WORKER') else tmp_path_factory.getbasetemp()
    out = root/'docs-site'
    with FileLock(str(root/'docs-site.lock')):
        if not (out/'index.html').exists():
            env = {**os.environ, 'PYTHONPATH': str(ROOT)}
            r = subprocess.run([sys.executable, str(ROOT/'docs'/'build.py'), str(out)], cwd=ROOT, env=env,
                               capture_output=True, text=True, timeout=600)
            assert r.returncode == 0, f'docs build failed:\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}'
    return out


def test_site_has_a_page_per_notebook_and_module(site):
    for nb in docs_build.notebooks():
        assert (site/f'{docs_build.page_name(nb)}.html').exists(), f'no page for {nb.name}'
    for name in docs_build.guide_pages(): assert (site/f'{name}.html').exists(), f'no page for the guide {name}'
    assert (site/'benchmarks.html').exists(), 'benchmarks/README.md is not rendered as a page'
    for mod in module_all(): assert (site/'api'/f'{mod}.html').exists(), f'no API page for {mod}'


@pytest.fixture(scope='session')
def browser():
    if CHROMIUM is None: pytest.skip('chromium is not installed (apt-get install chromium): the browser test of the docs site is skipped')
    try: from playwright.sync_api import sync_playwright
    except ImportError: pytest.skip('playwright is not installed (pip install -r requirements-dev.txt): the browser test is skipped')
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=['--no-sandbox', '--disable-gpu'])
        yield b
        b.close()


def _figures_saved(nb:Path) -> int:
    "How many image outputs a notebook's shown cells hold."
    cells = docs_build.process_notebook(json.loads(nb.read_text()))['cells']
    return sum(any(k.startswith('image/') for k in o.get('data', {})) for c in cells for o in c.get('outputs', []))


def test_every_page_renders_in_chromium(site, browser):
    page = browser.new_page(viewport={'width': 1280, 'height': 900})
    problems, current = [], ['']
    page.on('console', lambda m: m.type == 'error' and problems.append(f'{current[0]}: console error: {m.text}'))
    page.on('pageerror', lambda e: problems.append(f'{current[0]}: page error: {e}'))
    def route(r):   # the site is self-contained: anything fetched from outside it is an error
        if r.request.url.startswith('file://'): return r.continue_()
        problems.append(f'{current[0]}: fetches {r.request.url}'); r.abort()
    page.route('**/*', route)
    pages = sorted(p for p in site.rglob('*.html') if '_modules' not in p.parts)
    assert len(pages) > 20, f'only {len(pages)} pages in {site}'
    for html in pages:
        current[0] = str(html.relative_to(site))
        resp = page.goto(html.as_uri(), wait_until='load')
        assert resp is None or resp.ok, f'{current[0]} did not load'
        assert page.title(), f'{current[0]} has no title'
    assert not problems, '\n'.join(problems)

    # the notebooks' saved figures are on their pages, and load (a broken image has no natural width)
    checked = 0
    for nb in docs_build.notebooks():
        want = _figures_saved(nb)
        if not want: continue
        page.goto((site/f'{docs_build.page_name(nb)}.html').as_uri(), wait_until='load')
        widths = page.eval_on_selector_all('article img', 'imgs => imgs.map(i => i.complete ? i.naturalWidth : 0)')
        loaded = sum(w > 0 for w in widths)
        assert loaded >= want, f'{nb.name}: {want} figures saved, {loaded} shown on its page ({widths})'
        checked += 1
    assert checked, 'no notebook holds a saved figure'

    # two screenshots of rendered pages
    SHOTS.mkdir(parents=True, exist_ok=True)
    for name, path, figure in (('home', 'index.html', False), ('xray', 'xray.html', True)):
        page.goto((site/path).as_uri(), wait_until='load')
        if figure: page.locator('article img').first.scroll_into_view_if_needed()   # a notebook's saved output in view
        page.screenshot(path=str(SHOTS/f'{name}.png'), full_page=False)
        assert (SHOTS/f'{name}.png').stat().st_size > 10_000
    page.close()


def test_api_reference_lists_every_public_name(site, browser):
    page = browser.new_page()
    missing = []
    mods = module_all()
    assert {'medrecipes.core', 'medrecipes.xray', 'medrecipes.kernels'} <= set(mods)
    for mod, names in mods.items():
        page.goto((site/'api'/f'{mod}.html').as_uri(), wait_until='load')
        listed = set(page.eval_on_selector_all('table.api-summary tr td:first-child', 'tds => tds.map(t => t.innerText.trim())'))
        ids = set(page.eval_on_selector_all('dt[id]', 'dts => dts.map(d => d.id)'))
        for n in names:
            if n not in listed: missing.append(f'{mod}.{n} (not in the summary table)')
            elif f'{mod}.{n}' not in ids and not page.query_selector(f'a[href$="{mod}.{n}.html"]') and \
                    page.locator('dt', has_text=re.compile(rf'\b{re.escape(n)}\b')).count() == 0:
                missing.append(f'{mod}.{n} (no entry)')
    page.close()
    assert not missing, 'the API reference lacks:\n' + '\n'.join(missing)


def _export_cells(nb:Path) -> list:
    "The sources of a notebook's `#| export` / `#| exports` code cells, directive lines dropped."
    out = []
    for c in json.loads(nb.read_text())['cells']:
        names, src = docs_build._directives(''.join(c['source']))
        if c['cell_type'] == 'code' and set(names) & {'export', 'exports'}: out.append(src)
    return out


def _norm(s:str) -> str: return re.sub(r'\s+', ' ', s).strip()

_IMPORT = re.compile(r'^\s*(import \w|from \S+ import )')


def test_notebook_pages_show_how_to_use_the_code_not_its_source(site, browser):
    """An exported cell's source is not on its notebook's page: no code cell of the page holds an export cell's text
    (the recipe pages begin with no import block), `__all__` is not shown, and each public function and class the
    cells define has its entry (a heading, its signature and a source link that resolves). The examples are shown."""
    page = browser.new_page()
    problems, checked_recipes = [], set()
    for nb in docs_build.notebooks():
        exports = _export_cells(nb)
        if not exports: continue
        name = docs_build.page_name(nb)
        page.goto((site/f'{name}.html').as_uri(), wait_until='load')
        cells = page.eval_on_selector_all('article div.cell_input pre', 'ps => ps.map(p => p.innerText)')
        shown_cells = sum(c['cell_type'] == 'code' and 'remove-input' not in c.get('metadata', {}).get('tags', [])
                          for c in docs_build.process_notebook(json.loads(nb.read_text()))['cells'])
        if len(cells) != shown_cells: problems.append(f'{name}: {len(cells)} code cells shown, {shown_cells} examples in the notebook')
        for src in exports:
            body = [l for l in src.splitlines() if l.strip() and not l.lstrip().startswith('#')]
            if not body: continue
            for c in cells:
                if _norm(src) in _norm(c) or (_IMPORT.match(c) and _norm(c) in _norm(src)):
                    problems.append(f'{name}: a code cell shows exported source: {c[:80]!r}')
        text = page.inner_text('article')
        if '__all__' in text: problems.append(f'{name}: `__all__` is on the page')
        headings = set(page.eval_on_selector_all('article h2, article h3, article h4', 'hs => hs.map(h => h.innerText.replace(/[#¶\\s]+$/, "").trim())'))
        for src in exports:
            for n, kind, _ in docs_build._defined(src):
                if kind != 'data' and n not in headings: problems.append(f'{name}: no entry for {n}')
        for href in page.eval_on_selector_all('article a.source-link', 'as => as.map(a => a.getAttribute("href"))'):
            f, _, anchor = href.partition('#')
            target = site/f
            if not target.exists() or f'id="{anchor}"' not in target.read_text():
                problems.append(f'{name}: the source link {href} does not resolve')
        if name in ('xray', 'sar'):
            first = [c for c in cells if _IMPORT.match(c)]
            exported = [_norm(e) for e in exports]
            if any(_norm(c) in exported or any(_norm(c) in e for e in exported) for c in first):
                problems.append(f'{name}: an import block of exported source is shown')
            checked_recipes.add(name)
    page.close()
    assert checked_recipes == {'xray', 'sar'}, f'the recipe pages were not checked: {checked_recipes}'
    assert not problems, '\n'.join(problems)


def test_xray_page_shows_an_argument_table(site, browser):
    "fastai's `show_doc` table: `xray_learner`'s documented arguments with their types, defaults and comments."
    page = browser.new_page()
    page.goto((site/'xray.html').as_uri(), wait_until='load')
    rows = page.eval_on_selector_all('article table tr', 'trs => trs.map(t => Array.from(t.cells).map(c => c.innerText.trim()))')
    page.close()
    arch = [r for r in rows if r and r[0] == 'arch']
    assert arch and arch[0][1:3] == ['str', "'efficientnet_b0'"] and 'timm' in arch[0][3], f'no argument table for xray_learner: {arch}'


def _resolves(site:Path, page:Path, href:str) -> str|None:
    "None when a relative link of `page` resolves on the site (the file, and the element its anchor names), else why not."
    f, _, anchor = href.partition('#')
    target = (page.parent/f).resolve() if f else page
    if not target.is_file(): return f'{href}: no file {target}'
    if anchor and not re.search(rf'\bid="{re.escape(anchor)}"', target.read_text()): return f'{href}: no element #{anchor} in {target.name}'
    return None


def _article_links(html:Path) -> list:
    h = html.read_text()
    art = h[h.find('<article'):h.find('</article>')]
    return [l.replace('&amp;', '&') for l in re.findall(r'<a [^>]*href="([^"]+)"', art)]


def test_every_readme_link_resolves_on_the_site(site, browser):
    """Each link of README.md leads, on the home page, to the page it names (a guide page, the benchmarks page, a
    notebook's page, an anchor of the home page), and the page and its anchor exist; so do the links of every other
    notebook and guide page."""
    readme = (ROOT/'README.md').read_text()
    images = re.findall(r'!\[[^\]]*\]\(([^)\s]+)\)', readme)
    links = [l for l in re.findall(r'\]\(([^)\s]+)\)', readme) if l not in images]
    rel = [l for l in links if not re.match(r'^[a-zA-Z][\w+.-]*:', l)]
    assert rel, 'README.md has no relative link'
    index = site/'index.html'
    hrefs = _article_links(index)
    problems = []
    h = index.read_text(); srcs = re.findall(r'<img [^>]*src="([^"]+)"', h[h.find('<article'):h.find('</article>')])
    for im in images:   # every README picture is shown on the home page, from a file the site holds
        found = [s for s in srcs if s.endswith(Path(im).name)]
        if not found: problems.append(f'README image {im}: not shown on the home page ({srcs})')
        elif not (index.parent/found[0]).resolve().is_file(): problems.append(f'README image {im}: {found[0]} is no file of the site')
    for l in rel:
        path, _, anchor = l.partition('#')
        staged = docs_build.site_file(ROOT/path) if path else 'index.ipynb'
        if staged is None: problems.append(f'README link {l}: {path} is no page of the site'); continue
        want = Path(staged).with_suffix('.html').name
        want = (want if want != 'index.html' or not anchor else '') + (f'#{anchor}' if anchor else '')
        if want not in hrefs: problems.append(f'README link {l}: the home page has no link to {want} ({hrefs})')
        elif (why := _resolves(site, index, want)): problems.append(f'README link {l}: {why}')
    # in a browser too: following one README link lands on the heading it names
    page = browser.new_page()
    page.goto(index.as_uri() + '#what-the-demo-reaches', wait_until='load')
    assert page.evaluate("document.getElementById('what-the-demo-reaches') !== null"), 'the home page lacks its README sections'
    page.close()
    pages = [site/f'{docs_build.page_name(nb)}.html' for nb in docs_build.notebooks()] + \
            [site/f'{n}.html' for n in docs_build.guide_pages()]
    for html in pages:
        for href in _article_links(html):
            if re.match(r'^[a-zA-Z][\w+.-]*:', href): continue
            if (why := _resolves(site, html, href)): problems.append(f'{html.name}: {why}')
    assert not problems, '\n'.join(problems)


def test_an_export_cell_is_shown_as_signature_docstring_and_arguments(tmp_path):
    "What `docs/build.py` puts in place of an export cell: fastai's `show_doc` entries, not the source."
    import importlib.util
    src = ('import os\n__all__ = ["scale", "Box", "LIMIT"]\nLIMIT = 3\n'
           'def scale(x:float, # the value\n          k:int=2, # the factor\n         ) -> float:\n'
           '    "Multiply `x` by `k`."\n    secret = x * k\n    return secret\n'
           'class Box:\n    "A box."\n    def __init__(self, w:int=1, # width\n                ): self.w = w\n'
           '    def area(self) -> int:\n        "The area."\n        return self.w ** 2\n    def _hidden(self): "no"\n')
    f = tmp_path/'medrecipes_docs_probe.py'; f.write_text(src)
    spec = importlib.util.spec_from_file_location('medrecipes_docs_probe', f)
    mod = importlib.util.module_from_spec(spec); spec.loader.exec_module(mod)
    md = docs_build.export_cell_markdown(src, mod)
    assert '### scale' in md and '`scale(x:float, k:int=2)->float`' in md and 'Multiply `x` by `k`.' in md
    assert '| x | `float` |  | the value |' in md and "| k | `int` | `2` | the factor |" in md
    assert '### Box' in md and '| w | `int` | `1` | width |' in md and '#### Box.area' in md and 'The area.' in md
    assert '`LIMIT`' in md and '`3`' in md
    assert 'secret' not in md and 'import os' not in md and '__all__' not in md and '_hidden' not in md
    # a module that does not hold the names (not exported yet): signature and docstring from the source alone
    md2 = docs_build.export_cell_markdown(src, None)
    assert '### scale' in md2 and 'Multiply `x` by `k`.' in md2 and 'secret' not in md2
    assert docs_build.export_cell_markdown('from pathlib import Path\nimport re\n', mod) == ''


def test_repository_links_become_site_links(tmp_path):
    pages = docs_build.PAGES_DIR
    out = docs_build.rewrite_links('[a](../../nbs/20_sar.ipynb#x) [b](configs.md) [c](../../benchmarks/README.md#ssim) '
                                   '[d](../../README.md#install) [e](https://docs.fast.ai) [f](#here)', [pages], tmp_path, True, 't')
    assert out == '[a](sar.ipynb#x) [b](configs.md) [c](benchmarks.md#ssim) [d](index.ipynb#install) [e](https://docs.fast.ai) [f](#here)'
    img = docs_build.rewrite_links('![x](../../benchmarks/results/sar_rd.png)', [pages], tmp_path, True, 't')
    assert img == '![x](benchmarks/results/sar_rd.png)' and (tmp_path/'benchmarks'/'results'/'sar_rd.png').is_file()
    with pytest.raises(FileNotFoundError, match='nothere.md'): docs_build.rewrite_links('[x](nothere.md)', [pages], tmp_path, True, 't')
    with pytest.raises(ValueError, match='no page of the site'): docs_build.rewrite_links('[x](../../Makefile)', [pages], tmp_path, True, 't')
    assert docs_build.rewrite_links('[x](../../Makefile)', [pages], tmp_path, False, 't') == '[x](../../Makefile)'   # notebooks: lenient
    assert docs_build.rewrite_links('```\n[x](nothere.md)\n```\n', [pages], tmp_path, True, 't') == '```\n[x](nothere.md)\n```\n'


def test_guide_pages_show_their_figures(site, browser):
    "The images a guide page shows (the SAR results' plots, the demo's Grad-CAM overlay) are on the page, and load."
    page, checked = browser.new_page(), 0
    for name, src in docs_build.guide_pages().items():
        want = len(re.findall(r'!\[[^\]]*\]\(', src.read_text()))
        if not want: continue
        page.goto((site/f'{name}.html').as_uri(), wait_until='load')
        widths = page.eval_on_selector_all('article img', 'imgs => imgs.map(i => i.complete ? i.naturalWidth : 0)')
        assert sum(w > 0 for w in widths) >= want, f'{name}: {want} images in its source, {widths} loaded on its page'
        checked += 1
    page.close()
    assert checked >= 2, 'no guide page shows a figure'
