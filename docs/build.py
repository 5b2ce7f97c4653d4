"""Build the documentation site: `python docs/build.py [OUT]` (default `_docs/`).

The notebooks in `nbs/` are staged into `_proc/` under nbdev's page names (the numeric prefix dropped, so a
renumbering changes no URL: `nbs/00_core.ipynb` -> `core.html`), with nbdev's cell directives turned into what
myst-nb understands: `#| hide` and `#| default_exp` cells are left out, directive lines are dropped from the cells
shown. An `#| export` cell is shown as fastai's `show_doc` shows what it defines, not as its source: for every public
function and class, its signature, its docstring and a table of its documented arguments (the `# comment` after each
parameter, read by `fastcore.docments`), with a link to the highlighted source; examples and their outputs stay as
they are. The saved outputs are rendered as they are (nothing is executed).

The guide pages (`docs/pages/*.md`) and `benchmarks/README.md` (the `benchmarks` page) are staged beside the
notebooks. Links written for the repository (`docs/pages/configs.md`, `nbs/20_sar.ipynb`, `benchmarks/README.md`,
`README.md#install`, images by their path) are turned into links between the site's pages, so README.md, which is
the home page (`nbs/index.ipynb`), reads the same on the site as in the repository. A relative link in README.md or
a guide page that names no page or image of the site is an error. The API reference (`api/*.rst`) is generated from
every public module's `__all__`. Then Sphinx (myst-nb, furo; `docs/conf.py`) writes the HTML site."""
from __future__ import annotations
import ast, importlib, inspect, json, pkgutil, re, shutil, sys, types
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
NBS, PROC = ROOT/'nbs', ROOT/'_proc'
PKG = 'medrecipes'
_DIRECTIVE = re.compile(r'^\s*#\|\s*([\w-]+)(.*)$')
_DOCS_LINE = re.compile(r'^Docs: `_docs/(\S+)\.html`.*API reference: `_docs/api/(\S+)\.html`')
_SKIP = {'hide', 'default_exp', 'exporti', 'hide_input_and_output'}
_EXPORT = {'export', 'exports'}
PAGES_DIR = ROOT/'docs'/'pages'
# the guide pages in the order the site lists them (any other page in docs/pages/ follows, by name), then benchmarks
GUIDE_ORDER = ['xray-recipe', 'sar-recipe', 'folder-recipe', 'demo-results', 'sar-results', 'configs', 'exact-resume',
               'multi-gpu', 'predicting', 'onnx', 'kernels', 'generated-data', 'development']
EXTRA_PAGES = {'benchmarks': ROOT/'benchmarks'/'README.md'}   # page name -> Markdown file outside docs/pages/


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


def _notebook_module(nb:dict) -> str|None:
    "The module a notebook exports to (its `#| default_exp`), as `medrecipes.<name>`; None when it exports nothing."
    for c in nb['cells']:
        if c['cell_type'] != 'code': continue
        names, _ = _directives(''.join(c['source']))
        if names.get('default_exp'): return f"{PKG}.{names['default_exp'].split()[0]}"
    return None


def _md_cell(cid:str, src:str) -> dict:
    return {'cell_type': 'markdown', 'id': cid, 'metadata': {}, 'source': src}


def _esc(text:str) -> str:
    "Text for a Markdown table cell: one line, `|` escaped."
    return re.sub(r'\s+', ' ', str(text)).replace('|', r'\|').strip()


def _anno(a) -> str:
    "An annotation as written (strings as they are), classes and typing forms without their module path."
    if a is inspect.Parameter.empty or a is type(None): return ''
    if isinstance(a, str): return a
    return re.sub(r'\b(?:[A-Za-z_]\w*\.)+(?=[A-Za-z_]\w*)', '', inspect.formatannotation(a))


def _short(v, n:int=60) -> str:
    "A default value as code: functions and classes by name, long values cut."
    r = getattr(v, '__qualname__', None) if inspect.isroutine(v) or inspect.isclass(v) else None
    r = r or repr(v)
    return r if len(r) <= n else r[:n - 1] + '…'


def _signature(obj, name:str, drop_self:bool=False) -> str:
    "`name(a:int=1, *, b=None)->T`, fastai's compact form."
    try: sig = inspect.signature(obj)
    except (TypeError, ValueError): return name
    ps, star = [], False
    prms = list(sig.parameters.values())
    if drop_self and prms and prms[0].name in ('self', 'cls'): prms = prms[1:]
    for prm in prms:
        if prm.kind is prm.KEYWORD_ONLY and not star: ps.append('*'); star = True
        pre = {prm.VAR_POSITIONAL: '*', prm.VAR_KEYWORD: '**'}.get(prm.kind, '')
        if prm.kind is prm.VAR_POSITIONAL: star = True
        a = _anno(prm.annotation)
        ps.append(pre + prm.name + (f':{a}' if a else '') +
                  ('' if prm.default is prm.empty else f'={_short(prm.default, 40)}'))
    ret = _anno(sig.return_annotation)
    return f"{name}({', '.join(ps)})" + (f'->{ret}' if ret else '')


def _args_table(obj) -> str:
    "fastai's table of the documented arguments (`docments`): empty when no argument carries a comment."
    from fastcore.docments import docments
    try: d = docments(obj, full=True)
    except Exception: return ''
    rows = [(k, v) for k, v in d.items() if k not in ('return', 'self', 'cls')]
    if not any(v.get('docment') for _, v in rows): return ''
    out = ['| | **Type** | **Default** | **Details** |', '|---|---|---|---|']
    for k, v in rows:
        a, dflt = _anno(v.get('anno', inspect.Parameter.empty)), v.get('default', inspect.Parameter.empty)
        kind = v.get('kind')
        k = {inspect.Parameter.VAR_POSITIONAL: '*', inspect.Parameter.VAR_KEYWORD: '**'}.get(kind, '') + k
        out.append(f"| {_esc(k)} | {'`' + _esc(a) + '`' if a else ''} | "
                   f"{'' if dflt is inspect.Parameter.empty else '`' + _esc(_short(dflt, 40)) + '`'} | {_esc(v.get('docment') or '')} |")
    ret = d.get('return', {})
    if ret.get('docment'): out.append(f"| **Returns** | {'`' + _esc(_anno(ret.get('anno'))) + '`' if _anno(ret.get('anno')) else ''} | | {_esc(ret['docment'])} |")
    return '\n'.join(out)


def source_link(obj) -> str|None:
    "The site's link to an object's highlighted source (`sphinx.ext.viewcode`'s page of its module, at its anchor)."
    mod, qual = getattr(obj, '__module__', None), getattr(obj, '__qualname__', None)
    if not (mod and qual) or not mod.startswith(PKG + '.') and mod != PKG: return None
    return f"_modules/{mod.replace('.', '/')}.html#{qual}"


def _doc_entry(obj, name:str, level:int=3, link:bool=True) -> str:
    "One function or class as fastai's `show_doc` shows it: heading, signature, docstring, arguments, source link."
    kind = 'class' if inspect.isclass(obj) else 'function'
    own_init = kind == 'class' and '__init__' in vars(obj)
    parts = [f"{'#' * level} {name}", '']
    src = source_link(obj) if link else None
    if kind == 'class' and not own_init:   # the constructor is inherited: name the bases, as the class statement does
        bases = [b.__qualname__ for b in obj.__bases__ if b is not object]
        sig = f"class {name}" + (f"({', '.join(bases)})" if bases else '')
    else: sig = _signature(obj, ('class ' if kind == 'class' else '') + name, drop_self=level > 3)
    parts += [f'> `{sig}`' + (f' <a class="source-link" href="{src}">[source]</a>' if src else ''), '']
    doc = inspect.getdoc(obj) or ''
    if kind == 'class' and doc == inspect.getdoc(object): doc = ''
    if doc: parts += [doc, '']
    if kind == 'function' or own_init:
        if (t := _args_table(obj)): parts += [t, '']
    return '\n'.join(parts).strip('\n')


def _defined(src:str) -> list:
    "(name, kind, ast node) of every public top-level function, class and constant a cell defines."
    try: tree = ast.parse(src)
    except SyntaxError: return []
    out = []
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            if not node.name.startswith('_'): out.append((node.name, 'class' if isinstance(node, ast.ClassDef) else 'function', node))
        elif isinstance(node, (ast.Assign, ast.AnnAssign)):
            for t in (node.targets if isinstance(node, ast.Assign) else [node.target]):
                for n in ast.walk(t):
                    if isinstance(n, ast.Name) and not n.id.startswith('_'): out.append((n.id, 'data', node))
    return out


def _methods(node:ast.ClassDef) -> list:
    "Names of the public methods and properties a class body defines."
    return [n.name for n in node.body if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef)) and not n.name.startswith('_')]


def _ast_entry(name:str, node, level:int=3) -> str:
    "The entry of a name the module does not (yet) hold, from the cell's source alone: signature and docstring."
    if isinstance(node, ast.ClassDef): sig = f'class {name}'
    else: sig = f'{name}({ast.unparse(node.args)})' + (f'->{ast.unparse(node.returns)}' if node.returns else '')
    doc = ast.get_docstring(node) or ''
    return '\n'.join([f"{'#' * level} {name}", '', f'> `{sig}`', ''] + ([inspect.cleandoc(doc)] if doc else [])).strip('\n')


def export_cell_markdown(src:str, module) -> str:
    """What an `#| export` cell shows on the site: `show_doc` entries of the public functions and classes it defines
    (a class with its documented public methods) and one line per public constant; '' when it defines none (imports,
    `__all__`). `module` is the imported module the cell exports to, or None (then the cell's source alone is used)."""
    blocks, consts = [], []
    for name, kind, node in _defined(src):
        obj = getattr(module, name, None) if module is not None else None
        if kind == 'data':
            if name == '__all__' or name in consts: continue
            consts.append(name); continue
        if obj is None or (kind == 'class') != inspect.isclass(obj) or getattr(obj, '__module__', None) != module.__name__:
            blocks.append(_ast_entry(name, node)); continue   # not (yet) in the module, or wrapped (fastai's typedispatch)
        blocks.append(_doc_entry(obj, name))
        if kind == 'class':
            for m in _methods(node):
                attr = inspect.getattr_static(obj, m, None)
                if isinstance(attr, property):
                    if (d := inspect.getdoc(attr)): blocks.append(f'#### {name}.{m}\n\n*property*: {d}')
                    continue
                fn = getattr(obj, m, None)
                if callable(fn) and (inspect.getdoc(fn) or '').strip(): blocks.append(_doc_entry(fn, f'{name}.{m}', level=4, link=False))
    if consts:
        rows = ['| constant | value |', '|---|---|']
        for n in consts:
            v = getattr(module, n, None) if module is not None else None
            rows.append(f"| `{n}` | {'`' + _esc(_short(v, 90)) + '`' if module is not None and hasattr(module, n) else ''} |")
        blocks.append('\n'.join(rows))
    return '\n\n'.join(blocks)


def _import_module(name:str|None):
    if not name: return None
    try: return importlib.import_module(name)
    except Exception as e:   # a notebook whose module does not import (yet): its entries come from the source alone
        print(f'docs: cannot import {name} ({type(e).__name__}: {e}); its export cells are shown from their source', file=sys.stderr)
        return None


def process_notebook(nb:dict, module=False) -> dict:
    """A notebook as the site shows it: hidden cells out, directive lines out, outputs kept; nbdev's `#| echo: false`
    shows only a cell's output, `#| output: false` only its source (myst-nb's `remove-input` / `remove-output` tags).
    An `#| export` / `#| exports` code cell becomes a markdown cell of `show_doc` entries (`export_cell_markdown`):
    its source is not shown. `module`: the module the notebook exports to (default: imported from its
    `#| default_exp`)."""
    if module is False: module = _import_module(_notebook_module(nb))
    cells = []
    for c in nb['cells']:
        names, src = _directives(''.join(c['source']))
        if set(names) & _SKIP or (c['cell_type'] == 'code' and not src and not c.get('outputs')): continue
        if c['cell_type'] == 'code' and set(names) & _EXPORT:
            if (md := export_cell_markdown(src, module)): cells.append(_md_cell(c.get('id', 'export'), md))
            continue
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


_LINK = re.compile(r'(!?)\[((?:[^\[\]]|\[[^\]]*\])*)\]\(([^)\s]+)(\s+"[^"]*")?\)')
_IMAGE_SUFFIXES = {'.png', '.jpg', '.jpeg', '.gif', '.svg', '.webp'}
README = ROOT/'README.md'


def guide_pages() -> dict:
    """`{page name: Markdown file}` of the pages that are not notebooks: `docs/pages/*.md` in `GUIDE_ORDER` (others
    after, by name), then `EXTRA_PAGES`. A page name that a notebook's page also has is an error."""
    found = {p.stem: p for p in PAGES_DIR.glob('*.md')}
    pages = {n: found.pop(n) for n in GUIDE_ORDER if n in found}
    pages.update(dict(sorted(found.items())))
    pages.update({n: f for n, f in EXTRA_PAGES.items() if f.is_file()})
    clash = set(pages) & {page_name(nb) for nb in notebooks()}
    if clash: raise ValueError(f'page names taken by notebooks too: {sorted(clash)}; rename docs/pages/<name>.md')
    return pages


def site_file(f:Path) -> str|None:
    "The staged source file (relative to `_proc/`) of a repository file that is a page of the site, else None."
    f = f.resolve()
    if f == README.resolve(): return 'index.ipynb'
    if f.suffix == '.ipynb' and f.parent == NBS.resolve() and f in {p.resolve() for p in notebooks()}:
        return page_name(f) + '.ipynb'
    return next((f'{n}.md' for n, p in guide_pages().items() if p.resolve() == f), None)


def rewrite_links(md:str, bases:list, proc:Path, strict:bool, where:str) -> str:
    """Markdown with its repository links turned into the site's: a link to README.md, a notebook, a guide page or
    `benchmarks/README.md` (anchor kept) becomes a link to that page's staged file; an image is copied into `proc`
    under its path from the repository root. Relative paths are tried against each of `bases` in turn. Links in code
    fences, URLs and `#anchors` are left alone. An image that is missing is an error, and so, when `strict`, is a
    relative link that names no page of the site."""
    out, fence = [], None
    def sub(m):
        bang, text, target, title = m.group(1), m.group(2), m.group(3), m.group(4) or ''
        if re.match(r'^[a-zA-Z][\w+.-]*:', target) or target.startswith(('#', '/')): return m.group(0)
        path, _, frag = target.partition('#')
        f = next((b/path for b in bases if (b/path).is_file()), None)
        if f is None and path.endswith('.ipynb'):   # a renumbered notebook keeps its page: find it by its page name
            f = next((nb for nb in notebooks() if page_name(nb) == page_name(Path(path))), None)
        is_image = bang or Path(path).suffix.lower() in _IMAGE_SUFFIXES
        if f is None:
            if is_image or strict: raise FileNotFoundError(f'{where}: the link target {target!r} does not exist')
            return m.group(0)
        if is_image:
            rel = f.resolve().relative_to(ROOT)
            dest = proc/rel
            dest.parent.mkdir(parents=True, exist_ok=True)
            if not dest.exists() or dest.read_bytes() != f.read_bytes(): shutil.copyfile(f, dest)
            return f'{bang}[{text}]({rel.as_posix()}{title})'
        staged = site_file(f)
        if staged is None:
            if strict: raise ValueError(f'{where}: the link {target!r} names {f.resolve().relative_to(ROOT)}, which is no page of '
                                        'the site (link a page, or write the path as `code`)')
            return m.group(0)
        return f"[{text}]({staged}{'#' + frag if frag else ''}{title})"
    for line in md.splitlines(keepends=True):
        fm = re.match(r'^\s*(```+|~~~+)', line)
        if fm: fence = None if fence and fm.group(1).startswith(fence) else (fence or fm.group(1))
        out.append(line if fence or fm else _LINK.sub(sub, line))
    return ''.join(out)


def _rewrite_notebook_links(nb:dict, proc:Path, bases:list, strict:bool, where:str) -> dict:
    for c in nb['cells']:
        if c['cell_type'] != 'markdown': continue
        src = c['source'] if isinstance(c['source'], str) else ''.join(c['source'])
        c['source'] = rewrite_links(src, bases, proc, strict, where)
    return nb


def _toctree(caption:str, entries:list) -> str:
    return f'```{{toctree}}\n:hidden:\n:maxdepth: 1\n:caption: {caption}\n\n' + ''.join(e + '\n' for e in entries) + '```\n'


def stage(proc:Path=PROC) -> list:
    "Stage the notebooks, the guide pages and the API pages into `proc`; returns the page names in order."
    pages, staged = [], set()
    guides = guide_pages()
    for nb_path in notebooks():
        nb = process_notebook(json.loads(nb_path.read_text()))
        page = page_name(nb_path)
        if page == 'index':   # README.md's text: its links are relative to the repository root
            nb = _rewrite_notebook_links(nb, proc, [ROOT], True, 'README.md (nbs/index.ipynb)')
            toc = _toctree('Guides', list(guides)) + '\n' + _toctree('Modules', [page_name(p) for p in notebooks()[1:]])
            toc += '\n' + _toctree('Reference', ['api/index'])
            nb['cells'].append({'cell_type': 'markdown', 'id': 'site-toc', 'metadata': {}, 'source': toc})
        else: nb = _rewrite_notebook_links(nb, proc, [NBS, ROOT], False, nb_path.name)
        _write(proc/f'{page}.ipynb', json.dumps(nb, indent=1))
        pages.append(page); staged.add(f'{page}.ipynb')
    for name, src in guides.items():
        text = rewrite_links(src.read_text(), [src.parent], proc, True, str(src.relative_to(ROOT)))
        _write(proc/f'{name}.md', text)
        pages.append(name); staged.add(f'{name}.md')
    mods = public_modules()
    toc = ''.join(f'   {m.__name__}\n' for m in mods)
    _write(proc/'api'/'index.rst', 'API reference\n=============\n\nEvery public name of every module (its `__all__`).\n\n'
           f'.. toctree::\n   :maxdepth: 1\n\n{toc}')
    for m in mods: _write(proc/'api'/f'{m.__name__}.rst', api_page(m)); staged.add(f'api/{m.__name__}.rst')
    for p in list(proc.glob('*.ipynb')) + list(proc.glob('*.md')) + list(proc.glob('api/*.rst')):   # pages gone since
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
