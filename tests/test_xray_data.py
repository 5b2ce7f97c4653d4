import numpy as np, pandas as pd, pytest, torch
from medrecipes.data.xray import *


def _sheet(src, tmp_path, edit):
    df = pd.read_csv(src/'dataset.csv'); edit(df)
    df.to_csv(tmp_path/'dataset.csv', index=False)
    return tmp_path/'dataset.csv'


def test_labels_and_both_sheet_formats(btxrd):
    x, c = read_btxrd_metadata(btxrd/'dataset.xlsx'), read_btxrd_metadata(btxrd/'dataset.csv')
    assert x.label.tolist() == c.label.tolist()
    raw = pd.read_csv(btxrd/'dataset.csv')
    exp = np.where(raw.tumor == 0, 'Normal', np.where(raw.benign == 1, 'Benign', 'Malignant'))
    assert (x.label.values == exp).all()
    assert read_btxrd_metadata(btxrd).label.tolist() == x.label.tolist()  # the folder finds dataset.xlsx


def _normal_with_benign(d): d.loc[[2, 7], ['tumor', 'benign', 'malignant']] = [0, 1, 0]
def _drop_columns(d): d.drop(columns=['tumor', 'center'], inplace=True)
def _bad_flag(d): d['malignant'] = d.malignant.astype(object); d.loc[4, 'malignant'] = 'yes'
def _duplicate(d): d.loc[5, 'image_id'] = d.image_id[0]


@pytest.mark.parametrize('edit,match', [
    (_drop_columns, r"missing column\(s\) \['center', 'tumor'\]"),
    (_bad_flag, "column 'malignant' must be 0 or 1; bad values in row 6"),
    (_duplicate, 'duplicated image_id in row 2'),
])
def test_bad_metadata_names_rows_and_columns(btxrd, tmp_path, edit, match):
    with pytest.raises(ValueError, match=match): read_btxrd_metadata(_sheet(btxrd, tmp_path, edit))


def test_normal_row_with_tumour_flag_is_contradictory(btxrd, tmp_path):
    fn = _sheet(btxrd, tmp_path, _normal_with_benign); ids = pd.read_csv(fn).image_id
    with pytest.raises(ValueError, match='contradictory') as e: read_btxrd_metadata(fn)
    assert f'row 4 ({ids[2]})' in str(e.value) and f'row 9 ({ids[7]})' in str(e.value)


def test_tumour_with_both_flags_is_contradictory(btxrd, tmp_path):
    df = pd.read_csv(btxrd/'dataset.csv'); i = int(np.flatnonzero(df.tumor == 1)[0])
    df.loc[i, ['benign', 'malignant']] = 1; df.to_csv(tmp_path/'d.csv', index=False)
    with pytest.raises(ValueError, match=rf'exactly one of benign/malignant=1 in row {i+2} \({df.image_id[i]}\)'):
        read_btxrd_metadata(tmp_path/'d.csv')


def test_missing_and_unreadable_images_are_named(btxrd_copy):
    df = read_btxrd_metadata(btxrd_copy)
    (btxrd_copy/'images'/df.image_id[3]).unlink()
    (btxrd_copy/'images'/df.image_id[4]).write_text('garbage')
    with pytest.raises(FileNotFoundError) as e:
        XrayDataLoaders.from_btxrd(btxrd_copy, size=32, num_workers=0)
    msg = str(e.value)
    assert '1 missing' in msg and df.image_id[3] in msg and '1 unreadable' in msg and df.image_id[4] in msg


def test_splits_reproducible_disjoint_and_stratified(btxrd):
    df = read_btxrd_metadata(btxrd)
    s = make_split(df, 'stratified', seed=7)
    assert s.equals(make_split(df, 'stratified', seed=7))
    assert not s.split.equals(make_split(df, 'stratified', seed=8).split)
    assert s.image_id.is_unique and set(s.image_id) == set(df.image_id)
    frac = s.split.value_counts(normalize=True)
    assert abs(frac['train'] - .70) < .03 and abs(frac['valid'] - .15) < .03 and abs(frac['test'] - .15) < .03
    overall = df.label.value_counts(normalize=True)
    for part in ('train', 'valid', 'test'):
        p = s.label[s.split == part].value_counts(normalize=True)
        assert (p.reindex(overall.index) - overall).abs().max() < .08, part


def test_center_split(btxrd, tmp_path):
    df = read_btxrd_metadata(btxrd)
    s = make_split(df, 'center', seed=1)
    assert set(s.center[s.split == 'test']) == {2, 3} and set(s.center[s.split != 'test']) == {1}
    assert (s.split[s.center != 1] == 'test').all()
    c1 = s[s.center == 1]
    assert abs((c1.split == 'valid').mean() - .15/.85) < .05
    save_split(s, tmp_path/'s.csv')
    pd.testing.assert_frame_equal(load_split(tmp_path/'s.csv', df), s)
    bad = s.iloc[1:]; bad.to_csv(tmp_path/'bad.csv', index=False)
    with pytest.raises(ValueError, match='1 image'): load_split(tmp_path/'bad.csv', df)
    dup = pd.concat([s, s.iloc[:1].assign(split='test')]); dup.to_csv(tmp_path/'dup.csv', index=False)
    with pytest.raises(ValueError, match='more than one split'): load_split(tmp_path/'dup.csv', df)


def test_dataloaders(btxrd, tmp_path):
    dls = XrayDataLoaders.from_btxrd(btxrd, split='stratified', size=48, bs=8, num_workers=0, seed=3)
    assert list(dls.vocab) == XRAY_CLASSES
    n_test = len(dls.test_df())
    assert len(dls.train_ds) + len(dls.valid_ds) + n_test == 120
    assert sum(len(b[1]) for b in dls.train) == len(dls.train_ds)       # no image dropped from an epoch
    assert dls.normalization == {'mean': [0.485, 0.456, 0.406], 'std': [0.229, 0.224, 0.225], 'size': 48,
                                 'resize': 'pad', 'pad_mode': 'zeros', 'mode': 'RGB', 'stored': 96, 'draft': 96, 'window': None}
    xb, _ = dls.valid.one_batch(); xb2, _ = dls.valid.one_batch()
    assert xb.shape == (8, 3, 48, 48) and torch.equal(xb, xb2)           # validation is deterministic
    assert abs(float(xb.mean())) < 2 and torch.allclose(xb[:, 0] * .229 + .485, xb[:, 1] * .224 + .456, atol=1e-4)  # gray replicated, normalised
    # the split CSV reproduces the same loaders
    save_split(dls.split_df, tmp_path/'split.csv')
    dls2 = XrayDataLoaders.from_btxrd(btxrd, split=tmp_path/'split.csv', size=48, bs=8, num_workers=0)
    assert sorted(dls2.train.items.image_id) == sorted(dls.train.items.image_id)
    assert sorted(dls2.test_df().image_id) == sorted(dls.test_df().image_id)


def test_truncated_image_error_names_the_file(btxrd_copy):
    dls = XrayDataLoaders.from_btxrd(btxrd_copy, size=32, bs=4, num_workers=0)
    fn = btxrd_copy/'images'/dls.valid.items.image_id.iloc[1]
    fn.write_bytes(fn.read_bytes()[:500])
    with pytest.raises(ValueError, match=f'cannot decode image {fn}'):
        for _ in dls.valid: pass


# --- how radiographs are read (issue 12.5, issue 11.4) and the split's independence of row order (issue 12, "Also")

from _utils import ramp16_png as _ramp16, exif6_jpeg as _exif6


def test_16bit_radiograph_keeps_its_ramp(tmp_path):
    x = np.asarray(Radiograph.create(_ramp16(tmp_path/'r.png')))
    assert x.shape == (48, 64, 3) and x.dtype == np.uint8
    assert (x[..., 0] == x[..., 1]).all() and (x[..., 0] == x[..., 2]).all()   # gray replicated
    row = x[0, :, 0].astype(int)
    assert len(np.unique(row)) == 64 and (np.diff(row) > 0).all()           # the ramp survives, strictly increasing
    assert row[0] == 0 and row[-1] == 255 and (x == 255).mean() < 0.05      # the full range, no saturation


def test_radiograph_exif_orientation_applied(tmp_path):
    x = np.asarray(Radiograph.create(_exif6(tmp_path/'o.jpg')))
    assert x.shape == (40, 24, 3)                                           # upright: portrait
    assert x[:8, 16:, 0].mean() > 200 and x[:8, :8, 0].mean() < 50          # the marked corner is now top-right
    assert x[-8:, :, 0].mean() < 50


def test_radiograph_inputs_through_the_loaders(btxrd):
    "What `learn.predict` relies on: a metadata row, a str, a `Path`, a PIL image or an array give the same batch."
    from pathlib import Path
    from PIL import Image
    dls = XrayDataLoaders.from_btxrd(btxrd, size=32, bs=4, num_workers=0, augment=False)
    row = dls.valid.items.iloc[0]
    fn = Path(dls.img_dir)/row.image_id
    ref = dls.test_dl([row]).one_batch()[0]
    for item in (str(fn), fn, Image.open(fn), np.asarray(Image.open(fn).convert('L'))):
        xb = dls.test_dl([item]).one_batch()[0]
        assert torch.equal(xb, ref), type(item)
    assert np.array_equal(np.asarray(Radiograph.create(fn)), np.asarray(Radiograph.create(str(fn))))


def test_stratified_split_ignores_row_order(btxrd):
    df = read_btxrd_metadata(btxrd)
    shuffled = df.sample(frac=1, random_state=5).reset_index(drop=True)
    assert not shuffled.image_id.equals(df.image_id)
    for kind in ('stratified', 'center'):
        a = make_split(df, kind, seed=11).set_index('image_id').split
        b = make_split(shuffled, kind, seed=11).set_index('image_id').split
        pd.testing.assert_series_equal(a.sort_index(), b.sort_index(), obj=kind)
        assert make_split(shuffled, kind, seed=11).image_id.tolist() == shuffled.image_id.tolist()   # rows keep the sheet's order


# --- split integrity: near-duplicates (issue 14.4)

def test_planted_near_duplicates_share_a_split_and_leaks_are_reported(tmp_path):
    from medrecipes.synth import make_btxrd
    src = make_btxrd(tmp_path/'b', n=40, seed=2, duplicates=6)
    dup = pd.read_csv(src/'duplicates.csv')
    df = pd.read_csv(src/'dataset.csv')
    df.loc[df.image_id == dup.image_id[0], 'center'] = 2          # a copy from another hospital than its original
    df.to_csv(tmp_path/'meta.csv', index=False)
    kw = dict(meta=tmp_path/'meta.csv', img_dir=src/'images', size=32, bs=8, num_workers=0, device='cpu', progress=False)
    for kind in SPLIT_KINDS:
        dls = XrayDataLoaders.from_btxrd(src, split=kind, **kw)
        s = dls.split_df.set_index('image_id')
        for a, b in zip(dup.image_id, dup.duplicate_of):
            assert s.split[a] == s.split[b] and s.group[a] == s.group[b] == min(a, b), (kind, a, b)
        assert s.group.nunique() == len(s) - len(dup)                 # the planted pairs, and no other group
    assert s.split[dup.duplicate_of[0]] == 'test'                     # center-holdout: the pair's center-1 original is test too
    save_split(dls.split_df, tmp_path/'split.csv')
    assert 'group' in pd.read_csv(tmp_path/'split.csv').columns
    bad = dls.split_df.copy()                                         # a split from elsewhere that separates one pair
    a, b = dup.image_id[1], dup.duplicate_of[1]
    bad.loc[bad.image_id == a, 'split'] = 'train'; bad.loc[bad.image_id == b, 'split'] = 'test'
    bad.drop(columns='group').to_csv(tmp_path/'bad.csv', index=False)
    with pytest.warns(UserWarning, match='1 pair\\(s\\) of near-duplicate images sit in different splits'):
        dls2 = XrayDataLoaders.from_btxrd(src, split=tmp_path/'bad.csv', cache=False, **kw)
    assert dls2.leak_report[['image_id', 'duplicate_id']].values.tolist() in ([[a, b]], [[b, a]])
    assert set(dls2.leak_report.split) | set(dls2.leak_report.duplicate_split) == {'train', 'test'}


# --- malformed DICOM headers (issue 26.3): every bad file named, all of them in one error

def _bad_vr_dicom(fn):
    "A DICOM file like pydicom's test file badVR.dcm: NumberOfFrames (0028,0008), an IS, holds '1A'."
    import pydicom
    from pathlib import Path
    from medrecipes.synth import write_dicom
    write_dicom(fn, np.tile(np.arange(0, 4096, 64, dtype=np.uint16), (8, 1)), bits_stored=12)
    ds = pydicom.dcmread(fn); ds.NumberOfFrames = 1; ds.save_as(fn)
    b, tag = Path(fn).read_bytes(), b'\x28\x00\x08\x00IS\x02\x001 '          # explicit VR little endian: tag, VR, length, value
    assert b.count(tag) == 1
    Path(fn).write_bytes(b.replace(tag, tag[:-2] + b'1A'))
    return fn


@pytest.mark.filterwarnings('ignore::UserWarning')
def test_malformed_dicom_headers_are_all_reported_by_name(tmp_path):
    from medrecipes.synth import write_dicom
    from medrecipes.data.images import read_image
    from medrecipes.data.cache import build_cache
    from medrecipes.data.folder import check_image_files
    d = tmp_path/'images'
    good = write_dicom(d/'good.dcm', np.tile(np.arange(0, 4096, 64, dtype=np.uint16), (8, 1)), bits_stored=12)
    bad_vr = _bad_vr_dicom(d/'bad_vr.dcm')
    (d/'junk.dcm').write_bytes(b'not a DICOM file')                               # no preamble, no DICM magic
    df = pd.DataFrame({'image_id': ['bad_vr.dcm', 'good.dcm', 'junk.dcm']})
    with pytest.raises(FileNotFoundError) as e: check_images(df, d)
    msg = str(e.value)
    assert '2 unreadable image(s)' in msg and str(bad_vr) in msg and str(d/'junk.dcm') in msg and str(good) not in msg, msg
    assert "NumberOfFrames (0028,0008)" in msg and 'expected an integer' in msg and 'expected a DICOM file' in msg, msg
    with pytest.raises(ValueError) as e: check_image_files([bad_vr, good, d/'junk.dcm'], 'train image')
    assert '2 unreadable train image file(s)' in str(e.value) and str(bad_vr) in str(e.value) and str(d/'junk.dcm') in str(e.value)
    for read in (read_image, lambda f: build_cache([good, f], tmp_path/'c', stored=32, progress=False)):   # no check first
        with pytest.raises(ValueError) as e: read(bad_vr)
        assert str(bad_vr) in str(e.value) and 'NumberOfFrames (0028,0008)' in str(e.value) and 'expected an integer' in str(e.value)


# --- issue 26.4: flipped, inverted, cropped, padded and rotated copies share their original's split

def test_transformed_copies_share_their_originals_split(tmp_path):
    "A horizontal and a vertical flip, a 5% crop on each side, a 5 degree rotation, 30 px of padding and an inverted copy, each of another training image."
    from PIL import Image, ImageOps
    from medrecipes.synth import make_btxrd
    src = make_btxrd(tmp_path/'b', n=60, seed=4)
    df = pd.read_csv(src/'dataset.csv')
    made = {'hflip': ImageOps.mirror, 'vflip': ImageOps.flip, 'invert': ImageOps.invert,
            'crop5': lambda g: g.crop((round(.05 * g.width), round(.05 * g.height), round(.95 * g.width), round(.95 * g.height))),
            'rot5': lambda g: g.rotate(5, Image.BILINEAR), 'pad30': lambda g: ImageOps.expand(g, 30, 0)}
    rows, of = [], {}
    for k, (kind, f) in enumerate(made.items()):
        o = df.iloc[5 * k + 2]
        f(Image.open(src/'images'/o.image_id).convert('L')).save(src/'images'/f'copy_{kind}.jpeg', quality=85)
        rows.append({**o.to_dict(), 'image_id': f'copy_{kind}.jpeg', 'center': 2 if kind == 'rot5' else o.center}); of[f'copy_{kind}.jpeg'] = o.image_id
    pd.concat([df, pd.DataFrame(rows)], ignore_index=True).to_csv(tmp_path/'meta.csv', index=False)
    kw = dict(meta=tmp_path/'meta.csv', img_dir=src/'images', size=32, bs=8, num_workers=0, device='cpu', progress=False)
    for kind in SPLIT_KINDS:
        s = XrayDataLoaders.from_btxrd(src, split=kind, **kw).split_df.set_index('image_id')
        for c, o in of.items(): assert s.split[c] == s.split[o] and s.group[c] == s.group[o], (kind, c, o, s.split[c], s.split[o])
        assert s.group.nunique() == len(s) - len(of)                  # the planted pairs, and no other group
    assert s.split['copy_rot5.jpeg'] == 'test'                        # center-holdout: a copy from center 2 takes its original to test
