"""README.md is generated from `nbs/index.ipynb` (the site's home page): `python docs/readme.py` (`make readme`).

The rendering is what nbconvert's Markdown exporter does for these cells: markdown cells verbatim, code cells as
```python blocks followed by their text outputs, cells separated by a blank line. Cells flagged `#| hide` are left
out. `python docs/readme.py --from-readme` goes the other way: it rewrites the index notebook from README.md, one
markdown cell per section (a `##` or `###` heading starts a section; cell ids follow the heading, so unchanged
sections keep theirs), for bringing README edits made by hand into the notebook."""
from __future__ import annotations
import json, re, sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
INDEX, README = ROOT/'nbs'/'index.ipynb', ROOT/'README.md'
_HIDE = re.compile(r'^\s*#\|\s*hide\b', re.M)


def _text_outputs(cell:dict) -> str:
    out = []
    for o in cell.get('outputs', []):
        if o.get('output_type') == 'stream' and o.get('name') == 'stdout': out.append(''.join(o['text']))
        elif 'text/markdown' in o.get('data', {}): out.append(''.join(o['data']['text/markdown']))
        elif 'text/plain' in o.get('data', {}): out.append('    ' + ''.join(o['data']['text/plain']).replace('\n', '\n    '))
    return '\n'.join(s.rstrip('\n') for s in out)


def render_markdown(nb:dict) -> str:
    "The Markdown of a notebook: its markdown cells, its code cells fenced, their text outputs after them."
    parts = []
    for c in nb['cells']:
        src = ''.join(c['source']).strip('\n')
        if _HIDE.match(src) or not src: continue
        if c['cell_type'] == 'markdown': parts.append(src)
        elif c['cell_type'] == 'code':
            parts.append(f'```python\n{src}\n```')
            if (o := _text_outputs(c)): parts.append(o)
    return '\n\n'.join(parts) + '\n'


def readme_text(index:Path=INDEX) -> str:
    "README.md's text as generated from the index notebook."
    return render_markdown(json.loads(Path(index).read_text()))


def split_sections(md:str) -> list:
    "Markdown split before every `##`/`###` heading outside code fences: one string per section."
    sections, cur, fence = [], [], None
    for line in md.splitlines(keepends=True):
        m = re.match(r'^(```+|~~~+)', line)
        if m: fence = None if fence and line.startswith(fence) else (fence or m.group(1))
        if not fence and re.match(r'^#{2,3} ', line) and cur: sections.append(''.join(cur)); cur = []
        cur.append(line)
    if cur: sections.append(''.join(cur))
    return [s.strip('\n') for s in sections if s.strip()]


def _cell_id(section:str, seen:set) -> str:
    head = section.splitlines()[0]
    base = re.sub(r'[^a-z0-9]+', '-', head.lstrip('#').strip().lower()).strip('-')[:60] or 'intro'
    cid, i = base if head.startswith('##') else 'intro', 2
    while cid in seen: cid, i = f'{base}-{i}', i + 1
    seen.add(cid); return cid


def index_from_readme(md:str) -> dict:
    "An index notebook holding `md`, one markdown cell per section."
    seen = set()
    cells = [{'cell_type': 'markdown', 'id': _cell_id(s, seen), 'metadata': {},
              'source': (s + '\n').splitlines(keepends=True)} for s in split_sections(md)]
    for c in cells: c['source'][-1] = c['source'][-1].rstrip('\n')
    return {'cells': cells, 'metadata': {'kernelspec': {'display_name': 'python3', 'language': 'python', 'name': 'python3'}},
            'nbformat': 4, 'nbformat_minor': 5}


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    if argv == ['--from-readme']:
        INDEX.write_text(json.dumps(index_from_readme(README.read_text()), indent=1, ensure_ascii=False) + '\n')
        print(f'wrote {INDEX.relative_to(ROOT)} from README.md')
    elif argv in ([], ['--check']):
        text = readme_text()
        if argv == ['--check']:
            if README.read_text() != text: sys.exit('README.md differs from nbs/index.ipynb: run `make readme`')
        else: README.write_text(text); print(f'wrote README.md from {INDEX.relative_to(ROOT)}')
    else: sys.exit('usage: python docs/readme.py [--check | --from-readme]')


if __name__ == '__main__': main()
