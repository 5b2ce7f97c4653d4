"""Every Python block of the README, and of the guide pages the README links to (`docs/pages/*.md`,
`benchmarks/README.md`), runs as a user would run it: in a fresh process, in a folder holding generated data at the
paths the README names. A block that appears in several files runs once.

The README shows real-size settings (224 px, 30 epochs, ImageNet weights). The test shrinks them with the textual
replacements in `SHRINK`; each replacement must still find its text in the blocks (so a README change that the table
no longer covers fails here instead of silently running the full-size block), and nothing else is changed."""
import os, re, subprocess, sys, textwrap
from pathlib import Path
import pytest
import _procs as procs

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT/'README.md').read_text()
# the files whose Python blocks run: the README first, then the guide pages
DOC_FILES = [ROOT/'README.md', *sorted((ROOT/'docs'/'pages').glob('*.md')), ROOT/'benchmarks'/'README.md']

# (text in the README, what the test runs instead): sizes, epochs, and no ImageNet download (no network in CI)
SHRINK = [
    ("size=224, bs=32", "size=32, bs=16"),
    ("xray_learner(dls)", "xray_learner(dls, arch='resnet10t', pretrained=False)"),
    ("learn.fit_one_cycle(30, 1e-3)", "learn.fit_one_cycle(1, 1e-3)"),
    ("patch=256, bs=32", "patch=32, bs=8"),
    ("sar_learner(dls, variant='attention')", "sar_learner(dls, variant='attention', base_channels=8)"),
    ("learn.fit(100, 1e-4)", "learn.fit(1, 1e-4)"),
    ("arch='resnet18', precision='auto'", "arch='resnet10t', pretrained=False, precision='auto'"),
    ("learn.fit_one_cycle(10, 1e-3)", "learn.fit_one_cycle(1, 1e-3)"),
    ("patch=128, bs=16", "patch=32, bs=8"),
    ("rd_lambda=64.)", "rd_lambda=64., base_channels=8)"),
]


def python_blocks(text:str=README) -> list:
    "The ```python blocks of a Markdown text, with the line each starts on."
    return [(text[:m.start()].count('\n') + 1, m.group(1)) for m in re.finditer(r"```python\n(.*?)```", text, re.S)]


def doc_blocks(files=DOC_FILES) -> list:
    "(`file:line`, code) of every distinct Python block of `files`, in order; a repeated block keeps its first place."
    seen, out = set(), []
    for f in files:
        if not f.exists(): continue
        for line, code in python_blocks(f.read_text()):
            if code not in seen: seen.add(code); out.append((f'{f.relative_to(ROOT)}:{line}', code))
    return out


BLOCKS = doc_blocks()


def test_the_readme_shows_one_python_example_per_recipe():
    readme = [code for _, code in python_blocks(README)]
    for mod in ('medrecipes.xray', 'medrecipes.sar', 'medrecipes.folder'):
        assert any(f'from {mod} import' in c for c in readme), f'README.md has no Python example of {mod}'
    assert all(where in dict(BLOCKS) for where in [f'README.md:{l}' for l, _ in python_blocks(README)]), \
        'a README block is missing from the blocks the test runs'


def test_every_shrink_rule_still_matches_the_readme():
    code = '\n'.join(b for _, b in BLOCKS)
    missing = [old for old, _ in SHRINK if old not in code]
    assert not missing, f"the README and guide pages no longer contain {missing}: update SHRINK in tests/test_readme.py"


@pytest.fixture(scope='module')
def data_root(tmp_path_factory):
    "Generated data at the README's paths."
    from medrecipes.synth import make_btxrd, make_sar, make_digits
    root = tmp_path_factory.mktemp('readme')
    make_btxrd(root/'data'/'BTXRD', n=60, seed=0)
    make_sar(root/'data'/'sar', n_train=4, n_valid=1, size=64, seed=0)
    make_digits(root/'data'/'digits_demo', splits=(6, 3, 3), size=32, seed=0)
    return root


def _shrunk(code:str) -> str:
    for old, new in SHRINK: code = code.replace(old, new)
    return code


@pytest.mark.parametrize('line,code', BLOCKS, ids=[w for w, _ in BLOCKS])
def test_readme_python_block_runs(line, code, data_root, tmp_path):
    work = tmp_path/'work'
    import shutil; shutil.copytree(data_root, work)
    script = work/'snippet.py'
    script.write_text("import matplotlib; matplotlib.use('Agg')\n" + _shrunk(code))
    env = {**os.environ, 'MPLBACKEND': 'Agg'}
    r = procs.run([script], env=env, cwd=work, timeout=600)   # `python snippet.py`, forked from the tests' zygote
    assert r.returncode == 0, f"{line} failed:\n{textwrap.indent(_shrunk(code), '  ')}\n--- stderr\n{r.stderr[-4000:]}"
