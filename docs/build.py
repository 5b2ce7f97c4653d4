"""Build the documentation site: `python docs/build.py [OUT]` (default `_docs/`).

The notebooks in `nbs/` are staged into `_proc/` under nbdev's page names (the numeric prefix dropped, so a
renumbering changes no URL: `nbs/00_core.ipynb` -> `core.html`), with nbdev's cell directives turned into what
myst-nb understands: `#| hide` and `#| default_exp` cells are left out, directive lines are dropped from the cells
shown. The saved outputs are rendered as they are (nothing is executed). The API reference (`api/*.rst`) is generated
from every public module's `__all__`. Then Sphinx (myst-nb, furo; `docs/conf.py`) writes the HTML site."""
from __future__ import annotations
import importlib, inspect, json, pkgutil, re, sys, types
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
NBS, PROC = ROOT/'nbs', ROOT/'_proc'
PKG = 'medrecipes'
_DIRECTIVE = re.compile(r'^\s*#\|\s*([\w-]+)(.*)$')
_DOCS_LINE = re.compile(r'^Docs: `_docs/(\S+)\.html`.*API reference: `_docs/api/(\S+)\.html`')
_SKIP = {'hide', 'default_exp', 'exporti', 'hide_input_and_output'}


def page_name(nb:Path) -> str:
    "nbdev's page name of a notebook: lower case, numeric prefix (`00_`, `02a_`) dropped (`nbdev.config.nbpath2html`)."
    return re.sub(r'^\d+[a-zA-Z0-9]*_', '', nb.name.lower()).removesuffix('.ipynb')


def notebooks() -> list:
    "The documented notebooks in file order (the dependency order); `index.ipynb` first."
    nbs = sorted(p for p in NBS.glob('*.ipynb') if not p.name.startswith(('_', '.')))
    return sorted(nbs, key=lambda p: p.name != 'index.ipynb')


def _directives(src:str) -> tuple:
    "(`{directive: value}`, source without the directive lines) of a cell."
    names, keep = {}, []
    for line in src.splitlines(keepends=True):
        m = _DIRECTIVE.match(line)
        if m: names[m.group(1).rstrip(':')] = m.group(2).strip(' :').lower()
        else: keep.append(line)
    return names, ''.join(keep).strip('\n')


def _drop_rule(o:dict) -> dict:
    "nbdev's `show_doc` Markdown opens with a `---` rule, which docutils allows only between sections: drop it."
    md = o.get('data', {}).get('text/markdown')
    if md is None: return o
    txt = ''.join(md)
    return {**o, 'data': {**o['data'], 'text/markdown': re.sub(r'^\s*---\s*\n', '', txt)}}


def process_notebook(nb:dict) -> dict:
    """A notebook as the site shows it: hidden cells out, directive lines out, outputs kept; nbdev's `#| echo: false`
    shows only a cell's output, `#| output: false` only its source (myst-nb's `remove-input` / `remove-output` tags)."""
    cells = []
    for c in nb['cells']:
        names, src = _directives(''.join(c['source']))
        if set(names) & _SKIP or (c['cell_type'] == 'code' and not src and not c.get('outputs')): continue
        tags = [t for k, t in (('echo', 'remove-input'), ('output', 'remove-output')) if names.get(k) == 'false']
        md = {**c.get('metadata', {}), 'tags': c.get('metadata', {}).get('tags', []) + tags} if tags else c.get('metadata', {})
        if c['cell_type'] == 'markdown' and (m := _DOCS_LINE.match(src)):   # the module docstring's link to this page
            src = f'API reference: {{doc}}`{m.group(2)} <api/{m.group(2)}>`'
        outs = [_drop_rule(o) for o in c.get('outputs', [])] if c['cell_type'] == 'code' else None
        cells.append({**c, 'source': src, 'metadata': md, **({'outputs': outs} if outs is not None else {})})
    return {**nb, 'cells': cells}


def public_modules() -> list:
    "Every public module of the package (no path component starting with `_`), imported."
    pkg = importlib.import_module(PKG)
    names = [PKG] + [m.name for m in pkgutil.walk_packages(pkg.__path__, PKG + '.')
                     if not any(p.startswith('_') for p in m.name.split('.')[1:])]
    return [importlib.import_module(n) for n in sorted(set(names))]


def public_names(mod) -> list:
    "A module's public names: its `__all__`."
    return list(getattr(mod, '__all__', []))


def _kind(obj) -> str:
    if isinstance(obj, types.ModuleType): return 'module'
    if inspect.isclass(obj): return 'class'
    if callable(obj) and hasattr(obj, '__name__') and hasattr(obj, '__doc__'): return 'function'
    return 'data'


def _summary(obj) -> str:
    "First line of an object's own docstring (not its type's), `*` escaped for reST."
    kind, doc = _kind(obj), inspect.getdoc(obj) if _kind(obj) != 'data' else ''
    if kind == 'class' and doc == inspect.getdoc(object): doc = ''
    line = (doc or '').strip().split('\n\n')[0].replace('\n', ' ')
    return re.sub(r'([*|\\])', r'\\\1', line) or ' '


def _entry(mod, name:str) -> str:
    obj = getattr(mod, name)
    kind = _kind(obj)
    if kind == 'module':
        return (f'.. py:data:: {name}\n   :no-index:\n\n   The module :py:mod:`{obj.__name__}`' +
                (', callable as a function.\n' if callable(obj) else '.\n'))
    if kind == 'class': return f'.. autoclass:: {name}\n   :members:\n   :show-inheritance:\n'
    if kind == 'function': return f'.. autofunction:: {name}\n'
    return f'.. py:data:: {name}\n   :type: {type(obj).__name__}\n'


def api_page(mod) -> str:
    "The reST page of one module: its docstring, a table of `__all__` with summaries, an entry per name."
    name, names = mod.__name__, public_names(mod)
    out = [f'{name}\n{"=" * len(name)}\n', f'.. automodule:: {name}\n   :no-members:\n']
    if names:
        out.append('.. currentmodule:: ' + name + '\n')
        rows = ''.join(f'   * - :py:obj:`{n}`\n     - {_summary(getattr(mod, n))}\n' for n in names)
        out.append(f'.. list-table::\n   :class: api-summary\n   :widths: 30 70\n\n{rows}')
        out += [_entry(mod, n) for n in names]
    return '\n'.join(out)


def _write(path:Path, text:str):
    "Write only when the text changes, so Sphinx rebuilds only what changed."
    path.parent.mkdir(parents=True, exist_ok=True)
    if not path.exists() or path.read_text() != text: path.write_text(text)


_IMG = re.compile(r'!\[[^\]]*\]\(([^)\s]+)\)')

def _stage_images(nb:dict, proc:Path):
    """Copy the files that markdown cells show by a relative path (`![...](benchmarks/results/x.png)`, written relative to
    the repository root as in the README, or to `nbs/`) beside the staged page, where Sphinx looks for them."""
    for c in nb['cells']:
        if c['cell_type'] != 'markdown': continue
        src = c['source'] if isinstance(c['source'], str) else ''.join(c['source'])
        for rel in _IMG.findall(src):
            if ':' in rel or rel.startswith('/'): continue   # a URL or an absolute path
            f = next((b/rel for b in (ROOT, NBS) if (b/rel).is_file()), None)
            if f is None: raise FileNotFoundError(f"an image the notebooks show is missing: {rel}")
            dest = proc/rel
            dest.parent.mkdir(parents=True, exist_ok=True)
            if not dest.exists() or dest.read_bytes() != f.read_bytes(): dest.write_bytes(f.read_bytes())


def stage(proc:Path=PROC) -> list:
    "Stage the notebooks and the API pages into `proc`; returns the page names in order."
    pages, staged = [], set()
    for nb_path in notebooks():
        nb = process_notebook(json.loads(nb_path.read_text()))
        page = page_name(nb_path)
        if page == 'index':
            toc = ['```{toctree}\n:hidden:\n:maxdepth: 1\n\n'] + [page_name(p) + '\n' for p in notebooks()[1:]]
            toc += ['api/index\n```\n']
            nb['cells'].append({'cell_type': 'markdown', 'id': 'site-toc', 'metadata': {}, 'source': ''.join(toc)})
        _write(proc/f'{page}.ipynb', json.dumps(nb, indent=1))
        _stage_images(nb, proc)
        pages.append(page); staged.add(f'{page}.ipynb')
    mods = public_modules()
    toc = ''.join(f'   {m.__name__}\n' for m in mods)
    _write(proc/'api'/'index.rst', 'API reference\n=============\n\nEvery public name of every module (its `__all__`).\n\n'
           f'.. toctree::\n   :maxdepth: 1\n\n{toc}')
    for m in mods: _write(proc/'api'/f'{m.__name__}.rst', api_page(m)); staged.add(f'api/{m.__name__}.rst')
    for p in list(proc.glob('*.ipynb')) + list(proc.glob('api/*.rst')):   # pages of notebooks or modules gone since
        if str(p.relative_to(proc)) not in staged | {'api/index.rst'}: p.unlink()
    return pages


def build(out:Path=ROOT/'_docs', quiet:bool=True) -> int:
    "Stage and run Sphinx into `out`; returns Sphinx's exit status."
    from sphinx.cmd.build import build_main
    if str(ROOT) not in sys.path: sys.path.insert(0, str(ROOT))
    stage()
    args = ['-b', 'html', '-w', str(PROC/'sphinx-warnings.log'), '-c', str(ROOT/'docs'), '-d', str(PROC/'.doctrees'), str(PROC), str(out)]
    return build_main((['-q'] if quiet else []) + args)


if __name__ == '__main__':
    sys.exit(build(Path(sys.argv[1]) if len(sys.argv) > 1 else ROOT/'_docs'))
