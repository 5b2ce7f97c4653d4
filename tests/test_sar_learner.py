"The SAR recipe: TensorBoard events, checkpoints, exact resume after SIGKILL, OOM retries, the comparison, the CLI."
import json, os, signal, subprocess, sys, textwrap, warnings
from pathlib import Path
import numpy as np, pandas as pd, pytest, torch
from medrecipes.core import load_checkpoint
from medrecipes.synth import make_sar
from medrecipes.data.sar import SarDataLoaders, SarPreprocess
from medrecipes.sar import sar_learner, train_sar, reconstruct_sar, load_sar_model, SarTensorBoard
from medrecipes.sar_experiments import compare_sar
import _procs as procs

SMALL = dict(patch=32, bs=8, patches_per_image=3, base_channels=8, progress=False, device='cpu')


@pytest.fixture(scope='module')
def sar_data(tmp_path_factory):
    return make_sar(tmp_path_factory.mktemp('sar'), n_train=6, n_valid=2, n_test=1, size=64, seed=0)


def _events(d):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    return EventAccumulator(str(d), size_guidance={'scalars': 0, 'images': 0, 'histograms': 0}).Reload()


def test_tensorboard_events_hold_scalars_images_and_histograms(sar_data, tmp_path):
    dls = SarDataLoaders.from_folder(sar_data, patch=32, bs=8, patches_per_image=3, seed=0, device='cpu')
    learn = sar_learner(dls, variant='residual', base_channels=8, out_dir=tmp_path, hist_every=2)
    with learn.no_bar(), learn.no_logging(): learn.fit(3, 1e-3)
    ea = _events(tmp_path/'tensorboard'); tags = ea.Tags()
    want = {'loss/train', 'loss/valid', 'psnr/train', 'psnr/valid', 'ssim/train', 'ssim/valid', 'enl_ratio/valid', 'epi/valid', 'lr'}
    assert want <= set(tags['scalars'])
    assert not any(t.startswith('gpu/') for t in tags['scalars'])          # no GPU memory scalars on CPU
    names = list(learn.recorder.metric_names[1:-1])
    for tag, col in [('loss/valid', 'valid_loss'), ('psnr/valid', 'psnr'), ('ssim/valid', 'ssim')]:
        ev = ea.Scalars(tag)
        assert [e.step for e in ev] == [0, 1, 2]
        np.testing.assert_allclose([e.value for e in ev], [v[names.index(col)] for v in learn.recorder.values], rtol=1e-6)
    # the training loss is the epoch's mean over its items, as in every log and the checkpoints' history
    from medrecipes.callbacks import epoch_scalars
    np.testing.assert_allclose([e.value for e in ea.Scalars('loss/train')], [h['train_loss'] for h in epoch_scalars(learn).history], rtol=1e-6)
    # training PSNR is the mean over the epoch's training predictions: a plausible dB value, not a placeholder
    assert all(5 < e.value < 60 for e in ea.Scalars('psnr/train'))
    imgs = ea.Images('reconstruction/0')
    assert [i.step for i in imgs] == [0, 1, 2] and (imgs[0].width, imgs[0].height) == (3 * 32, 32)
    hw = [t for t in tags['histograms'] if t.startswith('weights/')]; hg = [t for t in tags['histograms'] if t.startswith('grads/')]
    assert len(hw) == len(list(learn.model.parameters())) and len(hg) == len(hw)
    assert [h.step for h in ea.Histograms(hw[0])] == [0, 2]                # every hist_every epochs
    assert 'epoch 2 ' in (tmp_path/'training.log').read_text()


def test_checkpoints_carry_everything_and_load_weights_only(sar_data, tmp_path):
    s = train_sar(data_path=sar_data, out_dir=tmp_path, epochs=2, variant='baseline', **SMALL)
    for name in ('latest.pt', 'best.pt'):
        ck = torch.load(tmp_path/'checkpoints'/name, weights_only=True)
        assert {'model_state_dict', 'optimizer_state_dict', 'loop', 'recorder', 'callbacks', 'rng', 'config', 'preprocessing_params',
                'model_config', 'patch', 'data_fingerprint'} <= set(ck)
        assert 'preprocess' not in ck
        assert ck['config']['model']['variant'] == 'baseline' and ck['config']['trainer']['lr'] == 1e-4
        cbs = ck['callbacks']
        assert {'best', 'wait'} <= set(cbs['ReduceLROnPlateau.0']) and {'best', 'wait'} <= set(cbs['EarlyStoppingCallback.0'])
        assert ck['optimizer_state_dict']['hypers'][0]['lr'] == pytest.approx(1e-4)
    dls_pre = SarDataLoaders.from_folder(sar_data, patch=32).preprocess
    assert SarPreprocess.from_dict(load_checkpoint(tmp_path/'checkpoints'/'best.pt')['preprocessing_params']) == dls_pre
    assert s['compression'] == 16 and s['bs_used'] == 8 and 'test_psnr' in s and 'valid_epi' in s
    # inference uses only the checkpoint: reconstruction in linear intensity, dB and [0, 1]
    img = np.load(sorted((sar_data/'test').glob('*.npy'))[0])
    lin, db, sc = (reconstruct_sar(tmp_path/'checkpoints'/'best.pt', img, out=o) for o in ('linear', 'db', 'scaled'))
    assert lin.shape == img.shape and (sc >= 0).all() and (sc <= 1).all()
    np.testing.assert_allclose(10 * np.log10(lin), db, rtol=1e-4, atol=1e-3)


CHILD = textwrap.dedent(r'''
    import os, sys, signal, warnings
    import torch; torch.set_num_threads(1)
    from fastai.callback.core import Callback
    from medrecipes.sar import train_sar
    data, out, mode = sys.argv[1:4]
    warnings.simplefilter('ignore')
    from _procs import kill_callbacks
    train_sar(data_path=data, out_dir=out, epochs=4, variant='attention', patch=32, bs=8, patches_per_image=3, base_channels=8,
              progress=False, device='cpu', hist_every=1, resume=(mode == 'resume'), cbs=kill_callbacks(mode))
''')


def _child(tmp_path, *args):
    script = tmp_path/'child.py'; script.write_text(CHILD)
    env = {**os.environ, 'OMP_NUM_THREADS': '1'}
    return procs.run([script, *args], env=env, timeout=600)   # a real process, forked from the tests' zygote


def test_sar_run_killed_mid_epoch_resumes_bitwise(sar_data, tmp_path):
    full, cut = tmp_path/'full', tmp_path/'cut'
    r = _child(tmp_path, sar_data, full, 'full'); assert r.returncode == 0, r.stderr[-3000:]
    r = _child(tmp_path, sar_data, cut, 'kill:2:1'); assert r.returncode == -signal.SIGKILL, r.stderr[-3000:]
    assert load_checkpoint(cut/'checkpoints'/'latest.pt')['loop']['epoch'] == 1
    r = _child(tmp_path, sar_data, cut, 'resume'); assert r.returncode == 0, r.stderr[-3000:]
    a, b = load_checkpoint(full/'checkpoints'/'latest.pt'), load_checkpoint(cut/'checkpoints'/'latest.pt')
    assert a['recorder']['values'] == b['recorder']['values'] and len(a['recorder']['values']) == 4
    assert a['recorder']['losses'] == b['recorder']['losses']
    for k in a['model_state_dict']: assert torch.equal(a['model_state_dict'][k], b['model_state_dict'][k]), k
    for k in ('best_value', 'best_epoch'): assert a['callbacks']['ResumeCheckpoint.0'][k] == b['callbacks']['ResumeCheckpoint.0'][k]
    log = (cut/'training.log').read_text()
    assert 'fit: epochs 2-3 of 4 (resumed)' in log and log.count('epoch 1 ') == 1
    # TensorBoard shows each epoch once after the resume (the killed epoch's partial events are purged)
    ea = _events(cut/'tensorboard')
    steps = [e.step for e in ea.Scalars('loss/valid')]
    assert steps == [0, 1, 2, 3]
    fa = [e.value for e in _events(full/'tensorboard').Scalars('loss/valid')]
    assert [e.value for e in ea.Scalars('loss/valid')] == fa


def test_out_of_memory_retries_with_smaller_batches(sar_data, tmp_path):
    from fastai.callback.core import Callback
    class FakeOOM(Callback):
        def before_batch(self):
            if len(self.xb[0]) > 3: raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 1.00 GiB")
    s = train_sar(data_path=sar_data, out_dir=tmp_path, epochs=1, variant='baseline', cbs=[FakeOOM()], **{**SMALL, 'bs': 8})
    assert (s['bs_used'], s['bs_failed']) == (3, [8, 6, 4])
    assert load_checkpoint(tmp_path/'checkpoints'/'latest.pt')['bs'] == 3


def test_bad_config_values_are_refused(sar_data, tmp_path):
    with pytest.raises(ValueError, match="variant must be one of"): train_sar(data_path=sar_data, variant='unet', out_dir=tmp_path)
    with pytest.raises(ValueError, match="schedule"): train_sar(data_path=sar_data, schedule='cosine', out_dir=tmp_path)
    with pytest.raises(KeyError, match='lr_max'): train_sar(data_path=sar_data, out_dir=tmp_path, lr_max=1)


@pytest.mark.slow
def test_compare_cli_writes_the_table(sar_data, tmp_path):
    r = procs.run(['-m', 'medrecipes.cli', 'compare', 'sar', f'data.path={sar_data}', f'trainer.out_dir={tmp_path}', 'data.patch=32', 'data.batch_size=8',
                        'data.patches_per_image=2', 'model.base_channels=8', 'trainer.max_epochs=1', 'trainer.progress=false', 'trainer.device=cpu'],
                  timeout=900)
    assert r.returncode == 0, r.stderr[-3000:]
    df = pd.read_csv(tmp_path/'comparison.csv')
    assert list(df.variant) == ['baseline', 'resnet_lite', 'residual', 'attention']
    assert df.psnr_gain_db.iloc[0] == 0 and (df.params > 0).all() and df.evaluated_on.eq('test').all()
    assert np.isclose(df.psnr_gain_db, df.psnr - df.psnr.iloc[0]).all()
    # issue 16: the targets per variant (ENL ratio in 0.7-1.3, attention >= 0.5 dB over residual) and a real bitrate
    assert (df.enl_ratio_ok == df.enl_ratio.between(0.7, 1.3)).all()
    assert np.isclose(df.gain_over_residual_db, df.psnr - df.psnr.iloc[2]).all() and (df.bpp > 0).all() and (df.jpeg2000_psnr > 0).all()
    md = (tmp_path/'comparison.md').read_text().splitlines()
    assert md[0].startswith('| variant | params | psnr |') and md[6:8] == ['', 'Targets:'] and len(md) == 13
    assert md[-1].startswith('- attention - residual: ') and ('NOT met' in md[-1]) == (df.gain_over_residual_db.iloc[3] < 0.5)
    assert md[-1][2:] in r.stdout and all(f'{v}: ENL ratio' in r.stdout for v in df.variant)
    for v in df.variant: assert (tmp_path/v/'checkpoints'/'best.pt').is_file() and (tmp_path/v/'codec.csv').is_file()


def test_best_checkpoint_rebuilds_the_model_from_its_own_keys(sar_data, tmp_path):
    "issue 11.2: plain torch.load(weights_only=True) and the checkpoint's keys alone give back learn.model and the preprocessing."
    from medrecipes.models.sar import sar_model
    dls = SarDataLoaders.from_folder(sar_data, patch=32, bs=8, patches_per_image=3, seed=0, device='cpu')
    learn = sar_learner(dls, variant='residual', base_channels=8, out_dir=tmp_path, plateau=False)
    with learn.no_bar(), learn.no_logging(): learn.fit_one_cycle(1, 1e-3)
    ck = torch.load(tmp_path/'checkpoints'/'best.pt', weights_only=True)
    assert ck['epoch'] == 0 if 'epoch' in ck else ck['loop']['epoch'] == 0
    model = sar_model(**ck['model_config']); model.load_state_dict(ck['model_state_dict']); model.eval()
    x = torch.stack([dls.valid_ds[i][0] for i in range(4)]).as_subclass(torch.Tensor)
    learn.model.eval()
    with torch.no_grad(): torch.testing.assert_close(model(x), learn.model(x).as_subclass(torch.Tensor), rtol=0, atol=0)
    pp = ck['preprocessing_params']
    assert pp['vmin'] < pp['vmax'] and (pp['vmin'], pp['vmax']) == (dls.preprocess.lo, dls.preprocess.hi)
    assert SarPreprocess.from_dict(pp) == dls.preprocess and ck['patch'] == 32
    assert ck['data_fingerprint'] == dls.data_fingerprint and isinstance(ck['config'], dict)
    other = SarDataLoaders.from_folder(sar_data, patch=32, bs=8, valid='test', device='cpu')   # another split, another fingerprint
    assert other.data_fingerprint != dls.data_fingerprint


def test_resumed_compare_that_retrains_nothing_keeps_the_original_figures(sar_data, tmp_path):
    "issue 12.4: a resumed comparison whose runs had finished keeps each variant's seconds per epoch and memory."
    kw = dict(data_path=sar_data, out_dir=tmp_path, epochs=1, variants=('baseline', 'resnet_lite'), **SMALL)
    first = compare_sar(**kw)
    again = compare_sar(**kw, resume=True)
    cols = ['sec_per_epoch', 'peak_memory_mb']
    assert again[cols].values.tolist() == first[cols].values.tolist()
    for v in ('baseline', 'resnet_lite'):
        s = json.loads((tmp_path/v/'summary.json').read_text())
        assert s['epochs_trained_now'] == 0 and s['epochs_run'] == 1 and s['seconds_per_epoch'] == first.set_index('variant').sec_per_epoch[v]
    assert again.psnr.tolist() == first.psnr.tolist()


MEMORY = textwrap.dedent(r'''
    import json, sys, warnings
    warnings.simplefilter('ignore')
    from medrecipes.sar import train_sar
    data, out = sys.argv[1:3]
    kw = dict(data_path=data, epochs=1, patch=32, bs=8, patches_per_image=3, base_channels=8, progress=False, device='cpu')
    mb = [train_sar(variant='baseline', out_dir=f'{out}/{i}', **kw)['peak_memory_mb'] for i in range(2)]
    print(json.dumps(mb))
''')


def test_peak_memory_does_not_depend_on_run_order(sar_data, tmp_path):
    "issue 12.4: in a fresh process, the variant that runs first does not absorb the process's one-time growth."
    script = tmp_path/'mem.py'; script.write_text(MEMORY)
    r = subprocess.run([sys.executable, str(script), str(sar_data), str(tmp_path)], capture_output=True, text=True,
                       env={**os.environ, 'OMP_NUM_THREADS': '1'}, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    first, again = json.loads(r.stdout.strip().splitlines()[-1])
    assert 0.5 < first / again < 2, (first, again)                  # the same run, first in the process and second
    assert first > 0 and again > 0


def test_precision_accumulation_csv_and_wandb_reach_the_sar_recipe(sar_data, tmp_path):
    "`trainer.precision`, `trainer.accumulate` and the `logging` group work for SAR as for the classifiers."
    pytest.importorskip('wandb')
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')
        s = train_sar(data_path=sar_data, out_dir=tmp_path, variant='baseline', epochs=1, precision='bf16', accumulate=2,
                      logging={'csv': True, 'wandb': True, 'wandb_mode': 'offline'}, **SMALL)
    ck = load_checkpoint(tmp_path/'checkpoints'/'latest.pt')
    assert ck['config']['trainer']['precision'] == 'bf16' and ck['config']['trainer']['accumulate'] == 2
    log = pd.read_csv(tmp_path/'training_log.csv')
    assert list(log.epoch) == [0] and np.isfinite(log.train_loss).all() and np.isfinite(log.val_loss).all()
    assert any((tmp_path/'wandb').rglob('*.wandb')), 'no offline W&B run was written'
    dls = SarDataLoaders.from_folder(sar_data, patch=32, bs=8, patches_per_image=3, seed=0, device='cpu')
    learn = sar_learner(dls, variant='baseline', base_channels=8, out_dir=tmp_path/'l', precision='bf16', accumulate=3)
    names = {type(c).__name__: c for c in learn.cbs}
    assert 'AutocastMixedPrecision' in names and names['EpochGradientAccumulation'].n_acc == 3 * 8
    assert 'AutocastMixedPrecision' not in {type(c).__name__ for c in sar_learner(dls, base_channels=8, out_dir=tmp_path/'m').cbs}


def test_compare_over_seeds_reports_mean_and_spread(sar_data, tmp_path):
    "issue 16.3: `compare_seeds` trains every variant once per seed; the table's means, spreads and ranks come from the per-seed rows."
    agg = compare_sar(data_path=sar_data, out_dir=tmp_path, epochs=1, variants=('residual', 'attention'), compare_seeds=[0, 1],
                      codec_images=0, **SMALL)
    runs = pd.read_csv(tmp_path/'comparison_seeds.csv')
    assert sorted(zip(runs.seed, runs.variant)) == [(0, 'attention'), (0, 'residual'), (1, 'attention'), (1, 'residual')]
    for s in (0, 1):   # each seed is a whole comparison of its own, with its own checkpoints
        one = pd.read_csv(tmp_path/f'seed{s}'/'comparison.csv')
        assert one.psnr.tolist() == runs[runs.seed == s].psnr.tolist()
        assert (tmp_path/f'seed{s}'/'attention'/'checkpoints'/'best.pt').is_file()
        assert load_checkpoint(tmp_path/f'seed{s}'/'residual'/'checkpoints'/'best.pt')['config']['trainer']['seed'] == s
    assert runs[runs.seed == 0].psnr.tolist() != runs[runs.seed == 1].psnr.tolist()   # the seed changes the training
    assert pd.read_csv(tmp_path/'comparison.csv').variant.tolist() == agg.variant.tolist() == ['residual', 'attention']
    for v in ('residual', 'attention'):
        p = runs[runs.variant == v].psnr
        r = agg.set_index('variant').loc[v]
        assert r.psnr_mean == pytest.approx(p.mean()) and r.psnr_std == pytest.approx(p.std())
        assert (r.psnr_min, r.psnr_max) == (p.min(), p.max())
        assert r.psnr_ranks == '/'.join(str(int(k)) for k in runs[runs.variant == v].psnr_rank) and r.seeds == 2
    gain = runs[runs.variant == 'attention'].gain_over_residual_db
    assert agg.set_index('variant').gain_over_residual_db_mean['attention'] == pytest.approx(gain.mean())
    md = (tmp_path/'comparison.md').read_text()
    assert '± ' in md and 'Mean ± standard deviation over seeds [0, 1]' in md and 'attention - residual per seed: ' in md
    assert ('PSNR ranking the same in every seed' in md) == agg.attrs['ranking_stable'] and 'took ' in md
    with pytest.raises(ValueError, match='at least two different seeds'): compare_sar(data_path=sar_data, out_dir=tmp_path, compare_seeds=[3, 3], **SMALL)


def test_fresh_start_after_a_kill_in_the_first_epoch_purges_the_old_events(sar_data, tmp_path):
    "Issue 26.10: killed after SarTensorBoard wrote epoch 0 but before latest.pt existed, a fresh start's steps are [0, 1], images too."
    from fastai.callback.core import Callback
    from medrecipes.resume import resume_path
    class Killed(BaseException): pass
    class Kill(Callback):
        order = 98   # after the TensorBoard callback, before ResumeCheckpoint (99) writes the first latest.pt
        def after_epoch(self):
            if self.epoch == 0: raise Killed()
    def learner(cbs=()):
        dls = SarDataLoaders.from_folder(sar_data, patch=32, bs=8, patches_per_image=3, seed=0, device='cpu')
        return sar_learner(dls, variant='baseline', base_channels=8, out_dir=tmp_path, hist_every=1, cbs=list(cbs))
    learn = learner([Kill()])
    with learn.no_bar(), learn.no_logging(), pytest.raises(Killed): learn.fit(2, 1e-3)
    learn = learner()
    assert resume_path(True, learn) is None                                # no latest.pt: resume=true starts afresh
    with learn.no_bar(), learn.no_logging(): learn.fit(2, 1e-3)
    ea = _events(tmp_path/'tensorboard')
    for tag in ('loss/train', 'loss/valid', 'psnr/valid'): assert [e.step for e in ea.Scalars(tag)] == [0, 1], tag
    assert [i.step for i in ea.Images('reconstruction/0')] == [0, 1]
    names = list(learn.recorder.metric_names[1:-1])
    np.testing.assert_allclose([e.value for e in ea.Scalars('loss/valid')], [v[names.index('valid_loss')] for v in learn.recorder.values], rtol=1e-6)


def test_dct_skip_and_deadzone_reach_the_recipe(sar_data, tmp_path):
    "`model.linear_skip=dct model.round_offset=0.3` through the config: the model starts at λ's steps, the checkpoint keeps both, and its files code with the deadzone"
    from medrecipes.models.sar import SKIP_GAIN_SPEED
    from medrecipes.models.entropy import deadzone_round
    from medrecipes.codec import compress, read_codec_file, decode_latent
    dls = SarDataLoaders.from_folder(sar_data, patch=32, bs=8, patches_per_image=3, seed=0, device='cpu')
    learn = sar_learner(dls, variant='residual', base_channels=8, entropy='hyperprior', linear_skip='dct', round_offset=0.3,
                        rd_lambda=128., mse_weight=1., ssim_weight=0., out_dir=tmp_path/'a', plateau=False)
    step = 1 / (16 * torch.exp(SKIP_GAIN_SPEED * learn.model.encoder.skip_log_gain.detach()))
    torch.testing.assert_close(step, torch.full((16,), (6 / (128 * 16 * np.log(2))) ** 0.5))
    train_sar(data_path=sar_data, out_dir=tmp_path/'b', epochs=1, variant='residual',
              overrides=['model.entropy=hyperprior', 'model.linear_skip=dct', 'model.round_offset=0.3', 'trainer.rd_lambda=128'], **SMALL)
    ck = load_checkpoint(tmp_path/'b'/'checkpoints'/'best.pt')
    assert ck['model_config']['linear_skip'] == 'dct' and ck['model_config']['round_offset'] == 0.3
    model, pre, _ = load_sar_model(tmp_path/'b'/'checkpoints'/'best.pt')
    img = np.load(sorted((sar_data/'test').glob('*.npy'))[0])
    compress(tmp_path/'b'/'checkpoints'/'best.pt', sorted((sar_data/'test').glob('*.npy'))[0], tmp_path/'x.mrsar')
    head, payload = read_codec_file(tmp_path/'x.mrsar')
    q = decode_latent(model, head, payload)
    x = torch.from_numpy(np.asarray(pre.encode(img), np.float32))[None, None]
    with torch.no_grad(): want = deadzone_round(model.encoder(x) * model.latent_scale, 0.3)[0].numpy()
    np.testing.assert_array_equal(q, want)


def test_fit_prior_fits_only_the_density_after_the_training_phase(sar_data, tmp_path):
    """`trainer.fit_prior=true`: after the training phase the factorized density is fitted to the symbols the training batches
    were coded with; the rest of the model is the same as without it (same seed), the fitted density codes the validation
    set's own symbols in fewer bits than the unfitted one, and the checkpoint's config keeps the option"""
    from medrecipes.models.entropy import EntropyBottleneck
    from medrecipes.sar import EntropyTables
    runs = {}
    for fit in (False, True):
        train_sar(data_path=sar_data, out_dir=tmp_path/str(fit), epochs=1, variant='residual',
                  overrides=['model.entropy=factorized', 'model.linear_skip=dct', 'model.round_offset=0.3', 'trainer.rd_lambda=128',
                             f'trainer.fit_prior={str(fit).lower()}', 'trainer.codec_images=0'], **SMALL)
        runs[fit] = load_sar_model(tmp_path/str(fit)/'checkpoints'/'latest.pt')[0]
        assert load_checkpoint(tmp_path/str(fit)/'checkpoints'/'latest.pt')['config']['trainer']['fit_prior'] is fit
    density = lambda n: n.startswith('entropy_bottleneck.') and not n.split('.')[1].startswith('cdf')
    a, b = (dict(runs[f].state_dict()) for f in (False, True))
    for n in a:
        if density(n) and n != 'entropy_bottleneck.initialized': assert not torch.equal(a[n], b[n]), n     # the density moved
        elif not density(n) and not n.startswith('entropy_bottleneck.'): torch.testing.assert_close(a[n], b[n], rtol=0, atol=0, msg=n)
    dls = SarDataLoaders.from_folder(sar_data, patch=32, bs=8, patches_per_image=3, seed=0, device='cpu')
    with torch.no_grad():
        bits = {f: sum(float(-torch.log2(m.entropy_bottleneck.likelihood(m.entropy_bottleneck.quantize(m.encoder(x.as_subclass(torch.Tensor)) * m.latent_scale),
                                                                          0.5 - 0.3)).sum()) for x, _ in dls.valid) for f, m in runs.items()}
    assert bits[True] < bits[False], bits
    assert EntropyTables(True).fit_prior and not EntropyTables().fit_prior
