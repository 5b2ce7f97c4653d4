"""The classifier core: body/head split (freeze, fine_tune, discriminative lrs), local weights, metrics with absent classes,
evaluate(split, which), the checkpoint contract read with plain torch.load, load_classifier / predict."""
import json, warnings
from pathlib import Path
import numpy as np, pandas as pd, pytest, torch, timm
import torch.nn as nn
from PIL import Image
from medrecipes.synth import make_digits
from medrecipes.data.folder import FolderDataLoaders
from medrecipes import classify
from medrecipes.classify import create_classifier, classifier_learner, load_classifier, predict
from medrecipes.data.xray import split_fingerprint as data_fingerprint   # the hash of (name, split) pairs
from medrecipes.classification_metrics import classification_metrics

CONTRACT = {'model_state_dict', 'optimizer_state_dict', 'config', 'arch', 'class_names', 'normalization', 'model_kwargs',
            'data_fingerprint', 'loop', 'recorder', 'callbacks', 'rng', 'history', 'epoch'}


@pytest.fixture(scope='module')
def digits(tmp_path_factory):
    "Three digits, 6/3/3 images per class in train/valid/test, 28 px."
    return make_digits(tmp_path_factory.mktemp('digits')/'d', splits=(6, 3, 3), size=28, seed=0, classes=(0, 1, 7))


@pytest.fixture
def dls(digits):
    return FolderDataLoaders.from_folder(digits, size=28, bs=6, seed=0, device='cpu', augment=False)


def _learn(dls, run, **kw):
    return classifier_learner(dls, run, 'resnet10t', pretrained=False, **kw)


def _fit(learn, *args, **kw):
    with warnings.catch_warnings(), learn.no_bar(), learn.no_logging():
        warnings.simplefilter('ignore')
        learn.fit_one_cycle(*args, **kw)


def test_freeze_trains_only_the_head_and_batch_norms(dls, tmp_path):
    learn = _learn(dls, tmp_path)
    n_all = sum(p.numel() for p in learn.model.parameters())
    learn.freeze()
    head = sum(p.numel() for p in learn.model[1].parameters())
    bn = sum(p.numel() for m in learn.model[0].modules() if isinstance(m, nn.BatchNorm2d) for p in m.parameters())
    trainable = sum(p.numel() for p in learn.model.parameters() if p.requires_grad)
    assert head == 3 * 512 + 3 and trainable == head + bn < n_all / 10   # fastai's train_bn: batch norms stay trainable
    convs = {k: v.clone() for k, v in learn.model[0].state_dict().items() if k.endswith('weight') and v.ndim == 4}
    head_w = learn.model[1][-1].weight.detach().clone()
    _fit(learn, 1, 1e-2)                                                   # a frozen epoch: the convolutions do not move
    after = learn.model[0].state_dict()
    assert all(torch.equal(v, after[k]) for k, v in convs.items())
    assert not torch.equal(head_w, learn.model[1][-1].weight)
    learn.unfreeze()
    assert sum(p.numel() for p in learn.model.parameters() if p.requires_grad) == n_all


def test_discriminative_learning_rates_and_fine_tune(dls, tmp_path):
    learn = _learn(dls, tmp_path)
    _fit(learn, 1, slice(1e-5, 1e-3))
    assert len(learn.opt.param_groups) == 2
    body_lr, head_lr = (h['lr'] for h in learn.opt.hypers)
    assert head_lr > 10 * body_lr > 0                                      # the body gets the lower rate
    with warnings.catch_warnings(), learn.no_bar(), learn.no_logging():
        warnings.simplefilter('ignore')
        learn.fine_tune(1, 1e-3, freeze_epochs=1)
    assert all(p.requires_grad for p in learn.model.parameters())          # fine_tune ends unfrozen


def test_local_weights_and_the_errors_that_point_to_them(tmp_path, monkeypatch):
    ref = timm.create_model('resnet10t', pretrained=False, num_classes=0)
    torch.save(ref.state_dict(), tmp_path/'w.pth')
    m = create_classifier('resnet10t', 4, weights=tmp_path/'w.pth')
    for k, v in ref.state_dict().items(): assert torch.equal(m[0].model.state_dict()[k], v), k
    assert m[1][-1].out_features == 4 and m[1][-1].weight.std() < 0.05   # a new head, started near zero
    with pytest.raises(FileNotFoundError, match=r"weights='.*nope\.pth': no such file"):
        create_classifier('resnet10t', 4, weights=tmp_path/'nope.pth')
    # a hub download that fails (no internet) says how to get out of it
    def offline(*a, **kw):
        if kw.get('pretrained'): raise OSError('We couldn\'t connect to the hub')
        return timm.create_model(*a, **kw)
    monkeypatch.setattr('fastai.vision.learner.timm.create_model', offline)
    with pytest.raises(RuntimeError, match=r"weights=PATH.*pretrained=False"):
        create_classifier('resnet10t', 4, pretrained=True)


def test_macro_f1_skips_absent_classes():
    "Issue 12.6: perfect predictions on a split without one class are a macro F1 of 1, and the class is reported absent."
    classes = ['a', 'b', 'c']
    y = np.array([0, 0, 1, 1, 1])
    m = classification_metrics(y, np.eye(3)[y] * .9 + .1/3, classes)
    assert m['accuracy'] == 1. and m['macro_f1'] == 1.
    assert m['absent_classes'] == ['c'] and np.isnan(m['per_class']['c']['f1']) and np.isnan(m['roc_auc_ovr']['c'])
    assert m['per_class']['c']['support'] == 0 and m['per_class']['a']['f1'] == 1.
    # a class predicted but absent from the truth is present (a wrong prediction), with F1 0
    m = classification_metrics(np.array([0, 0, 1]), np.eye(3)[[0, 2, 1]], classes)
    assert m['absent_classes'] == [] and m['per_class']['c']['f1'] == 0.
    assert m['macro_f1'] == pytest.approx(np.mean([2/3, 1., 0.]))


def test_evaluate_checkpoints_and_files(dls, tmp_path):
    learn = _learn(dls, tmp_path/'run')
    _fit(learn, 2, 1e-3)
    with pytest.raises(ValueError, match="which must be 'best', 'latest' or 'current', not 'final'"): learn.evaluate('test', 'final')
    with pytest.raises(ValueError, match="split must be 'valid' or 'test', not 'train'"): learn.evaluate('train')
    latest = learn.evaluate('test', 'latest')
    probs = predict(tmp_path/'run'/'checkpoints'/'latest.pt', dls.files['test'])
    y = np.array([dls.vocab.o2i[f.parent.name] for f in dls.files['test']])
    assert latest['accuracy'] == pytest.approx((probs.argmax(1) == y).mean())
    best = learn.evaluate('valid', 'best')
    assert best['checkpoint'] == 'best' and best['n'] == 9
    ck = torch.load(tmp_path/'run'/'checkpoints'/'best.pt', weights_only=True)
    assert best['loss'] == pytest.approx(ck['best_value'], rel=1e-4)          # the loss of the best epoch, recomputed
    run = tmp_path/'run'
    m = json.loads((run/'valid_metrics.json').read_text())
    assert m['split'] == 'valid' and m['confusion_matrix'] == best['confusion_matrix']
    cm = pd.read_csv(run/'test_confusion_matrix.csv', index_col=0)
    assert cm.values.tolist() == latest['confusion_matrix'] and list(cm.columns) == ['pred_0', 'pred_1', 'pred_7']
    with Image.open(run/'test_confusion_matrix.png') as im: assert im.format == 'PNG' and im.size[0] >= 300


def test_checkpoints_load_with_plain_torch_and_rebuild_the_model(dls, tmp_path):
    learn = _learn(dls, tmp_path/'run', model_kwargs=dict(drop_rate=0.1), config={'lr': 1e-3},
                   data_fingerprint=data_fingerprint([('a.png', 'train')]))
    _fit(learn, 2, 1e-3)
    x = torch.randn(2, 3, 28, 28)
    for name in ('best.pt', 'latest.pt'):
        ck = torch.load(tmp_path/'run'/'checkpoints'/name, map_location='cpu', weights_only=True)
        assert CONTRACT <= set(ck), CONTRACT - set(ck)
        assert ck['arch'] == 'resnet10t' and ck['class_names'] == ['0', '1', '7'] and ck['model_kwargs'] == {'drop_rate': 0.1}
        assert set(ck['normalization']) >= {'mean', 'std', 'size'} and ck['config'] == {'lr': 1e-3}
        assert ck['optimizer_state_dict']['state']
        # the documented builder and the stored keys alone rebuild the model
        model = create_classifier(ck['arch'], len(ck['class_names']), pretrained=False, **ck['model_kwargs'])
        model.load_state_dict(ck['model_state_dict'])
        if name == 'latest.pt':
            learn.model.eval()
            torch.testing.assert_close(model.eval()(x), learn.model(x).as_subclass(torch.Tensor))
    assert data_fingerprint([('b', 'valid'), ('a', 'train')]) == data_fingerprint([('a', 'train'), ('b', 'valid')])
    assert data_fingerprint([('a', 'valid'), ('b', 'train')]) != data_fingerprint([('a', 'train'), ('b', 'valid')])


def test_checkpoints_carry_history_and_epoch(dls, tmp_path):
    learn = _learn(dls, tmp_path/'run')
    _fit(learn, 2, 1e-3)
    ck = torch.load(tmp_path/'run'/'checkpoints'/'latest.pt', weights_only=True)
    assert ck['epoch'] == 1 and [h['epoch'] for h in ck['history']] == [0, 1]
    assert {'train_loss', 'valid_loss', 'accuracy'} <= set(ck['history'][-1])


def test_predict_takes_paths_pil_images_and_arrays(dls, tmp_path):
    learn = _learn(dls, tmp_path/'run')
    _fit(learn, 1, 1e-3)
    ckpt = tmp_path/'run'/'checkpoints'/'latest.pt'
    files = dls.files['test'][:4]
    ref = predict(ckpt, files)
    assert ref.shape == (4, 3) and np.allclose(ref.sum(1), 1, atol=1e-5)
    pils = [Image.open(f) for f in files]
    arrays = [np.asarray(Image.open(f).convert('RGB')) for f in files]
    gray = [np.asarray(Image.open(f).convert('L')) for f in files]
    np.testing.assert_allclose(predict(ckpt, [str(f) for f in files]), ref, atol=1e-6)
    np.testing.assert_allclose(predict(ckpt, pils), ref, atol=1e-6)
    np.testing.assert_allclose(predict(ckpt, arrays), ref, atol=1e-6)
    np.testing.assert_allclose(predict(ckpt, gray), predict(ckpt, [Image.fromarray(g) for g in gray]), atol=1e-6)
    np.testing.assert_allclose(predict(load_classifier(ckpt), files[0]), ref[:1], atol=1e-6)   # a loaded model, one item
    full = [g.copy() for g in gray]
    for g in full: g[0, 0], g[0, 1] = 0, 255                               # the full 8-bit range
    wide = [g.astype(np.uint16) * 257 for g in full]                       # the same images in 16 bits: windowed, not saturated
    np.testing.assert_allclose(predict(ckpt, wide), predict(ckpt, full), atol=1e-6)
    with pytest.raises(ValueError, match=r'expected an H x W'): predict(ckpt, [np.zeros((2, 8, 8, 3), np.uint8)])
    with pytest.raises(TypeError, match='cannot read a int'): predict(ckpt, [3])
    with pytest.raises(KeyError, match="no 'arch'"): load_classifier({'model_state_dict': {}, 'class_names': [], 'normalization': {}})


def test_precision_accumulation_and_clipping_for_both_classifiers(dls, btxrd, tmp_path):
    from fastai.callback.training import GradientClip
    from medrecipes.callbacks import AutocastMixedPrecision, EpochGradientAccumulation
    from medrecipes.xray import XrayDataLoaders, xray_learner
    kinds = lambda l: {type(c).__name__ for c in l.cbs}
    plain = _learn(dls, tmp_path/'a')
    assert not kinds(plain) & {'AutocastMixedPrecision', 'EpochGradientAccumulation', 'GradientClip'} and plain.precision == 'fp32'
    learn = _learn(dls, tmp_path/'b', precision='bf16', accumulate=2, clip_grad=0.5)
    assert {'AutocastMixedPrecision', 'EpochGradientAccumulation', 'GradientClip'} <= kinds(learn)
    assert next(c for c in learn.cbs if isinstance(c, EpochGradientAccumulation)).n_acc == 2 * dls.train.bs
    _fit(learn, 1, 1e-3)                                                    # runs, bf16 autocast on the CPU
    with pytest.raises(ValueError, match='accumulate must be a whole number >= 1, not 0'): _learn(dls, tmp_path/'c', accumulate=0)
    with pytest.raises(ValueError, match='precision must be one of'): _learn(dls, tmp_path/'c', precision='fp8')
    xdls = XrayDataLoaders.from_btxrd(btxrd, split='center', size=32, bs=16, num_workers=0, seed=0)
    x = xray_learner(xdls, arch='resnet10t', pretrained=False, out_dir=tmp_path/'x', precision='bf16', accumulate=3, clip_grad=1.)
    assert {'AutocastMixedPrecision', 'EpochGradientAccumulation', 'GradientClip'} <= kinds(x) and x.precision == 'bf16'


MOVED_FROM_CLASSIFY = ['classification_metrics', 'negative_log_likelihood', 'brier_score', 'reliability_bins',
                       'expected_calibration_error', 'scaled_probs', 'fit_temperature', 'calibration_report', 'plot_reliability']

@pytest.mark.parametrize('name', MOVED_FROM_CLASSIFY)
def test_metrics_that_moved_still_import_from_classify_with_a_warning(name):
    "The classification and calibration metrics live in medrecipes.classification_metrics; the old path warns for one release."
    import medrecipes.classification_metrics as M
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter('always')
        assert getattr(classify, name) is getattr(M, name)
    assert [str(x.message) for x in w if issubclass(x.category, DeprecationWarning)] == \
        [f'medrecipes.classify.{name} is deprecated: it moved to medrecipes.classification_metrics.{name}']
    assert name not in classify.__all__ and name in M.__all__


def test_from_import_of_a_moved_name_warns_and_unknown_names_still_fail():
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter('always')
        from medrecipes.classify import scaled_probs
    assert any('medrecipes.classification_metrics.scaled_probs' in str(x.message) for x in w)
    with pytest.raises(ImportError): from medrecipes.classify import no_such_name   # noqa: F401
