"""README.md is generated from nbs/index.ipynb (docs/readme.py): the two must agree, section by section."""
import importlib.util, json
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
