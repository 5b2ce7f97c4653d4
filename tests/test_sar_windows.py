"SAR scenes beyond the loader's memory budget (`data.max_memory_mb`): read by windows, bitwise the same as whole reads, training memory bounded."
import tracemalloc
from pathlib import Path
import numpy as np, pytest, tifffile
from medrecipes.data.sar import (SarDataLoaders, SarPreprocess, SarScene, EncodedScene, check_sar_image, check_sar_scene,
                                 read_sar_image, windowed_files)
from medrecipes.sar import sar_learner

T = 256   # TIFF tile side


def _tiles(shape, seed):
    "Amplitude digital numbers (uint16) of a 4.4-look scene with a few brightness fields, tile by tile in TIFF order"
    rng = np.random.default_rng(seed)
    for ty in range(-(-shape[0] // T)):
        for tx in range(-(-shape[1] // T)):
            base = 150 + 60 * ((3 * ty + tx) % 5)
            yield (base * np.sqrt(rng.gamma(4.4, 1 / 4.4, (T, T)))).clip(1, 65535).astype(np.uint16)


def _scene(fn, shape, seed, **kw):
    fn.parent.mkdir(parents=True, exist_ok=True)
    tifffile.imwrite(fn, _tiles(shape, seed), shape=shape, dtype='uint16', tile=(T, T), **kw)
    return fn


@pytest.fixture(scope='module')
def small_scenes(tmp_path_factory):
    "A 1000x700 scene (edge tiles cut) stored tiled, tiled + zlib, in strips + zlib, contiguous (memory-mapped) and as .npy"
    d = tmp_path_factory.mktemp('scenes')
    a = tifffile.imread(_scene(d/'tiled.tif', (1000, 700), 1))
    tifffile.imwrite(d/'zlib.tif', a, tile=(T, T), compression='zlib')
    tifffile.imwrite(d/'strips.tif', a, rowsperstrip=64, compression='zlib')
    tifffile.imwrite(d/'contiguous.tif', a)
    np.save(d/'scene.npy', a)
    return d, a


def test_windows_equal_the_whole_read_bitwise(small_scenes):
    d, a = small_scenes
    pre = SarPreprocess('amplitude', clip=(30., 60.), calibration_db=-3.)
    whole = pre.encode(check_sar_image(read_sar_image(d/'tiled.tif'), 'tiled.tif', 'amplitude'))
    wins = [(0, 32, 0, 32), (240, 290, 250, 530), (968, 1000, 668, 700), (0, 1000, 0, 700), (511, 513, 255, 257)]
    for name in ('tiled.tif', 'zlib.tif', 'strips.tif', 'contiguous.tif', 'scene.npy'):
        s = SarScene(d/name)
        assert s.shape == (1000, 700) and s.dtype == np.uint16
        assert (s._open() or s._mm is not None) == (name in ('contiguous.tif', 'scene.npy'))   # memory-mapped only where contiguous
        e = EncodedScene(s, pre)
        for y0, y1, x0, x1 in wins:
            np.testing.assert_array_equal(s.read(y0, y1, x0, x1), a[y0:y1, x0:x1])
            w = e[y0:y1, x0:x1]
            assert w.dtype == np.float32 and w.tobytes() == whole[y0:y1, x0:x1].tobytes(), (name, y0, x0)
        with pytest.raises(IndexError, match='outside the 1000x700 image'): s.read(990, 1010, 0, 10)
    # amplitude units: dB = 20 log10 DN + calibration, decoded back to DN
    db = SarPreprocess('amplitude', clip=(30., 60.)).to_db(SarScene(d/'zlib.tif').read(100, 140, 600, 700))
    np.testing.assert_allclose(db, 20 * np.log10(a[100:140, 600:700].astype(np.float64)), rtol=1e-5)


def test_scene_checks_match_the_whole_image_checks(tmp_path):
    z = np.full((300, 300), 7, np.uint16); tifffile.imwrite(tmp_path/'flat.tif', z, tile=(T, T))
    with pytest.raises(ValueError, match=r'flat.tif: every pixel has the same value \(7\)'): check_sar_scene(SarScene(tmp_path/'flat.tif'), 'amplitude')
    f = np.ones((300, 300), np.float32); f[280, 5] = np.nan; tifffile.imwrite(tmp_path/'nan.tif', f, tile=(T, T))
    with pytest.raises(ValueError, match=r'nan.tif: .*NaN or infinite \(the first at row 280, column 5\)'): check_sar_scene(SarScene(tmp_path/'nan.tif'), 'linear', max_bytes=4 * 300 * 16)
    f[280, 5] = -1; tifffile.imwrite(tmp_path/'neg.tif', f)
    with pytest.raises(ValueError, match=r'neg.tif: negative values \(min -1\) cannot be linear intensity'): check_sar_scene(SarScene(tmp_path/'neg.tif'), 'linear')
    with pytest.raises(ValueError, match=r'smaller than the 512x512 patch'): check_sar_scene(SarScene(tmp_path/'neg.tif'), 'db', patch=512)
    tifffile.imwrite(tmp_path/'rgb.tif', np.ones((40, 40, 3), np.uint8))
    with pytest.raises(ValueError, match=r'rgb.tif: holds 3 bands'): SarScene(tmp_path/'rgb.tif')
    with pytest.raises(ValueError, match=r'max_memory_mb.*positive number'): SarDataLoaders.from_folder(tmp_path, max_memory_mb=0)


def test_windowed_loaders_serve_the_same_batches(small_scenes, tmp_path):
    "With a fixed clip, a budget that windows every scene gives bitwise the batches of today's whole-image path"
    d, _ = small_scenes
    for split, names in (('train', ('tiled.tif', 'strips.tif')), ('valid', ('zlib.tif',))):
        (tmp_path/split).mkdir()
        for n in names: (tmp_path/split/n).write_bytes((d/n).read_bytes())
    kw = dict(patch=32, bs=8, patches_per_image=4, seed=3, units='amplitude', clip=(35., 60.), device='cpu')
    whole, win = SarDataLoaders.from_folder(tmp_path, **kw), SarDataLoaders.from_folder(tmp_path, max_memory_mb=1, **kw)
    assert whole.windowed_files == [] and all(isinstance(a, np.ndarray) for a in whole.train_ds.images)
    assert len(win.windowed_files) == 3 and all(isinstance(a, EncodedScene) for a in win.train_ds.images + win.valid_ds.images)
    for dw, dv in ((whole.train, win.train), (whole.valid, win.valid)):
        for (xw, _), (xv, _) in zip(dw, dv): assert xw.shape == xv.shape and bool((xw == xv).all())
    tw = win.tiles_dl([d/'zlib.tif'])                       # test tiles of a file beyond the budget: read tile by tile
    assert isinstance(tw.dataset.images[0], EncodedScene)
    assert np.array_equal(np.asarray(tw.dataset.images[0]), whole.valid_ds.images[0])
    # the percentile clip fitted on windows of the amplitude scenes: 20 log10 DN
    fit = SarDataLoaders.from_folder(tmp_path, **{**kw, 'clip': None}, max_memory_mb=1, max_fit_pixels=2**16).preprocess
    db = np.concatenate([20 * np.log10(read_sar_image(tmp_path/'train'/n).astype(np.float64)).ravel() for n in ('tiled.tif', 'strips.tif')])
    np.testing.assert_allclose([fit.lo, fit.hi], np.percentile(db, [1, 99]), atol=0.3)
    assert windowed_files([tmp_path/'train'/'tiled.tif', tmp_path/'valid'/'zlib.tif'], 3) == {tmp_path/'train'/'tiled.tif'}


def _fit_one_epoch(path, **kw):
    dls = SarDataLoaders.from_folder(path, patch=32, bs=8, patches_per_image=8, val_bs=64, seed=0, units='amplitude', device='cpu', **kw)
    learn = sar_learner(dls, variant='baseline', base_channels=8, out_dir=path/'run', patience=None)
    with learn.no_bar(), learn.no_logging(): learn.fit(1, 1e-3)
    return dls, learn


def test_training_on_a_scene_beyond_the_budget_keeps_memory_bounded(tmp_path):
    "A 4096x4096 uint16 tiled GeoTIFF (32 MiB; 64 MiB as float32) against an 8 MB budget: one epoch, peak Python/numpy memory measured"
    for split, seed in (('train', 2), ('valid', 3)): _scene(tmp_path/'warm'/split/'w.tif', (256, 256), seed)
    _fit_one_epoch(tmp_path/'warm')                     # the first fit of a process imports modules: not counted below
    _scene(tmp_path/'big'/'train'/'s1.tif', (4096, 4096), 0)
    _scene(tmp_path/'big'/'valid'/'s1v.tif', (256, 256), 1)
    tracemalloc.start()
    try:
        start = tracemalloc.get_traced_memory()[0]
        dls, learn = _fit_one_epoch(tmp_path/'big', max_memory_mb=8, max_fit_pixels=2**18)
        peak = tracemalloc.get_traced_memory()[1] - start
    finally: tracemalloc.stop()
    assert [p.name for p in dls.windowed_files] == ['s1.tif'] and isinstance(dls.train_ds.images[0], EncodedScene)
    assert np.isfinite(learn.recorder.values[-1]).all()
    print(f"peak traced memory {peak / 2**20:.1f} MiB (the scene whole as float32: 64 MiB)")
    assert peak < 16 * 2**20, f"peak {peak / 2**20:.1f} MiB"
