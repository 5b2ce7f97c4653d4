"""The classifiers as a fastai user drives them in a notebook: show_batch, freeze, fit_one_cycle, show_results,
ClassificationInterpretation, then export() and load_learner + predict in a fresh Python process."""
import json, os, subprocess, sys, textwrap, warnings
from pathlib import Path
import matplotlib
matplotlib.use('Agg')
import matplotlib.pyplot as plt
import numpy as np, pytest, torch
import torch.nn as nn
from fastai.interpret import ClassificationInterpretation
from medrecipes.synth import make_digits
from medrecipes.xray import XrayDataLoaders, xray_learner
from medrecipes.folder import FolderDataLoaders, folder_learner

ROOT = Path(__file__).resolve().parents[1]

# a fresh interpreter: nothing of this test module (or __main__) is importable there
CHILD = textwrap.dedent(r'''
    import json, sys, warnings
    from pathlib import Path
    import pandas as pd
    warnings.simplefilter('ignore')
    from fastai.learner import load_learner
    learn = load_learner(sys.argv[1])
    out = {}
    for i, item in enumerate(json.loads(sys.argv[2])):
        kind, value = item
        x = Path(value) if kind == 'path' else pd.Series(value) if kind == 'row' else value
        try:
            dec, idx, probs = learn.predict(x)
            out[str(i)] = dict(label=str(dec), idx=int(idx), probs=[float(p) for p in probs])
        except Exception as e: out[str(i)] = dict(error=f'{type(e).__name__}: {e}')
    print(json.dumps(out))
''')


def _predict_in_fresh_process(tmp_path, pkl, items):
    script = tmp_path/'child.py'; script.write_text(CHILD)
    env = {**os.environ, 'PYTHONPATH': str(ROOT), 'OMP_NUM_THREADS': '1'}
    r = subprocess.run([sys.executable, str(script), str(pkl), json.dumps(items)], capture_output=True, text=True, env=env,
                       cwd=tmp_path, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    return json.loads(r.stdout.strip().splitlines()[-1])


def _notebook_session(learn, dls):
    "What a notebook does: look at a batch, freeze, train the head, look at results and the confusion matrix."
    dls.show_batch(max_n=4); plt.close('all')
    n_all = sum(p.numel() for p in learn.model.parameters())
    learn.freeze()
    head = sum(p.numel() for p in learn.model[1].parameters())
    bn = sum(p.numel() for m in learn.model[0].modules() if isinstance(m, nn.BatchNorm2d) for p in m.parameters())
    assert sum(p.numel() for p in learn.model.parameters() if p.requires_grad) == head + bn < n_all / 5
    with warnings.catch_warnings(), learn.no_bar():
        warnings.simplefilter('ignore')
        learn.fit_one_cycle(1, 1e-3)
    assert len(learn.recorder.values) == 1
    learn.show_results(max_n=4); plt.close('all')
    interp = ClassificationInterpretation.from_learner(learn)
    interp.plot_confusion_matrix()
    assert plt.gcf().axes and interp.confusion_matrix().sum() == len(dls.valid_ds)
    plt.close('all')
    learn.unfreeze()
    return learn


def test_folder_classifier_as_a_notebook_user(tmp_path):
    data = make_digits(tmp_path/'digits', splits=(6, 3, 2), size=28, seed=0, classes=(0, 1, 7))
    dls = FolderDataLoaders.from_folder(data, size=28, bs=6, seed=0, device='cpu')
    learn = folder_learner(dls, arch='resnet10t', out_dir=tmp_path/'run', precision='fp32', tracking={'tensorboard': False})
    _notebook_session(learn, dls)
    learn.export()
    pkl = tmp_path/'run'/'export.pkl'
    files = dls.files['test']
    got = _predict_in_fresh_process(tmp_path, pkl, [['path', str(f)] for f in files] + [['str', str(files[0])]])
    probs, _ = learn.get_preds(dl=dls.test_dl())
    for i, f in enumerate(files):
        r = got[str(i)]
        assert 'error' not in r, r
        assert r['label'] == dls.vocab[r['idx']] and np.allclose(r['probs'], probs[i].numpy(), atol=1e-5)
    assert got[str(len(files))]['probs'] == got['0']['probs']


def test_xray_classifier_as_a_notebook_user(btxrd, tmp_path):
    dls = XrayDataLoaders.from_btxrd(btxrd, split='center', size=32, bs=16, num_workers=0, seed=0)
    learn = xray_learner(dls, arch='resnet10t', pretrained=False, out_dir=tmp_path/'run', patience=None)
    _notebook_session(learn, dls)
    learn.export()
    pkl = learn.run_dir/'export.pkl'
    test = dls.test_df()
    rows = test.iloc[:3]
    items = [['row', r] for r in rows.to_dict('records')] + [['path', str(dls.img_dir/i)] for i in rows.image_id]
    # a metadata row (what the DataBlock reads), a Path or a str to an image file
    got = _predict_in_fresh_process(tmp_path, pkl, items + [['str', items[3][1]]])
    probs, _ = learn.get_preds(dl=dls.test_dl(rows, with_labels=True))
    for i in range(6):
        r = got[str(i)]
        assert 'error' not in r, r
        assert r['label'] == dls.vocab[r['idx']] and np.allclose(r['probs'], probs[i % 3].numpy(), atol=1e-5)
    assert got['6']['probs'] == got['3']['probs']
