"Image-folder data: the generated digits set, the layout checks and their errors, class weights, loaders that drop nothing."
import hashlib, os, shutil
from pathlib import Path
import numpy as np, pytest, torch
from PIL import Image
from medrecipes.synth import make_digits
from medrecipes.data.folder import FolderDataLoaders, scan_class_folders
from medrecipes.losses import class_weights


@pytest.fixture(scope='module')
def digits(tmp_path_factory):
    return make_digits(tmp_path_factory.mktemp('digits')/'d', splits=(5, 3, 2), size=28, seed=0, classes=(0, 1, 2, 3))


@pytest.fixture
def copy(digits, tmp_path):
    "A private copy of the set, for tests that damage it."
    return Path(shutil.copytree(digits, tmp_path/'d'))


def _digests(p):
    return {str(f.relative_to(p)): hashlib.sha256(f.read_bytes()).hexdigest() for f in sorted(p.rglob('*')) if f.is_file()}


def test_make_digits_layout_and_bytes(digits, tmp_path):
    for split, n in (('train', 5), ('valid', 3), ('test', 2)):
        assert sorted(p.name for p in (digits/split).iterdir()) == ['0', '1', '2', '3']
        for c in '0123':
            fs = sorted((digits/split/c).glob('*.png')); assert len(fs) == n
            with Image.open(fs[0]) as im: assert im.size == (28, 28) and im.mode == 'L'
    again = make_digits(tmp_path/'again', splits=(5, 3, 2), size=28, seed=0, classes=(0, 1, 2, 3))
    assert _digests(again) == _digests(digits)                       # byte-identical per seed
    other = make_digits(tmp_path/'other', splits=(5, 3, 2), size=28, seed=1, classes=(0, 1, 2, 3))
    assert all(a != b for a, b in zip(_digests(other).values(), _digests(digits).values()))   # 40 images and the metadata
    # the digits are told apart by their pixels: the mean images of two classes differ clearly
    mean = lambda c: np.mean([np.asarray(Image.open(f), np.float32) for f in (digits/'train'/c).glob('*.png')], 0)
    assert np.abs(mean('0') - mean('1')).mean() > 5


def test_loaders_keep_every_image_and_record_normalization(digits):
    dls = FolderDataLoaders.from_folder(digits, size=32, bs=6, seed=0, device='cpu')
    assert dls.vocab == ['0', '1', '2', '3'] and dls.class_names == ['0', '1', '2', '3']
    assert len(dls.train_ds) == 20 and len(dls.valid_ds) == 12
    assert sum(len(b[1]) for b in dls.train) == 20                   # 6 + 6 + 6 + 2: the last partial batch is kept
    assert sum(len(b[1]) for b in dls.valid) == 12
    xb, yb = dls.one_batch()
    assert xb.shape == (6, 3, 32, 32) and xb.dtype == torch.float32
    assert abs(float(xb.mean())) < 3                                   # normalised
    assert dls.normalization == {'mean': [0.485, 0.456, 0.406], 'std': [0.229, 0.224, 0.225], 'size': 32, 'resize': 'pad',
                                 'pad_mode': 'zeros', 'mode': 'RGB', 'stored': 64, 'draft': 64, 'window': None}
    assert dls.train_labels() == [c for c in '0123' for _ in range(5)]
    assert dls.counts().to_dict('list') == {'train': [5] * 4, 'valid': [3] * 4, 'test': [2] * 4}
    tdl = dls.test_dl()
    assert sorted(int(y) for _, y in tdl.dataset) == [0, 0, 1, 1, 2, 2, 3, 3]
    assert sum(len(b[1]) for b in tdl) == 8
    # with items, test_dl is fastai's (unlabelled) test loader, which `learn.predict` relies on
    one = dls.test_dl([dls.files['test'][0]])
    assert len(one.dataset) == 1 and len(one.one_batch()) == 1
    # the labels come from the folder names
    for f, (_, y) in zip(dls.files['valid'], dls.valid_ds): assert dls.vocab[int(y)] == f.parent.name


def test_seeded_shuffling_and_no_test_folder(digits, copy):
    order = lambda seed: [yb.tolist() for _, yb in FolderDataLoaders.from_folder(digits, size=28, bs=4, seed=seed, augment=False, device='cpu').train]
    assert order(3) == order(3) and order(3) != order(4)
    shutil.rmtree(copy/'test')
    dls = FolderDataLoaders.from_folder(copy, size=28, device='cpu')
    assert dls.test_dl() is None and not dls.has_test()
    with pytest.raises(ValueError, match='no test folder'): dls.split_dl('test')
    assert FolderDataLoaders.from_folder(digits, test=None, size=28, device='cpu').test_dl() is None


def test_class_names_sorted_from_train_and_missing_valid_class_allowed(copy):
    for s in ('train', 'valid', 'test'):
        for old, new in (('0', 'zebra'), ('1', 'apple'), ('2', 'Mango'), ('3', 'kiwi')): (copy/s/old).rename(copy/s/new)
    shutil.rmtree(copy/'valid'/'kiwi')                                 # a class valid lacks is allowed
    dls = FolderDataLoaders.from_folder(copy, size=28, device='cpu')
    assert dls.vocab == sorted(['zebra', 'apple', 'Mango', 'kiwi']) == ['Mango', 'apple', 'kiwi', 'zebra']
    assert len(dls.valid_ds) == 9 and dls.counts().loc['kiwi', 'valid'] == 0


def test_class_weights_from_the_training_folder_only(copy):
    for f in sorted((copy/'train'/'1').glob('*.png'))[:3]: f.unlink()      # class 1: 2 training images
    for f in sorted((copy/'valid'/'2').glob('*.png'))[:2]: f.unlink()      # valid counts must not matter
    dls = FolderDataLoaders.from_folder(copy, size=28, device='cpu')
    n = np.array([5, 2, 5, 5])
    w = class_weights(dls.train_labels(), dls.vocab)
    assert torch.allclose(w, torch.tensor(n.sum() / (4 * n), dtype=torch.float32))


@pytest.mark.parametrize('damage, match', [
    (lambda p: shutil.rmtree(p/'train'), "train folder {p}/train does not exist"),
    (lambda p: shutil.rmtree(p/'valid'), "valid folder {p}/valid does not exist"),
    (lambda p: shutil.copytree(p/'valid'/'1', p/'valid'/'9'), "valid folder {p}/valid has class(es) ['9'] that the train folder"),
    (lambda p: shutil.copytree(p/'test'/'1', p/'test'/'x'), "test folder {p}/test has class(es) ['x'] that the train folder"),
    (lambda p: (p/'train'/'7').mkdir(), "train class folder {p}/train/7 has no image files"),
    (lambda p: [f.unlink() for f in (p/'valid'/'2').glob('*.png')] and (p/'valid'/'2'/'readme.txt').write_text('x'),
     "valid class folder {p}/valid/2 has no image files"),
    (lambda p: shutil.copy(p/'train'/'0'/'0_00000.png', p/'train'/'loose.png'), "holds image files outside class folders (loose.png)"),
    (lambda p: shutil.copytree(p/'train'/'0', p/'train'/'0'/'more'), "train class folder {p}/train/0 holds folder(s) ['more']"),
    (lambda p: [shutil.rmtree(d) for d in (p/'train').iterdir()], "train folder {p}/train has no class folders with images"),
    (lambda p: (p/'test'/'3'/'3_00001.png').write_bytes(b'\x89PNG not really'), "1 unreadable test image file(s): {p}/test/3/3_00001.png (UnidentifiedImageError)"),
])
def test_layout_errors_name_the_folder_or_file(copy, damage, match):
    damage(copy)
    with pytest.raises((ValueError, FileNotFoundError)) as e: FolderDataLoaders.from_folder(copy, size=28, device='cpu')
    assert match.format(p=copy) in str(e.value)


def test_a_truncated_image_fails_by_name_when_decoded(copy):
    f = copy/'train'/'2'/'2_00001.png'
    f.write_bytes(f.read_bytes()[:80])                                   # the header still reads
    with pytest.raises(ValueError, match=f'cannot decode image {f}'):   # the near-duplicate check decodes every image first
        FolderDataLoaders.from_folder(copy, size=28, device='cpu')
    dls = FolderDataLoaders.from_folder(copy, size=28, device='cpu', dup_distance=None)   # without it: when the image is read
    i = [str(x) for x in dls.files['train']].index(str(f))
    with pytest.raises(ValueError, match=f'cannot decode image {f}'): dls.train_ds[i]


def test_bad_arguments(digits, tmp_path):
    with pytest.raises(FileNotFoundError, match='data set folder .*nope does not exist'): FolderDataLoaders.from_folder(tmp_path/'nope')
    for kw, match in ((dict(bs=0), '`bs` must be an int >= 1'), (dict(size=4), '`size` must be an int >= 8'),
                      (dict(num_workers=-1), '`num_workers`'), (dict(augment='yes'), '`augment` must be True, False or a dict')):
        with pytest.raises(ValueError, match=match): FolderDataLoaders.from_folder(digits, **kw)
    # augmentation arguments pass through (a bad one fails in fastai)
    FolderDataLoaders.from_folder(digits, size=28, augment=dict(flip=True, max_rotate=5.), device='cpu').one_batch()
    assert scan_class_folders(digits/'valid', 'valid').keys() == {'0', '1', '2', '3'}


# --- how images are read (issue 12.5, issue 11.4)

from _utils import ramp16_png as _ramp16, exif6_jpeg as _exif6


def test_16bit_png_keeps_its_ramp(tmp_path):
    from medrecipes.data.folder import FolderImage
    x = np.asarray(FolderImage.create(_ramp16(tmp_path/'r.png')))
    assert x.shape == (48, 64, 3) and x.dtype == np.uint8
    row = x[0, :, 0].astype(int)
    assert len(np.unique(row)) == 64 and (np.diff(row) > 0).all() and row[0] == 0 and row[-1] == 255
    assert (x == 255).mean() < 0.05


def test_16bit_png_in_a_folder_passes_the_check_and_loads_its_ramp(copy):
    fn = _ramp16(copy/'valid'/'1'/'1_00000.png', 28, 28)            # replaces an 8-bit digit
    dls = FolderDataLoaders.from_folder(copy, size=28, device='cpu', augment=False)
    i = [str(f) for f in dls.files['valid']].index(str(fn))
    x = np.asarray(dls.valid_ds[i][0])
    assert len(np.unique(x[0, :, 0])) == 28 and (x == 255).mean() < 0.05


def test_exif_orientation_applied(tmp_path):
    from medrecipes.data.folder import FolderImage
    x = np.asarray(FolderImage.create(_exif6(tmp_path/'o.jpg')))
    assert x.shape == (40, 24, 3)                                           # upright: portrait
    assert x[:8, 16:, 0].mean() > 200 and x[:8, :8, 0].mean() < 50          # the marked corner is now top-right


def test_inputs_through_the_loaders(digits):
    "What `learn.predict` relies on: a `Path`, a str, a PIL image or an array give the same batch."
    from medrecipes.data.folder import FolderImage
    dls = FolderDataLoaders.from_folder(digits, size=32, bs=4, device='cpu', augment=False)
    fn = dls.files['test'][0]
    ref = dls.test_dl([fn]).one_batch()[0]
    for item in (str(fn), Image.open(fn), np.asarray(Image.open(fn)), np.asarray(Image.open(fn))[..., None],
                 np.asarray(Image.open(fn).convert('RGB'))):
        xb = dls.test_dl([item]).one_batch()[0]
        assert torch.equal(xb, ref), type(item)
    assert np.array_equal(np.asarray(FolderImage.create(fn)), np.asarray(FolderImage.create(str(fn))))


def test_near_duplicates_across_split_folders_are_reported(copy, tmp_path):
    "issue 14.4 for image folders: a resized, re-encoded copy of a training image in test/ is listed, warned about, and kept."
    src = copy/'train'/'3'/'3_00002.png'
    with Image.open(src) as im: im.convert('RGB').resize((41, 41), Image.BICUBIC).save(copy/'test'/'3'/'copy.jpg', quality=80)
    with pytest.warns(UserWarning, match=r'1 pair\(s\) of near-duplicate images sit in different split folders, e.g. .*copy.jpg'):
        dls = FolderDataLoaders.from_folder(copy, size=28, bs=4, device='cpu', cache_dir=tmp_path/'cache', progress=False)
    r = dls.leak_report
    assert len(r) == 1 and {r.image_id[0], r.duplicate_id[0]} == {'train/3/3_00002.png', 'test/3/copy.jpg'}
    assert {r.split[0], r.duplicate_split[0]} == {'train', 'test'} and r.distance[0] <= 4
    assert dls.counts().loc['3', 'test'] == 3                                  # reported, never dropped
    assert FolderDataLoaders.from_folder(copy, size=28, bs=4, device='cpu', dup_distance=None).leak_report is None


# --- DICOM files in class folders, and the files a scan skips (issue 26.4)

def _mixed_set(root, seed=0):
    "train/ and valid/ with two classes, each class folder 3 PNGs and 3 DICOMs (.dcm, .dicom, and no or a UID-like extension)."
    from medrecipes.synth import write_dicom
    rng = np.random.default_rng(seed)
    names = {'a': ['a3.dcm', 'a4.dicom', 'a5'], 'b': ['b3.DCM', '1.2.840.10008.5', 'b5']}   # the last ones: the DICM magic only
    for split in ('train', 'valid'):
        for c, dcm in names.items():
            d = root/split/c; d.mkdir(parents=True)
            for i in range(3): Image.fromarray(rng.integers(0, 256, (28, 28), dtype=np.uint8)).save(d/f'{c}{i}.png')
            for n in dcm: write_dicom(d/n, rng.integers(0, 4096, (28, 28)).astype(np.uint16), bits_stored=12)
    return root


def test_dicom_files_in_class_folders_are_read(tmp_path):
    import warnings
    root = _mixed_set(tmp_path/'mixed')
    with warnings.catch_warnings():
        warnings.simplefilter('error', UserWarning)                      # nothing skipped, nothing to warn of
        dls = FolderDataLoaders.from_folder(root, size=28, bs=4, device='cpu', dup_distance=None)
    assert [len(v) for v in scan_class_folders(root/'train', 'train').values()] == [6, 6]
    assert dls.counts().to_dict() == {'train': {'a': 6, 'b': 6}, 'valid': {'a': 6, 'b': 6}}
    names = sorted(f.name for f in dls.files['train'])
    assert {'a4.dicom', 'a5', 'b3.DCM', '1.2.840.10008.5'} <= set(names) and len(names) == 12
    x = [dls.train_ds[i][0] for i in range(12)]                          # every one decodes
    assert all(np.asarray(im).shape == (28, 28, 3) for im in x)
    assert dls.one_batch()[0].shape == (4, 3, 28, 28)


def test_files_a_scan_skips_are_counted_and_reported(tmp_path):
    root = _mixed_set(tmp_path/'mixed')
    (root/'train'/'a'/'notes.txt').write_text('x'); (root/'train'/'b'/'scan.raw').write_bytes(b'\0' * 200)
    (root/'train'/'labels.csv').write_text('x')
    with pytest.warns(UserWarning, match=r"train folder .*/train: 3 file\(s\) skipped, not images \(a/notes\.txt, b/scan\.raw, labels\.csv\): expected image files"):
        sc = scan_class_folders(root/'train', 'train')
    assert [len(v) for v in sc.values()] == [6, 6]
    for f in (root/'valid'/'b').iterdir(): f.unlink()
    (root/'valid'/'b'/'readme.txt').write_text('x')
    with pytest.raises(ValueError, match=r"valid class folder .*/valid/b has no image files: 1 file\(s\) skipped \(readme\.txt\)"):
        scan_class_folders(root/'valid', 'valid')


# --- issue 26.3: data.cache_verify=hash, for collections edited in place

def _edit_keeping_size_and_mtime(fn, other):
    "Overwrite `fn` with the image `other` (zero-padded after its end to `fn`'s size), then put `fn`'s mtime back."
    st, b = os.stat(fn), Path(other).read_bytes()
    assert len(b) <= st.st_size
    Path(fn).write_bytes(b + bytes(st.st_size - len(b)))
    os.utime(fn, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert (os.stat(fn).st_size, os.stat(fn).st_mtime_ns) == (st.st_size, st.st_mtime_ns)


def test_cache_verify_hash_sees_an_in_place_edit_through_the_folder_loaders(copy, tmp_path):
    "An image rewritten in place with its size and mtime kept: the default (stamp) serves the old pixels, `cache_verify='hash'` the new."
    kw = dict(size=28, bs=4, device='cpu', cache=True, cache_dir=tmp_path/'cache', progress=False, dup_distance=None)
    dls = FolderDataLoaders.from_folder(copy, cache_verify='hash', **kw)
    assert len(dls.stored.cache.manifest['content']) == len(dls.stored.cache)
    fn = max((copy/'train'/'3').glob('*.png'), key=lambda f: f.stat().st_size)
    from medrecipes.data.images import read_stored
    px = lambda d: np.asarray(d.stored(fn).convert('RGB'))
    old = px(dls)
    other = min((copy/'train'/'1').glob('*.png'), key=lambda f: f.stat().st_size)
    _edit_keeping_size_and_mtime(fn, other)
    new = np.asarray(read_stored(fn, dls.stored.stored, dls.stored.draft))                         # the edited file, decoded
    assert not np.array_equal(new, old)
    assert np.array_equal(px(FolderDataLoaders.from_folder(copy, **kw)), old)                     # stamp: the edit is not seen
    assert np.array_equal(px(FolderDataLoaders.from_folder(copy, cache_verify='hash', **kw)), new)   # hash: rebuilt, the new pixels
    with pytest.raises(ValueError, match=r"`cache_verify` must be one of \('stamp', 'hash'\), not 'sha'"):
        FolderDataLoaders.from_folder(copy, cache_verify='sha', **kw)
