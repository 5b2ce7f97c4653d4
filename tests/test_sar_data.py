"Tests for the SAR data: the generator in `medrecipes.synth` and `medrecipes.data.sar` (reading, checks, preprocessing, loaders)"
import hashlib, json, random
import numpy as np, pytest, torch
from PIL import Image
from medrecipes.core import set_seed
from medrecipes.synth import make_sar, make_sar_scene, sar_speckle
from medrecipes.data.sar import *


def digests(p):
    return {str(f.relative_to(p)): hashlib.sha256(f.read_bytes()).hexdigest() for f in sorted(p.rglob('*')) if f.is_file()}

@pytest.fixture(scope='module')
def sar(tmp_path_factory):
    "A small generated set: 8 train, 3 valid, 2 test images of 80x112 pixels, 2 looks"
    return make_sar(tmp_path_factory.mktemp('sar') / 'sar', n_train=8, n_valid=3, n_test=2, size=(80, 112), looks=2, seed=0)

@pytest.fixture
def sar_copy(sar, tmp_path):
    import shutil
    return shutil.copytree(sar, tmp_path / 'sar')

def loaders(path, **kw):
    return SarDataLoaders.from_folder(path, **{'patch': 32, 'bs': 6, 'patches_per_image': 3, 'seed': 0, **kw})


# --- generator ---

def test_generator_is_byte_identical_per_seed(tmp_path):
    kw = dict(n_train=3, n_valid=2, n_test=1, size=64, looks=3, save_clean=True)
    a, b = make_sar(tmp_path / 'a', seed=4, **kw), make_sar(tmp_path / 'b', seed=4, **kw)
    c = make_sar(tmp_path / 'c', seed=5, **kw)
    da, db, dc = digests(a), digests(b), digests(c)
    assert da == db and len(da) == 3 + 2 + 1 + 6 + 6 + 1   # images, clean, homogeneous masks, metadata
    assert all(da[k] != dc[k] for k in da if k.endswith('.npy'))
    meta = json.loads((a / 'metadata.json').read_text())
    assert meta['units'] == 'linear' and meta['looks'] == 3 and meta['size'] == [64, 64]
    img = np.load(a / 'train' / 'scene_00000.npy')
    assert img.dtype == np.float32 and img.shape == (64, 64) and (img >= 0).all()
    assert np.array_equal(make_sar_scene(48, 2, rng=9), make_sar_scene(48, 2, rng=9))


@pytest.mark.parametrize('looks', [1, 2, 4])
def test_speckle_statistics(looks):
    s = sar_speckle((256, 256), looks, rng=looks).astype(np.float64)
    assert abs(s.mean() - 1) < 0.02
    assert abs(s.mean() ** 2 / s.var() - looks) < 0.05 * looks          # ENL of pure speckle = L
    # a generated scene: on its largest homogeneous region the ENL is L, and image / clean is unit-mean speckle
    img, clean = make_sar_scene((192, 256), looks, rng=20 + looks, return_clean=True)
    vals, counts = np.unique(clean, return_counts=True)
    region = img[clean == vals[counts.argmax()]].astype(np.float64)
    assert region.size > 4000 and abs(region.mean() ** 2 / region.var() - looks) < 0.1 * looks
    ratio = (img / clean).astype(np.float64)
    speckled = ratio != 1                                                # point targets are left unspeckled
    assert (~speckled).sum() < 80 and abs(ratio[speckled].mean() - 1) < 0.02


# --- reading ---

def test_reads_each_format(tmp_path):
    rs = np.random.default_rng(0)
    f32 = rs.gamma(2, 0.05, (24, 30)).astype(np.float32)
    u16 = rs.integers(0, 65535, (24, 30)).astype(np.uint16)
    u8 = rs.integers(0, 256, (24, 30)).astype(np.uint8)
    np.save(tmp_path / 'a.npy', f32); np.save(tmp_path / 'b.npy', f32[None]); np.save(tmp_path / 'c.npy', f32[..., None])
    Image.fromarray(f32).save(tmp_path / 'a.tif'); Image.fromarray(f32).save(tmp_path / 'A.TIFF')
    Image.fromarray(u16).save(tmp_path / 'u.tif')
    Image.fromarray(u16).save(tmp_path / 'u16.png'); Image.fromarray(u8).save(tmp_path / 'u8.png')
    for name, exp in [('a.npy', f32), ('b.npy', f32), ('c.npy', f32), ('a.tif', f32), ('A.TIFF', f32), ('u.tif', u16),
                      ('u16.png', u16), ('u8.png', u8)]:
        got = read_sar_image(tmp_path / name)
        assert got.shape == (24, 30) and np.array_equal(got, exp), name
        assert pixel_kind(got) == ('float' if exp.dtype == np.float32 else 'dn')


def test_tifffile_and_pillow_agree(tmp_path):
    tifffile = pytest.importorskip('tifffile')
    a = np.random.default_rng(1).random((20, 28)).astype(np.float32)
    tifffile.imwrite(tmp_path / 'a.tif', a)
    assert np.array_equal(read_sar_image(tmp_path / 'a.tif'), a)


def _write_bad(tmp_path):
    "Files that cannot be read as one band, and the words their errors must hold"
    f = np.random.default_rng(0).random((20, 20)).astype(np.float32)
    np.save(tmp_path / 'three.npy', np.stack([f] * 3))
    np.save(tmp_path / 'flat.npy', f.ravel())
    np.save(tmp_path / 'four.npy', f[None, None, None])
    np.save(tmp_path / 'complex.npy', f.astype(np.complex64))
    np.save(tmp_path / 'text.npy', np.array([['a', 'b'], ['c', 'd']]))
    Image.fromarray(np.zeros((20, 20, 3), np.uint8)).save(tmp_path / 'rgb.png')
    Image.fromarray(np.zeros((20, 20, 2), np.uint8)).save(tmp_path / 'la.png')
    Image.fromarray(f).save(tmp_path / 'pages.tif', save_all=True, append_images=[Image.fromarray(f)])
    (tmp_path / 'junk.tif').write_bytes(b'II*\x00 not really')
    (tmp_path / 'junk.npy').write_bytes(b'nope')
    return {'three.npy': 'holds 3 bands', 'flat.npy': 'single-band 2-D image', 'four.npy': 'single-band 2-D image',
            'complex.npy': 'complex', 'text.npy': 'expected real numbers', 'rgb.png': 'has 3 bands', 'la.png': 'has 2 bands',
            'pages.tif': 'holds 2 pages', 'junk.tif': 'cannot read', 'junk.npy': 'cannot read'}

def test_unreadable_files_are_named(tmp_path):
    for name, words in _write_bad(tmp_path).items():
        with pytest.raises(ValueError) as e: read_sar_image(tmp_path / name)
        assert str(tmp_path / name) in str(e.value) and words in str(e.value), (name, str(e.value))
    with pytest.raises(ValueError, match="unsupported file type '.jpg'"): read_sar_image(tmp_path / 'x.jpg')
    with pytest.raises(FileNotFoundError, match='missing.npy'): read_sar_image(tmp_path / 'missing.npy')


# --- preprocessing ---

@pytest.fixture(scope='module')
def train_imgs():
    return [make_sar_scene((64, 80), 1, rng=i) for i in range(4)]

def test_preprocess_round_trip(train_imgs):
    pre = SarPreprocess('linear').fit(train_imgs)
    db_all = np.concatenate([10 * np.log10(a.astype(np.float64)).ravel() for a in train_imgs])
    assert np.isclose(pre.lo, np.percentile(db_all, 1), atol=1e-3) and np.isclose(pre.hi, np.percentile(db_all, 99), atol=1e-3)
    img = train_imgs[1]
    x = pre.encode(img)
    assert x.dtype == np.float32 and x.shape == img.shape and x.min() == 0 and x.max() == 1
    clipped = np.clip(10 * np.log10(img.astype(np.float64)), pre.lo, pre.hi)
    np.testing.assert_allclose(pre.decode_db(x), clipped, atol=2e-4)
    np.testing.assert_allclose(pre.decode_linear(x), 10 ** (clipped / 10), rtol=1e-4)
    inside = (clipped > pre.lo) & (clipped < pre.hi)
    assert inside.mean() > 0.95
    np.testing.assert_allclose(pre.decode_linear(x)[inside], img[inside], rtol=1e-4)   # unclipped pixels come back exactly
    # torch tensors give the same values
    t = pre.encode(torch.from_numpy(img))
    assert isinstance(t, torch.Tensor) and t.dtype == torch.float32
    np.testing.assert_allclose(t.numpy(), x, atol=1e-6)
    np.testing.assert_allclose(pre.decode_linear(t).numpy(), pre.decode_linear(x), rtol=1e-5)
    assert pre(img).tobytes() == x.tobytes()

def test_preprocess_units_floor_and_fixed_range():
    a = np.array([[0., 1e-12, 1e-3, 1.]], np.float32)
    pre = SarPreprocess('linear', clip=(-40, 0))
    assert pre.fitted and pre.fit([a]) is pre and (pre.lo, pre.hi) == (-40, 0)          # a fixed range is not refitted
    np.testing.assert_allclose(pre.encode(a), [[0, 0, 0.25, 1]], atol=1e-6)             # zeros hit the floor, then the clip
    np.testing.assert_allclose(SarPreprocess('linear').to_db(a), [[-100, -100, -30, 0]], atol=1e-4)
    d = SarPreprocess('db', clip=(-20, 10))
    np.testing.assert_allclose(d.encode(np.array([-25., -20., -5., 10., 30.])), [0, 0, 0.5, 1, 1])
    np.testing.assert_allclose(d.decode_db(np.array([0., 0.5, 1.])), [-20, -5, 10])
    np.testing.assert_allclose(d.decode_linear(np.array([0.5])), [10 ** -0.5], rtol=1e-6)
    dn = SarPreprocess('db').fit([np.arange(101, dtype=np.float32).reshape(1, -1)])     # digital numbers: no log
    assert (dn.lo, dn.hi) == (1.0, 99.0)

def test_preprocess_is_plain_data(tmp_path, train_imgs):
    pre = SarPreprocess('linear', clip=('percentile', 2, 98)).fit(train_imgs)
    torch.save({'preprocess': pre.to_dict()}, tmp_path / 'c.pt')
    back = SarPreprocess.from_dict(torch.load(tmp_path / 'c.pt', weights_only=True)['preprocess'])
    assert back == pre and back.encode(train_imgs[0]).tobytes() == pre.encode(train_imgs[0]).tobytes()
    assert SarPreprocess.from_dict(SarPreprocess('db', clip=[-30, 5]).to_dict()) == SarPreprocess('db', clip=(-30, 5))
    with pytest.raises(ValueError, match='exactly the keys'): SarPreprocess.from_dict({**pre.to_dict(), 'extra': 1})

def test_preprocess_subsample_is_deterministic(train_imgs):
    full = SarPreprocess('linear').fit(train_imgs)
    a = SarPreprocess('linear', max_fit_pixels=4000).fit(train_imgs)
    b = SarPreprocess('linear', max_fit_pixels=4000).fit(train_imgs)
    assert a == b and a != full and abs(a.hi - full.hi) < 1

@pytest.mark.parametrize('kw,match', [
    (dict(units='dB'), '`units`'), (dict(clip=(5, 5)), 'lo < hi'), (dict(clip=('percentile', 99, 1)), 'p_lo < p_hi'),
    (dict(clip='minmax'), '`clip`'), (dict(clip=(1, 2, 3)), '`clip`'), (dict(floor=0), '`floor`')])
def test_preprocess_bad_arguments(kw, match):
    with pytest.raises(ValueError, match=match): SarPreprocess(**kw)

def test_preprocess_errors(train_imgs):
    with pytest.raises(RuntimeError, match='not fitted'): SarPreprocess().encode(train_imgs[0])
    with pytest.raises(RuntimeError, match='not fitted'): SarPreprocess().decode_db(np.zeros(3))
    with pytest.raises(ValueError, match='percentiles .* are both'): SarPreprocess('db').fit([np.ones((10, 10), np.float32)])
    with pytest.raises(ValueError, match='at least one image'): SarPreprocess().fit([])


# --- data sets and loaders ---

def test_loaders_shapes_and_ranges(sar):
    dls = loaders(sar)
    assert dls.units == 'linear' and dls.pixel_kind == 'float' and dls.patch == 32 and dls.metadata['looks'] == 2
    assert len(dls.train_ds) == 8 * 3 and len(dls.train) == 4                       # 24 patches: 4 batches of 6
    batches = list(dls.train)
    assert sum(len(x) for x, _ in batches) == 24                                     # nothing dropped
    for x, y in batches + list(dls.valid):
        assert x.shape[1:] == (1, 32, 32) and x.dtype == torch.float32 and torch.equal(x, y)
        assert 0 <= x.min() and x.max() <= 1 and x.data_ptr() != y.data_ptr()
    assert [f.name for f in dls.train_files] == [f'scene_{i:05d}.npy' for i in range(8)]
    small = loaders(sar, bs=5)
    assert len(small.train) == 5 and [len(x) for x, _ in small.train][-1] == 4      # drop_last=False keeps the last partial batch

def test_training_patches_are_crops_of_the_encoded_images(sar):
    dls = loaders(sar, shuffle=False)
    list(dls.train)                                                                  # draws the epoch's positions
    ds, pre = dls.train_ds, dls.preprocess
    for i in [0, 4, 23]:
        y0, x0 = ds.pos[i]
        exp = pre.encode(np.load(dls.train_files[i // 3]))[y0:y0 + 32, x0:x0 + 32]
        assert np.array_equal(ds[i][0][0].numpy(), exp)
        assert 0 <= y0 <= 80 - 32 and 0 <= x0 <= 112 - 32

def test_patches_are_reproducible(sar):
    def epochs(dls, n=2): return [torch.cat([x for x, _ in dls.train]) for _ in range(n)]
    a, b, c = epochs(loaders(sar, seed=3)), epochs(loaders(sar, seed=3)), epochs(loaders(sar, seed=4))
    assert all(torch.equal(u, v) for u, v in zip(a, b))
    assert not torch.equal(a[0], a[1]) and not torch.equal(a[0], c[0])             # new patches every epoch, per seed
    g = epochs(loaders(sar, seed=3, shuffle=False))
    assert not torch.equal(g[0], g[1])                                               # new positions, not just a new order
    assert not torch.equal(g[0], epochs(loaders(sar, seed=4, shuffle=False), 1)[0])
    set_seed(11); d = epochs(loaders(sar, seed=None))
    set_seed(11); e = epochs(loaders(sar, seed=None))
    assert all(torch.equal(u, v) for u, v in zip(d, e))                              # seed=None follows set_seed
    f = loaders(sar, seed=3)
    state = f.train.rng.getstate()
    first = torch.cat([x for x, _ in f.train])
    f.train.rng.setstate(state)                                                      # the loader's rng is all its randomness
    assert torch.equal(first, torch.cat([x for x, _ in f.train])) and torch.equal(first, a[0])

def test_worker_processes_give_the_same_patches(sar):
    a = torch.cat([x for x, _ in loaders(sar, seed=5).train])
    b = torch.cat([x for x, _ in loaders(sar, seed=5, num_workers=2).train])
    assert torch.equal(a, b)

def test_fit_on_train_only(sar_copy):
    base = loaders(sar_copy)
    assert base.preprocess == SarPreprocess('linear').fit([np.load(f) for f in base.train_files])
    for f in (sar_copy / 'valid').glob('*.npy'): np.save(f, np.load(f) * 1000)     # +30 dB in validation only
    moved = loaders(sar_copy)
    assert moved.preprocess == base.preprocess
    assert torch.cat([x for x, _ in moved.valid]).mean() > torch.cat([x for x, _ in base.valid]).mean() + 0.2

def test_validation_tiles_cover_every_pixel(tmp_path):
    for i, (h, w) in enumerate([(32, 32), (64, 96), (70, 100), (33, 65)]):
        d = tmp_path / 'train'; d.mkdir(exist_ok=True)
        np.save(d / f'{i}.npy', make_sar_scene((h, w), 1, rng=i))
    import shutil; shutil.copytree(tmp_path / 'train', tmp_path / 'valid')
    dls = SarDataLoaders.from_folder(tmp_path, patch=32, bs=4, seed=0)
    ds = dls.valid_ds
    assert len(ds) == 1 + 2 * 3 + 3 * 4 + 2 * 3
    for k, f in enumerate(dls.valid_files):
        a = dls.preprocess.encode(np.load(f))
        cover = np.zeros(a.shape, int)
        for t, (i, y, x) in enumerate(ds.tiles):
            if i != k: continue
            assert 0 <= y and y + 32 <= a.shape[0] and 0 <= x and x + 32 <= a.shape[1]
            assert np.array_equal(ds[t][0][0].numpy(), a[y:y + 32, x:x + 32])
            cover[y:y + 32, x:x + 32] += 1
        assert cover.min() >= 1, f                                                    # every pixel in a tile
        if a.shape[0] % 32 == 0 and a.shape[1] % 32 == 0: assert cover.max() == 1   # no overlap when the sides fit
    out = ds.stitch(torch.cat([x for x, _ in dls.valid]))
    assert all(np.allclose(o, dls.preprocess.encode(np.load(f)), atol=1e-6) for o, f in zip(out, dls.valid_files))
    assert tile_origins(100, 32) == [0, 32, 64, 68] and tile_origins(64, 32) == [0, 32]

def test_tiles_dl_for_the_test_split(sar):
    dls = loaders(sar)
    tdl = dls.tiles_dl(sar / 'test')
    assert len(tdl.dataset) == 2 * 3 * 4 and tdl.bs == dls.valid.bs
    x, y = tdl.one_batch()
    assert x.shape == (6, 1, 32, 32) and torch.equal(x, y)
    f = sorted((sar / 'test').glob('*.npy'))[0]
    assert torch.equal(tdl.dataset[0][0][0], torch.from_numpy(dls.preprocess.encode(np.load(f))[:32, :32]))

def test_digital_numbers_default_to_db(tmp_path):
    for split, n in (('train', 3), ('valid', 1)):
        (tmp_path / split).mkdir()
        for i in range(n):
            Image.fromarray(np.random.default_rng(i).integers(0, 256, (40, 40)).astype(np.uint8)).save(tmp_path / split / f'{i}.png')
    dls = SarDataLoaders.from_folder(tmp_path, patch=32, bs=2, seed=0)
    assert dls.units == 'db' and dls.pixel_kind == 'dn' and 0 <= dls.preprocess.lo < dls.preprocess.hi <= 255
    assert SarDataLoaders.from_folder(tmp_path, patch=32, bs=2, units='linear', seed=0).preprocess.hi < 25   # 10*log10(255)


def _nan(f): a = np.load(f); a[3, 7] = np.nan; np.save(f, a)
def _inf(f): a = np.load(f); a[0, 0] = np.inf; np.save(f, a)
def _const(f): np.save(f, np.full((80, 112), 0.1, np.float32))
def _small(f): np.save(f, np.load(f)[:20])
def _negative(f): np.save(f, np.load(f) - 1)
def _bands(f): np.save(f, np.stack([np.load(f)] * 2))

@pytest.mark.parametrize('edit,split,words', [
    (_nan, 'valid', '1 pixel(s) are NaN or infinite (the first at row 3, column 7)'),
    (_inf, 'train', 'NaN or infinite'),
    (_const, 'train', 'every pixel has the same value'),
    (_small, 'valid', 'the image (20x112 pixels) is smaller than the 32x32 patch'),
    (_negative, 'train', 'negative values'),
    (_bands, 'valid', 'holds 2 bands'),
])
def test_bad_images_are_named(sar_copy, edit, split, words):
    f = sar_copy / split / 'scene_00001.npy'
    edit(f)
    with pytest.raises(ValueError) as e: loaders(sar_copy)
    assert f'{f}: ' in str(e.value) and words in str(e.value), str(e.value)

def test_mixed_units(sar_copy):
    Image.fromarray(np.zeros((40, 40), np.uint8) + np.arange(40, dtype=np.uint8)).save(sar_copy / 'valid' / 'quick.png')
    with pytest.raises(ValueError, match=r"mixed units: .*valid.quick\.png \(valid\) holds integer digital numbers"):
        loaders(sar_copy)
    (sar_copy / 'valid' / 'quick.png').unlink()
    with pytest.raises(ValueError, match=r"mixed units: .*metadata\.json says units='linear' but units='db'"):
        loaders(sar_copy, units='db')
    dls = loaders(sar_copy)
    np.save(sar_copy / 'test' / 'int.npy', np.arange(80 * 112, dtype=np.int32).reshape(80, 112))
    with pytest.raises(ValueError, match=r"mixed units: .*int\.npy \(test\) holds integer digital numbers .* but training images hold"):
        dls.tiles_dl(sar_copy / 'test')
    meta = json.loads((sar_copy / 'metadata.json').read_text()); meta['units'] = 'sigma0'
    (sar_copy / 'metadata.json').write_text(json.dumps(meta))
    with pytest.raises(ValueError, match=r"metadata\.json: units must be one of"): loaders(sar_copy)

def test_empty_and_missing_folders(tmp_path, sar_copy):
    (sar_copy / 'empty').mkdir(); (sar_copy / 'other').mkdir(); (sar_copy / 'other' / 'a.jpg').write_bytes(b'x')
    with pytest.raises(ValueError, match=r"no SAR images \(.npy, .tif, .tiff, .png\) in .*empty \(it is empty\)"):
        loaders(sar_copy, valid='empty')
    with pytest.raises(ValueError, match=r"in .*other \(it holds 1 other file\(s\), e.g. a.jpg\)"):
        loaders(sar_copy, train='other')
    with pytest.raises(FileNotFoundError, match=r"SAR image folder .*nothing does not exist"): loaders(sar_copy, valid='nothing')
    with pytest.raises(FileNotFoundError, match=r"SAR data set folder .*absent does not exist"): loaders(tmp_path / 'absent')

@pytest.mark.parametrize('kw,match', [(dict(patch=4), '`patch`'), (dict(bs=0), '`bs`'), (dict(patches_per_image=0), '`patches_per_image`'),
                                      (dict(units='DN'), '`units`'), (dict(clip=(0, -1)), 'lo < hi')])
def test_bad_arguments(sar, kw, match):
    with pytest.raises(ValueError, match=match): loaders(sar, **kw)


def test_items_are_fastai_sar_images_and_survive_export(sar):
    "issue 11.4: SarImage items on TfmdDLs (show_batch dispatches on them); new_empty keeps the fitted preprocessing."
    from fastai.data.core import TfmdDL
    from fastai.torch_core import TensorImageBW
    dls = loaders(sar)
    assert isinstance(dls.train, TfmdDL) and isinstance(dls.valid, TfmdDL)
    xb, yb = dls.one_batch(); vb, _ = dls.valid.one_batch()
    assert type(xb) is SarImage and type(yb) is SarImage and type(vb) is SarImage and issubclass(SarImage, TensorImageBW)
    x, y, its = dls.train.show_batch(max_n=2, show=False)
    assert type(x) is SarImage and len(its) == 2
    empty = dls.new_empty()
    assert len(empty.train_ds) == 0 and len(empty.valid_ds) == 0
    assert empty.preprocess == dls.preprocess and (empty.units, empty.patch, empty.pixel_kind) == (dls.units, dls.patch, dls.pixel_kind)
    f = sorted((sar / 'test').glob('*.npy'))[0]
    a, b = empty.test_dl([f]).one_batch()[0], empty.test_dl([np.load(f)]).one_batch()[0]   # a file or an array, in the training units
    assert torch.equal(a, b) and torch.equal(a, dls.tiles_dl([f]).one_batch()[0])
    with pytest.raises(ValueError, match='array 0: the image .* smaller than the 32x32 patch'): empty.test_dl([np.ones((20, 40), np.float32)])


def test_data_fingerprint_names_the_split(sar, sar_copy):
    "The fingerprint changes with which files are in train/valid, not with where the data set lives."
    a, moved = loaders(sar), loaders(sar_copy)
    assert a.data_fingerprint == moved.data_fingerprint and len(a.data_fingerprint) == 16
    f = sorted((sar_copy / 'valid').glob('*.npy'))[0]; f.rename(sar_copy / 'train' / f.name)
    assert loaders(sar_copy).data_fingerprint != a.data_fingerprint


def test_checkpoint_params_carry_vmin_vmax(sar, tmp_path):
    pre = loaders(sar).preprocess
    pp = pre.checkpoint_params()
    assert (pp['vmin'], pp['vmax']) == (pre.lo, pre.hi) and pp['vmin'] < pp['vmax']
    torch.save({'preprocessing_params': pp}, tmp_path / 'c.pt')
    assert SarPreprocess.from_dict(torch.load(tmp_path / 'c.pt', weights_only=True)['preprocessing_params']) == pre
    with pytest.raises(ValueError, match='vmin/vmax'): SarPreprocess.from_dict({**pp, 'vmin': pp['vmin'] - 1})


def test_amplitude_units_and_calibration(tmp_path):
    "issue 16.6: amplitude DNs are squared into intensity (dB = 20 log10 DN), a calibration constant shifts the dB, old parameters load"
    from medrecipes.data.sar import SarPreprocess, SarDataLoaders
    A = np.array([[1., 10., 100.], [1000., 3., 0.]], np.float32)
    amp, lin = SarPreprocess('amplitude', clip=(-10., 70.)), SarPreprocess('linear', clip=(-10., 70.))
    np.testing.assert_allclose(amp.to_db(A), lin.to_db(A ** 2), atol=1e-4)
    np.testing.assert_allclose(amp.to_db(A)[0, :3], [0., 20., 40.], atol=1e-5)
    x = amp.encode(A)
    np.testing.assert_allclose(amp.decode_linear(x)[0, 1:], [100., 1e4], rtol=1e-4)            # intensity = DN^2
    np.testing.assert_allclose(amp.decode_units(x)[0, 1:], [10., 100.], rtol=1e-4)             # back in DN
    cal = SarPreprocess('amplitude', clip=(-10., 70.), calibration_db=-30.)
    np.testing.assert_allclose(cal.to_db(A), amp.to_db(A) - 30, atol=1e-4)
    np.testing.assert_allclose(cal.decode_units(cal.encode(A))[0, 1:], [10., 100.], rtol=1e-4)
    old = {k: v for k, v in lin.checkpoint_params().items() if k != 'calibration_db'}           # a checkpoint from before
    assert SarPreprocess.from_dict(old) == lin and SarPreprocess.from_dict(cal.checkpoint_params()) == cal
    with pytest.raises(ValueError, match='calibration_db'): SarPreprocess('amplitude', calibration_db=float('nan'))
    # a uint16 amplitude data set fits the same dB clip as its intensity twin
    src = make_sar(tmp_path / 'lin', n_train=3, n_valid=1, size=64, seed=1)
    for s in ('train', 'valid'):
        (tmp_path / 'amp' / s).mkdir(parents=True)
        for f in (src / s).glob('*.npy'):
            np.save(tmp_path / 'amp' / s / f.name, np.clip(np.round(np.sqrt(np.load(f)) * 1e4), 0, 65535).astype(np.uint16))
    d = SarDataLoaders.from_folder(tmp_path / 'amp', patch=32, bs=4, units='amplitude', calibration_db=-80., device='cpu')
    ref = SarDataLoaders.from_folder(src, patch=32, bs=4, device='cpu')
    assert d.units == 'amplitude' and abs(d.preprocess.lo - ref.preprocess.lo) < 0.5 and abs(d.preprocess.hi - ref.preprocess.hi) < 0.5
    with pytest.raises(ValueError, match='cannot be amplitude'): check_sar_image(np.array([[-1., 2.]], np.float32), 'x.npy', 'amplitude')


def test_clean_targets(tmp_path):
    "target='clean': inputs are the speckled images, targets the same windows of clean/<split>/<name>, encoded alike; errors name what is missing"
    from medrecipes.synth import make_sar
    src = make_sar(tmp_path/'s', n_train=3, n_valid=1, size=64, seed=0, save_clean=True, mode='realistic')
    dls = SarDataLoaders.from_folder(src, patch=32, bs=4, patches_per_image=2, seed=0, device='cpu', target='clean')
    assert dls.target == 'clean'
    pre, ds = dls.preprocess, dls.train_ds
    for i in range(len(ds)):
        (y, x), k = ds.pos[i], i // ds.patches_per_image
        inp, targ = ds[i]
        clean = pre.encode(np.load(src/'clean'/'train'/ds.files[k].name))
        assert torch.equal(targ[0], torch.from_numpy(clean[y:y + 32, x:x + 32])) and not torch.equal(inp, targ)
    xb, yb = dls.valid.one_batch()
    clean_v = pre.encode(np.load(src/'clean'/'valid'/dls.valid_files[0].name))
    assert torch.equal(yb[0, 0].as_subclass(torch.Tensor), torch.from_numpy(clean_v[:32, :32]))
    plain = SarDataLoaders.from_folder(src, patch=32, bs=4, patches_per_image=2, seed=0, device='cpu')
    assert plain.preprocess == pre and plain.data_fingerprint != dls.data_fingerprint   # the same clip (fitted on the inputs); another data set
    (src/'clean'/'valid'/dls.valid_files[0].name).unlink()
    with pytest.raises(FileNotFoundError, match=r"target='clean' needs .* 1 missing in .*clean/valid"):
        SarDataLoaders.from_folder(src, patch=32, bs=4, device='cpu', target='clean')
    with pytest.raises(ValueError, match="`target` must be 'input' or 'clean'"): SarDataLoaders.from_folder(src, patch=32, target='truth')
