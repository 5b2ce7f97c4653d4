"Tests for `medrecipes.synth`: the synthetic data set in the BTXRD layout"
import hashlib
import numpy as np, pandas as pd, pytest
from PIL import Image, ImageFilter
from medrecipes.synth import *

BENIGN = ['osteochondroma', 'multiple osteochondromas', 'simple bone cyst', 'giant cell tumor', 'osteofibroma',
          'synovial osteochondroma', 'other bt']
MALIGNANT = ['osteosarcoma', 'other mt']
UPPER = ['hand', 'ulna', 'radius', 'humerus', 'wrist-joint', 'elbow-joint', 'shoulder-joint']
LOWER = ['foot', 'tibia', 'fibula', 'femur', 'ankle-joint', 'knee-joint']
PELVIS = ['hip bone', 'hip-joint']
EXPECTED_COLUMNS = (['image_id', 'center', 'age', 'gender'] + ['hand', 'ulna', 'radius', 'humerus', 'foot', 'tibia',
    'fibula', 'femur', 'hip bone', 'ankle-joint', 'knee-joint', 'hip-joint', 'wrist-joint', 'elbow-joint',
    'shoulder-joint'] + ['tumor', 'benign', 'malignant'] + BENIGN + MALIGNANT + ['upper limb', 'lower limb', 'pelvis']
    + ['frontal', 'lateral', 'oblique'])
RELEASE = {(1, 'Normal'): 1593, (1, 'Benign'): 1110, (1, 'Malignant'): 235, (2, 'Normal'): 259, (2, 'Benign'): 214,
           (2, 'Malignant'): 76, (3, 'Normal'): 27, (3, 'Benign'): 201, (3, 'Malignant'): 31}
N = 48


def labels(df):
    return np.select([df.malignant == 1, df.benign == 1], ['Malignant', 'Benign'], 'Normal')

def digests(p):
    return {str(f.relative_to(p)): hashlib.sha256(f.read_bytes()).hexdigest() for f in sorted(p.rglob('*')) if f.is_file()}

@pytest.fixture(scope='module')
def sets(tmp_path_factory):
    root = tmp_path_factory.mktemp('synth')
    return {k: make_btxrd(root / k, n=N, seed=s) for k, s in [('a', 3), ('b', 3), ('c', 4)]}


def test_constants():
    assert BTXRD_COLUMNS == EXPECTED_COLUMNS and len(BTXRD_COLUMNS) == 37
    assert SITE_COLUMNS == EXPECTED_COLUMNS[4:19] and SUBTYPE_COLUMNS == BENIGN + MALIGNANT
    assert BTXRD_CLASSES == ['Normal', 'Benign', 'Malignant']
    assert BTXRD_RELEASE_COUNTS == RELEASE and sum(BTXRD_RELEASE_COUNTS.values()) == 3746

def test_counts():
    assert btxrd_counts(3746) == RELEASE
    for n in [9, 10, 31, 100, 399, 400, 1000, 2500, 5000]:
        c = btxrd_counts(n)
        assert set(c) == set(RELEASE) and sum(c.values()) == n and min(c.values()) >= 1
        if n >= 400:   # every cell's quota is >= 2.9, so no minimum-of-1 adjustment: plain largest remainder
            assert all(abs(c[k] - n * v / 3746) < 1 for k, v in RELEASE.items())
    c = btxrd_counts(1000)
    assert all(abs(c[k] - 1000 * v / 3746) < 1 for k, v in RELEASE.items())
    assert c[(1, 'Normal')] == 425 and c[(3, 'Normal')] == 7
    for n in [3, 4, 8]:
        c = btxrd_counts(n)
        assert sum(c.values()) == n and all(sum(v for (_, l), v in c.items() if l == lbl) >= 1 for lbl in BTXRD_CLASSES)

def test_tables(sets):
    p = sets['a']
    dx, dc = pd.read_excel(p / 'dataset.xlsx'), pd.read_csv(p / 'dataset.csv')
    assert list(dx.columns) == EXPECTED_COLUMNS + LESION_COLUMNS and list(dc.columns) == EXPECTED_COLUMNS + LESION_COLUMNS
    pd.testing.assert_frame_equal(dx, dc)
    pd.testing.assert_frame_equal(dx[EXPECTED_COLUMNS], btxrd_metadata(N, seed=3))
    assert len(dx) == N and dx.image_id.is_unique
    assert dx.image_id.str.fullmatch(r'IMG\d{6}\.jpeg').all()
    got = pd.Series(list(zip(dx.center, labels(dx)))).value_counts().to_dict()
    assert got == btxrd_counts(N) and sum(got.values()) == N
    lbl = labels(dx)
    assert (lbl[1:] != lbl[:-1]).sum() > 5       # shuffled, not in class blocks

def test_flags(sets):
    df = pd.read_excel(sets['a'] / 'dataset.xlsx')
    flags = df[EXPECTED_COLUMNS[4:]]
    assert all(pd.api.types.is_integer_dtype(t) for t in flags.dtypes) and flags.isin([0, 1]).all().all()
    assert df.center.isin([1, 2, 3]).all() and df.gender.isin(['M', 'F']).all()
    assert pd.api.types.is_integer_dtype(df.age) and df.age.between(0, 110).all()
    for _, r in df.iterrows():
        sites = [s for s in SITE_COLUMNS if r[s]]
        assert len(sites) == 1
        group = 'upper limb' if sites[0] in UPPER else 'lower limb' if sites[0] in LOWER else 'pelvis'
        assert sites[0] in UPPER + LOWER + PELVIS
        assert [g for g in ['upper limb', 'lower limb', 'pelvis'] if r[g]] == [group]
        assert r.frontal + r.lateral + r.oblique == 1
        nb, nm = sum(r[s] for s in BENIGN), sum(r[s] for s in MALIGNANT)
        if r.tumor == 0: assert r.benign == r.malignant == nb == nm == 0
        elif r.benign: assert (r.tumor, r.malignant, nb, nm) == (1, 0, 1, 0)
        else: assert (r.tumor, r.malignant, nb, nm) == (1, 1, 0, 1)

def test_images(sets):
    p = sets['a']
    df = pd.read_csv(p / 'dataset.csv')
    assert sorted(f.name for f in (p / 'images').iterdir()) == sorted(df.image_id)
    sizes = set()
    for f in df.image_id:
        with Image.open(p / 'images' / f) as im:
            assert im.format == 'JPEG'
            if im.mode != 'L':
                a = np.asarray(im.convert('RGB')).astype(int)
                assert np.abs(a - a[..., :1]).max() <= 2
            assert all(192 <= s <= 320 for s in im.size)
            a = np.asarray(im.convert('L'), dtype=np.float32)
            assert a.std() > 15 and a.min() < 60 and a.max() > 180      # not blank: dark background, bright bone
            sizes.add(im.size)
    assert len({w for w, _ in sizes}) > 10 and len({h for _, h in sizes}) > 10
    q = make_btxrd(p.parent / 'small', n=5, seed=1, size_range=(64, 64))
    for f in (q / 'images').iterdir():
        with Image.open(f) as im: assert im.size == (64, 64)

def test_reproducible(sets):
    da, db, dc = (digests(sets[k]) for k in 'abc')
    assert len(da) == N + 2 and 'dataset.xlsx' in da and 'dataset.csv' in da
    assert da == db
    assert da['dataset.csv'] != dc['dataset.csv'] and da['dataset.xlsx'] != dc['dataset.xlsx']
    assert sum(da[k] != dc[k] for k in da if k.startswith('images')) == N

@pytest.mark.parametrize('kw', [dict(n=2), dict(n=-1), dict(size_range=(300, 200)), dict(size_range=(10, 20)),
                                dict(size_range=(100,)), dict(size_range=None), dict(quality=0), dict(quality=101),
                                dict(seed=-1)])
def test_bad_args(tmp_path, kw):
    with pytest.raises(ValueError, match=list(kw)[0]): make_btxrd(tmp_path / 'x', **kw)
    assert not (tmp_path / 'x').exists()

def test_bad_types(tmp_path):
    for kw in [dict(n=4.5), dict(n='10'), dict(seed='a'), dict(quality=90.0)]:
        with pytest.raises((TypeError, ValueError), match=list(kw)[0]): make_btxrd(tmp_path / 'x', **kw)
    with pytest.raises(ValueError, match='n'): btxrd_counts(2)

def test_draw_radiograph():
    a = draw_radiograph('Benign', (200, 150), seed=5, subtype='simple bone cyst')
    assert a.mode == 'L' and a.size == (200, 150)
    b = draw_radiograph('Benign', (200, 150), seed=5, subtype='simple bone cyst')
    assert a.tobytes() == b.tobytes()
    assert a.tobytes() != draw_radiograph('Benign', (200, 150), seed=6, subtype='simple bone cyst').tobytes()
    with pytest.raises(ValueError, match='label'): draw_radiograph('Cancer')
    with pytest.raises(ValueError, match='subtype'): draw_radiograph('Benign', subtype='osteosarcoma')

def _features(path):
    "Rotation-invariant pixel statistics: intensity histogram and histogram of fine detail (image minus its blur)"
    with Image.open(path) as im: im = im.convert('L').resize((96, 96), Image.BILINEAR)
    a = np.asarray(im, dtype=np.float32)
    b = np.asarray(im.filter(ImageFilter.GaussianBlur(2)), dtype=np.float32)
    return np.concatenate([np.histogram(a, 16, (0, 256))[0], np.histogram(a - b, 16, (-60, 60))[0]]) / a.size

def _balanced_fit(Z, y, tr, te) -> float:
    "Balanced accuracy on `te` (over the classes it holds) of a class-balanced ridge classifier fit on `tr`."
    w = np.sqrt(1 / np.bincount(y[tr], minlength=3)[y[tr]])[:, None]
    A, B = Z[tr] * w, np.eye(3)[y[tr]] * w
    W = np.linalg.solve(A.T @ A + np.eye(Z.shape[1]), A.T @ B)
    pred, t = (Z[te] @ W).argmax(1), y[te]
    return float(np.mean([(pred[t == c] == c).mean() for c in range(3) if (t == c).any()]))


def linear_probe(tmp_path, seed:int=0) -> tuple:
    """A class-balanced linear classifier on global pixel histograms of 240 generated radiographs (data seed 11 + `seed`),
    fit on 160 and scored on 80: its balanced accuracy, and the same with the labels shuffled."""
    p = make_btxrd(tmp_path / f'l{seed}', n=240, seed=11 + seed, size_range=(128, 192))
    df = pd.read_csv(p / 'dataset.csv')
    y = np.select([df.malignant == 1, df.benign == 1], [2, 1], 0)
    X = np.stack([_features(p / 'images' / f) for f in df.image_id])
    tr, te = slice(0, 160), slice(160, None)
    assert all((y[te] == c).sum() >= 3 for c in range(3)), np.bincount(y[te], minlength=3)   # every class scored
    mu, sd = X[tr].mean(0), X[tr].std(0) + 1e-6
    Z = np.c_[(X - mu) / sd, np.ones(len(X))]
    return _balanced_fit(Z, y, tr, te), _balanced_fit(Z, np.random.default_rng(seed).permutation(y), tr, te)


# Thresholds against benchmarks/test_margins.py (seeds 0-4; benchmarks/results/test_margins.md): chance is 1/3.
PROBE_MIN, PROBE_GAP = 0.5, 0.1


@pytest.mark.trained
def test_learnable(tmp_path, train_seed):
    "A class-balanced linear classifier on global pixel histograms, fit on 160 images, beats chance on 80 others"
    balanced, shuffled = linear_probe(tmp_path, train_seed)
    assert balanced > PROBE_MIN, balanced                        # chance is 1/3
    # the same recipe with the labels shuffled should do no better than chance: the cue is the lesion, not luck
    assert shuffled < balanced - PROBE_GAP, (shuffled, balanced)

def test_lesion_is_the_cue():
    "With one seed every label draws the same scene; the lesion changes a local patch, in a class-specific way"
    for seed in range(10):
        base = np.asarray(draw_radiograph('Normal', (160, 160), seed=seed), dtype=np.float32)
        for lbl, sub in [('Benign', 'osteochondroma'), ('Benign', 'simple bone cyst'), ('Malignant', 'osteosarcoma')]:
            d = np.asarray(draw_radiograph(lbl, (160, 160), seed=seed, subtype=sub), dtype=np.float32) - base
            assert (d == 0).mean() > 0.5                           # background, bone and noise are shared
            assert 0.02 < (np.abs(d) > 12).mean() < 0.5            # a sizeable but local lesion
            brighter, darker = (d > 30).mean(), (d < -30).mean()
            if sub == 'osteochondroma': assert brighter > 0.02 and brighter > 3 * darker        # bony outgrowth
            if sub == 'simple bone cyst': assert darker > 0.005 and brighter > 0.003          # lucency with a sclerotic rim
            if sub == 'osteosarcoma': assert darker > 0.005 and brighter > 0.01               # lysis and spicules

def test_package_reexports_its_modules():
    "`medrecipes.synth` is the public face of its three modules: exactly their public names, the same objects, no warning"
    import subprocess, sys
    import medrecipes.synth as pkg
    from medrecipes.synth import xray, sar, digits, _common
    names = [n for m in (xray, sar, digits) for n in m.__all__]
    assert len(names) == len(set(names)) and sorted(pkg.__all__) == sorted(names)
    for m in (xray, sar, digits):
        for n in m.__all__: assert getattr(pkg, n) is getattr(m, n), f'medrecipes.synth.{n} is not {m.__name__}.{n}'
    assert xray._check_int is sar._check_int is digits._check_int is _common._check_int   # one home for shared checks
    assert sar._as_rng is digits._as_rng is _common._as_rng
    # a fresh interpreter: importing every public name by the package path warns about nothing of ours
    code = ('import warnings\nwith warnings.catch_warnings(record=True) as w:\n    warnings.simplefilter("always")\n'
            f'    from medrecipes.synth import {", ".join(pkg.__all__)}\n    from medrecipes.synth import *\n'
            'print([f"{x.category.__name__}: {x.message}" for x in w if "medrecipes" in x.filename + str(x.message) '
            'or x.filename == "<string>"])')
    r = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True)
    assert r.returncode == 0 and r.stdout.strip() == '[]', r.stdout + r.stderr
