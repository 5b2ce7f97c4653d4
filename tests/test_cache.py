"The decode-once image cache (medrecipes.data.cache): a pure speed-up, invalidated when it must be, never read half-written."
import os, signal, time, multiprocessing as mp
import numpy as np, pandas as pd, pytest, torch
from pathlib import Path
from PIL import Image
from medrecipes.data import cache as C
from medrecipes.data.cache import build_cache, ImageCache, StoredImages
from medrecipes.data.images import read_stored


def _jpegs(d, sizes, seed=0):
    "Smooth random JPEGs of the given (w, h) sizes (large ones decode with draft scaling)."
    d.mkdir(parents=True, exist_ok=True)
    rng, out = np.random.default_rng(seed), []
    for i, (w, h) in enumerate(sizes):
        a = (rng.random((max(2, h // 16), max(2, w // 16))) * 255).astype(np.uint8)
        Image.fromarray(a).resize((w, h), Image.BICUBIC).convert('RGB').save(d/f'im{i:02d}.jpg', quality=90)
        out.append(d/f'im{i:02d}.jpg')
    return out


def test_invalidation_by_file_size_and_preprocessing(tmp_path):
    files = _jpegs(tmp_path/'img', [(200, 150), (120, 180), (90, 90)])
    c = build_cache(files, tmp_path/'c', stored=64, progress=False)
    for i, f in enumerate(files): assert np.array_equal(c.array(c.lookup(f)), np.asarray(read_stored(f, 64)))
    t0 = c.manifest['created']; stamps = c.manifest['stamps']
    assert build_cache(files, tmp_path/'c', stored=64, progress=False).manifest['stamps'] == stamps      # reused as it is
    st = os.stat(files[0]); os.utime(files[0], ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))          # touched
    c2 = build_cache(files, tmp_path/'c', stored=64, progress=False)
    assert c2.path == c.path and c2.manifest['stamps'][0] != stamps[0]
    Image.new('RGB', (200, 150), (200, 10, 10)).save(files[1])                                      # modified: new pixels served
    r = StoredImages(64, cache=c2)
    assert np.array_equal(np.asarray(r(files[1])), np.asarray(read_stored(files[1], 64)))           # a stale entry is never served
    c3 = build_cache(files, tmp_path/'c', stored=64, progress=False)
    assert np.array_equal(c3.array(1), np.asarray(read_stored(files[1], 64)))
    assert build_cache(files, tmp_path/'c', stored=48, progress=False).array(0).shape[1] == 48        # another stored size
    C.CACHE_VERSION += 1                                                                            # another preprocessing
    try: assert C._stale(c3.path, [str(f) for f in files], C.preprocessing_signature(64, None)).startswith('preprocessing changed')
    finally: C.CACHE_VERSION -= 1
    assert C._stale(c3.path, [str(f) for f in files[:2]], c3.manifest['signature']) == 'the list of images changed'


def _slow_build(files, d):
    "Child process: a build that takes long enough to be killed in the middle."
    orig = C.read_stored
    C.read_stored = lambda *a, **k: (time.sleep(.15), orig(*a, **k))[1]
    build_cache(files, d, stored=64, progress=False)


def test_killed_build_is_never_read(tmp_path):
    files = _jpegs(tmp_path/'img', [(160, 120)] * 12)
    p = mp.get_context('fork').Process(target=_slow_build, args=(files, tmp_path/'c')); p.start()
    deadline = time.time() + 20
    while time.time() < deadline and not any((t/'pixels.u8').is_file() and (t/'pixels.u8').stat().st_size > 0
                                             for t in (tmp_path/'c').glob('*.tmp-*')): time.sleep(.02)
    os.kill(p.pid, signal.SIGKILL); p.join()
    tmps = list((tmp_path/'c').glob('*.tmp-*'))
    assert len(tmps) == 1 and not (tmps[0]/'manifest.json').exists()                               # killed half-way
    final = tmps[0].with_name(tmps[0].name.split('.tmp-')[0])
    assert not final.exists()
    with pytest.raises(FileNotFoundError): ImageCache(final)                                        # nothing to read
    c = build_cache(files, tmp_path/'c', stored=64, progress=False)                                  # the next build starts over
    assert c.path == final and not list((tmp_path/'c').glob('*.tmp-*')) and len(c) == 12
    # a finished cache whose pixel file was cut short is stale too, and is rebuilt
    with open(final/'pixels.u8', 'r+b') as f: f.truncate(100)
    assert C._stale(final, [str(f) for f in files], c.manifest['signature']) == 'pixels.u8 is incomplete'
    with pytest.raises(ValueError, match='pixels.u8 holds 100 bytes'): ImageCache(final)
    assert np.array_equal(build_cache(files, tmp_path/'c', stored=64, progress=False).array(11), np.asarray(read_stored(files[11], 64)))


def test_bad_files_fail_the_build_by_name(tmp_path):
    files = _jpegs(tmp_path/'img', [(160, 120), (160, 120), (40, 30)])
    files[1].write_bytes(files[1].read_bytes()[:300])                                              # truncated
    with pytest.raises(ValueError, match=f'cannot decode image {files[1]}'): build_cache(files, tmp_path/'c', stored=64, progress=False)
    with pytest.raises(ValueError, match=f'image {files[2]} is 40 x 30 pixels, too small for the stored size 256'):
        build_cache([files[0], files[2]], tmp_path/'c', stored=256, min_side=64, progress=False)
    assert not list((tmp_path/'c').glob('*/manifest.json'))                                       # nothing finished, nothing left
    assert not list((tmp_path/'c').glob('*.tmp-*'))


def _fit_one_epoch(path, seed=0, **kw):
    "Train a tiny classifier 1 epoch from `seed`; returns (weights, recorder values)."
    import timm
    from fastai.learner import Learner
    from fastai.losses import CrossEntropyLossFlat
    from medrecipes.core import set_seed
    from medrecipes.data.xray import XrayDataLoaders
    set_seed(seed)
    dls = XrayDataLoaders.from_btxrd(path, size=32, bs=16, num_workers=0, device='cpu', progress=False, seed=42 + seed, **kw)
    set_seed(seed)
    learn = Learner(dls, timm.create_model('resnet10t', pretrained=False, num_classes=3), loss_func=CrossEntropyLossFlat())
    with learn.no_bar(), learn.no_logging(): learn.fit(1, 1e-3)
    return dls, torch.cat([p.detach().flatten() for p in learn.model.parameters()]), learn.recorder.values[-1]


def test_one_epoch_is_the_same_with_and_without_the_cache(btxrd_copy):
    meta = btxrd_copy/'subset.csv'; pd.read_csv(btxrd_copy/'dataset.csv').iloc[:48].to_csv(meta, index=False)   # 48 images: fast
    dls, w1, v1 = _fit_one_epoch(btxrd_copy, cache=True, meta=meta)
    assert dls.stored.cache is not None and len(dls.stored.cache) == 48
    _, w0, v0 = _fit_one_epoch(btxrd_copy, cache=False, meta=meta)
    assert torch.equal(w1, w0) and v1 == v0                                                          # bitwise: the same pixels
    assert (btxrd_copy/'.medrecipes-cache').is_dir()


def draft_loss_change(tmp_path, seed:int=0) -> tuple:
    """12 generated radiographs enlarged to 960-1600 px JPEGs; one epoch on them with draft decoding and one without:
    the stored pixels' mean absolute difference on 6 of them, and the relative change of the train and valid loss."""
    from medrecipes.synth import make_btxrd
    src = make_btxrd(tmp_path/'b', n=12, seed=seed)
    sizes = [Image.open(src/'images'/f).size for f in sorted(os.listdir(src/'images'))]
    big = [(w * 5, h * 5) for w, h in sizes]                                                         # 960-1600 px: draft applies
    for f, s in zip(sorted(os.listdir(src/'images')), big):
        Image.open(src/'images'/f).resize(s, Image.BICUBIC).save(src/'images'/f, quality=90)
    pix = []
    for f in sorted(os.listdir(src/'images'))[:6]:
        da, db = read_stored(src/'images'/f, 64, 64), read_stored(src/'images'/f, 64)
        # the DCT-scaled size rounds up (1283 px -> 161), so the shrunk short side can differ by one pixel (data seed 3):
        # compare on the full decode's grid
        assert all(abs(i - j) <= 1 for i, j in zip(da.size, db.size)), (da.size, db.size)
        a, b = np.asarray(da.resize(db.size, Image.BILINEAR) if da.size != db.size else da, np.float32), np.asarray(db, np.float32)
        if max(Image.open(src/'images'/f).size) >= 1024: assert not np.array_equal(a, b)          # the pixels do change
        pix.append(np.abs(a - b).mean())
    _, wd, vd = _fit_one_epoch(src, seed=seed, cache=True, draft=True, split='stratified', test_pct=0.25, valid_pct=0.25)
    _, wf, vf = _fit_one_epoch(src, seed=seed, cache=True, draft=False, split='stratified', test_pct=0.25, valid_pct=0.25)
    return np.array(pix), abs(vd[0] - vf[0]) / vf[0], abs(vd[1] - vf[1]) / vf[1]


# Thresholds against benchmarks/test_margins.py's measurements (data seeds 0-4 and five CPU float paths;
# benchmarks/results/test_margins.md): the pixels (PIL's decoding, the same on every path) differ by at most 3.19 grey
# levels on one image and 1.8 on average over six; the losses by at most 2.7%.
DRAFT_MAX_PIXEL_DIFF, DRAFT_MAX_MEAN_PIXEL_DIFF, DRAFT_MAX_LOSS_CHANGE = 5, 3, 0.05


@pytest.mark.trained
def test_draft_decoding_changes_pixels_within_tolerance(tmp_path, train_seed):
    "Draft (DCT-scaled) decoding of large JPEGs: stored pixels within 3 grey levels on average, the epoch's loss within 5%."
    pix, dtrain, dvalid = draft_loss_change(tmp_path, train_seed)
    assert pix.mean() < DRAFT_MAX_MEAN_PIXEL_DIFF and (pix < DRAFT_MAX_PIXEL_DIFF).all(), pix
    assert dtrain < DRAFT_MAX_LOSS_CHANGE and dvalid < DRAFT_MAX_LOSS_CHANGE, (dtrain, dvalid)                 # train and valid loss


def test_dicom_data_set_through_the_xray_loaders(tmp_path):
    "`make_btxrd(dicom=True)` writes 12-bit DICOMs of the same pictures: the loaders read them, windowed, like the JPEGs."
    from medrecipes.synth import make_btxrd
    from medrecipes.data.xray import XrayDataLoaders
    j, d = make_btxrd(tmp_path/'j', n=12, seed=3), make_btxrd(tmp_path/'d', n=12, seed=3, dicom=True)
    kw = dict(size=32, bs=4, num_workers=0, device='cpu', progress=False, split='stratified', valid_pct=.25, test_pct=.25)
    dj, dd = XrayDataLoaders.from_btxrd(j, **kw), XrayDataLoaders.from_btxrd(d, **kw)
    assert dd.items_df.image_id.str.endswith('.dcm').all() and len(dd.stored.cache) == 12
    assert dd.one_batch()[0].shape == (4, 3, 32, 32)
    for rj, rd in zip(dj.items_df.itertuples(), dd.items_df.itertuples()):
        a = np.asarray(dj.stored(pd.Series(rj._asdict())), np.float32); b = np.asarray(dd.stored(pd.Series(rd._asdict())), np.float32)
        assert a.shape == b.shape and np.abs(a - b).mean() < 2.5                                       # lossless 12 bits vs JPEG q90


def _build_counting(files, d, log):
    "Child process: build (slowly) and log every time it actually decodes the data set."
    orig_r, orig_w = C.read_stored, C._write
    C.read_stored = lambda *a, **k: (time.sleep(.1), orig_r(*a, **k))[1]
    C._write = lambda *a, **k: (open(log, 'a').write(f'{os.getpid()}\n'), orig_w(*a, **k))[1]
    build_cache(files, d, stored=64, progress=False)


def test_concurrent_builds_wait_on_the_lock_and_ddp_ranks_wait_for_rank0(tmp_path, monkeypatch):
    files = _jpegs(tmp_path/'img', [(160, 120)] * 6)
    ctx = mp.get_context('fork')
    ps = [ctx.Process(target=_build_counting, args=(files, tmp_path/'c', tmp_path/'log')) for _ in range(2)]
    for p in ps: p.start()
    for p in ps: p.join(30)
    assert [p.exitcode for p in ps] == [0, 0]
    assert len((tmp_path/'log').read_text().split()) == 1                      # one process built, the other waited and opened it
    c = build_cache(files, tmp_path/'c', stored=64, progress=False)
    # DDP: a rank other than 0 takes rank 0's word (broadcast) and opens what rank 0 built; rank 0's error raises everywhere
    monkeypatch.setattr(C, 'is_distributed', lambda: True); monkeypatch.setattr(C, 'is_rank0', lambda: False)
    monkeypatch.setattr(C, 'broadcast_object', lambda obj, src=0: 'ok')
    assert build_cache(files, tmp_path/'c', stored=64, progress=False).path == c.path
    monkeypatch.setattr(C, 'broadcast_object', lambda obj, src=0: ('error', f'ValueError: cannot decode image {files[0]}'))
    with pytest.raises(RuntimeError, match=f'failed on rank 0: ValueError: cannot decode image {files[0]}'):
        build_cache(files, tmp_path/'c', stored=64, progress=False)


def test_gray_images_are_stored_once_and_reach_the_loader_as_the_same_rgb(tmp_path):
    "A gray image (every radiograph) is cached as one channel, a third of the bytes; the loaders' items are the same three channels."
    from medrecipes.data.images import GRAY_INFO, ClassifierImage, GrayToRGB
    from fastai.vision.augment import Resize, ResizeMethod, PadMode
    from fastai.data.transforms import ToTensor
    gray = _jpegs(tmp_path/'img', [(200, 150), (90, 120)])
    colour = tmp_path/'img'/'colour.png'
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (100, 80, 3), dtype=np.uint8)).save(colour)
    files = [*gray, colour]
    c = build_cache(files, tmp_path/'c', stored=64, progress=False)
    assert [list(s) for s in c.shapes] == [[48, 64, 1], [64, 48, 1], [64, 51, 3]]
    assert c.manifest['nbytes'] == 48 * 64 + 64 * 48 + 64 * 51 * 3 == os.path.getsize(c.path/'pixels.u8')
    for i, f in enumerate(files):
        want = np.asarray(read_stored(f, 64))
        assert np.array_equal(c.array(i), want)                         # the H x W x 3 view is the RGB image
        im = c.image(i)
        assert (im.mode, bool(im.info.get(GRAY_INFO))) == (('L', True) if i < 2 else ('RGB', False))
        # the loaders' item stage: letterbox (random placement in training), ToTensor, GrayToRGB: the RGB path's numbers
        for split_idx in (0, 1):
            out = []
            for x in (im, Image.fromarray(want)):
                rz = Resize(40, method=ResizeMethod.Pad, pad_mode=PadMode.Zeros)
                torch.manual_seed(0); import random; random.seed(0)
                out.append(GrayToRGB()(ToTensor()(rz(ClassifierImage.create(x), split_idx=split_idx))))
            assert out[0].shape == (3, 40, 40) and torch.equal(out[0], out[1])
    assert ClassifierImage.create(Image.fromarray(np.zeros((4, 4), np.uint8))).mode == 'RGB'   # an unmarked gray image: RGB as before


def test_hash_candidates_are_confirmed_by_their_thumbnails(tmp_path):
    """Drawn digits of one class hash alike (64-bit pHash within 4 bits) without being copies; a resized, re-encoded copy
    hashes alike and its thumbnail correlates ~1. Only the copy is a near-duplicate once `similar` confirms the candidates."""
    from medrecipes.synth import make_digits
    from medrecipes.data.cache import near_duplicate_pairs, leak_report, thumbnail, perceptual_hash, DUP_MIN_CORRELATION
    d = make_digits(tmp_path/'d', seed=0)
    files = sorted(d.rglob('*.png'))
    copy = d/'train'/'5'/'copy.jpg'                                          # files[3] is in test/
    with Image.open(files[3]) as im: im.convert('RGB').resize((37, 37), Image.BICUBIC).save(copy, quality=80)
    files.append(copy)
    r = StoredImages(64)
    hashes = r.hashes(files)
    loose = near_duplicate_pairs(hashes)
    assert len(loose) > 1                                                      # look-alikes among the digits
    strict = near_duplicate_pairs(hashes, similar=r.similarity(files))
    assert strict == [(3, len(files) - 1, strict[0][2])]                      # the copy alone
    for i, j, _ in loose:
        c = float(thumbnail(r(files[i])) @ thumbnail(r(files[j])))
        assert (c >= DUP_MIN_CORRELATION) == ((i, j) == (3, len(files) - 1)), (files[i], files[j], c)
    ids = [f.relative_to(d).as_posix() for f in files]
    split = pd.DataFrame({'image_id': ids, 'split': [f.relative_to(d).parts[0] for f in files]})
    rep = leak_report(split, ids, hashes, similar=r.similarity(files))
    assert rep[['image_id', 'duplicate_id']].values.tolist() == [[ids[3], ids[-1]]]


def test_a_rebuild_decodes_only_the_files_that_changed(tmp_path, monkeypatch):
    "One file changed and one added: the rebuild copies the others from the previous cache and decodes two; every entry still equals a fresh decode."
    files = _jpegs(tmp_path/'img', [(200, 150), (120, 180), (90, 90), (160, 100)])
    build_cache(files[:3], tmp_path/'c', stored=64, progress=False)   # another file list: the same folder, rebuilt in place
    c = build_cache(files, tmp_path/'c', stored=64, progress=False)
    assert (c.manifest['reused'], c.manifest['decoded']) == (3, 1)
    Image.new('RGB', (150, 150), (10, 200, 10)).save(files[1])
    extra = [tmp_path/'img'/'new.png']                                             # the same folder: the same data set's cache
    Image.new('RGB', (100, 120), (90, 10, 10)).save(extra[0])
    calls = []
    real = C.read_stored
    monkeypatch.setattr(C, 'read_stored', lambda f, *a, **k: calls.append(str(f)) or real(f, *a, **k))
    c2 = build_cache([*files, *extra], tmp_path/'c2', stored=64, progress=False)   # a new folder: every file decoded
    assert len(calls) == 5 and c2.manifest['reused'] == 0
    calls.clear()
    c3 = build_cache([*files, extra[0]], tmp_path/'c', stored=64, progress=False)
    assert sorted(calls) == sorted([str(files[1]), str(extra[0])]) and (c3.manifest['reused'], c3.manifest['decoded']) == (3, 2)
    for i, f in enumerate([*files, extra[0]]):
        assert np.array_equal(c3.array(i), np.asarray(real(f, 64))) and c3.hashes[i] == c2.hashes[i]
    calls.clear()
    assert build_cache(files, tmp_path/'c', stored=48, progress=False).manifest['reused'] == 0   # another stored size: nothing reused


# --- issue 26.3: a cache rebuilt while a reader is open; edits that keep size and mtime

def _rebuild_with_a_new_first_image(files, d):
    "Child process: the first source image changes (a larger one: every later offset moves) and the cache is rebuilt."
    Image.new('RGB', (200, 200), (250, 5, 5)).save(files[0], format='JPEG', quality=90)
    build_cache(files, d, stored=64, progress=False)


def _read_pickled(blob, files, q):
    "Child process: an unpickled reader (a spawned loader worker gets one) reads every image; its arrays, or its error."
    import pickle
    try:
        r = pickle.loads(blob)
        q.put(('ok', [np.asarray(r(f).convert('RGB') if isinstance(r, StoredImages) else r.array(i)).copy() for i, f in enumerate(files)]))
    except Exception as e: q.put(('error', f'{type(e).__name__}: {e}'))


def _in_child(target, *args):
    ctx = mp.get_context('fork'); q = ctx.Queue()
    p = ctx.Process(target=target, args=(*args, q)); p.start()
    out = q.get(timeout=60); p.join(30)
    return out


def test_a_reader_keeps_its_generation_when_another_process_rebuilds_the_cache(tmp_path):
    """A reader opened before another process rebuilds the same cache folder serves exactly the pixels of the generation
    it opened (not the old offsets over the new pixel file); so does a copy of it unpickled in another process while the
    generation is held, and once it is gone the copy refuses, naming the cache (a `StoredImages` decodes the files instead)."""
    import pickle
    files = _jpegs(tmp_path/'img', [(160, 120), (120, 160), (90, 90), (200, 100), (100, 150), (130, 130)])
    build_cache(files, tmp_path/'c', stored=64, progress=False)
    want = [np.asarray(read_stored(f, 64)) for f in files]                      # generation 1's pixels, decoded, not read from the cache
    c = build_cache(files, tmp_path/'c', stored=64, progress=False)             # opened: the index read, no pixel read yet
    blob, sblob = pickle.dumps(c), pickle.dumps(StoredImages(64, cache=c))
    p = mp.get_context('fork').Process(target=_rebuild_with_a_new_first_image, args=(files, tmp_path/'c')); p.start(); p.join(60)
    assert p.exitcode == 0
    now = ImageCache(c.path)
    assert now.shapes[0].tolist() != c.shapes[0].tolist()                       # rebuilt: another first image, every offset moved
    for i in range(len(files)):
        assert np.array_equal(c.array(i), want[i]), f'image {i} of the generation the reader opened'
        assert np.array_equal(np.asarray(c.image(i).convert('RGB')), want[i])
    status, got = _in_child(_read_pickled, blob, files)                          # a worker process unpickles the same reader
    assert status == 'ok', got
    for i in range(len(files)): assert np.array_equal(got[i], want[i]), f'image {i} in the unpickled reader'
    status, got = _in_child(_read_pickled, sblob, files)                         # the loaders' first stage: the changed file decoded
    assert status == 'ok', got
    assert np.array_equal(got[0], np.asarray(read_stored(files[0], 64)))
    for i in range(1, len(files)): assert np.array_equal(got[i], want[i])
    gen = c.generation
    c.close(); del c
    build_cache(files, tmp_path/'c', stored=64, progress=False)                 # the next open removes the generation no one holds
    assert not [g for g in (tmp_path/'c').iterdir() if gen in g.name]
    status, got = _in_child(_read_pickled, blob, files)
    assert status == 'error' and str(now.path) in got and gen in got, got      # refused, naming the cache and its generation
    status, got = _in_child(_read_pickled, sblob, files)                         # the first stage decodes instead: the files' pixels
    assert status == 'ok', got
    for i, f in enumerate(files): assert np.array_equal(got[i], np.asarray(read_stored(f, 64)))


def _same_size_edit(fn, colour):
    "Rewrite the BMP `fn` in place with other pixels: the same size in bytes, the modification time put back."
    st = os.stat(fn)
    Image.new('RGB', Image.open(fn).size, colour).save(fn, format='BMP')
    os.utime(fn, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert C.file_stamp(fn) == [st.st_size, st.st_mtime_ns]


def test_cache_verify_hash_detects_an_edit_that_keeps_size_and_mtime(tmp_path):
    "The stamp (size, mtime) misses an in-place edit that keeps both (documented); `verify='hash'` compares the files' contents."
    d = tmp_path/'img'; d.mkdir()
    rng = np.random.default_rng(0)
    files = [d/f'im{i}.bmp' for i in range(4)]
    for f in files: Image.fromarray(rng.integers(0, 256, (40, 60, 3), dtype=np.uint8)).save(f)
    c = build_cache(files, tmp_path/'c', stored=64, progress=False, verify='hash')
    assert len(c.manifest['content']) == 4
    _same_size_edit(files[2], (10, 200, 30))
    new = np.asarray(read_stored(files[2], 64))
    stale = build_cache(files, tmp_path/'c', stored=64, progress=False)           # the default: size and mtime, the edit unseen
    assert not np.array_equal(stale.array(2), new)
    assert C._stale(c.path, [str(f) for f in files], c.manifest['signature'], 'hash') == \
        f"{files[2]} changed (content hash {c.manifest['content'][2]} -> {C.content_hash(files[2])}; size and mtime unchanged)"
    fresh = build_cache(files, tmp_path/'c', stored=64, progress=False, verify='hash')
    assert np.array_equal(fresh.array(2), new) and (fresh.manifest['reused'], fresh.manifest['decoded']) == (3, 1)
    assert build_cache(files, tmp_path/'c', stored=64, progress=False, verify='hash').manifest['created'] == fresh.manifest['created']
    with pytest.raises(ValueError, match=r"image cache .*: verify must be 'stamp' or 'hash', not 'md5'"):
        build_cache(files, tmp_path/'c', stored=64, progress=False, verify='md5')


# --- issue 26.4: flipped, inverted, turned, cropped, padded and rotated copies are near-duplicates too

def _six_copies(im):
    "The six planted copies of the review: a horizontal and a vertical flip, 5% cropped off each side, rotated 5 degrees, 30 px of padding, inverted."
    from PIL import ImageOps
    g = im.convert('L'); w, h = g.size
    return {'hflip': ImageOps.mirror(g), 'vflip': ImageOps.flip(g),
            'crop5': g.crop((round(.05 * w), round(.05 * h), round(.95 * w), round(.95 * h))),
            'rot5': g.rotate(5, Image.BILINEAR), 'pad30': ImageOps.expand(g, 30, 0), 'invert': ImageOps.invert(g)}


def _planted(root, n=40, seed=5):
    "A generated BTXRD set and one copy of each kind, each of another original, written as JPEGs (quality 85); (files, {copy: original})."
    from medrecipes.synth import make_btxrd
    src = make_btxrd(root, n=n, seed=seed)
    files = sorted((src/'images').iterdir())
    of = {}
    for k, kind in enumerate(['hflip', 'vflip', 'crop5', 'rot5', 'pad30', 'invert']):
        o = files[3 * k + 1]
        _six_copies(Image.open(o))[kind].save(src/'images'/f'copy_{kind}.jpeg', quality=85); of[src/'images'/f'copy_{kind}.jpeg'] = o
    return files + list(of), of


def test_flipped_inverted_cropped_padded_and_rotated_copies_are_grouped(tmp_path):
    "Each of the six planted copies is grouped with its original and nothing else is; the same groups with no cache, another cache size, twice."
    from medrecipes.data.cache import near_duplicate_groups
    files, of = _planted(tmp_path/'b')
    ids = [f.name for f in files]
    def groups(r): return near_duplicate_groups(ids, r.hashes(files), similar=r.similarity(files))
    g = groups(StoredImages(448, 448))
    where = dict(zip(ids, g))
    for c, o in of.items(): assert where[c.name] == where[o.name] == o.name, (c.name, o.name, where[c.name], where[o.name])
    assert len(set(g)) == len(files) - len(of)                                   # the six pairs, and no other group
    assert g == groups(StoredImages(448, 448))                                   # deterministic
    c = build_cache(files, tmp_path/'c', stored=256, draft=256, progress=False)  # read from a cache of another stored size
    assert g == groups(StoredImages(256, 256, cache=c))


def test_hamming_join_finds_every_close_pair_without_comparing_all(tmp_path):
    "The multi-index search returns exactly the pairs an all-pairs comparison finds, for several distances."
    from medrecipes.data.cache import hamming_join, _popcount
    rng = np.random.default_rng(0)
    base = rng.integers(0, 2**63, 300, dtype=np.int64).astype(np.uint64)
    flips = np.left_shift(np.uint64(1), rng.integers(0, 64, (300, 6)).astype(np.uint64))
    flips[np.arange(6)[None] >= rng.integers(0, 7, 300)[:, None]] = 0                # 0 to 6 bits flipped
    near = base ^ np.bitwise_or.reduce(flips, axis=1)
    q = np.concatenate([base, near]); own = np.arange(len(q)) % 450                 # some owners repeat: their pairs are left out
    for dist in (0, 2, 4, 7):
        a, b, d = hamming_join(q, own, q, own, dist, budget=5000)
        full = _popcount(q[:, None] ^ q[None]); ii, jj = np.nonzero((full <= dist) & (own[:, None] != own[None]))
        assert sorted(zip(a.tolist(), b.tolist(), d.tolist())) == sorted(zip(ii.tolist(), jj.tolist(), full[ii, jj].tolist()))
        assert list(zip(a, b)) == sorted(zip(a, b))


def test_no_false_groups_on_the_generated_sets(tmp_path):
    "The demo's generated radiographs (600, seed 0) and the generated digits: no two images grouped (there are no copies in them)."
    from medrecipes.synth import make_btxrd, make_digits
    from medrecipes.data.cache import near_duplicate_groups
    for files, stored in ((sorted((make_btxrd(tmp_path/'b', n=600, seed=0)/'images').iterdir()), 448),
                          (sorted(make_digits(tmp_path/'d', seed=0).rglob('*.png')), 56)):
        c = build_cache(files, tmp_path/'c', stored=stored, draft=stored, name=files[0].parent.name, progress=False)
        r = StoredImages(stored, stored, cache=c)
        g = near_duplicate_groups([str(f) for f in files], r.hashes(files), similar=r.similarity(files))
        assert g == [str(f) for f in files], [(f.name, x) for f, x in zip(files, g) if str(f) != x]


def test_progress_to_a_file_is_one_line(tmp_path, capsys):
    "Built with progress=True while stdout is not a terminal (a log file, a pipe): one summary line, no redrawn bar"
    files = _jpegs(tmp_path/'img', [(200, 150), (120, 180), (90, 90)])
    build_cache(files, tmp_path/'c', stored=64, name='demo', progress=True)
    out = capsys.readouterr().out
    assert out.count('\n') == 1 and 'caching 3 images of demo' in out and '3 decoded, 0 reused' in out, out
    assert '█' not in out and '\r' not in out
