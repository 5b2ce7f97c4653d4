"The shared callbacks: divergence guard, partial gradient-accumulation groups, the fit-only guard, one set of scalars."
import math, warnings
from pathlib import Path
import numpy as np, pandas as pd, pytest, torch
import torch.nn as nn, torch.nn.functional as F
from fastai.vision.all import Callback, DataLoaders, TfmdDL, Learner, accuracy
from fastai.callback.training import GradientAccumulation
from medrecipes.core import set_seed, load_checkpoint
from medrecipes.synth import make_digits
from medrecipes.callbacks import (EpochGradientAccumulation, TrainingDiverged, DivergenceGuard, FitOnlyCallback, TrainingLog,
                                  TensorBoardScalars, TextLog, epoch_scalars)


@pytest.fixture(scope='module')
def digits(tmp_path_factory):
    return make_digits(tmp_path_factory.mktemp('digits')/'d', splits=(8, 4, 4), size=28, seed=0, classes=(0, 1, 7))


def _folder_learner(digits, out, **kw):
    from medrecipes.data.folder import FolderDataLoaders
    from medrecipes.folder import folder_learner
    set_seed(0)
    dls = FolderDataLoaders.from_folder(digits, size=28, bs=6, seed=0, device='cpu')
    return folder_learner(dls, arch='resnet10t', out_dir=out, precision='fp32', tracking={'csv': True, 'tensorboard': False}, **kw)


def test_folder_learner_with_lr_1000_raises_and_best_stays_finite(digits, tmp_path):
    "Issue 11.5: lr=1000 stops with TrainingDiverged naming epoch, batch and cause; best.pt is never written from that state."
    learn = _folder_learner(digits, tmp_path/'a')
    with learn.no_bar(), learn.no_logging(), pytest.raises(TrainingDiverged, match=r'epoch 0, batch \d+: the training loss is .*learning rate too high'):
        learn.fit(3, 1000.)
    assert not (tmp_path/'a'/'checkpoints'/'best.pt').exists()   # no epoch ended well: nothing saved as best
    # a sane first epoch, then lr=1000: best.pt and latest.pt hold the finite epoch 0
    class Boost(Callback):
        def before_epoch(self):
            if self.epoch == 1: self.opt.set_hypers(lr=1000.)
    learn = _folder_learner(digits, tmp_path/'b', cbs=[Boost()])
    with learn.no_bar(), learn.no_logging(), pytest.raises(TrainingDiverged, match=r'epoch 1'): learn.fit(3, 1e-3)
    for name in ('best.pt', 'latest.pt'):
        ck = load_checkpoint(tmp_path/'b'/'checkpoints'/name)
        assert ck['epoch'] == 0 and math.isfinite(ck['history'][0]['valid_loss'])
        assert all(torch.isfinite(v).all() for v in ck['model_state_dict'].values() if v.is_floating_point()), name
    assert list(pd.read_csv(tmp_path/'b'/'training_log.csv').epoch) == [0]   # the diverged epoch ended in the middle: not logged


def _lin_data(n=240, bs=64, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 5, generator=g); y = (x[:, 0] + 0.5 * x[:, 1] > 0).long()
    ds = list(zip(x, y))
    return DataLoaders(TfmdDL(ds, bs=bs), TfmdDL(ds[:64], bs=64))


def test_partial_accumulation_group_gets_the_mean_loss_gradient():
    "Issue 12.8: 240 items, batch 64, accumulate 3: the last step (48 items) uses their mean-loss gradient, not 0.25 of it."
    class Grab(Callback):
        order = GradientAccumulation.order + 1   # before_step, after the accumulation callback let the step through
        def before_fit(self): self.steps = []
        def before_batch(self):
            if self.training: self.w0, self.b = {k: v.clone() for k, v in self.model.state_dict().items()}, (self.xb, self.yb)
        def before_step(self): self.steps.append((self.iter, self.w0, self.b, [p.grad.clone() for p in self.model.parameters()]))
    torch.manual_seed(0)
    grab = Grab()
    learn = Learner(_lin_data(), nn.Linear(5, 2), loss_func=nn.CrossEntropyLoss(), cbs=[EpochGradientAccumulation(3 * 64), grab])
    with learn.no_bar(), learn.no_logging(): learn.fit(1, 1e-2)
    assert [s[0] for s in grab.steps] == [2, 3]   # one full group of 3 batches, then the partial group: batch 3 alone
    it, w0, (xb, yb), grads = grab.steps[-1]
    assert len(yb[0]) == 48
    ref = nn.Linear(5, 2); ref.load_state_dict(w0)
    F.cross_entropy(ref(*xb), *yb).backward()
    for g, p in zip(grads, ref.parameters()): torch.testing.assert_close(g, p.grad, rtol=1e-5, atol=1e-7)


def test_fit_only_callbacks_sit_out_lr_find_and_get_preds(tmp_path):
    "One guard: the logs record the fit's epochs only, not lr_find's, validate's or get_preds'."
    from medrecipes.resume import ResumableLearner
    torch.manual_seed(0)
    learn = ResumableLearner(_lin_data(96, 16), nn.Linear(5, 2), loss_func=nn.CrossEntropyLoss(), metrics=accuracy,
                             cbs=[TrainingLog(tmp_path), TensorBoardScalars(tmp_path/'tb'), TextLog(tmp_path/'training.log'), DivergenceGuard()])
    assert all(isinstance(c, FitOnlyCallback) for c in learn.cbs if type(c).__name__ in ('TrainingLog', 'TensorBoardScalars', 'TextLog', 'DivergenceGuard'))
    with learn.no_bar(), learn.no_logging():
        learn.lr_find(num_it=5, show_plot=False)
        assert not (tmp_path/'training_log.csv').exists() and not (tmp_path/'training.log').exists()
        learn.fit(2, 1e-2); learn.validate(); learn.get_preds()
    h = epoch_scalars(learn).history
    log = pd.read_csv(tmp_path/'training_log.csv')
    assert list(log.epoch) == [0, 1] and list(log.columns) == ['epoch', 'train_loss', 'val_loss', 'val_acc', 'lr']
    np.testing.assert_allclose(log.train_loss, [r['train_loss'] for r in h]); np.testing.assert_allclose(log.val_loss, [r['valid_loss'] for r in h])
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    ea = EventAccumulator(str(tmp_path/'tb')).Reload()
    assert [e.step for e in ea.Scalars('loss/train')] == [0, 1]
    np.testing.assert_allclose([e.value for e in ea.Scalars('loss/train')], log.train_loss, rtol=1e-6)
    assert sum(' epoch ' in l for l in (tmp_path/'training.log').read_text().splitlines()) == 2


class _Killed(BaseException): pass


def test_folder_tensorboard_has_each_epoch_once_after_kill_and_resume(digits, tmp_path):
    "Issue 12.3: killed after TensorBoard wrote epoch 1 but before latest.pt did, the resumed run's loss/valid steps are [0, 1, 2]."
    from medrecipes.data.folder import FolderDataLoaders
    from medrecipes.folder import folder_learner
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    class Kill(Callback):
        order = 98   # after the logs, before ResumeCheckpoint (99)
        def after_epoch(self):
            if self.epoch == 1: raise _Killed()
    def learner(cbs=()):
        set_seed(0)
        dls = FolderDataLoaders.from_folder(digits, size=28, bs=6, seed=0, device='cpu')
        return folder_learner(dls, arch='resnet10t', out_dir=tmp_path, precision='fp32', tracking={'csv': True, 'tensorboard': True}, cbs=list(cbs))
    learn = learner([Kill()])
    with learn.no_bar(), learn.no_logging(), pytest.raises(_Killed): learn.fit(3, 1e-3)
    assert load_checkpoint(tmp_path/'checkpoints'/'latest.pt')['loop']['epoch'] == 0
    learn = learner().resume(True)
    with learn.no_bar(), learn.no_logging(): learn.fit(3, 1e-3)
    ea = EventAccumulator(str(tmp_path/'tensorboard')).Reload()
    assert [e.step for e in ea.Scalars('loss/valid')] == [0, 1, 2]
    assert list(pd.read_csv(tmp_path/'training_log.csv').epoch) == [0, 1, 2]


def test_fresh_start_after_a_kill_in_the_first_epoch_purges_the_old_events(digits, tmp_path):
    "Issue 26.10: killed after TensorBoard wrote epoch 0 but before latest.pt existed, resume=true starts afresh: steps [0, 1]."
    from medrecipes.folder import train_folder
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    class Kill(Callback):
        order = 98   # after the logs, before ResumeCheckpoint (99) writes the first latest.pt
        def after_epoch(self):
            if self.epoch == 0: raise _Killed()
    cfg = lambda resume: {'model': {'arch': 'resnet10t'}, 'data': {'path': str(digits), 'size': 28, 'batch_size': 6},
                          'trainer': {'max_epochs': 2, 'lr': 2e-3, 'precision': 'fp32', 'seed': 3, 'out_dir': str(tmp_path), 'progress': False,
                                      'resume': resume},
                          'logging': {'csv': True, 'tensorboard': True, 'wandb': False}}
    with warnings.catch_warnings(), pytest.raises(_Killed):
        warnings.simplefilter('ignore'); train_folder(cfg(False), cbs=[Kill()])
    assert not (tmp_path/'checkpoints'/'latest.pt').exists() and list((tmp_path/'tensorboard').glob('events.*'))
    with warnings.catch_warnings():
        warnings.simplefilter('ignore'); s = train_folder(cfg(True))   # nothing to resume: a fresh start in the same folder
    assert s['resumed_from'] is None
    ea = EventAccumulator(str(tmp_path/'tensorboard')).Reload()
    for tag in ('loss/train', 'loss/valid', 'lr'): assert [e.step for e in ea.Scalars(tag)] == [0, 1], tag
    np.testing.assert_allclose([e.value for e in ea.Scalars('loss/valid')], pd.read_csv(tmp_path/'training_log.csv').val_loss, rtol=1e-6)


@pytest.mark.parametrize('name,new', [('class_weights', 'medrecipes.losses'), ('TrainValCrossEntropy', 'medrecipes.losses'),
                                      ('ClassRecall', 'medrecipes.classification_metrics'),
                                      ('recall_metrics', 'medrecipes.classification_metrics')])
def test_losses_and_metrics_that_moved_still_import_from_callbacks_with_a_warning(name, new):
    "Losses and classification metrics have their own modules; medrecipes.callbacks keeps the callbacks, and the old paths warn for one release."
    import importlib
    import medrecipes.callbacks as C
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter('always')
        assert getattr(C, name) is getattr(importlib.import_module(new), name)
    assert [str(x.message) for x in w if issubclass(x.category, DeprecationWarning)] == [f'medrecipes.callbacks.{name} is deprecated: it moved to {new}.{name}']
    assert name not in C.__all__
    with pytest.raises(AttributeError, match="has no attribute 'nothing_here'"): C.nothing_here


def test_callbacks_module_holds_callbacks_and_no_losses_or_metrics():
    "Every class medrecipes.callbacks defines is a fastai callback (or a warning / error it raises)."
    import inspect
    import medrecipes.callbacks as C
    from fastai.callback.core import Callback
    classes = [getattr(C, n) for n in C.__all__ if inspect.isclass(getattr(C, n))]
    assert classes and all(issubclass(c, (Callback, Warning, Exception)) for c in classes), classes


def test_losses_module():
    from medrecipes.losses import class_weights, TrainValCrossEntropy
    w = class_weights(['a'] * 6 + ['b'] * 3 + ['c'], ['a', 'b', 'c'])
    assert torch.allclose(w, torch.tensor([10 / 18, 10 / 9, 10 / 3]))
    with pytest.raises(ValueError, match=r"\['c'\]"): class_weights(['a', 'b'], ['a', 'b', 'c'])
    lf, p, t = TrainValCrossEntropy(w), torch.randn(7, 3), torch.tensor([0, 1, 2, 2, 1, 0, 0])
    assert torch.allclose(lf.train()(p, t), F.cross_entropy(p, t, weight=w)) and torch.allclose(lf.eval()(p, t), F.cross_entropy(p, t))
