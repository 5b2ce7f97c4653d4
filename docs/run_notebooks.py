"""Run notebooks and save their outputs (the site shows them as saved; `make docs` executes nothing):
`python docs/run_notebooks.py nbs/04_kernels.ssim.ipynb ...` (`make docs-outputs NBS="..."`).

Every cell runs, including those flagged `#| slow` that `nbdev-test` skips, except cells flagged `#| cuda` (on a
CPU machine) or `#| eval: false`, in the notebook's folder, with this
checkout first on the path and matplotlib's inline backend; then only the outputs are written back into the notebook
(the file's own key order and formatting kept, nbdev's cleaning applied, warnings on stderr and finished progress bars left out), so a re-run gives a small diff. A cell that fails stops the run and leaves the notebook unchanged."""
import json, os, re, sys, time
from pathlib import Path
import nbformat
from nbclient import NotebookClient

ROOT = Path(__file__).resolve().parents[1]


def _shown(o:dict) -> bool:
    "Is an output worth keeping? Not warnings on stderr, not fastprogress's finished bars (a style block, no table)."
    if o.get('name') == 'stderr': return False
    data = o.get('data', {})
    if 'text/html' not in data or set(data) - {'text/html', 'text/plain'}: return True
    return bool(re.sub(r'(?s)<style>.*?</style>', '', ''.join(data['text/html'])).strip())


def keep_outputs(cell:dict) -> list:
    "A code cell's outputs as saved: `_shown` ones only."
    return [o for o in cell.get('outputs', []) if _shown(o)]


def _skipped(src:str) -> bool:
    import torch
    if re.search(r'^\s*#\|\s*eval:\s*false', src, re.M): return True
    return bool(re.search(r'^\s*#\|\s*cuda\b', src, re.M)) and not torch.cuda.is_available()


def run_notebook(path:Path, timeout:int=1800):
    path = Path(path).resolve()
    raw = json.loads(path.read_text())
    nb = nbformat.reads(path.read_text(), as_version=4)
    os.environ['PYTHONPATH'] = os.pathsep.join(filter(None, [str(ROOT), os.environ.get('PYTHONPATH')]))
    os.environ.setdefault('MPLBACKEND', 'module://matplotlib_inline.backend_inline')
    skip = [c for c in nb.cells if c.cell_type == 'code' and _skipped(c.source)]
    for c in skip: c.metadata.setdefault('tags', []).append('skip-execution')
    t = time.time()
    NotebookClient(nb, timeout=timeout, kernel_name='python3', resources={'metadata': {'path': str(path.parent)}}).execute()
    from nbdev.clean import clean_nb
    for rc, c in zip(raw['cells'], nb.cells):
        assert rc.get('id') == c.get('id'), f'{path.name}: cells changed while running'
        if c.cell_type == 'code': rc['outputs'] = keep_outputs(json.loads(json.dumps(c))); rc['execution_count'] = None
    clean_nb(raw)
    path.write_text(json.dumps(raw, indent=1, ensure_ascii=False) + '\n')
    print(f'{path.relative_to(ROOT)}: ran in {time.time() - t:.0f} s')


if __name__ == '__main__':
    for p in sys.argv[1:] or sys.exit('usage: python docs/run_notebooks.py NOTEBOOK...'): run_notebook(p)
