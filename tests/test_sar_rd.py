"""The SAR recipe with the factorized entropy model: the rate-distortion loss recomputed independently, the bpp metric,
coding tables in every checkpoint, real-file bits in the summary, exact resume after SIGKILL, clean targets, and the
rate-distortion curves with their Bjøntegaard deltas against JPEG2000."""
import json, os, signal, textwrap, warnings
from pathlib import Path
import numpy as np, pandas as pd, pytest, torch
import torch.nn.functional as F
from medrecipes.core import load_checkpoint, set_seed
from medrecipes.synth import make_sar
from medrecipes.data.sar import SarDataLoaders
from medrecipes.kernels import ssim
from medrecipes.sar import sar_learner, train_sar, SarRDLoss, load_sar_model
from medrecipes.sar_experiments import rd_curves
import _procs as procs

SMALL = dict(patch=32, bs=8, patches_per_image=3, base_channels=8, progress=False, device='cpu')


@pytest.fixture(scope='module')
def sar_data(tmp_path_factory):
    return make_sar(tmp_path_factory.mktemp('sar'), n_train=6, n_valid=2, n_test=2, size=64, seed=0, save_clean=True, mode='realistic')


def test_rd_loss_is_lambda_distortion_plus_bits(sar_data):
    "SarRDLoss = lambda (0.7 MSE + 0.3 (1 - SSIM)) + sum(-log2 likelihoods) / pixels, from the same forward pass"
    dls = SarDataLoaders.from_folder(sar_data, patch=32, bs=8, patches_per_image=2, seed=0, device='cpu')
    learn = sar_learner(dls, variant='residual', base_channels=8, entropy='factorized', rd_lambda=50., out_dir=dls.path/'unused')
    assert isinstance(learn.loss_func, SarRDLoss) and 'bpp' in [m.name for m in learn.metrics]
    x, _ = dls.one_batch(); x = x.as_subclass(torch.Tensor)
    m = learn.model.train(); torch.manual_seed(0); p = m(x)
    lik = m.likelihoods
    want = 50. * (0.7 * F.mse_loss(p, x) + 0.3 * (1 - ssim(p, x))) - torch.log2(lik).sum() / (x.shape[0] * 32 * 32)
    torch.testing.assert_close(learn.loss_func(p, x), want)
    with pytest.raises(ValueError, match='entropy model'): SarRDLoss(sar_learner(dls, base_channels=8, out_dir=dls.path/'u2').model, 1.)
    with pytest.raises(ValueError, match='rd_lambda must be > 0'): SarRDLoss(m, 0.)


@pytest.mark.parametrize('entropy', ['factorized', 'hyperprior'])
def test_rd_run_writes_tables_and_reports_the_files_bits(sar_data, tmp_path, entropy):
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')
        s = train_sar(data_path=sar_data, out_dir=tmp_path, epochs=2, variant='residual', entropy=entropy, rd_lambda=32., lr=2e-3,
                      codec_images=2, **SMALL)
    for name in ('best.pt', 'latest.pt'):
        ck = load_checkpoint(tmp_path/'checkpoints'/name)
        assert ck['rd_lambda'] == 32. and ck['model_config']['entropy'] == entropy
        model, pre, _ = load_sar_model(tmp_path/'checkpoints'/name)
        eb = model.entropy_bottleneck
        assert eb.updated
        prior = eb if entropy == 'factorized' else eb.z_bottleneck   # the learned density's tables (the hyperprior's Gaussian tables are fixed)
        saved = prior.cdf_freqs.clone(); eb.update()
        assert torch.equal(saved, prior.cdf_freqs)     # the stored tables are the trained density's own (rebuilt: the same integers)
    codec = pd.read_csv(tmp_path/'codec.csv')
    learned = codec[codec.codec.str.startswith('learned')]
    assert learned.codec.str.contains(entropy).all() and len(learned) == 2
    assert (learned.bpp > learned.stream_bpp).all() and learned.estimate_bpp.notna().all()
    np.testing.assert_allclose(s['learned_bpp'], learned.bpp.mean())
    assert 'bpp' in pd.read_csv(tmp_path/'training_log.csv').columns if (tmp_path/'training_log.csv').exists() else True


CHILD = textwrap.dedent(r'''
    import sys, warnings
    import torch; torch.set_num_threads(1)
    from medrecipes.sar import train_sar
    data, out, mode = sys.argv[1:4]
    warnings.simplefilter('ignore')
    from _procs import kill_callbacks
    train_sar(data_path=data, out_dir=out, epochs=3, variant='residual', entropy='factorized', rd_lambda=32., patch=32, bs=8,
              patches_per_image=3, base_channels=8, progress=False, device='cpu', codec_images=0, resume=(mode == 'resume'),
              cbs=kill_callbacks(mode))
''')


def test_rd_run_killed_mid_epoch_resumes_bitwise(sar_data, tmp_path):
    "The noise of the quantisation proxy and the coding tables resume exactly: the same weights, tables and history"
    script = tmp_path/'child.py'; script.write_text(CHILD)
    run = lambda out, mode: procs.run([script, sar_data, out, mode], env={**os.environ, 'OMP_NUM_THREADS': '1'}, timeout=600)
    full, cut = tmp_path/'full', tmp_path/'cut'
    r = run(full, 'full'); assert r.returncode == 0, r.stderr[-3000:]
    r = run(cut, 'kill:1:1'); assert r.returncode == -signal.SIGKILL, r.stderr[-3000:]
    r = run(cut, 'resume'); assert r.returncode == 0, r.stderr[-3000:]
    a, b = load_checkpoint(full/'checkpoints'/'latest.pt'), load_checkpoint(cut/'checkpoints'/'latest.pt')
    assert a['recorder']['values'] == b['recorder']['values'] and len(a['recorder']['values']) == 3
    for k in a['model_state_dict']: assert torch.equal(a['model_state_dict'][k], b['model_state_dict'][k]), k
    assert any('cdf_freqs' in k for k in a['model_state_dict'])


def test_clean_target_run_scores_against_the_reflectivity(sar_data, tmp_path):
    "data.target=clean: the validation PSNR is measured against clean/valid/, not the speckled input"
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')
        s = train_sar(data_path=sar_data, out_dir=tmp_path, epochs=1, variant='baseline', entropy='factorized', target='clean',
                      codec_images=0, **SMALL)
    model, pre, patch = load_sar_model(tmp_path/'checkpoints'/'best.pt')
    from medrecipes.data.sar import SarTiles
    from medrecipes.metrics import psnr
    va = sorted((sar_data/'valid').glob('*.npy'))
    num = den = 0.
    for f in va:
        x, c = pre.encode(np.load(f)), pre.encode(np.load(sar_data/'clean'/'valid'/f.name))
        t = SarTiles([x], patch)
        with torch.no_grad(): rec = t.stitch(model(torch.stack([t[i][0] for i in range(len(t))]).as_subclass(torch.Tensor)))[0]
        num += float(psnr(torch.from_numpy(rec)[None, None], torch.from_numpy(c)[None, None])) * c.size; den += c.size
    assert s['valid_psnr'] == pytest.approx(num / den, abs=1e-3)
    assert load_checkpoint(tmp_path/'checkpoints'/'best.pt')['config']['data']['target'] == 'clean'


def test_rd_curves_and_bd_rates(sar_data, tmp_path):
    """Two lambdas per variant and entropy model, JPEG2000 and JPEG-XL over the same file sizes, PSNR against the original and
    the clean reflectivity, the deltas (against both references, and the hyperprior against the factorized prior)"""
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')
        c = rd_curves(data_path=sar_data, out_dir=tmp_path, variants=('baseline',), rd_lambdas=(4., 256.), jpeg2000_points=4, epochs=1,
                      lr=3e-3, entropies=('factorized', 'hyperprior'), **SMALL)
    out = tmp_path/'rd_curves'
    rows = pd.read_csv(out/'rd.csv')
    assert set(rows.codec) == {'baseline', 'baseline+hyperprior', 'jpeg2000', 'jpegxl'} and len(rows) == 2 * 2 * 2 + 2 * 4 * 2   # 2 test images
    for name in ('baseline_lambda4', 'baseline_hyperprior_lambda4'):                         # every bpp is a file's size
        files = list((out/name/'codec').glob('*.mrsar')); assert len(files) == 2
        for f in files:
            r = rows[(rows.codec == name.replace('_lambda4', '').replace('_', '+')) & (rows.rd_lambda == 4.) & (rows.image == f.stem + '.npy')]
            assert r.bpp.iloc[0] == 8 * f.stat().st_size / 64 ** 2
    j2, jx = (rows[rows.codec == k].sort_values(['image', 'point']) for k in ('jpeg2000', 'jpegxl'))   # the two references at the same rates
    # at the top rate both hit the asked size; below, JPEG2000's header (~180 bytes: 0.35 bpp of a 64x64 image) is its floor, JPEG-XL's is lower
    top = j2.point == j2.point.max()
    np.testing.assert_allclose(jx.bpp.values[top.values], j2.bpp.values[top.values], rtol=0.1)
    assert (jx.bpp.values <= j2.bpp.values * 1.1).all()
    assert {'psnr_db', 'ssim_db', 'psnr_clean_db', 'ssim_clean_db'} <= set(c.columns) and c.psnr_clean_db.notna().all()
    bd = pd.read_csv(out/'rd_bd.csv')
    assert set(bd.quality) == {'psnr_db', 'ssim_db', 'psnr_clean_db'} and set(bd.anchor) == {'jpeg2000', 'jpegxl', 'baseline'}
    assert set(bd[bd.anchor == 'baseline'].test) == {'baseline+hyperprior'}
    assert (out/'rd.png').read_bytes()[:4] == b'\x89PNG' and 'Bjøntegaard' in (out/'rd.md').read_text()
    with pytest.raises(ValueError, match="unknown entropy model 'gaussian'"): rd_curves(data_path=sar_data, out_dir=tmp_path, entropies=('gaussian',), **SMALL)


def test_rd_curve_points_with_their_own_settings(sar_data, tmp_path):
    "An `rd_lambdas` entry `(λ, overrides)` trains that point with its own settings (a codec family changing its latent with the rate), named by them"
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')
        c = rd_curves(data_path=sar_data, out_dir=tmp_path, variants=('baseline',), rd_lambdas=((4., ['model.latent_channels=4', 'model.linear_skip=true']), 256.),
                      jpeg2000_points=2, epochs=1, entropies=('hyperprior',), **SMALL)
    out = tmp_path/'rd_curves'
    from medrecipes.sar_experiments import rd_run_name
    assert rd_run_name('baseline+hyperprior', 4., ['model.latent_channels=4', 'model.linear_skip=true']) == 'baseline_hyperprior_lambda4_latent_channels4_linear_skiptrue'
    low = load_checkpoint(out/'baseline_hyperprior_lambda4_latent_channels4_linear_skiptrue'/'checkpoints'/'best.pt')
    high = load_checkpoint(out/'baseline_hyperprior_lambda256'/'checkpoints'/'best.pt')
    assert low['model_config']['latent_channels'] == 4 and low['model_config']['linear_skip'] is True
    assert high['model_config']['latent_channels'] == 16 and 'linear_skip' not in high['model_config']
    assert set(c[c.codec == 'baseline+hyperprior'].point) == {'lambda=4 model.latent_channels=4 model.linear_skip=true', 'lambda=256'}
    for bad, words in ((((4., [3]),), "'key=value' strings"), ((0.,), 'a number > 0'), ((('a', ['x=1']),), 'a number > 0')):
        with pytest.raises(ValueError, match=words): rd_curves(data_path=sar_data, out_dir=tmp_path/'bad', rd_lambdas=bad, **SMALL)


def test_rd_curves_resume_trains_only_what_is_missing(sar_data, tmp_path):
    """`resume=True` reuses finished points (not trained again, the same files and figures), trains a point added to the sweep,
    and refuses a run whose settings changed instead of mixing two trainings in one curve"""
    kw = dict(data_path=sar_data, out_dir=tmp_path, variants=('baseline',), jpeg2000_points=2, epochs=1, lr=3e-3, entropies=('hyperprior',), **SMALL)
    out = tmp_path/'rd_curves'
    summary = lambda name: json.loads((out/name/'summary.json').read_text())
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')
        first = rd_curves(rd_lambdas=(8.,), **kw)
        assert summary('baseline_hyperprior_lambda8')['epochs_trained_now'] == 1
        again = rd_curves(rd_lambdas=(8., 64.), resume=True, **kw)
        assert summary('baseline_hyperprior_lambda8')['epochs_trained_now'] == 0 and summary('baseline_hyperprior_lambda64')['epochs_trained_now'] == 1
        learned = lambda c: c[c.codec == 'baseline+hyperprior'].set_index('point')[['bpp', 'psnr_db', 'psnr_clean_db']]
        pd.testing.assert_frame_equal(learned(again).loc[['lambda=8']], learned(first))   # the finished point's files decode as before
        with pytest.raises(ValueError, match='lr'): rd_curves(rd_lambdas=(8.,), resume=True, **{**kw, 'lr': 1e-3})


def _prior_gap():
    import importlib.util
    spec = importlib.util.spec_from_file_location('sar_prior_gap', Path(__file__).resolve().parents[1]/'benchmarks'/'sar_prior_gap.py')
    mod = importlib.util.module_from_spec(spec); spec.loader.exec_module(mod); return mod


def test_prior_gap_histogram_bits_against_scipy():
    "benchmarks/sar_prior_gap.py's static per-channel coder: without smoothing, on its own symbols, N x the entropy (scipy); smoothed, never below it"
    from scipy.stats import entropy
    g = np.random.default_rng(0)
    codes = [np.round(g.laplace(0, s, (3, 5, 7))).astype(np.int32) for s in (0.5, 1., 2.)]
    want = sum(entropy(np.unique(np.concatenate([c[ch].ravel() for c in codes]), return_counts=True)[1], base=2) * 3 * 35 for ch in range(3))
    assert _prior_gap().histogram_bits(codes, codes, smoothing=0.) == pytest.approx(want, rel=1e-12)
    other = [np.round(g.laplace(0, 3., (3, 5, 7))).astype(np.int32)]
    assert _prior_gap().histogram_bits(codes, other) > _prior_gap().histogram_bits(other, other, smoothing=0.)   # cross-entropy >= entropy


def test_prior_gap_rows_count_the_real_files(sar_data, tmp_path):
    "Each trained point's test files: the bpp of their bytes (as rd_curves measured them), a payload below it, a positive histogram estimate"
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')
        c = rd_curves(data_path=sar_data, out_dir=tmp_path, variants=('baseline',), rd_lambdas=(8.,), jpeg2000_points=2, epochs=1, lr=3e-3,
                      entropies=('factorized', 'hyperprior'), **SMALL)
        rows = pd.DataFrame(_prior_gap().gap_rows(tmp_path, data=sar_data)).set_index('entropy')
    learned = c[c.codec.str.startswith('baseline')].assign(entropy=lambda d: np.where(d.codec == 'baseline', 'factorized', 'hyperprior')).set_index('entropy')
    np.testing.assert_allclose(rows.loc[['factorized', 'hyperprior'], 'file_bpp'], learned.loc[['factorized', 'hyperprior'], 'bpp'], rtol=1e-12)
    assert (rows.payload_bpp < rows.file_bpp).all() and (rows.histogram_bpp > 0).all() and set(rows.target) == {'input'}


def test_point_gaps_on_known_curves():
    "benchmarks/sar_rd_bd.py's per-point table: JPEG2000 interpolated in log-rate, its envelope where it falls with rate, nothing outside its range"
    spec = __import__('importlib.util').util.spec_from_file_location('sar_rd_bd', Path(__file__).resolve().parents[1]/'benchmarks'/'sar_rd_bd.py')
    mod = __import__('importlib.util').util.module_from_spec(spec); spec.loader.exec_module(mod)
    curves = pd.DataFrame(dict(codec=['jpeg2000', 'jpeg2000', 'jpegxl', 'learned', 'learned'], point=['r0', 'r1', 'r0', 'a', 'b'],
                               bpp=[0.1, 0.4, 0.2, 0.2, 0.8], psnr_db=[20., 22., 19., 21.5, 30.], psnr_clean_db=[26., 25., 24., 25.8, 27.]))
    g = mod.point_gaps(curves).set_index('point')
    assert list(g.index) == ['a', 'b'] and set(g.codec) == {'learned'}
    assert g.loc['a', 'psnr_db_jpeg2000'] == pytest.approx(21.) and g.loc['a', 'psnr_db_gap'] == pytest.approx(0.5)          # halfway in log-rate
    assert g.loc['a', 'psnr_db_gap_envelope'] == pytest.approx(0.5)                                                           # rising: the same
    assert g.loc['a', 'psnr_clean_db_jpeg2000'] == pytest.approx(25.5) and g.loc['a', 'psnr_clean_db_gap_envelope'] == pytest.approx(-0.2)   # falling: its best at 0.1 bpp
    assert np.isnan(g.loc['b', 'psnr_db_gap']) and np.isnan(g.loc['b', 'psnr_clean_db_gap_envelope'])                       # beyond JPEG2000's rates


def test_sar_rd_script_trains_only_the_clean_family(tmp_path):
    """`benchmarks/sar_rd.py` with no --variants and a --clean-variants: only the despeckling codec is trained; the
    results file scores it against both references, times it and says it is the clean-target codec"""
    import importlib.util
    spec = importlib.util.spec_from_file_location('sar_rd', Path(__file__).resolve().parents[1]/'benchmarks'/'sar_rd.py')
    mod = importlib.util.module_from_spec(spec); spec.loader.exec_module(mod)
    out = tmp_path/'res'/'rd'
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')
        mod.main(['--variants', '--clean-variants', 'baseline', '--points', '16', '--n', '8', '--size', '64', '--epochs', '1',
                  '--work', str(tmp_path/'work'), '--out', str(out), 'data.patch=32', 'data.batch_size=8', 'model.base_channels=8',
                  'model.entropy=factorized'])
    curves = pd.read_csv(str(out) + '_curves.csv')
    assert set(curves.codec) >= {'baseline+clean', 'jpeg2000'} and 'baseline' not in set(curves.codec)
    assert curves.psnr_clean_db.notna().all()
    md = Path(str(out) + '.md').read_text()
    assert 'the baseline (clean target) codec' in md and '1 trainings' in md
    with pytest.raises(SystemExit): mod.main(['--variants', '--clean-variants', '--work', str(tmp_path/'w2'), '--out', str(tmp_path/'x')])


def test_enl_synthesis_benchmark_scores_every_scene(sar_data, tmp_path):
    """`benchmarks/sar_enl_synth.py`: every test scene through a real file, decoded plainly and with seeded synthesised
    speckle (reproducible), beside the clean reflectivity and the clean reflectivity times re-drawn speckle; the
    synthesised decode's ENL ratio is far nearer 1 than the smooth plain decode's"""
    import importlib.util
    from medrecipes.core import save_checkpoint
    from medrecipes.models.sar import sar_model
    from medrecipes.data.sar import SarPreprocess
    spec = importlib.util.spec_from_file_location('sar_enl_synth', Path(__file__).resolve().parents[1]/'benchmarks'/'sar_enl_synth.py')
    mod = importlib.util.module_from_spec(spec); spec.loader.exec_module(mod)
    torch.manual_seed(0)
    m = sar_model('residual', latent_channels=8, base_channels=8, entropy='factorized', linear_skip='dct').eval(); m.init_skip_steps(64.); m.update()
    pre = SarPreprocess('linear', clip=(-25., 5.))
    ck = tmp_path/'run'/'checkpoints'/'best.pt'; ck.parent.mkdir(parents=True)
    save_checkpoint(ck, model_state_dict=m.state_dict(), model_config=m.config, preprocessing_params=pre.checkpoint_params(), patch=32)
    mod.main(['--runs', str(ck), '--data', str(sar_data), '--out', str(tmp_path/'enl')])
    df = pd.read_csv(tmp_path/'enl.csv')
    n = len(list((Path(sar_data)/'test').glob('*.npy')))
    assert n and df.groupby(['codec', 'decode']).size().tolist() == [n] * 4
    syn, plain = (df[df.decode == d].set_index('image') for d in ('synthesized', 'plain'))
    assert (abs(np.log(syn.enl_ratio)) < abs(np.log(plain.enl_ratio))).all(), (syn.enl_ratio, plain.enl_ratio)
    assert (df[df.codec == 'clean reflectivity'].psnr_clean_db > 90).all()
    again = pd.DataFrame(mod.enl_rows([ck], Path(sar_data)))
    pd.testing.assert_frame_equal(again[again.decode == 'synthesized'].reset_index(drop=True), df[df.decode == 'synthesized'].reset_index(drop=True), check_dtype=False)
    assert 'in_band' in (tmp_path/'enl.md').read_text()
