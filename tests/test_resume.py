"Exact resume: a run killed with SIGKILL in the middle of an epoch and resumed ends bitwise like a run never stopped."
import json, os, signal, subprocess, sys, textwrap
from pathlib import Path
import pandas as pd, pytest, torch
from medrecipes.core import load_checkpoint
import _procs as procs

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

    from _procs import kill_callbacks
    cbs = kill_callbacks(mode)   # kill:EPOCH:BATCH[:RANK]: SIGKILL there
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
    env = {**os.environ, 'OMP_NUM_THREADS': '1'}
    return procs.run([script, *args], env=env, timeout=600)   # a real process, forked from the pytest process's zygote


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


# --- the resume contract: what a resume may change, the order of the writes, the loop after an early stop ---------------
import warnings
import torch.nn as nn
from fastai.vision.all import Callback, DataLoaders, TfmdDL, accuracy, EarlyStoppingCallback
from medrecipes.core import set_seed


class Killed(BaseException): "A kill inside the process: nothing after it runs (fastai's after_fit neither)."


def _plain_learner(out, meta=None, cbs=(), lr_data_seed=0):
    from medrecipes.resume import ResumableLearner, ResumeCheckpoint
    set_seed(0)
    g = torch.Generator().manual_seed(lr_data_seed)
    x = torch.randn(120, 6, generator=g); y = (x[:, 0] + 0.5 * x[:, 1] > 0.2).long()
    ds = list(zip(x, y))
    dls = DataLoaders(TfmdDL(ds[:96], bs=16, shuffle=True), TfmdDL(ds[96:], bs=24))
    ck = ResumeCheckpoint(out/'latest.pt', best=out/'best.pt')
    learn = ResumableLearner(dls, nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Linear(16, 2)), loss_func=nn.CrossEntropyLoss(),
                             metrics=accuracy, cbs=[ck, *cbs])
    learn.ckpt_cb = ck
    if meta is not None: learn.checkpoint_meta = meta
    return learn


def _fit(learn, n=3, lr=3e-3, **kw):
    with learn.no_bar(), learn.no_logging(): learn.fit(n, lr, **kw)
    return learn


def _meta(**trainer):
    return {'config': {'data': {'path': 'd', 'num_workers': 0}, 'trainer': {'lr': 3e-3, 'seed': 0, 'max_epochs': 3, 'progress': True, **trainer}},
            'data_fingerprint': 'f00d'}


def test_resume_refuses_a_changed_lr_seed_or_split_before_writing(tmp_path):
    "Issue 12.1: a resume with another lr, seed or data split is refused at resume(), naming the keys; safe keys are logged."
    _fit(_plain_learner(tmp_path, _meta()), n=2)
    before = (tmp_path/'latest.pt').read_bytes()
    for meta, msg in ((_meta(lr=0.5), r"differs in trainer\.lr \(trainer\.lr: checkpoint 0\.003, now 0\.5\)"),
                      (_meta(seed=2), r"differs in trainer\.seed"),
                      ({**_meta(), 'data_fingerprint': 'beef'}, r"data split differs \(data_fingerprint 'f00d', this run 'beef'\)")):
        with pytest.raises(ValueError, match=msg): _plain_learner(tmp_path, meta).resume(tmp_path/'latest.pt')
    assert (tmp_path/'latest.pt').read_bytes() == before
    # progress bars and loader workers may change: warned about, resumed, and recorded in the next checkpoints
    meta = _meta(progress=False); meta['config']['data']['num_workers'] = 2
    with pytest.warns(UserWarning, match=r'data\.num_workers \(0 -> 2\), trainer\.progress \(True -> False\)'):
        learn = _plain_learner(tmp_path, meta).resume(tmp_path/'latest.pt')
    with pytest.raises(ValueError, match='fit of 2 epochs, but this fit has 3'): _fit(learn, n=3)   # the epoch count stays refused
    learn = _plain_learner(tmp_path, meta)
    with warnings.catch_warnings(): warnings.simplefilter('ignore'); learn.resume(tmp_path/'latest.pt')
    _fit(learn, n=2)
    (log,) = load_checkpoint(tmp_path/'latest.pt')['resume_log']
    assert log['changed'] == {'data.num_workers': [0, 2], 'trainer.progress': [True, False]} and log['epoch'] == 1


def _kill_after_first_write_of(monkeypatch, epoch):
    "Make the first checkpoint write of `epoch` the last thing the run does."
    import medrecipes.resume as R
    orig = R.save_checkpoint
    def save(path, **st):
        orig(path, **st)
        if st['loop']['epoch'] == epoch and not st['loop']['finished']: raise Killed(path)
    monkeypatch.setattr(R, 'save_checkpoint', save)


def test_kill_between_the_best_and_latest_writes(tmp_path, monkeypatch):
    "Issue 12.2: killed between the two writes at the best epoch, the resumed run ends with the uninterrupted run's best.pt."
    full = _fit(_plain_learner(tmp_path/'full'))
    vl = [v[1] for v in full.recorder.values]
    assert vl[2] < min(vl[:2]) and full.ckpt_cb.best_epoch == 2   # the premise: epoch 2 is the best
    with monkeypatch.context() as m:
        _kill_after_first_write_of(m, 2)
        with pytest.raises(Killed): _fit(_plain_learner(tmp_path/'cut'))
    resumed = _fit(_plain_learner(tmp_path/'cut').resume(tmp_path/'cut'/'latest.pt'))
    assert resumed.recorder.values == full.recorder.values and resumed.ckpt_cb.best_epoch == full.ckpt_cb.best_epoch == 2
    a, b = load_checkpoint(tmp_path/'full'/'best.pt'), load_checkpoint(tmp_path/'cut'/'best.pt')
    assert a['loop']['epoch'] == b['loop']['epoch'] == b['best_epoch'] == 2 and a['best_value'] == b['best_value']
    for k in a['model_state_dict']: assert torch.equal(a['model_state_dict'][k], b['model_state_dict'][k]), k
    assert a['epoch'] == b['epoch'] == 2


def test_checkpoints_hold_history_epoch_and_scheduler_state(tmp_path):
    "The contract keys: history (one dict per epoch), epoch (last completed), scheduler_state_dict (one-cycle, plateau)."
    from fastai.callback.tracker import ReduceLROnPlateau
    learn = _plain_learner(tmp_path, cbs=[ReduceLROnPlateau(patience=1)])
    with learn.no_bar(), learn.no_logging(): learn.fit_one_cycle(3, 1e-2)
    for name in ('latest.pt', 'best.pt'):
        ck = load_checkpoint(tmp_path/name)
        assert ck['epoch'] == (2 if name == 'latest.pt' else ck['best_epoch'])
        assert [h['epoch'] for h in ck['history']] == list(range(ck['epoch'] + 1))
        assert set(ck['history'][0]) == {'epoch', 'train_loss', 'valid_loss', 'accuracy', 'lr'}
        assert [h['valid_loss'] for h in ck['history']] == [v[1] for v in learn.recorder.values[:ck['epoch'] + 1]]
        s = ck['scheduler_state_dict']
        assert set(s) == {'ParamScheduler', 'ReduceLROnPlateau'} and len(s['ParamScheduler']['samples']['lr']) == 11
    assert s['ParamScheduler']['pct_train'] == pytest.approx(1.0) and s['ReduceLROnPlateau']['patience'] == 1


def test_first_epoch_is_reset_when_a_resumed_fit_stops_early(tmp_path):
    "Issue 12.7: after a resumed fit early-stops, the next fit(n) runs n epochs from 0."
    class Stop(Callback):
        order = 100
        def after_epoch(self):
            if self.epoch == 1: raise Killed()
    class Epochs(Callback):
        def before_fit(self): self.seen = []
        def before_epoch(self): self.seen.append(self.epoch)
    with pytest.raises(Killed): _fit(_plain_learner(tmp_path, cbs=[EarlyStoppingCallback(patience=2), Stop()]), n=6, lr=0.)
    ep = Epochs()
    learn = _plain_learner(tmp_path, cbs=[EarlyStoppingCallback(patience=2), ep]).resume(tmp_path/'latest.pt')
    _fit(learn, n=6, lr=0.)                      # lr 0: no improvement after epoch 0, early stop at epoch 2
    assert ep.seen == [2] and learn.first_epoch == 0
    learn.remove_cbs([c for c in learn.cbs if isinstance(c, EarlyStoppingCallback)])
    _fit(learn, n=6, lr=1e-3)
    assert ep.seen == list(range(6)) and len(learn.recorder.values) == 6


def test_flatten_config_has_one_meaning():
    "`medrecipes.resume.flatten_config` (dotted keys) is `dotted_keys` now; the old name works with a DeprecationWarning naming the new one"
    import warnings
    import medrecipes.resume as R
    from medrecipes.config import flatten_config
    assert R.dotted_keys({'trainer': {'lr': 1, 'x': {}}, 'a': 2}) == {'trainer.lr': 1, 'trainer.x': {}, 'a': 2}
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter('always')
        assert R.flatten_config is R.dotted_keys
    assert any(issubclass(x.category, DeprecationWarning) and 'medrecipes.resume.dotted_keys' in str(x.message) for x in w)
    assert 'flatten_config' not in R.__all__ and flatten_config is not R.dotted_keys
    with pytest.raises(AttributeError, match='no attribute'): R.nothing_here
