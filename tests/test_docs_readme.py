"""README.md is generated from nbs/index.ipynb (docs/readme.py): the two must agree, section by section."""
import importlib.util, json, re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location('medrecipes_docs_readme', ROOT/'docs'/'readme.py')
readme = importlib.util.module_from_spec(_spec); _spec.loader.exec_module(readme)


def test_readme_is_generated_from_the_index_notebook():
    got, want = (ROOT/'README.md').read_text(), readme.readme_text()
    if got != want:   # name the first section that differs, so the fix is obvious
        a, b = readme.split_sections(got), readme.split_sections(want)
        diff = next((f'README: {x.splitlines()[0]!r} vs index: {y.splitlines()[0]!r}' for x, y in zip(a, b) if x != y),
                    f'README has {len(a)} sections, the index {len(b)}')
        raise AssertionError(f'README.md and nbs/index.ipynb disagree ({diff}): edit the index notebook and run '
                             '`make readme` (or bring README edits in with `python docs/readme.py --from-readme`)')


def test_index_holds_one_markdown_cell_per_readme_section():
    nb = json.loads(readme.INDEX.read_text())
    sections = readme.split_sections((ROOT/'README.md').read_text())
    assert [c['cell_type'] for c in nb['cells']] == ['markdown'] * len(nb['cells'])
    assert [''.join(c['source']) for c in nb['cells']] == sections


def test_readme_round_trip_and_rendering():
    md = '# t\n\nintro\n\n## A\n\n```bash\n## not a heading\n```\n\n### B\n\ntext\n'
    nb = readme.index_from_readme(md)
    assert [c['id'] for c in nb['cells']] == ['intro', 'a', 'b']
    assert readme.render_markdown(nb) == md
    code = {'cell_type': 'code', 'source': ['x = 1\n', 'print(x)'], 'outputs': [{'output_type': 'stream', 'name': 'stdout', 'text': ['1\n']}]}
    hidden = {'cell_type': 'code', 'source': ['#| hide\n', 'secret()'], 'outputs': []}
    assert readme.render_markdown({'cells': [code, hidden]}) == '```python\nx = 1\nprint(x)\n```\n\n1\n'


README_TEXT = (ROOT/'README.md').read_text()


def test_readme_is_a_quick_start():
    "At most 150 lines, and the two commands exactly as the Makefile defines them and CI runs them."
    n = len(README_TEXT.splitlines())
    assert n <= 150, f'README.md has {n} lines; the quick start is at most 150 (move detail to docs/pages/)'
    bash = '\n'.join(re.findall(r'```bash\n(.*?)```', README_TEXT, re.S))
    commands = [l.split('#')[0].strip() for l in bash.splitlines()]
    assert 'make demo' in commands and 'make test' in commands, 'README.md lost `make demo` / `make test`'
    targets = re.findall(r'^([\w-]+):', (ROOT/'Makefile').read_text(), re.M)
    assert {'demo', 'test', 'install'} <= set(targets), f'the Makefile lacks a target the README names: {targets}'
    assert re.search(r'^make test$', (ROOT/'.ci'/'run').read_text(), re.M), 'CI (.ci/run) no longer runs `make test`'


def test_readme_links_name_files_of_the_repository():
    "Every relative link of the README names a file that exists, and every guide page is linked from it or a page."
    links = re.findall(r'\]\(([^)\s]+)\)', README_TEXT)
    rel = [l for l in links if not re.match(r'^[a-zA-Z][\w+.-]*:', l) and not l.startswith('#')]
    assert len(rel) >= 10, f'README.md links only {len(rel)} repository files: {rel}'
    missing = [l for l in rel if not (ROOT/l.partition('#')[0]).is_file()]
    assert not missing, f'README.md links files that do not exist: {missing}'
    pages = sorted((ROOT/'docs'/'pages').glob('*.md'))
    linked = {(ROOT/l.partition('#')[0]).resolve() for l in rel}
    for p in pages: linked |= {(p.parent/l.partition('#')[0]).resolve() for l in re.findall(r'\]\(([^)\s#]+)[^)]*\)', p.read_text())}
    orphans = [p.name for p in pages if p.resolve() not in linked]
    assert not orphans, f'guide pages no page links to: {orphans}'
