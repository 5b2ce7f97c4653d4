"""The documentation site, built as `make docs` builds it and opened in a real headless browser (Debian's chromium,
driven by playwright): every page loads with no console error and no request leaving the site, the API reference
lists every public name of every module, and the notebooks' saved figures are on their pages.

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
