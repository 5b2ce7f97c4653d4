"Exact resume: a run killed with SIGKILL in the middle of an epoch and resumed ends bitwise like a run never stopped."
import json, os, signal, subprocess, sys, textwrap
from pathlib import Path
import pandas as pd, pytest, torch
from medrecipes.core import load_checkpoint

CHILD = textwrap.dedent(r'''
    import os, sys, json, signal, random, warnings
    from pathlib import Path
    import numpy as np, torch, torch.nn as nn
    torch.set_num_threads(1)
    from fastai.vision.all import Callback, DataLoaders, TfmdDL, accuracy, EarlyStoppingCallback, ReduceLROnPlateau
    from medrecipes.core import set_seed
    from medrecipes.resume import ResumableLearner, ResumeCheckpoint
    recipe, out, mode = sys.argv[1], Path(sys.argv[2]), sys.argv[3]   # mode: full | kill:<epoch>:<batch> | resume
    warnings.simplefilter('ignore')

    class Kill(Callback):
        "Die without any clean-up, as a killed job does."
        order = 0
        def __init__(self, epoch, batch): self.at = (epoch, batch)
        def after_batch(self):
            if self.training and (self.epoch, self.iter) == self.at: os.kill(os.getpid(), signal.SIGKILL)

    cbs = [Kill(*map(int, mode.split(':')[1:]))] if mode.startswith('kill') else []
    if recipe == 'generic':
        set_seed(0)
        x = torch.randn(120, 6); y = (x[:, 0] > 0.3).long() + (x[:, 1] > 1).long()
        ds = list(zip(x, y))
        dls = DataLoaders(TfmdDL(ds[:96], bs=8, shuffle=True), TfmdDL(ds[96:], bs=16))
        model = nn.Sequential(nn.Linear(6, 32), nn.BatchNorm1d(32), nn.ReLU(), nn.Dropout(0.3), nn.Linear(32, 3))
        learn = ResumableLearner(dls, model, loss_func=nn.CrossEntropyLoss(), metrics=accuracy,
                                 cbs=[ResumeCheckpoint(out/'latest.pt'), EarlyStoppingCallback(patience=4), ReduceLROnPlateau(patience=1)])
        if mode == 'resume': learn.resume(out/'latest.pt')
        with learn.no_bar(), learn.no_logging(): learn.fit_one_cycle(5, 1e-2, cbs=cbs)
    else:  # the X-ray recipe on a generated BTXRD sample
        from medrecipes.xray import XrayDataLoaders, xray_learner
        set_seed(1)
        dls = XrayDataLoaders.from_btxrd(sys.argv[4], split='stratified', size=48, bs=8, num_workers=0, seed=1, device='cpu')
        learn = xray_learner(dls, arch='resnet10t', pretrained=False, out_dir=out, patience=None)
        if mode == 'resume': learn.resume(True)
        with learn.no_bar(), learn.no_logging(): learn.fit_one_cycle(3, 2e-3, cbs=cbs)
    torch.save({k: v for k, v in learn.model.state_dict().items()}, out/'weights.pt')
    (out/'history.json').write_text(json.dumps([list(map(float, v)) for v in learn.recorder.values]))
''')


def _run(tmp_path, *args):
    script = tmp_path/'child.py'
    if not script.exists(): script.write_text(CHILD)
    env = {**os.environ, 'OMP_NUM_THREADS': '1', 'PYTHONHASHSEED': '0'}
    return subprocess.run([sys.executable, str(script), *map(str, args)], capture_output=True, text=True, env=env, timeout=600)


def _same_run(a:Path, b:Path):
    assert json.loads((a/'history.json').read_text()) == json.loads((b/'history.json').read_text())
    wa, wb = torch.load(a/'weights.pt', weights_only=True), torch.load(b/'weights.pt', weights_only=True)
    assert wa.keys() == wb.keys()
    for k in wa: assert torch.equal(wa[k], wb[k]), f'{k} differs after resume'


def _kill_and_resume(tmp_path, recipe, kill, *extra):
    full, cut = tmp_path/'full', tmp_path/'cut'
    r = _run(tmp_path, recipe, full, 'full', *extra); assert r.returncode == 0, r.stderr[-3000:]
    r = _run(tmp_path, recipe, cut, f'kill:{kill}', *extra)
    assert r.returncode == -signal.SIGKILL, (r.returncode, r.stderr[-3000:])
    assert not (cut/'history.json').exists()
    return full, cut


def test_generic_learner_killed_mid_epoch_resumes_exactly(tmp_path):
    full, cut = _kill_and_resume(tmp_path, 'generic', '2:5')
    ck = load_checkpoint(cut/'latest.pt')
    assert ck['loop']['epoch'] == 1 and not ck['loop']['finished']   # epochs 0 and 1 done, killed inside epoch 2
    r = _run(tmp_path, 'generic', cut, 'resume'); assert r.returncode == 0, r.stderr[-3000:]
    _same_run(full, cut)
    assert load_checkpoint(cut/'latest.pt')['loop']['finished']


@pytest.mark.slow
def test_xray_recipe_killed_mid_epoch_resumes_exactly(tmp_path, btxrd):
    full, cut = _kill_and_resume(tmp_path, 'xray', '1:3', btxrd)
    r = _run(tmp_path, 'xray', cut, 'resume', btxrd); assert r.returncode == 0, r.stderr[-3000:]
    _same_run(full, cut)
    # the recipe's own log and checkpoints continue too: the CSV log has every epoch once and equals the full run's
    la = pd.read_csv(full/'stratified'/'training_log.csv'); lb = pd.read_csv(cut/'stratified'/'training_log.csv')
    pd.testing.assert_frame_equal(la, lb)
    assert list(lb.epoch) == [0, 1, 2]
    ck = load_checkpoint(cut/'stratified'/'checkpoints'/'latest.pt')   # after the fit: the final state
    assert ck['loop']['epoch'] == 2 and ck['loop']['finished']


def test_resume_refuses_a_different_schedule_and_missing_files(tmp_path):
    from medrecipes.resume import ResumableLearner, ResumeCheckpoint, resume_path
    from fastai.vision.all import DataLoaders, TfmdDL
    x = torch.randn(32, 3); ds = list(zip(x, (x[:, 0] > 0).long()))
    mk = lambda: ResumableLearner(DataLoaders(TfmdDL(ds[:24], bs=8, shuffle=True), TfmdDL(ds[24:], bs=8)), torch.nn.Linear(3, 2),
                                  loss_func=torch.nn.CrossEntropyLoss(), cbs=ResumeCheckpoint(tmp_path/'latest.pt'))
    learn = mk()
    assert resume_path('last', learn) is None   # nothing to resume yet: start afresh
    with learn.no_bar(), learn.no_logging(): learn.fit(2)
    assert resume_path(True, learn) == tmp_path/'latest.pt'
    with pytest.raises(ValueError, match='fit of 2 epochs, but this fit has 4'):
        l2 = mk().resume(True)
        with l2.no_bar(), l2.no_logging(): l2.fit(4)
    with pytest.raises(FileNotFoundError, match='nope.pt'): resume_path(tmp_path/'nope.pt', learn)
    # a finished run resumes to a no-op with its history intact
    l3 = mk().resume(True)
    with l3.no_bar(), l3.no_logging(): l3.fit(2)
    assert l3.recorder.values == learn.recorder.values
    for a, b in zip(l3.model.parameters(), learn.model.parameters()): assert torch.equal(a, b)
