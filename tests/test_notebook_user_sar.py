"""The SAR recipe as a notebook user drives it: the README snippet, show_batch, fit_one_cycle, show_results, export, and
load_learner + predict in a fresh process (tiny generated data)."""
import json, os, subprocess, sys, textwrap
from pathlib import Path
import numpy as np, pytest
from medrecipes.synth import make_sar

LOAD = textwrap.dedent(r'''
    import json, sys, warnings
    warnings.simplefilter('ignore')
    from pathlib import Path
    import numpy as np
    from fastai.learner import load_learner        # a fresh process: nothing of the training session is importable
    learn = load_learner(sys.argv[1])
    out = {}
    for f in sys.argv[2:]:
        rec, scaled = learn.predict(Path(f))
        out[f] = dict(shape=list(rec.shape), type=type(scaled).__name__, scaled_shape=list(scaled.shape), rec=rec.tolist())
    out['array'] = learn.predict(np.load(sys.argv[2]))[0].tolist()
    print(json.dumps(out))
''')


def test_sar_as_a_notebook_user(tmp_path):
    import matplotlib; matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    ns = {}
    exec('from medrecipes.sar import *', ns)                         # the README snippet's import
    SarDataLoaders, sar_learner, reconstruct_sar = ns['SarDataLoaders'], ns['sar_learner'], ns['reconstruct_sar']
    data = make_sar(tmp_path/'data', n_train=4, n_valid=2, n_test=1, size=64, seed=0)
    dls = SarDataLoaders.from_folder(data, patch=32, bs=8, patches_per_image=3, seed=0, device='cpu')
    learn = sar_learner(dls, variant='attention', base_channels=8, out_dir=tmp_path/'run', plateau=False)

    dls.show_batch(max_n=4)
    assert sum(bool(a.images) for a in plt.gcf().axes) == 4          # the training patches
    plt.close('all')

    with learn.no_bar(): learn.fit_one_cycle(1)
    assert list(learn.recorder.metric_names[1:-1]) == ['train_loss', 'valid_loss', 'psnr', 'ssim', 'enl_ratio', 'epi']
    assert np.isfinite(learn.recorder.values[-1][:4]).all()

    with learn.no_bar(): learn.show_results(max_n=2)
    fig = plt.gcf(); ims = [np.asarray(a.images[0].get_array()) for a in fig.axes if a.images]
    assert len(ims) == 6 and 'original | reconstruction' in fig._suptitle.get_text()
    for r in range(2):                                                # each row: original | reconstruction | |difference|
        o, rec, d = ims[3 * r: 3 * r + 3]
        np.testing.assert_allclose(d, np.abs(rec - o), atol=1e-6); assert not np.allclose(o, rec)
    plt.close('all')

    learn.export()
    test_img = sorted((data/'test').glob('*.npy'))[0]
    files = [test_img]
    try:
        import tifffile
        tifffile.imwrite(tmp_path/'scene.tif', np.load(test_img)); files.append(tmp_path/'scene.tif')
    except ImportError: pass
    script = tmp_path/'load.py'; script.write_text(LOAD)
    r = subprocess.run([sys.executable, str(script), str(tmp_path/'run'/'export.pkl'), *map(str, files)], capture_output=True,
                       text=True, env={**os.environ, 'OMP_NUM_THREADS': '1'}, timeout=600, cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    out = json.loads(r.stdout.strip().splitlines()[-1])
    img = np.load(test_img)
    want = reconstruct_sar(tmp_path/'run'/'checkpoints'/'latest.pt', img)   # the fitted preprocessing and the final weights
    for f in files:
        o = out[str(f)]
        assert o['shape'] == list(img.shape) and o['type'] == 'SarImage' and o['scaled_shape'] == [1, *img.shape]
        np.testing.assert_allclose(np.array(o['rec'], dtype=np.float32), want, rtol=1e-4)
    np.testing.assert_allclose(np.array(out['array'], dtype=np.float32), want, rtol=1e-4)
