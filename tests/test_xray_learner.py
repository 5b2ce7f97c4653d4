import json, re, subprocess, sys, warnings
from pathlib import Path
import numpy as np, pandas as pd, pytest, torch
import torch.nn as nn, torch.nn.functional as F
from PIL import Image
from medrecipes.xray import *
from medrecipes.callbacks import RecallCollapseWarning, class_weights
import _procs as procs


@pytest.fixture
def dls(btxrd):
    return XrayDataLoaders.from_btxrd(btxrd, split='center', size=64, bs=16, num_workers=0, seed=0)


def _frozen(learn):
    "lr=0 and BN momentum 0: the model never changes, so the validation loss is the same every epoch."
    for m in learn.model.modules():
        if isinstance(m, nn.BatchNorm2d): m.momentum = 0.
    return learn


def test_learner_model_weights_and_valid_loss_is_plain_ce(dls, tmp_path):
    learn = xray_learner(dls, pretrained=False, out_dir=tmp_path, patience=None)
    assert type(learn.model[0].model).__name__ == 'EfficientNet' and learn.model[1][-1].out_features == 3
    # class weights from the training split only (centers 2 and 3, the test set, are ignored)
    assert torch.allclose(learn.class_weights, class_weights(dls.train_labels(), XRAY_CLASSES))
    all_w = class_weights(dls.items_df.label, XRAY_CLASSES)
    assert not torch.allclose(learn.class_weights, all_w, atol=1e-3)
    with learn.no_bar(), learn.no_logging(): learn.fit_one_cycle(2, 1e-3)
    log = pd.read_csv(learn.results_dir/'training_log.csv')
    learn.model.eval(); logits, ys = [], []
    with torch.no_grad():
        for xb, yb in dls.valid: logits.append(learn.model(xb).as_subclass(torch.Tensor)); ys.append(yb.as_subclass(torch.Tensor))
    logits, ys = torch.cat(logits), torch.cat(ys)
    plain = F.cross_entropy(logits, ys).item()
    weighted = F.cross_entropy(logits, ys, weight=learn.class_weights).item()
    assert abs(learn.recorder.values[-1][1] - plain) < 1e-4 and abs(log.val_loss.iloc[-1] - plain) < 1e-4
    assert abs(plain - weighted) > 1e-3   # the test could tell them apart
    recall_m = ((logits.argmax(1) == 2) & (ys == 2)).sum().item() / (ys == 2).sum().item()
    assert log.val_recall_malignant.iloc[-1] == pytest.approx(recall_m)
    assert log.val_acc.iloc[-1] == pytest.approx((logits.argmax(1) == ys).float().mean().item())
    assert log.lr.iloc[-1] < log.lr.max() or len(log) == 1  # one-cycle schedule is logged


def test_early_stopping_and_checkpoints(dls, tmp_path):
    learn = _frozen(xray_learner(dls, pretrained=False, out_dir=tmp_path, patience=2))
    with learn.no_bar(), learn.no_logging(): learn.fit(10, 0.)
    log = pd.read_csv(learn.results_dir/'training_log.csv')
    assert len(log) == 3                                  # epoch 0 best, 2 epochs without improvement, stop
    ckpts = tmp_path/'center_holdout'/'checkpoints'
    assert learn.run_dir == tmp_path/'center_holdout' and sorted(p.name for p in ckpts.iterdir()) == ['best.pt', 'latest.pt']  # no temporary files
    best = torch.load(ckpts/'best.pt', weights_only=True)
    final = torch.load(ckpts/'latest.pt', weights_only=True)   # after the fit: the final state
    assert best['epoch'] == best['best_epoch'] == 0 and final['epoch'] == 2 and final['loop']['finished']
    assert [h['epoch'] for h in final['history']] == [0, 1, 2] and final['history'][0]['valid_loss'] == pytest.approx(log.val_loss[0])
    for ck in (best, final):
        assert ck['class_names'] == ['Normal', 'Benign', 'Malignant']
        assert ck['normalization'] == dls.normalization and ck['arch'] == 'efficientnet_b0' and ck['model_kwargs'] == {'drop_rate': 0.2}
        assert set(ck) >= {'model_state_dict', 'optimizer_state_dict', 'config', 'class_names', 'normalization', 'data_fingerprint'}
        assert ck['optimizer_state_dict']['state'] and ck['split'] == 'center'
        assert ck['data_fingerprint'] == dls.data_fingerprint
    assert best['best_value'] == pytest.approx(log.val_loss.min())


def test_malignant_collapse_warning(dls, tmp_path):
    learn = _frozen(xray_learner(dls, pretrained=False, out_dir=tmp_path, patience=None))
    head = learn.model[1][-1]
    with torch.no_grad(): head.weight.zero_(); head.bias.copy_(torch.tensor([5., 0., -5.]))
    with learn.no_bar(), learn.no_logging():
        with warnings.catch_warnings():
            warnings.simplefilter('error', RecallCollapseWarning)
            learn.fit(1, 0.)                              # one epoch at 0: no warning yet
        with pytest.warns(RecallCollapseWarning, match='Malignant recall has been 0 for 2 epochs'):
            learn.fit(2, 0.)


def test_checkpoint_loader_matches_learner(dls, tmp_path, btxrd):
    learn = xray_learner(dls, pretrained=False, out_dir=tmp_path, patience=None)
    with learn.no_bar(), learn.no_logging(): learn.fit(1, 1e-3)
    logits, _ = learn.get_preds(dl=dls.btxrd_test_dl(), act=lambda x: x)
    files = [dls.img_dir/i for i in dls.test_df().image_id]
    ckpt = tmp_path/'center_holdout'/'checkpoints'/'latest.pt'
    p = predict_xray(ckpt, files)
    assert p.shape == (len(files), 3) and np.allclose(p.sum(1), 1, atol=1e-5) and (p >= 0).all()
    t = torch.load(ckpt, weights_only=True)['temperature']   # predict applies the temperature fitted after the fit
    assert np.abs(p - torch.softmax(logits.float() / t, 1).numpy()).max() < 1e-4


def _check_run(res, split_tag, btxrd):
    log = pd.read_csv(res/'training_log.csv')
    assert list(log.columns) == ['epoch', 'train_loss', 'val_loss', 'val_acc', 'val_recall_normal', 'val_recall_benign', 'val_recall_malignant', 'lr']
    assert len(log) >= 1 and np.isfinite(log.drop(columns=[]).values).all()
    for png in ('loss_curve.png', 'recall_curve.png', 'test_confusion_matrix.png'):
        assert (res/png).read_bytes()[:8] == b'\x89PNG\r\n\x1a\n'
        with Image.open(res/png) as im: assert im.format == 'PNG' and im.size[0] > 100
    split = pd.read_csv(res/'split.csv')
    assert split.image_id.is_unique and len(split) == 120
    n_test = int((split.split == 'test').sum())
    cm = pd.read_csv(res/'test_confusion_matrix.csv', index_col=0)
    assert cm.values.sum() == n_test and list(cm.index) == ['true_Normal', 'true_Benign', 'true_Malignant']
    m = json.loads((res/'test_metrics.json').read_text(), parse_constant=lambda c: pytest.fail(f'test_metrics.json holds {c}: not strict JSON'))
    assert m['n'] == n_test and m['checkpoint'] == 'best'
    assert np.array(m['confusion_matrix']).sum(1).tolist() == [m['per_class'][c]['support'] for c in XRAY_CLASSES]
    for c in XRAY_CLASSES:
        assert set(m['per_class'][c]) == {'precision', 'recall', 'f1', 'support'} and m['absent_classes'] == []
        assert 0 <= m['roc_auc_ovr'][c] <= 1
    assert 0 <= m['macro_f1'] <= 1
    for kind in ('best', 'latest'):
        ck = torch.load(res/'checkpoints'/f'{kind}.pt', weights_only=True)
        model, _ = load_xray_model(ck)
        assert model(torch.zeros(2, 3, 64, 64)).shape == (2, 3)
    cfg = xray_config(res/'config.yaml')
    assert cfg['data']['split'] == split_tag and cfg['data']['size'] == 64


@pytest.mark.slow
def test_cli_train_all_end_to_end(btxrd, tmp_path):
    r = procs.run(['-m', 'medrecipes.cli', 'train-all', 'xray', '--config-name', 'xray_demo',
                   f'data.path={btxrd}', f'trainer.out_dir={tmp_path/"run"}', 'data.size=64', 'trainer.max_epochs=2',
                   'trainer.lr=2e-3', 'callbacks.patience=3'], timeout=900)
    assert r.returncode == 0, r.stderr[-3000:]
    assert 'valid_loss' in r.stdout + r.stderr          # the progress table
    out = tmp_path/'run'
    for split, run in (('stratified', 'stratified'), ('center', 'center_holdout')):
        _check_run(out/run, split, btxrd)
    summary = pd.read_csv(out/'summary.csv')
    assert summary.split.tolist() == ['stratified', 'center']


def test_cli_bad_overrides_are_refused(btxrd, tmp_path):
    run = lambda *a: procs.run(['-m', 'medrecipes.cli', 'train', 'xray', f'data.path={btxrd}', *a])
    r = run('trainer.epochs=2')
    assert r.returncode == 2 and "unknown config key 'trainer.epochs'; known keys: max_epochs" in r.stderr
    r = run('model=nonet')
    assert r.returncode == 2 and "Could not find 'model/nonet'" in r.stderr
    r = run('+trainer.epoch=2')          # appended keys reach the recipe, which refuses unknown ones
    assert r.returncode != 0 and "unknown config key 'epoch'" in r.stderr


def test_train_xray_checks_a_resume_before_writing_and_a_noop_resume_keeps_train_seconds(btxrd, tmp_path, monkeypatch, capsys):
    from medrecipes.data.xray import split_fingerprint
    from medrecipes.config import flatten_config
    from medrecipes.core import save_checkpoint
    kw = dict(data_path=btxrd, out_dir=tmp_path, arch='resnet10t', pretrained=False, size=32, bs=16, epochs=1, num_workers=0,
              progress=False, split='stratified', patience=None)
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')
        s1 = train_xray(**kw)
        printed = capsys.readouterr()   # progress=False: no bar in training, temperature scaling or the test evaluation
        assert not re.search(r'\d+\.\d+% \[\d+/\d+', printed.out + printed.err), printed
        run = tmp_path/'stratified'
        assert s1['best_checkpoint'] == str(run/'checkpoints'/'best.pt') and s1['final_checkpoint'] == str(run/'checkpoints'/'latest.pt')
        split = pd.read_csv(run/'split.csv')
        ck = torch.load(run/'checkpoints'/'latest.pt', weights_only=True)
        assert ck['data_fingerprint'] == split_fingerprint(zip(split.image_id, split.split)) and ck['config']['trainer']['seed'] == 42
        assert ck['config']['trainer']['max_epochs'] == 1 and 'epochs' not in ck['config']   # the nested config, as resolved
        # issue 12.4: a resume with nothing left to train keeps the run's own train_seconds, not the no-op's
        (run/'summary.json').write_text(json.dumps({**s1, 'train_seconds': 123.4}))   # a figure no re-run could reproduce
        s2 = train_xray(**kw, resume=True)
        assert s2['epochs_this_fit'] == 0 and s2['resumed_from'] == str(run/'checkpoints'/'latest.pt')
        assert s2['train_seconds'] == 123.4 and json.loads((run/'summary.json').read_text())['train_seconds'] == 123.4
        assert s2['test_accuracy'] == s1['test_accuracy'] and s2['best_epoch'] == s1['best_epoch']
        # a checkpoint of an earlier release holds the flat config (`epochs`, `bs`...): it still resumes, and a change is still refused
        ck = torch.load(run/'checkpoints'/'latest.pt', weights_only=True)
        save_checkpoint(run/'checkpoints'/'latest.pt', **{**ck, 'config': flatten_config(ck['config'])})
        assert train_xray(**kw, resume=True)['epochs_this_fit'] == 0
        save_checkpoint(run/'checkpoints'/'latest.pt', **{**ck, 'config': flatten_config(ck['config'])})
        with pytest.raises(ValueError, match=r'config differs in trainer.lr'): train_xray(**{**kw, 'lr': 0.5}, resume=True)
        # the resume is checked before config.yaml and split.csv are written: a refused resume leaves them as they were
        before = {f: (run/f).read_bytes() for f in ('config.yaml', 'split.csv')}
        def refuse(self, path=True): raise ValueError('resume refused')
        monkeypatch.setattr(XrayLearner, 'resume', refuse)
        with pytest.raises(ValueError, match='resume refused'): train_xray(**{**kw, 'seed': 7}, resume=True)
        assert {f: (run/f).read_bytes() for f in before} == before


def test_tensorboard_and_wandb_reach_the_xray_recipe(dls, tmp_path):
    "The `logging` group works for X-ray as for the other recipes; training_log.csv is always written."
    pytest.importorskip('wandb')
    learn = xray_learner(dls, arch='resnet10t', pretrained=False, out_dir=tmp_path, tracking={'tensorboard': True, 'wandb': True})
    names = [type(c).__name__ for c in learn.cbs]
    assert {'TrainingLog', 'TensorBoardScalars', 'WandbTracker'} <= set(names)
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')
        with learn.no_bar(), learn.no_logging(): learn.fit(1, 1e-3)
    run = tmp_path/'center_holdout'
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    ea = EventAccumulator(str(run/'tensorboard')).Reload()
    assert [e.step for e in ea.Scalars('loss/valid')] == [0]
    assert any((run/'wandb').rglob('*.wandb')) and len(pd.read_csv(run/'training_log.csv')) == 1
    plain = xray_learner(dls, arch='resnet10t', pretrained=False, out_dir=tmp_path/'p', tracking={'csv': False})
    assert [type(c).__name__ for c in plain.cbs].count('TrainingLog') == 1 and 'WandbTracker' not in [type(c).__name__ for c in plain.cbs]


def test_old_fingerprint_function_warns_and_names_the_new_path(dls):
    "`medrecipes.xray.xray_fingerprint(dls)` is `dls.data_fingerprint` now; the old function works for one release, with a DeprecationWarning."
    import medrecipes.xray as X, medrecipes.classify as C
    from medrecipes.data.xray import split_fingerprint
    with pytest.warns(DeprecationWarning, match=r'XrayDataLoaders\.data_fingerprint'): assert X.xray_fingerprint(dls) == dls.data_fingerprint
    with pytest.warns(DeprecationWarning, match=r'medrecipes\.data\.xray\.split_fingerprint'): f = C.data_fingerprint
    assert f is split_fingerprint and f(zip(dls.split_df.image_id, dls.split_df.split)) == dls.data_fingerprint
    assert 'xray_fingerprint' not in X.__all__ and 'data_fingerprint' not in C.__all__
