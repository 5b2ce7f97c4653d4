"""Data-parallel training (medrecipes.distributed): each recipe run by `torchrun --nproc_per_node 2` on CPU (gloo) against
one process with the same global batch, files written by rank 0 only, and a distributed run killed mid-epoch that resumes.

Tolerances. The X-ray runs train in float64 (model and inputs; the test's `F64` callback): a data-parallel step and a
single-process step then differ only by the order of a few additions, so weights, losses and metrics must agree to 1e-9
(relative). In float32 rounding differences of ~1e-7 are amplified by Adam and by batch norm over 2-4 samples (the last
partial batch), which would hide real differences behind a loose tolerance. The SAR runs stay in float32, because the
fused SSIM kernel (C++) computes in float32: there agreement within 1e-4 (relative, absolute 1e-5) is required.
"""
import json, os, signal, socket, subprocess, sys, textwrap
from pathlib import Path
import numpy as np, pandas as pd, pytest, torch
import _procs as procs

CHILD = textwrap.dedent(r'''
    import os, sys, json, signal, warnings
    from pathlib import Path
    warnings.simplefilter('ignore')
    recipe, out, data, mode, bs = sys.argv[1], Path(sys.argv[2]).resolve(), sys.argv[3], sys.argv[4], int(sys.argv[5])
    RANK = int(os.environ.get('RANK', 0))
    # every file this process creates, writes, renames or removes under the run's folder
    WATCH, writes = str(out), []
    def audit(event, args):
        try:
            if event == 'open':
                path, m, flags = args
                if isinstance(path, int): return
                if not ((isinstance(m, str) and any(c in m for c in 'wax+')) or
                        (isinstance(flags, int) and flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT))): return
            elif event in ('os.rename', 'os.remove', 'os.mkdir', 'os.rmdir', 'os.truncate'): path = args[1] if event == 'os.rename' else args[0]
            else: return
            p = os.path.abspath(os.fsdecode(path))
            if p == WATCH or p.startswith(WATCH + os.sep): writes.append([event, p])
        except Exception: pass
    sys.addaudithook(audit)
    import torch
    from fastai.callback.core import Callback

    class F64(Callback):
        "Model, inputs and losses in float64."
        order = -20
        def before_fit(self): self.learn.model.double()
        def before_epoch(self):
            if hasattr(self.learn, 'recorder'): self.recorder.smooth_loss.val = self.recorder.smooth_loss.val.double()
        def before_batch(self): self.learn.xb = tuple(x.double() for x in self.xb)

    from _procs import kill_callbacks
    cbs = kill_callbacks(mode)   # kill:EPOCH:BATCH[:RANK]: SIGKILL there
    if recipe == 'xray':
        # fastai's Resize pads training images at a random offset (Python's `random`, per rank in a data-parallel
        # run); centred, the two runs see the same pixels
        from fastai.vision.augment import Resize
        Resize.before_call = lambda self, b, split_idx: setattr(self, 'pcts', (0.5, 0.5))
        import medrecipes.xray as X
        make = X.xray_learner
        def learner(*a, **k):
            l = make(*a, **k)
            for c in [F64(), *cbs]: l.add_cb(c)
            return l
        X.xray_learner = learner
        s = X.train_xray(data_path=data, out_dir=out, arch='resnet10t', pretrained=False, size=32, bs=bs, epochs=3, num_workers=0,
                         progress=False, device='cpu', augment=False, drop_rate=0., patience=None, split='stratified', seed=1,
                         sync_bn=True, resume=mode == 'resume')
    else:
        from medrecipes.sar import train_sar
        s = train_sar(data_path=data, out_dir=out, patch=32, bs=bs, patches_per_image=4, variant='baseline', base_channels=8,
                      epochs=3, patience=1, progress=False, device='cpu', seed=0, hist_every=1, sync_bn=True, cbs=cbs,
                      resume=mode == 'resume')
    side = out.parent/f'{out.name}.rank{RANK}'
    side.mkdir(exist_ok=True)
    (side/'summary.json').write_text(json.dumps(s, default=str))
    (side/'writes.json').write_text(json.dumps(writes))
''')

XRAY_TOL = dict(rtol=1e-9, atol=1e-12)
SAR_TOL = dict(rtol=1e-4, atol=1e-5)


def _free_port():
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0)); return s.getsockname()[1]


def _env():
    env = {k: v for k, v in os.environ.items() if k not in ('RANK', 'WORLD_SIZE', 'LOCAL_RANK', 'MASTER_ADDR', 'MASTER_PORT')}
    return {**env, 'OMP_NUM_THREADS': '1'}


def _spawn(nproc, args, cwd=None):
    "`torchrun --nproc_per_node nproc args` (nproc > 1) or `python args`: real processes forked from the tests' zygote."
    if nproc > 1: return procs.run_ranks(nproc, args, env=_env(), cwd=cwd, timeout=900, port=_free_port())
    return procs.run(args, env=_env(), cwd=cwd, timeout=900)


def _launch(root:Path, recipe, out, data, mode, bs, nproc):
    script = root/'child.py'
    if not script.exists(): script.write_text(CHILD)
    return _spawn(nproc, [script, recipe, out, data, mode, bs])


def _ok(r):
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-4000:]


@pytest.fixture(scope='module')
def root(tmp_path_factory): return tmp_path_factory.mktemp('ddp')


@pytest.fixture(scope='module')
def data(root):
    from medrecipes.synth import make_btxrd, make_sar
    # BTXRD: 76 training images (even: no padded duplicates in training), 17 validation and 17 test images (odd: the
    # last rank's shard is padded, and the padding must not count). SAR: 24 training patches, 9 validation and 9 test
    # tiles (one 96 x 96 image each: odd again).
    return dict(xray=make_btxrd(root/'btxrd', n=110, seed=0),
                sar=make_sar(root/'sar', n_train=6, n_valid=1, n_test=1, size=96, seed=0))


_runs = {}
def _run(root, data, recipe, name, mode, bs, nproc):
    key = (recipe, name)
    if key not in _runs:
        out = root/f'{recipe}_{name}'
        _runs[key] = (out, _launch(root, recipe, out, data[recipe], mode, bs, nproc))
    return _runs[key]

def single(root, data, recipe): return _run(root, data, recipe, 'single', 'full', 16, 1)
def ddp(root, data, recipe): return _run(root, data, recipe, 'ddp', 'full', 8, 2)


def _ck(out, recipe):
    return torch.load((out/'stratified' if recipe == 'xray' else out)/'checkpoints'/'latest.pt', weights_only=True)


def _files(out): return sorted(str(p.relative_to(out)) for p in out.rglob('*') if p.is_file() and 'tensorboard' not in p.parts)


def _writes(out, rank): return json.loads((out.parent/f'{out.name}.rank{rank}'/'writes.json').read_text())


def _summary(out, rank=0): return json.loads((out.parent/f'{out.name}.rank{rank}'/'summary.json').read_text())


def _rel_err(a, b): return float((a.double() - b.double()).norm() / b.double().norm().clamp_min(1e-30))


@pytest.mark.parametrize('recipe', ['xray', 'sar'])
def test_two_processes_match_one_with_the_same_global_batch(root, data, recipe):
    (o1, r1), (o2, r2) = single(root, data, recipe), ddp(root, data, recipe)
    _ok(r1); _ok(r2)
    tol = XRAY_TOL if recipe == 'xray' else SAR_TOL
    a, b = _ck(o1, recipe), _ck(o2, recipe)
    # the same history (losses and every metric, over the whole validation set), epoch by epoch
    va, vb = np.array(a['recorder']['values'], dtype=float), np.array(b['recorder']['values'], dtype=float)
    # SAR: the validation loss rises after epoch 0 and early stopping (patience 1) ends both runs after epoch 1; every
    # rank must decide it, or the data-parallel run would hang or fail
    assert va.shape == vb.shape == ((3 if recipe == 'xray' else 2), va.shape[1])
    np.testing.assert_allclose(vb, va, **tol)
    # the same weights after 3 epochs (sync batch norm: the running statistics too)
    assert a['model_state_dict'].keys() == b['model_state_dict'].keys()
    for k in a['model_state_dict']:
        if a['model_state_dict'][k].is_floating_point(): assert _rel_err(b['model_state_dict'][k], a['model_state_dict'][k]) <= tol['rtol'] * 10, k
        else: assert torch.equal(a['model_state_dict'][k], b['model_state_dict'][k]), k
    # the same evaluation of the best checkpoint (X-ray: the test split, sharded and gathered; SAR: validation and test tiles)
    sa, sb = _summary(o1), _summary(o2)
    keys = ['best_val_loss', 'best_val_acc', 'test_accuracy', 'test_macro_f1', 'test_roc_auc_macro', 'best_epoch', 'epochs_run'] \
        if recipe == 'xray' else [k for k in sa if k.startswith(('valid_', 'test_'))] + ['best_epoch', 'epochs_run']
    for k in keys: np.testing.assert_allclose(sb[k], sa[k], **tol, err_msg=k)
    timing = ('train_seconds', 'seconds_per_epoch', 'peak_memory_mb')
    drop = lambda d: {k: v for k, v in d.items() if k not in timing}
    assert drop(_summary(o2, 1)) == drop(sb)                               # every rank returns the same results
    if recipe == 'xray':
        la, lb = pd.read_csv(o1/'stratified'/'training_log.csv'), pd.read_csv(o2/'stratified'/'training_log.csv')
        pd.testing.assert_frame_equal(lb, la, rtol=tol['rtol'], atol=tol['atol'])   # train_loss summed over both ranks
        ta = json.loads((o1/'stratified'/'test_metrics.json').read_text())
        tb = json.loads((o2/'stratified'/'test_metrics.json').read_text())
        assert tb['n'] == ta['n'] == 17 and tb['confusion_matrix'] == ta['confusion_matrix']   # each test image once
    # every rank has generator states of its own, all kept in the checkpoint
    assert len(b['rng_ranks']) == 2 and not torch.equal(b['rng_ranks'][0]['torch'], b['rng_ranks'][1]['torch'])


@pytest.mark.parametrize('recipe', ['xray', 'sar'])
def test_only_rank_zero_writes(root, data, recipe):
    (o1, r1), (o2, r2) = single(root, data, recipe), ddp(root, data, recipe)
    _ok(r1); _ok(r2)
    assert _writes(o2, 1) == []                                            # rank 1 created, wrote, renamed nothing
    w0 = _writes(o2, 0)
    assert any(e == 'os.rename' and p.endswith('.pt') for e, p in w0)     # rank 0 wrote the checkpoints (atomically)
    assert _files(o2) == _files(o1)                                        # one set of files, as one process writes
    assert not [f for f in _files(o2) if '.tmp' in f]
    if recipe == 'sar':   # one TensorBoard event file, one log with each epoch once
        assert len(list((o2/'tensorboard').glob('events.out.tfevents.*'))) == 1
        log = (o2/'training.log').read_text()
        assert [log.count(f'epoch {e} ') for e in range(3)] == [1, 1, 0]


@pytest.mark.parametrize('recipe', [pytest.param('xray', marks=pytest.mark.slow), 'sar'])   # X-ray alone: ~80 s
def test_killed_distributed_run_resumes_exactly(root, data, recipe):
    full, rf = ddp(root, data, recipe)
    _ok(rf)
    cut = root/f'{recipe}_cut'
    r = _launch(root, recipe, cut, data[recipe], 'kill:1:1:1', 8, 2)   # rank 1 dies in the 2nd batch of epoch 1
    assert r.returncode != 0, 'the killed run must fail'
    assert not (cut.parent/f'{cut.name}.rank0'/'summary.json').exists()
    ck = _ck(cut, recipe)
    assert ck['loop']['epoch'] == 0 and not ck['loop']['finished'] and len(ck['rng_ranks']) == 2
    if recipe == 'xray': r = _launch(root, recipe, cut, data[recipe], 'resume', 8, 2)
    else:   # the SAR run resumes through the command line, as a user would relaunch it
        r = _spawn(2, ['-m', 'medrecipes.cli', 'train', 'sar', 'model=sar_baseline', f"data.path={data['sar']}",
                                     'data.patch=32', 'data.batch_size=8', 'data.patches_per_image=4', 'model.base_channels=8',
                                     'trainer.max_epochs=3', 'trainer.progress=false', 'trainer.device=cpu', 'trainer.seed=0',
                                     f'trainer.out_dir={cut}', 'trainer.sync_bn=true', 'callbacks.hist_every=1', 'callbacks.patience=1',
                                     '--resume'], cwd=root)
    _ok(r)
    a, b = _ck(full, recipe), _ck(cut, recipe)
    assert b['loop']['finished'] and b['recorder']['values'] == a['recorder']['values']
    for k in a['model_state_dict']: assert torch.equal(a['model_state_dict'][k], b['model_state_dict'][k]), f'{k} differs after resume'
    for x, y in zip(a['rng_ranks'], b['rng_ranks']): assert torch.equal(x['torch'], y['torch'])
    if recipe == 'xray':
        la, lb = pd.read_csv(full/'stratified'/'training_log.csv'), pd.read_csv(cut/'stratified'/'training_log.csv')
        pd.testing.assert_frame_equal(la, lb)
        assert _writes(cut, 1) == []
    else:
        log = (cut/'training.log').read_text()   # epoch 0 by the killed run, epoch 1 (then early stopping) by the resumed one
        assert log.count('fit: ') == 2 and [log.count(f'epoch {e} ') for e in range(3)] == [1, 1, 0]
        assert json.loads((cut/'summary.json').read_text())['valid_psnr'] == _summary(full)['valid_psnr']


# ---- the image-folder recipe (medrecipes.folder.train_folder) ----
# Same setup: the child script above up to its recipe branch (argument parsing, the audit hook, `Kill`, `F64`), then a
# `train_folder` run. Float64 as for X-ray: the recorder's values, the weights and the training log must agree to 1e-9
# (relative); `FolderLearner.evaluate` casts the gathered probabilities to float32 before computing its metrics and loss,
# so the evaluation results must agree to 1e-6 (relative, absolute 1e-9), and the confusion matrices exactly.
_PRELUDE = CHILD[:CHILD.index("if recipe == 'xray':")]
FOLDER_CHILD = _PRELUDE + textwrap.dedent(r'''
    from medrecipes.folder import train_folder
    s = train_folder({'model': {'arch': 'resnet10t'},
                      'data': {'path': data, 'size': 28, 'batch_size': bs, 'augment': False},
                      'trainer': {'max_epochs': 2, 'lr': 2e-3, 'precision': 'fp32', 'device': 'cpu', 'seed': 1, 'out_dir': str(out),
                                  'progress': False, 'sync_bn': True, 'resume': mode == 'resume'},
                      'logging': {'wandb': 'auto'}}, cbs=[F64(), *cbs])
    side = out.parent/f'{out.name}.rank{RANK}'
    side.mkdir(exist_ok=True)
    (side/'summary.json').write_text(json.dumps(s, default=str))
    (side/'writes.json').write_text(json.dumps(writes))
''')
FOLDER_TOL = dict(rtol=1e-9, atol=1e-12)
FOLDER_EVAL_TOL = dict(rtol=1e-6, atol=1e-9)


def _launch_folder(root:Path, out, data, mode, bs, nproc):
    script = root/'child_folder.py'
    if not script.exists(): script.write_text(FOLDER_CHILD)
    return _spawn(nproc, [script, 'folder', out, data, mode, bs])


@pytest.fixture(scope='module')
def digits(root):
    from medrecipes.synth import make_digits
    # 18 training images (even: no padded duplicates in training; batches 8, 8, 2 of one process = 4, 4, 1 per rank),
    # 9 validation and 9 test images (odd: the last rank's shard is padded, and the padding must not count)
    return str(make_digits(root/'digits', splits=(6, 3, 3), size=28, seed=0, classes=(0, 1, 7)))


_folder_runs = {}
def _folder_run(root, digits, name, mode, bs, nproc):
    if name not in _folder_runs:
        out = root/f'folder_{name}'
        _folder_runs[name] = (out, _launch_folder(root, out, digits, mode, bs, nproc))
    return _folder_runs[name]

def folder_single(root, digits): return _folder_run(root, digits, 'single', 'full', 8, 1)
def folder_ddp(root, digits): return _folder_run(root, digits, 'ddp', 'full', 4, 2)


def _folder_files(out):   # W&B's run folders are named by time and run id
    return sorted(f for f in _files(out) if not f.startswith('wandb'))


def test_folder_two_processes_match_one_with_the_same_global_batch(root, digits):
    (o1, r1), (o2, r2) = folder_single(root, digits), folder_ddp(root, digits)
    _ok(r1); _ok(r2)
    a, b = _ck(o1, 'folder'), _ck(o2, 'folder')
    va, vb = np.array(a['recorder']['values'], dtype=float), np.array(b['recorder']['values'], dtype=float)
    assert va.shape == vb.shape and va.shape[0] == 2   # train loss, valid loss, accuracy, 3 recalls per epoch
    np.testing.assert_allclose(vb, va, **FOLDER_TOL)
    assert a['model_state_dict'].keys() == b['model_state_dict'].keys()
    for k in a['model_state_dict']:
        if a['model_state_dict'][k].is_floating_point(): assert _rel_err(b['model_state_dict'][k], a['model_state_dict'][k]) <= FOLDER_TOL['rtol'] * 10, k
        else: assert torch.equal(a['model_state_dict'][k], b['model_state_dict'][k]), k
    sa, sb = _summary(o1), _summary(o2)
    assert sb['images'] == sa['images'] == {'train': 18, 'valid': 9, 'test': 9}
    assert sb['epochs_run'] == sa['epochs_run'] == 2 and sb['best_epoch'] == sa['best_epoch']
    np.testing.assert_allclose(sb['best_valid_loss'], sa['best_valid_loss'], **FOLDER_TOL)
    for k in [k for k in sa if k.startswith(('valid_', 'test_'))]: np.testing.assert_allclose(sb[k], sa[k], **FOLDER_EVAL_TOL, err_msg=k)
    timing = ('train_seconds', 'seconds_per_epoch')
    drop = lambda d: {k: v for k, v in d.items() if k not in timing}
    assert drop(_summary(o2, 1)) == drop(sb)                               # every rank returns the same results
    # the training loss of the log (and the trackers) summed over both ranks' batches
    la, lb = pd.read_csv(o1/'training_log.csv'), pd.read_csv(o2/'training_log.csv')
    pd.testing.assert_frame_equal(lb, la, rtol=FOLDER_TOL['rtol'], atol=FOLDER_TOL['atol'])
    for split in ('valid', 'test'):   # each image once in the gathered evaluation
        ma = json.loads((o1/f'{split}_metrics.json').read_text()); mb = json.loads((o2/f'{split}_metrics.json').read_text())
        assert np.sum(mb['confusion_matrix']) == 9 and mb['confusion_matrix'] == ma['confusion_matrix'], split
    assert len(b['rng_ranks']) == 2 and not torch.equal(b['rng_ranks'][0]['torch'], b['rng_ranks'][1]['torch'])


def test_folder_only_rank_zero_writes(root, digits):
    (o1, r1), (o2, r2) = folder_single(root, digits), folder_ddp(root, digits)
    _ok(r1); _ok(r2)
    assert _writes(o2, 1) == []                                            # rank 1 created, wrote, renamed nothing
    w0 = _writes(o2, 0)
    assert any(e == 'os.rename' and p.endswith('.pt') for e, p in w0)     # rank 0 wrote the checkpoints (atomically)
    assert _folder_files(o2) == _folder_files(o1)
    assert {'config.yaml', 'summary.json', 'training_log.csv', 'test_metrics.json'} <= set(_folder_files(o2))
    assert not [f for f in _files(o2) if '.tmp' in f]
    assert len(list((o2/'tensorboard').glob('events.out.tfevents.*'))) == 1   # one TensorBoard writer
    if _summary(o2)['tracking']['wandb']:                                 # W&B installed: one offline run
        assert len(list((o2/'wandb').glob('offline-run-*'))) == 1


def _tb_scalars(out):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    ev = EventAccumulator(str(next((out/'tensorboard').glob('events.out.tfevents.*')))).Reload()
    return {t: [(s.step, s.value) for s in ev.Scalars(t)] for t in ev.Tags()['scalars']}


def test_folder_trackers_see_every_ranks_batches(root, digits):
    (o1, r1), (o2, r2) = folder_single(root, digits), folder_ddp(root, digits)
    _ok(r1); _ok(r2)
    a, b = _tb_scalars(o1), _tb_scalars(o2)
    assert 'loss/train' in a and a.keys() == b.keys()
    for k in a:   # TensorBoard stores float32: the training loss summed over both ranks, not rank 0's half
        assert [s for s, _ in b[k]] == [s for s, _ in a[k]] == [0, 1], k
        np.testing.assert_allclose([v for _, v in b[k]], [v for _, v in a[k]], rtol=1e-6, atol=1e-7, err_msg=k)


def test_folder_killed_distributed_run_resumes_exactly(root, digits):
    full, rf = folder_ddp(root, digits)
    _ok(rf)
    cut = root/'folder_cut'
    r = _launch_folder(root, cut, digits, 'kill:1:1:1', 4, 2)   # rank 1 dies in the 2nd batch of epoch 1
    assert r.returncode != 0, 'the killed run must fail'
    assert not (cut.parent/f'{cut.name}.rank0'/'summary.json').exists()
    ck = _ck(cut, 'folder')
    assert ck['loop']['epoch'] == 0 and not ck['loop']['finished'] and len(ck['rng_ranks']) == 2
    r = _launch_folder(root, cut, digits, 'resume', 4, 2)
    _ok(r)
    a, b = _ck(full, 'folder'), _ck(cut, 'folder')
    assert b['loop']['finished'] and b['recorder']['values'] == a['recorder']['values']
    for k in a['model_state_dict']: assert torch.equal(a['model_state_dict'][k], b['model_state_dict'][k]), f'{k} differs after resume'
    for x, y in zip(a['rng_ranks'], b['rng_ranks']): assert torch.equal(x['torch'], y['torch'])
    pd.testing.assert_frame_equal(pd.read_csv(full/'training_log.csv'), pd.read_csv(cut/'training_log.csv'))
    sa, sb = _summary(full), _summary(cut)
    assert sb['resumed_from'] and sb['epochs_this_fit'] == 1
    for k in [k for k in sa if k.startswith(('valid_', 'test_'))]: assert sb[k] == sa[k], k
    assert _writes(cut, 1) == []
    assert len(list((cut/'tensorboard').glob('events.out.tfevents.*'))) == 2   # the killed run's and the resumed run's
    assert [s for s, _ in _tb_scalars_all(cut)['loss/train']] == [0, 1]        # each epoch once (purge_step)


def _tb_scalars_all(out):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    ev = EventAccumulator(str(out/'tensorboard')).Reload()
    return {t: [(s.step, s.value) for s in ev.Scalars(t)] for t in ev.Tags()['scalars']}
