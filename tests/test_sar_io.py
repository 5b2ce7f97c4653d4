"""`medrecipes.data.sar_io`: the SAR reading, checks and preprocessing without fastai, and `medrecipes.image_stats`: the
per-image statistics (PSNR, ENL, EPI) without fastai. The codec and `load_sar_model` use them, so compressing and
decoding a codec file in a fresh interpreter load neither fastai nor pandas, matplotlib, scipy or sklearn;
`medrecipes.data.sar` and `medrecipes.metrics` re-export every one of their names, as the same objects."""
import json, subprocess, sys, textwrap
import numpy as np, pytest, tifffile, torch
import medrecipes.data.sar as sar
import medrecipes.data.sar_io as sar_io
from medrecipes.core import save_checkpoint
from medrecipes.models.sar import sar_model
from medrecipes.synth import make_sar_scene

HEAVY = ('fastai', 'pandas', 'matplotlib', 'sklearn', 'scipy')
# the public names of medrecipes.data.sar before the reading moved to medrecipes.data.sar_io
OLD_SAR_ALL = ['SAR_EXTENSIONS', 'SAR_UNITS', 'read_sar_image', 'pixel_kind', 'SarScene', 'scene_nbytes', 'windowed_files',
               'check_sar_image', 'check_sar_scene', 'SarPreprocess', 'EncodedScene', 'SarImage', 'tile_origins',
               'SarPatches', 'TileStitcher', 'SarTiles', 'SarPatchDL', 'sar_files', 'read_sar_metadata', 'sar_fingerprint',
               'SarDataLoaders', 'show_batch', 'show_results']
# the per-image functions that moved from medrecipes.metrics to medrecipes.image_stats, and medrecipes.metrics' public names before
MOVED_STATS = ['psnr', 'homogeneous_blocks', 'enl_sums', 'enl_from_sums', 'enl', 'ratio_from_sums', 'enl_ratio', 'laplacian', 'epi']
OLD_METRICS_ALL = MOVED_STATS + ['ImageMetric', 'ENLRatioPooled', 'PSNRMetric', 'SSIMMetric', 'ENLRatioMetric', 'EPIMetric']


@pytest.fixture(scope='module')
def codec_files(tmp_path_factory):
    "A checkpoint of a factorized-prior model with its coding tables, a scene as .npy and as a tiled TIFF, and the scene's codec file written here"
    from medrecipes.codec import compress
    torch.manual_seed(1)
    m = sar_model('residual', latent_channels=8, base_channels=8, entropy='factorized').eval()
    torch.nn.init.normal_(m.encoder.head.weight, std=3.)                  # codes spread like a trained encoder's
    m.update()
    pre = sar_io.SarPreprocess('linear', clip=(-25., 5.))
    d = tmp_path_factory.mktemp('sar_io')
    save_checkpoint(d/'best.pt', model_state_dict=m.state_dict(), model_config=m.config, preprocessing_params=pre.checkpoint_params(),
                    patch=32, rd_lambda=64.)
    img = make_sar_scene((80, 112), rng=0, mode='realistic')
    np.save(d/'img.npy', img); tifffile.imwrite(d/'img.tif', img, tile=(32, 32))   # tiled: read tile by tile as a SarScene
    compress(d/'best.pt', d/'img.npy', d/'mine.mrsar')
    return d


def _fresh(script:str, *args) -> dict:
    "Run `script` in a new interpreter and return the JSON object its last line prints"
    r = subprocess.run([sys.executable, '-c', textwrap.dedent(script), *map(str, args)], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    return json.loads(r.stdout.strip().splitlines()[-1])


_DECODE = """
    import json, sys
    import numpy as np
    import medrecipes.codec, medrecipes.models.sar
    from medrecipes.models.sar import load_sar_model
    d = sys.argv[1]
    model, pre, patch = load_sar_model(d + '/best.pt')
    np.save(d + '/fresh.npy', medrecipes.codec.decompress(d + '/mine.mrsar', d + '/best.pt', out='scaled'))
    medrecipes.codec.decompress(d + '/mine.mrsar', d + '/best.pt', out='linear', out_path=d + '/fresh.tif')   # as `medrecipes codec decompress`
    heavy = sorted(m for m in sys.modules if m.split('.')[0] in sys.argv[2].split(','))
    print(json.dumps({'heavy': heavy, 'data_sar': 'medrecipes.data.sar' in sys.modules, 'pre': type(pre).__module__, 'patch': patch}))
"""


def test_decoding_imports_neither_fastai_nor_pandas(codec_files):
    """`medrecipes.codec`, `medrecipes.models.sar` and `load_sar_model` imported in a fresh interpreter, a checkpoint loaded
    and a codec file decoded to an array and to a file: no fastai, pandas, matplotlib, sklearn or scipy is loaded, and the
    image is the one decoded here."""
    from medrecipes.codec import decompress
    d = codec_files
    out = _fresh(_DECODE, d, ','.join(HEAVY))
    assert out['heavy'] == [], f"decoding imported {', '.join(out['heavy'])}"
    assert not out['data_sar'] and out['pre'] == 'medrecipes.data.sar_io' and out['patch'] == 32, out
    here = decompress(d/'mine.mrsar', d/'best.pt', out='scaled')
    assert here.shape == (80, 112) and np.array_equal(np.load(d/'fresh.npy'), here)
    np.testing.assert_allclose(tifffile.imread(d/'fresh.tif'), decompress(d/'mine.mrsar', d/'best.pt', out='linear'), rtol=1e-6)


_ENCODE = """
    import json, sys
    import medrecipes.codec
    d = sys.argv[1]
    info = medrecipes.codec.compress(d + '/best.pt', d + '/img.tif', d + '/fresh.mrsar')   # read by windows (SarScene)
    head, _ = medrecipes.codec.read_codec_file(d + '/fresh.mrsar')
    heavy = sorted({m.split('.')[0] for m in sys.modules} & set(sys.argv[2].split(',')))   # the offending packages
    print(json.dumps({'bytes': info['bytes'], 'looks': head['looks'], 'heavy': heavy, 'data_sar': 'medrecipes.data.sar' in sys.modules,
                      'metrics': 'medrecipes.metrics' in sys.modules}))
"""


def test_encoding_imports_neither_fastai_nor_pandas(codec_files):
    """`compress` in a fresh interpreter reads a tiled TIFF through `medrecipes.data.sar_io` alone, measures the looks with
    `medrecipes.image_stats` (not the fastai `medrecipes.metrics`), loads no fastai, pandas, matplotlib, sklearn or scipy,
    and writes the file written here from the .npy"""
    d = codec_files
    out = _fresh(_ENCODE, d, ','.join(HEAVY))
    assert out['heavy'] == [], f"compress imported {', '.join(out['heavy'])}"
    assert not out['data_sar'], 'compress imported medrecipes.data.sar (and with it the fastai loaders)'
    assert not out['metrics'], 'compress imported medrecipes.metrics (and with it fastai)'
    assert out['looks'] > 0, out          # the looks were measured, not skipped
    assert out['bytes'] == (d/'mine.mrsar').stat().st_size and (d/'fresh.mrsar').read_bytes() == (d/'mine.mrsar').read_bytes()


def test_old_import_path_gives_the_same_objects():
    "Every name `medrecipes.data.sar` had is still there (and in its `__all__`), the moved ones the very objects of `medrecipes.data.sar_io`"
    assert sar.SarPreprocess is sar_io.SarPreprocess
    for n in sar_io.__all__: assert getattr(sar, n) is getattr(sar_io, n), n
    for n in ('_one_band', '_parse_clip', '_fake', '_read_pil', '_read_tifffile', '_WINDOWED_EXTENSIONS'): assert getattr(sar, n) is getattr(sar_io, n), n
    ns = {}
    exec('from medrecipes.data.sar import *', ns)
    assert [n for n in OLD_SAR_ALL if n not in ns] == [] and set(OLD_SAR_ALL) == set(sar.__all__)
    assert set(sar_io.__all__) < set(sar.__all__) and not any(n.startswith('Sar') and 'DataLoaders' in n for n in sar_io.__all__)


def test_sar_io_imports_no_fastai():
    "The module alone, in a fresh interpreter: numpy, torch, Pillow and tifffile; none of fastai, fastcore, plum, pandas, matplotlib, scipy, sklearn"
    out = _fresh("""
        import json, sys
        import medrecipes.data.sar_io
        print(json.dumps(sorted({m.split('.')[0] for m in sys.modules} & set(sys.argv[1].split(',')))))
    """, ','.join(HEAVY + ('fastcore', 'plum')))
    assert out == [], f"medrecipes.data.sar_io imported {', '.join(out)}"


def test_metrics_reexports_the_image_stats():
    """Every name `medrecipes.metrics` had is still there (and in its `__all__`), the per-image functions and their helpers
    the very objects of `medrecipes.image_stats`, and the fastai metrics built on them"""
    import medrecipes.metrics as metrics, medrecipes.image_stats as stats
    assert sorted(stats.__all__) == sorted(MOVED_STATS)
    for n in MOVED_STATS: assert getattr(metrics, n) is getattr(stats, n), n
    for n in ('_check_pair', '_blocks', '_checkerboard', '_local_means', '_flat', '_LAPLACE', '_edgeless'):
        assert getattr(metrics, n) is getattr(stats, n), n
    ns = {}
    exec('from medrecipes.metrics import *', ns)
    assert [n for n in OLD_METRICS_ALL if n not in ns] == [] and sorted(OLD_METRICS_ALL) == sorted(metrics.__all__)
    assert metrics.PSNRMetric().func.func is stats.psnr and metrics.EPIMetric().func is stats.epi
    x = torch.distributions.Gamma(torch.full((1, 1, 64, 64), 4.), torch.full((1, 1, 64, 64), 4.)).sample()
    assert float(metrics.enl(x, metrics.homogeneous_blocks(x))) == float(stats.enl(x, stats.homogeneous_blocks(x)))


def test_image_stats_imports_no_fastai():
    "`medrecipes.image_stats` alone, in a fresh interpreter, computes the ENL of speckle with torch only: none of fastai, fastcore, plum, pandas, matplotlib, scipy, sklearn"
    out = _fresh("""
        import json, sys, torch
        from medrecipes.image_stats import enl, homogeneous_blocks, psnr, epi
        torch.manual_seed(0)
        x = torch.distributions.Gamma(torch.full((1, 1, 128, 128), 4.), torch.full((1, 1, 128, 128), 4.)).sample()
        v = float(enl(x, homogeneous_blocks(x))); float(psnr(x, x)); float(epi(x, x))
        heavy = sorted({m.split('.')[0] for m in sys.modules} & set(sys.argv[1].split(',')))
        print(json.dumps({'heavy': heavy, 'metrics': 'medrecipes.metrics' in sys.modules, 'enl': v}))
    """, ','.join(HEAVY + ('fastcore', 'plum')))
    assert out['heavy'] == [], f"medrecipes.image_stats imported {', '.join(out['heavy'])}"
    assert not out['metrics'] and 3 < out['enl'] < 5, out        # four-look speckle reads about 4
