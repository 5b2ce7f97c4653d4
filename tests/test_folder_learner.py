"The image-folder recipe: training, checkpoints, exact resume after SIGKILL, tracking files, confusion matrices, options."
import re, json, os, signal, struct, subprocess, sys, textwrap, warnings
from pathlib import Path
import numpy as np, pandas as pd, pytest, torch
from sklearn.metrics import confusion_matrix, recall_score, accuracy_score
from fastai.callback.core import Callback
from medrecipes.core import load_checkpoint
from medrecipes.synth import make_digits
from medrecipes.data.folder import FolderDataLoaders
from medrecipes.folder import (folder_learner, train_folder, folder_config, resolve_tracking, AutocastMixedPrecision,
                               EpochGradientAccumulation, WandbTracker, FOLDER_DEFAULTS, cpu_bf16_native)
from medrecipes.classify import predict, load_classifier
from medrecipes.xray import predict_xray, xray_learner
import _procs as procs
from medrecipes.callbacks import FitOnlyCallback

XRAY_META_KEYS = {'arch', 'class_names', 'normalization', 'model_kwargs', 'split', 'class_weights', 'config', 'data_fingerprint',
                  'tta_flips'}


@pytest.fixture(scope='module')
def digits(tmp_path_factory):
    "Three digits, 8/4/4 images per class in train/valid/test, 28 px."
    return make_digits(tmp_path_factory.mktemp('digits')/'d', splits=(8, 4, 4), size=28, seed=0, classes=(0, 1, 7))


@pytest.fixture
def quiet():
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')
        yield


def _cfg(data, out, **sections):
    "A small, fast config: resnet10t at 28 px, batches of 6 (4 per epoch), 2 epochs, fp32."
    cfg = {'model': {'arch': 'resnet10t'}, 'data': {'path': str(data), 'size': 28, 'batch_size': 6},
           'trainer': {'max_epochs': 2, 'lr': 2e-3, 'precision': 'fp32', 'seed': 3, 'out_dir': str(out), 'progress': False},
           'logging': {'csv': True, 'tensorboard': False, 'wandb': False}}
    for k, v in sections.items(): cfg[k] = {**cfg.get(k, {}), **v}
    return cfg


def _dls(digits, **kw):
    return FolderDataLoaders.from_folder(digits, size=28, bs=6, seed=0, device='cpu', **kw)


def _no_network(monkeypatch):
    "W&B must work with no network: point it at a closed local port and drop any key."
    monkeypatch.setenv('WANDB_BASE_URL', 'http://127.0.0.1:9'); monkeypatch.delenv('WANDB_API_KEY', raising=False)
    monkeypatch.delenv('WANDB_MODE', raising=False); monkeypatch.setenv('WANDB_SILENT', 'true')


def wandb_records(fn):
    "The protobuf records of a W&B `.wandb` run file (a LevelDB-style log of 32 KiB blocks after a 7-byte header)."
    from wandb.proto import wandb_internal_pb2 as pb
    data = Path(fn).read_bytes()
    assert data[:4] == b':W&B', data[:7]
    pos, block, out, buf = 7, 32768, [], b''
    while pos + 7 <= len(data):
        left = block - pos % block
        if left < 7: pos += left; continue
        _, n, typ = struct.unpack('<IHB', data[pos:pos + 7]); pos += 7
        if typ == 0 and n == 0: pos += left - 7; continue
        buf += data[pos:pos + n]; pos += n
        if typ in (1, 4): r = pb.Record(); r.ParseFromString(buf); out.append(r); buf = b''
    return out


def wandb_history(run_dir):
    (fn,) = Path(run_dir).glob('run-*.wandb')
    recs = wandb_records(fn)
    hist = [{i.key or '/'.join(i.nested_key): json.loads(i.value_json) for i in r.history.item}
            for r in recs if r.WhichOneof('record_type') == 'history']
    run = next(r.run for r in recs if r.WhichOneof('record_type') == 'run')
    config = {i.key: json.loads(i.value_json) for i in run.config.update}
    return hist, config, run.run_id


# ---------------------------------------------------------------------------------------------------------------------

def test_short_run_checkpoints_and_the_xray_loader(digits, tmp_path, quiet, capsys):
    s = train_folder(_cfg(digits, tmp_path/'run'))
    printed = capsys.readouterr()   # trainer.progress=false: no bar in training, temperature scaling or the evaluations
    assert not re.search(r'\d+\.\d+% \[\d+/\d+', printed.out + printed.err), printed
    out = tmp_path/'run'
    assert s['classes'] == ['0', '1', '7'] and s['images'] == {'train': 24, 'valid': 12, 'test': 12} and s['epochs_run'] == 2
    assert json.loads((out/'summary.json').read_text())['valid_accuracy'] == s['valid_accuracy']
    for f in ('config.yaml', 'checkpoints/latest.pt', 'checkpoints/best.pt', 'valid_confusion_matrix.csv',
              'valid_confusion_matrix.png', 'test_confusion_matrix.csv', 'test_metrics.json', 'valid_metrics.json'):
        assert (out/f).is_file(), f
    latest, best = load_checkpoint(out/'checkpoints'/'latest.pt'), load_checkpoint(out/'checkpoints'/'best.pt')
    for ck in (latest, best):
        assert XRAY_META_KEYS <= set(ck) and ck['arch'] == 'resnet10t' and ck['class_names'] == ['0', '1', '7']
        assert ck['normalization']['size'] == 28 and ck['config']['data']['size'] == 28 and ck['split'] == 'folder'
        assert ck['class_weights'] == [1.0, 1.0, 1.0]
    assert latest['loop']['finished'] and latest['loop']['epoch'] == 1
    # the X-ray recipe's loader and predictor read a folder checkpoint as they read their own
    files = [Path(f) for f in sorted((digits/'test').rglob('*.png'))]
    p = predict_xray(out/'checkpoints'/'best.pt', files)
    assert p.shape == (12, 3) and np.allclose(p.sum(1), 1, atol=1e-5)
    np.testing.assert_allclose(predict(out/'checkpoints'/'best.pt', [str(f) for f in files]), p, atol=1e-6)
    model, ck = load_classifier(out/'checkpoints'/'best.pt')
    assert sum(x.numel() for x in model.parameters()) > 1e5
    # the data fingerprint: the files of each split, relative to the data set folder
    from medrecipes.data.xray import split_fingerprint
    assert latest['data_fingerprint'] == split_fingerprint((f.relative_to(digits).as_posix(), f.parts[-3])
                                                           for f in digits.rglob('*.png'))
    assert latest['config']['trainer']['max_epochs'] >= 1   # the nested config the recipe read
    # a resume with nothing left to train keeps the run's own timings (issue 12.4), and its results
    (out/'summary.json').write_text(json.dumps({**s, 'train_seconds': 77.7, 'seconds_per_epoch': 38.85}))
    r = train_folder(_cfg(digits, out, trainer={'resume': True}))
    assert r['epochs_this_fit'] == 0 and r['train_seconds'] == 77.7 and r['seconds_per_epoch'] == 38.85
    assert r['valid_accuracy'] == s['valid_accuracy'] and r['best_epoch'] == s['best_epoch']


def test_checkpoint_meta_has_the_xray_keys(digits, tmp_path, btxrd):
    from medrecipes.xray import XrayDataLoaders
    xdls = XrayDataLoaders.from_btxrd(btxrd, split='center', size=32, bs=8, num_workers=0, seed=0, device='cpu')
    xl = xray_learner(xdls, arch='resnet10t', pretrained=False, out_dir=tmp_path/'x', patience=None)
    fl = folder_learner(_dls(digits), arch='resnet10t', out_dir=tmp_path/'f', precision='fp32')
    assert set(fl.checkpoint_meta) == set(xl.checkpoint_meta) == XRAY_META_KEYS
    assert set(fl.checkpoint_meta['normalization']) == set(xl.checkpoint_meta['normalization'])


def test_confusion_matrices_equal_sklearn(digits, tmp_path, quiet):
    s = train_folder(_cfg(digits, tmp_path/'run', trainer={'max_epochs': 3}))
    classes = s['classes']
    for split in ('valid', 'test'):
        files = [f for c in classes for f in sorted((digits/split/c).glob('*.png'))]
        y = np.array([classes.index(f.parent.name) for f in files])
        # predictions made independently of the learner: the best checkpoint, read by `classify.predict`
        pred = predict(tmp_path/'run'/'checkpoints'/'best.pt', files).argmax(1)
        cm = confusion_matrix(y, pred, labels=range(len(classes)))
        csv = pd.read_csv(tmp_path/'run'/f'{split}_confusion_matrix.csv', index_col=0)
        assert list(csv.index) == [f'true_{c}' for c in classes] and list(csv.columns) == [f'pred_{c}' for c in classes]
        np.testing.assert_array_equal(csv.values, cm)
        m = json.loads((tmp_path/'run'/f'{split}_metrics.json').read_text())
        np.testing.assert_array_equal(np.array(m['confusion_matrix']), cm)
        assert m['accuracy'] == pytest.approx(accuracy_score(y, pred)) == pytest.approx(s[f'{split}_accuracy'])
        rec = recall_score(y, pred, labels=range(len(classes)), average=None, zero_division=0)
        assert [m['per_class'][c]['recall'] for c in classes] == pytest.approx(rec.tolist())
        assert m['n'] == 12 and m['checkpoint'] == 'best' and m['split'] == split


def test_tracking_files_and_tracking_does_not_change_the_run(digits, tmp_path, monkeypatch, quiet):
    _no_network(monkeypatch)
    on = train_folder(_cfg(digits, tmp_path/'on', logging={'csv': True, 'tensorboard': True, 'wandb': True}))
    off = train_folder(_cfg(digits, tmp_path/'off', logging={'csv': False, 'tensorboard': False, 'wandb': False}))
    # CSV: one row per epoch
    log = pd.read_csv(tmp_path/'on'/'training_log.csv')
    assert list(log.columns) == ['epoch', 'train_loss', 'val_loss', 'val_acc', 'val_recall_0', 'val_recall_1', 'val_recall_7', 'lr']
    assert list(log.epoch) == [0, 1] and (tmp_path/'on'/'loss_curve.png').is_file()
    # TensorBoard: the tags, one event per epoch, the same values as the CSV
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    ea = EventAccumulator(str(tmp_path/'on'/'tensorboard')).Reload()
    tags = {'loss/train', 'loss/valid', 'accuracy/valid', 'recall/0', 'recall/1', 'recall/7', 'lr'}
    assert tags <= set(ea.Tags()['scalars'])
    for tag, col in (('loss/train', 'train_loss'), ('loss/valid', 'val_loss'), ('accuracy/valid', 'val_acc'), ('recall/7', 'val_recall_7'), ('lr', 'lr')):
        ev = ea.Scalars(tag)
        assert [e.step for e in ev] == [0, 1]
        np.testing.assert_allclose([e.value for e in ev], log[col].values, rtol=1e-5, atol=1e-7)
    # W&B, offline: a run folder under out_dir/wandb with the run file, its history and the config
    runs = list((tmp_path/'on'/'wandb').glob('offline-run-*'))
    assert len(runs) == 1 and Path(on['wandb_run_dir']) == runs[0]
    assert (runs[0]/'files').is_dir() and (runs[0]/'logs').is_dir()
    hist, config, run_id = wandb_history(runs[0])
    assert runs[0].name.endswith(run_id) and [h['epoch'] for h in hist] == [0, 1]
    np.testing.assert_allclose([h['loss/valid'] for h in hist], log.val_loss.values, rtol=1e-6)
    assert config['model'] == {'arch': 'resnet10t', 'pretrained': False, 'drop_rate': 0.0, 'weights': None, 'cam_layer': None}
    # all off: no tracker files, the checkpoints and results as before; and the very same training
    assert not (tmp_path/'off'/'training_log.csv').exists() and not (tmp_path/'off'/'tensorboard').exists()
    assert not (tmp_path/'off'/'wandb').exists() and off['wandb_run_dir'] is None
    a, b = load_checkpoint(tmp_path/'on'/'checkpoints'/'latest.pt'), load_checkpoint(tmp_path/'off'/'checkpoints'/'latest.pt')
    for k in a['model_state_dict']: assert torch.equal(a['model_state_dict'][k], b['model_state_dict'][k]), k
    assert a['recorder']['values'] == b['recorder']['values']


def test_wandb_missing_is_an_error_naming_the_option_or_skipped_with_auto(digits, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, 'wandb', None)                       # `import wandb` now fails
    with pytest.raises(ImportError, match=r"tracking.wandb=true needs the `wandb` package"):
        folder_learner(_dls(digits), arch='resnet10t', out_dir=tmp_path, tracking={'wandb': True})
    with pytest.raises(ImportError, match=r"logging.wandb=true needs the `wandb` package"):
        train_folder(_cfg(digits, tmp_path/'a', logging={'wandb': True}))
    with pytest.warns(UserWarning, match="logging.wandb='auto': the `wandb` package is not installed"):
        assert resolve_tracking({'wandb': 'auto'}, 'logging')['wandb'] is False
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')
        learn = folder_learner(_dls(digits), arch='resnet10t', out_dir=tmp_path, tracking={'wandb': 'auto'})
    assert not any(isinstance(c, WandbTracker) for c in learn.cbs)


def test_same_seed_same_run_other_seed_other_run(digits, tmp_path, quiet):
    w = {}
    for name, seed in (('a', 11), ('b', 11), ('c', 12)):
        train_folder(_cfg(digits, tmp_path/name, trainer={'max_epochs': 1, 'seed': seed}, logging={'csv': False}))
        w[name] = load_checkpoint(tmp_path/name/'checkpoints'/'latest.pt')['model_state_dict']
    assert all(torch.equal(w['a'][k], w['b'][k]) for k in w['a'])
    assert not all(torch.equal(w['a'][k], w['c'][k]) for k in w['a'])


class _Probe(FitOnlyCallback):
    """Records what the training loop does: the dtype of the predictions inside autocast, optimizer steps, gradient norms.
    Fit only: the recipe's own `get_preds` after the fit (temperature scaling) must not start new records."""
    order = 5   # after_pred before MixedPrecision (10) turns the predictions to float32
    def before_fit(self):
        super().before_fit()
        if self.run: self.dtypes, self.steps, self.norms = set(), 0, []
    def after_pred(self):
        if self.training: self.dtypes.add(self.pred.dtype)
    def after_step(self): self.steps += 1

class _NormProbe(FitOnlyCallback):
    order = 12  # before_step after GradientClip (11)
    def before_fit(self):
        super().before_fit()
        if self.run: self.norms = []
    def before_step(self):
        self.norms.append(float(torch.norm(torch.stack([p.grad.detach().norm() for p in self.model.parameters() if p.grad is not None]))))


@pytest.mark.parametrize('precision', ['fp32', 'bf16', 'fp16', 'auto'])
def test_precision_options_run_on_cpu(digits, tmp_path, precision):
    probe = _Probe()
    with warnings.catch_warnings(record=True) as rec:
        warnings.simplefilter('always')
        learn = folder_learner(_dls(digits), arch='resnet10t', out_dir=tmp_path, precision=precision, tracking={'csv': False, 'tensorboard': False}, cbs=[probe])
        with learn.no_bar(), learn.no_logging(): learn.fit(1, 1e-3)
    want = {'fp32': 'fp32', 'bf16': 'bf16', 'fp16': 'fp16', 'auto': 'bf16' if cpu_bf16_native() else 'fp32'}[precision]
    assert learn.precision == want
    amp = [c for c in learn.cbs if isinstance(c, AutocastMixedPrecision)]
    assert len(amp) == (want != 'fp32')
    assert probe.dtypes == {dict(fp32=torch.float32, bf16=torch.bfloat16, fp16=torch.float16)[want]}
    assert np.isfinite(learn.recorder.values[-1][:2]).all() and probe.steps == 4
    assert any("'fp16' on a CPU" in str(w.message) for w in rec) == (want == 'fp16')
    # evaluation works under the same precision and returns float32 probabilities
    probs, _ = learn.get_preds()
    assert probs.dtype == torch.float32 and torch.allclose(probs.sum(1), torch.ones(len(probs)), atol=1e-3)


@pytest.mark.parametrize('accumulate, steps', [(1, 4), (2, 2), (3, 2), (4, 1)])
def test_gradient_accumulation_steps_every_k_batches_and_at_epoch_end(digits, tmp_path, accumulate, steps):
    probe = _Probe()
    learn = folder_learner(_dls(digits), arch='resnet10t', out_dir=tmp_path, precision='fp32', accumulate=accumulate,
                           tracking={'csv': False, 'tensorboard': False}, cbs=[probe])
    assert any(isinstance(c, EpochGradientAccumulation) for c in learn.cbs) == (accumulate > 1)
    with learn.no_bar(), learn.no_logging(): learn.fit(2, 1e-3)
    assert probe.steps == 2 * steps                                        # 4 batches per epoch
    assert 0.5 < learn.recorder.losses[0] < 3                             # the logged loss is the real one, not divided by k


def test_gradient_accumulation_averages_the_gradient(digits, tmp_path):
    "Two batches of 6 with accumulate=2 give the gradient of the mean loss: the average of the two batch gradients."
    class Grab(Callback):
        order = 7   # before_step after the accumulation callback (6) let the step through
        def before_fit(self): self.grads = None
        def before_step(self):
            if self.grads is None: self.grads = [p.grad.detach().clone() for p in self.model.parameters()]
            raise __import__('fastai').callback.core.CancelFitException()
    dls = _dls(digits, augment=False)
    grab = Grab()
    learn = folder_learner(dls, arch='resnet10t', out_dir=tmp_path, precision='fp32', accumulate=2, clip_grad=None,
                           class_weighted=False, tracking={'csv': False, 'tensorboard': False}, cbs=[grab])
    init = {k: v.clone() for k, v in learn.model.state_dict().items()}
    dls.train.rng.seed(5)
    with learn.no_bar(), learn.no_logging(): learn.fit(1, 1e-3)
    # the same two batches, one by one, on the same weights (BatchNorm statistics are per batch either way)
    dls.train.rng.seed(5)
    batches = [b for _, b in zip(range(2), dls.train)]
    ref = [torch.zeros_like(p) for p in learn.model.parameters()]
    for xb, yb in batches:
        xb, yb = xb.as_subclass(torch.Tensor), yb.as_subclass(torch.Tensor)
        learn.model.load_state_dict(init); learn.model.train(); learn.model.zero_grad()
        torch.nn.functional.cross_entropy(learn.model(xb), yb).backward()
        for r, p in zip(ref, learn.model.parameters()): r += p.grad / 2
    for g, r in zip(grab.grads, ref): torch.testing.assert_close(g, r, rtol=1e-4, atol=1e-6)


def test_gradient_clipping(digits, tmp_path):
    norms = _NormProbe()
    learn = folder_learner(_dls(digits), arch='resnet10t', out_dir=tmp_path, precision='fp32', clip_grad=0.05,
                           tracking={'csv': False, 'tensorboard': False}, cbs=[norms])
    with learn.no_bar(), learn.no_logging(): learn.fit(1, 1e-3)
    assert len(norms.norms) == 4 and max(norms.norms) <= 0.05 * (1 + 1e-4)
    from fastai.callback.training import GradientClip
    assert [c.max_norm for c in learn.cbs if isinstance(c, GradientClip)] == [0.05]
    for off in (None, 0):
        l2 = folder_learner(_dls(digits), arch='resnet10t', out_dir=tmp_path, clip_grad=off, tracking={'csv': False, 'tensorboard': False})
        assert not any(isinstance(c, GradientClip) for c in l2.cbs)


def test_class_weights_come_from_the_training_folder(digits, tmp_path):
    import shutil
    d = Path(shutil.copytree(digits, tmp_path/'d'))
    for f in sorted((d/'train'/'1').glob('*.png'))[:6]: f.unlink()        # 8, 2, 8 training images
    learn = folder_learner(FolderDataLoaders.from_folder(d, size=28, device='cpu'), arch='resnet10t', out_dir=tmp_path/'r')
    assert torch.allclose(learn.class_weights, torch.tensor([18 / 24, 18 / 6, 18 / 24]))
    assert torch.allclose(learn.loss_func.weight, learn.class_weights) and learn.checkpoint_meta['class_weights'] == pytest.approx([0.75, 3.0, 0.75])
    assert folder_learner(FolderDataLoaders.from_folder(d, size=28, device='cpu'), arch='resnet10t', class_weighted=False,
                          out_dir=tmp_path/'r').loss_func.weight is None


def test_bad_options_are_errors_naming_them(digits, tmp_path):
    dls = _dls(digits)
    for kw, match in ((dict(precision='fp8'), 'precision must be one of'), (dict(accumulate=0), 'accumulate must be an int >= 1'),
                      (dict(accumulate=1.5), 'accumulate must be an int'), (dict(clip_grad=-1.), 'clip_grad must be a gradient norm'),
                      (dict(patience=-2), 'patience must be an int >= 1'), (dict(tracking={'tensorbord': True}), "unknown option 'tensorbord'"),
                      (dict(tracking={'wandb_mode': 'cloud'}), 'wandb_mode must be one of'), (dict(arch='resnet_nope'), "arch='resnet_nope' is not a timm model")):
        with pytest.raises((ValueError, KeyError), match=match): folder_learner(dls, out_dir=tmp_path, **kw)
    for section, key, val, match in (('trainer', 'precision', 'half', 'trainer.precision must be one of'),
                                     ('trainer', 'schedule', 'cosine', 'trainer.schedule must be one of'),
                                     ('trainer', 'accumulate', 0, 'trainer.accumulate must be an int >= 1'),
                                     ('trainer', 'max_epochs', 0, 'trainer.max_epochs must be an int >= 1'),
                                     ('trainer', 'clip_grad', 'big', 'trainer.clip_grad must be'),
                                     ('trainer', 'lr', 0, 'trainer.lr must be a number > 0'),
                                     ('data', 'batch_size', 0, 'data.batch_size must be an int >= 1'),
                                     ('data', 'augment', 'yes', 'data.augment must be true or false'),
                                     ('callbacks', 'patience', -1, 'callbacks.patience must be an int >= 1'),
                                     ('logging', 'wandb', 'maybe', "logging.wandb must be true, false or 'auto'"),
                                     ('logging', 'tensorboard', 'yes', 'logging.tensorboard must be true or false'),
                                     ('trainer', 'epochs', 3, "unknown config key 'trainer.epochs'"),
                                     ('optimizer', 'lr', 3, "unknown config key 'optimizer'")):
        with pytest.raises((ValueError, KeyError), match=match): folder_config({section: {key: val}})
    with pytest.raises(ValueError, match="config section 'trainer' must be a mapping"): folder_config({'trainer': 3})
    with pytest.raises(FileNotFoundError, match='resume: checkpoint .*nope.pt does not exist'):
        train_folder(_cfg(digits, tmp_path/'r', trainer={'resume': str(tmp_path/'nope.pt')}))
    # the defaults are the documented contract
    assert set(FOLDER_DEFAULTS) == {'model', 'data', 'trainer', 'callbacks', 'logging'}
    assert folder_config() == FOLDER_DEFAULTS


# --- exact resume after SIGKILL, with bf16 autocast (where it is the CPU default), accumulation and every tracker on ---

CHILD = textwrap.dedent(r'''
    import os, sys, json, signal, warnings
    from pathlib import Path
    import torch
    torch.set_num_threads(1)
    from fastai.callback.core import Callback
    from medrecipes.folder import train_folder
    data, out, mode = sys.argv[1], Path(sys.argv[2]), sys.argv[3]   # mode: full | kill:<epoch>:<batch> | resume
    warnings.simplefilter('ignore')

    from _procs import kill_callbacks
    cbs = kill_callbacks(mode)   # kill:EPOCH:BATCH[:RANK]: SIGKILL there
    cfg = {'model': {'arch': 'resnet10t'}, 'data': {'path': data, 'size': 28, 'batch_size': 6},
           'trainer': {'max_epochs': 3, 'lr': 2e-3, 'precision': 'auto', 'accumulate': 2, 'seed': 5, 'out_dir': str(out),
                       'progress': False, 'resume': 'last' if mode == 'resume' else False},
           'logging': {'csv': True, 'tensorboard': True, 'wandb': True}}
    s = train_folder(cfg, cbs=cbs)
    (out/'done.json').write_text(json.dumps(s))
''')


def _run(tmp_path, *args):
    script = tmp_path/'child.py'
    if not script.exists(): script.write_text(CHILD)
    env = {**os.environ, 'OMP_NUM_THREADS': '1', 'PYTHONHASHSEED': '0', 'WANDB_BASE_URL': 'http://127.0.0.1:9', 'WANDB_SILENT': 'true'}
    # WANDB_SERVICE: a W&B run in this pytest process (another test) leaves its service address in the environment; a
    # child inheriting it would share that service, which still holds the killed child's run id ("run ID is in use")
    for k in ('WANDB_API_KEY', 'WANDB_MODE', 'WANDB_SERVICE'): env.pop(k, None)
    return procs.run([script, *args], env=env, timeout=600)   # a real process, forked from the tests' zygote


def test_killed_mid_epoch_resumes_exactly(digits, tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    full, cut = tmp_path/'full', tmp_path/'cut'
    r = _run(tmp_path, digits, full, 'full'); assert r.returncode == 0, r.stderr[-3000:]
    r = _run(tmp_path, digits, cut, 'kill:1:2')                            # after 3 of epoch 1's 4 batches: mid-accumulation
    assert r.returncode == -signal.SIGKILL, (r.returncode, r.stderr[-3000:])
    ck = load_checkpoint(cut/'checkpoints'/'latest.pt')
    assert ck['loop']['epoch'] == 0 and not ck['loop']['finished'] and not (cut/'done.json').exists()
    r = _run(tmp_path, digits, cut, 'resume'); assert r.returncode == 0, r.stderr[-3000:]
    sf, sc = json.loads((full/'done.json').read_text()), json.loads((cut/'done.json').read_text())
    assert sc['resumed_from'] == str(cut/'checkpoints'/'latest.pt') and sc['epochs_this_fit'] == 2 and sf['epochs_this_fit'] == 3
    assert sf['precision'] == sc['precision'] == ('bf16' if cpu_bf16_native() else 'fp32')
    for k in ('valid_accuracy', 'valid_loss', 'test_accuracy', 'best_epoch', 'best_valid_loss', 'epochs_run'): assert sf[k] == sc[k], k
    # bitwise: weights, optimizer state, history, of the latest and the best checkpoints
    for name in ('latest.pt', 'best.pt'):
        a, b = load_checkpoint(full/'checkpoints'/name), load_checkpoint(cut/'checkpoints'/name)
        for k in a['model_state_dict']: assert torch.equal(a['model_state_dict'][k], b['model_state_dict'][k]), f'{name}: {k} differs after resume'
        for sa, sb in zip(a['optimizer_state_dict']['state'], b['optimizer_state_dict']['state']):
            for k in sa:
                if isinstance(sa[k], torch.Tensor): assert torch.equal(sa[k], sb[k]), f'{name}: optimizer {k}'
        assert a['recorder']['values'] == b['recorder']['values'] and a['recorder']['losses'] == b['recorder']['losses']
    # the trackers continue: the CSV has each epoch once, TensorBoard each step once, W&B the same run id
    pd.testing.assert_frame_equal(pd.read_csv(full/'training_log.csv'), pd.read_csv(cut/'training_log.csv'))
    for split in ('valid', 'test'):
        assert (full/f'{split}_confusion_matrix.csv').read_text() == (cut/f'{split}_confusion_matrix.csv').read_text()
    ea_f, ea_c = (EventAccumulator(str(d/'tensorboard')).Reload() for d in (full, cut))
    for tag in ('loss/train', 'loss/valid', 'lr'):
        assert [e.step for e in ea_c.Scalars(tag)] == [0, 1, 2]
        assert [e.value for e in ea_c.Scalars(tag)] == [e.value for e in ea_f.Scalars(tag)]
    runs = sorted((cut/'wandb').glob('offline-run-*'))                      # named by start time: the resumed session last
    assert len(runs) == 2 and len({p.name.rsplit('-', 1)[1] for p in runs}) == 1   # two sessions of one run id
    # the killed session's file may be empty (SIGKILL before the W&B service flushed it); the last one has every epoch
    (full_run,) = (full/'wandb').glob('offline-run-*')
    hf, hc = wandb_history(full_run)[0], wandb_history(runs[-1])[0]
    assert [h['epoch'] for h in hc] == [h['epoch'] for h in hf] == [0, 1, 2]
    for k in ('loss/train', 'loss/valid', 'accuracy/valid', 'lr'): assert [h[k] for h in hc] == [h[k] for h in hf], k


def test_a_run_writes_the_leak_report_of_its_split_folders(digits, tmp_path):
    "A near-duplicate across the split folders: the run warns, trains on every image and writes leak_report.csv beside its results."
    import shutil
    from PIL import Image
    d = Path(shutil.copytree(digits, tmp_path/'d'))
    with Image.open(d/'train'/'7'/'7_00003.png') as im: im.convert('RGB').resize((40, 40), Image.BICUBIC).save(d/'valid'/'7'/'again.jpg', quality=85)
    with pytest.warns(UserWarning, match='near-duplicate images sit in different split folders'):
        s = train_folder(_cfg(d, tmp_path/'run', trainer={'max_epochs': 1}))
    r = pd.read_csv(tmp_path/'run'/'leak_report.csv')
    assert {r.image_id[0], r.duplicate_id[0]} == {'train/7/7_00003.png', 'valid/7/again.jpg'} and len(r) == 1
    assert s['images'] == {'train': 24, 'valid': 13, 'test': 12}
    assert not (tmp_path/'clean'/'leak_report.csv').exists()
    train_folder(_cfg(digits, tmp_path/'clean', trainer={'max_epochs': 1}))
    assert not (tmp_path/'clean'/'leak_report.csv').exists()              # no pairs: no file


# --- issue 26.8: a resume from Python refuses what the command line refuses: another lr, schedule or batch size ---------

class _KilledAt(BaseException): "A kill inside the process, after latest.pt of the epoch was written: nothing after it runs."


class _KillAfterEpoch(Callback):
    order = 100   # after ResumeCheckpoint (99) wrote latest.pt
    def __init__(self, epoch): self.at = epoch
    def after_epoch(self):
        if self.epoch == self.at: raise _KilledAt()


def _py_learner(digits, out, bs=6, cbs=(), tensorboard=False, **kw):
    from medrecipes.core import set_seed
    set_seed(0)
    dls = FolderDataLoaders.from_folder(digits, size=28, bs=bs, seed=0, device='cpu', progress=False, **kw)
    return folder_learner(dls, arch='resnet10t', out_dir=out, precision='fp32', tracking={'csv': True, 'tensorboard': tensorboard}, cbs=list(cbs))


def test_python_resume_refuses_another_lr_schedule_or_batch_size(digits, tmp_path, quiet):
    "Issue 26.8: killed after epoch 0 of fit_one_cycle(3, 3e-3), resumes with lr 3e-2, a flat fit or batch size 32 are refused, naming the keys."
    learn = _py_learner(digits, tmp_path, cbs=[_KillAfterEpoch(0)])
    with learn.no_bar(), learn.no_logging(), pytest.raises(_KilledAt): learn.fit_one_cycle(3, 3e-3)
    latest = tmp_path/'checkpoints'/'latest.pt'
    before = latest.read_bytes()
    for bs, fit, match in ((6, lambda l: l.fit_one_cycle(3, 3e-2), r"fit\.lr \(checkpoint 0\.003, now 0\.03\)"),
                           (6, lambda l: l.fit(3, 3e-3), r"fit\.schedule \(checkpoint 'fit_one_cycle', now 'fit'\)"),
                           (6, lambda l: l.fit_one_cycle(3, 3e-3, pct_start=0.5), r"fit\.schedule_values: the scheduled values"),
                           (32, lambda l: l.fit_one_cycle(3, 3e-3), r"fit\.batch_size \(checkpoint 6, now 32\)")):
        l = _py_learner(digits, tmp_path, bs=bs).resume(True)
        with l.no_bar(), l.no_logging(), pytest.raises(ValueError, match=match) as e: fit(l)
        assert 'cannot resume from checkpoint' in str(e.value) and str(latest) in str(e.value)
        assert latest.read_bytes() == before                              # refused before anything was written
    # the same fit resumes, and ends with the uninterrupted run's per-epoch lr
    l = _py_learner(digits, tmp_path).resume(True)
    with l.no_bar(), l.no_logging(): l.fit_one_cycle(3, 3e-3)
    full = _py_learner(digits, tmp_path/'full')
    with full.no_bar(), full.no_logging(): full.fit_one_cycle(3, 3e-3)
    lr = lambda d: list(pd.read_csv(d/'training_log.csv').lr)
    assert lr(tmp_path) == lr(tmp_path/'full')
    ck = load_checkpoint(latest)
    assert ck['fit']['schedule'] == 'fit_one_cycle' and ck['fit']['batch_size'] == 6 and ck['fit']['lr'] == pytest.approx(3e-3)


# --- issue 26.12: fine_tune's two fits are one run: one log, one step count, one best checkpoint --------------------------

class _KillAfterRunEpoch(Callback):
    "Kill after latest.pt of epoch `at` counted over the run (the phases of fine_tune)."
    order = 100
    def __init__(self, at): self.at = at
    def after_epoch(self):
        if getattr(self.learn, 'epoch_offset', 0) + self.epoch == self.at: raise _KilledAt()


def test_fine_tune_logs_and_best_checkpoint_span_both_phases(digits, tmp_path, quiet):
    "Issue 26.12: fine_tune(2, freeze_epochs=1) logs epochs [0, 1, 2] (CSV, TensorBoard), best.pt is the best of all three; a kill in phase 2 resumes."
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    full = tmp_path/'full'
    learn = _py_learner(digits, full, tensorboard=True)
    with learn.no_bar(), learn.no_logging(): learn.fine_tune(2, 2e-3, freeze_epochs=1)
    log = pd.read_csv(full/'training_log.csv')
    assert list(log.epoch) == [0, 1, 2]                                   # the frozen epoch, then the two unfrozen ones
    ea = EventAccumulator(str(full/'tensorboard')).Reload()
    for tag in ('loss/train', 'loss/valid', 'lr'): assert [e.step for e in ea.Scalars(tag)] == [0, 1, 2], tag
    np.testing.assert_allclose([e.value for e in ea.Scalars('loss/valid')], log.val_loss, rtol=1e-6)
    best, latest = (load_checkpoint(full/'checkpoints'/n) for n in ('best.pt', 'latest.pt'))
    i = int(np.argmin(log.val_loss))
    assert best['best_epoch'] == best['epoch'] == learn.ckpt_cb.best_epoch == i and best['best_value'] == pytest.approx(log.val_loss[i])
    assert [h['epoch'] for h in latest['history']] == [0, 1, 2] and latest['epoch'] == 2
    assert latest['fit']['schedule'] == 'fine_tune' and latest['fit']['phase'] == 1
    # killed after the first unfrozen epoch, resumed by the same fine_tune call: the same log and weights
    cut = tmp_path/'cut'
    learn = _py_learner(digits, cut, tensorboard=True, cbs=[_KillAfterRunEpoch(1)])
    with learn.no_bar(), learn.no_logging(), pytest.raises(_KilledAt): learn.fine_tune(2, 2e-3, freeze_epochs=1)
    learn = _py_learner(digits, cut, tensorboard=True).resume(True)
    with learn.no_bar(), learn.no_logging(): learn.fine_tune(2, 2e-3, freeze_epochs=1)
    pd.testing.assert_frame_equal(pd.read_csv(cut/'training_log.csv'), log)
    a, b = (load_checkpoint(d/'checkpoints'/'latest.pt')['model_state_dict'] for d in (full, cut))
    for k in a: assert torch.equal(a[k], b[k]), k
    ea = EventAccumulator(str(cut/'tensorboard')).Reload()
    assert [e.step for e in ea.Scalars('loss/valid')] == [0, 1, 2]


# --- issue 26.9: the number of loader workers changes nothing: each item's augmentation is seeded by (seed, epoch, index) --

WORKERS_CHILD = textwrap.dedent(r'''
    import sys, json, warnings
    from pathlib import Path
    import torch
    torch.set_num_threads(1)
    from medrecipes.folder import train_folder
    from _procs import kill_callbacks
    data, out, mode, workers = sys.argv[1], Path(sys.argv[2]), sys.argv[3], int(sys.argv[4])   # mode: full | kill:E:B | resume
    warnings.simplefilter('ignore')
    cfg = {'model': {'arch': 'resnet10t'}, 'data': {'path': data, 'size': 28, 'batch_size': 6, 'num_workers': workers},
           'trainer': {'max_epochs': 3, 'lr': 3e-3, 'precision': 'fp32', 'seed': 5, 'out_dir': str(out), 'progress': False,
                       'resume': 'last' if mode == 'resume' else False},
           'logging': {'csv': True, 'tensorboard': False, 'wandb': False}}
    s = train_folder(cfg, cbs=kill_callbacks(mode))
    (out/'done.json').write_text(json.dumps(s))
''')


def test_num_workers_changes_nothing_even_across_a_resume(digits, tmp_path):
    """Issue 26.9: 0 or 1 loader workers give the same run, and a run killed with 0 workers and resumed with 1 ends as the
    uninterrupted one. The images are wider than high, so the letterbox's random placement in training (`Resize`) draws numbers."""
    from PIL import Image
    wide = tmp_path/'wide'
    for f in sorted(digits.rglob('*.png')):
        (wide/f.relative_to(digits)).parent.mkdir(parents=True, exist_ok=True)
        with Image.open(f) as im: im.resize((36, 24)).save(wide/f.relative_to(digits))
    digits = wide
    script = tmp_path/'workers_child.py'; script.write_text(WORKERS_CHILD)
    env = {**os.environ, 'OMP_NUM_THREADS': '1', 'PYTHONHASHSEED': '0'}
    run = lambda out, mode, w: procs.run([script, digits, tmp_path/out, mode, w], env=env, timeout=600)
    for out, w in (('w0', 0), ('w1', 1)):
        r = run(out, 'full', w); assert r.returncode == 0, r.stderr[-3000:]
    r = run('cut', 'kill:1:2', 0); assert r.returncode == -signal.SIGKILL, (r.returncode, r.stderr[-3000:])
    r = run('cut', 'resume', 1); assert r.returncode == 0, r.stderr[-3000:]
    s = {k: json.loads((tmp_path/k/'done.json').read_text()) for k in ('w0', 'w1', 'cut')}
    assert s['cut']['resumed_from'] and s['cut']['epochs_this_fit'] == 2
    for k in ('w1', 'cut'):
        assert s[k]['best_valid_loss'] == s['w0']['best_valid_loss'] and s[k]['valid_loss'] == s['w0']['valid_loss'], k
        pd.testing.assert_frame_equal(pd.read_csv(tmp_path/k/'training_log.csv'), pd.read_csv(tmp_path/'w0'/'training_log.csv'))
        a, b = (load_checkpoint(tmp_path/d/'checkpoints'/'latest.pt')['model_state_dict'] for d in ('w0', k))
        for p in a: assert torch.equal(a[p], b[p]), f'{k}: {p}'
    (log,) = load_checkpoint(tmp_path/'cut'/'checkpoints'/'latest.pt')['resume_log']
    assert log['changed'] == {'data.num_workers': [0, 1], 'trainer.resume': [False, 'last']}
