"""`benchmarks/sar_limits.py` (the README's PSNR against ENL-ratio figure) on a tiny realistic run: it regenerates the
clean scenes, scores every reference and codec row and refuses data it did not generate."""
import shutil, subprocess, sys
from pathlib import Path
import numpy as np, pandas as pd, pytest
from medrecipes.synth import make_sar
from medrecipes.sar import train_sar

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT/'benchmarks'/'sar_limits.py'


@pytest.fixture(scope='module')
def run(tmp_path_factory):
    root = tmp_path_factory.mktemp('limits')
    data = make_sar(root/'data', n_train=3, n_valid=1, n_test=2, size=64, seed=0, mode='realistic')
    train_sar(data_path=data, out_dir=root/'run'/'residual', epochs=1, variant='residual', patch=32, bs=8, patches_per_image=2,
              base_channels=8, progress=False, device='cpu', codec_images=2)
    return root, data


def _script(*args, cwd):
    return subprocess.run([sys.executable, str(SCRIPT), *map(str, args)], cwd=cwd, capture_output=True, text=True, timeout=600)


def test_sar_limits_scores_references_and_codecs(run, tmp_path):
    root, data = run
    assert (root/'run'/'residual'/'codec.csv').is_file()
    r = _script(root/'run', data, '--out', tmp_path/'limits', cwd=tmp_path)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-3000:]
    df = pd.read_csv(tmp_path/'limits.csv').set_index('codec')
    codec = pd.read_csv(root/'run'/'residual'/'codec.csv')
    want = {'truth (speckle-free)', 're-drawn speckle', 'boxcar 3x3', 'boxcar 5x5', 'boxcar 9x9', 'jpeg2000 (at residual bpp)'}
    assert want <= set(df.index) and set(codec.codec[codec.codec != 'jpeg2000']) <= set(df.index)
    assert (df.images == 2).all() and df.machine.notna().all() and df.torch.notna().all()
    # the codec rows are the run's own codec.csv, averaged over its images
    learned = codec.codec[codec.codec != 'jpeg2000'].iloc[0]
    np.testing.assert_allclose(df.loc[learned, 'psnr_db'], codec[codec.codec == learned].psnr_db.mean(), rtol=1e-9)
    assert df.loc[learned, 'bpp'] > 0 and np.isnan(df.loc['truth (speckle-free)', 'bpp'])
    # more multilooking removes more speckle: the ENL ratio grows with the boxcar, and it is far above the speckle's own
    enl = df.enl_ratio
    assert enl['boxcar 3x3'] < enl['boxcar 5x5'] < enl['boxcar 9x9'] and enl['boxcar 3x3'] > 2 * enl['re-drawn speckle']
    assert (tmp_path/'limits.png').stat().st_size > 10_000


def test_sar_limits_refuses_data_it_did_not_generate(run, tmp_path):
    root, data = run
    other = make_sar(tmp_path/'single', n_train=1, n_valid=1, n_test=1, size=32, seed=0)   # single-look mode
    r = _script(root/'run', other, cwd=tmp_path)
    assert r.returncode != 0 and "expected a realistic-mode generated set" in r.stderr
    f = sorted((data/'test').glob('*.npy'))[0]
    changed = tmp_path/'changed'
    shutil.copytree(data, changed)
    a = np.load(f); a[0, 0] += 1; np.save(changed/'test'/f.name, a)
    r = _script(root/'run', changed, cwd=tmp_path)
    assert r.returncode != 0 and 'differs from the regenerated scene' in r.stderr
