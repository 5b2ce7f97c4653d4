"""A full scene through the SAR codec in bounded memory: peak resident memory and time per megapixel of `codec compress`
and `codec decompress` (strip by strip, GeoTIFF in and out) on a large uint16 GeoTIFF, beside JPEG2000 (OpenJPEG through
Pillow) on the same scene.

    python benchmarks/codec_scene.py                    # 8000 x 8000 uint16 GeoTIFF, residual codec at base 32
    python benchmarks/codec_scene.py --size 2048 --variant attention
    python benchmarks/codec_scene.py --entropy hyperprior --linear-skip     # the rate-distortion benchmark's best codec

The peak RSS includes what importing the package costs (torch's CUDA build alone takes about 0.86 GB here, without a
GPU); the first row measures that baseline, and `rss_over_baseline_mb` is the codec's own share.

Each step runs in its own process (the package's command line), so its peak RSS is its own (GNU `time`'s maximum
resident set size). The codec's weights are random (with coding tables): speed and memory do not depend
on training. Results: benchmarks/results/codec_scene.csv (one row per step, appended) with machine, versions and date.
"""
import argparse, subprocess, sys, tempfile, time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT/'benchmarks'))


def _run(args) -> tuple:
    "Wall seconds, peak RSS (MiB, GNU time's maximum resident set size) and stdout of a child process"
    t = time.time(); r = subprocess.run(['/usr/bin/time', '-f', 'MAXRSS %M', *map(str, args)], capture_output=True, text=True); dt = time.time() - t
    if r.returncode: raise SystemExit(f"{' '.join(map(str, args))} failed:\n{r.stderr[-3000:]}")
    peak = int(next(l for l in r.stderr.splitlines()[::-1] if l.startswith('MAXRSS')).split()[1])
    return dt, peak / 1024, r.stdout


JP2 = r'''
import sys, io, time, numpy as np, tifffile, resource
from PIL import Image
Image.MAX_IMAGE_PIXELS = None
src, bpp = sys.argv[1], float(sys.argv[2])
a = tifffile.imread(src)
x = np.log10(np.maximum(a.astype(np.float32), 1)); x = ((x - x.min()) / (x.max() - x.min()) * 65535).astype(np.uint16)
im = Image.fromarray(x); b = io.BytesIO(); t = time.time()
im.save(b, format='JPEG2000', quality_mode='rates', quality_layers=[16 / bpp], irreversible=True, no_jp2=True); te = time.time() - t
t = time.time(); r = np.asarray(Image.open(io.BytesIO(b.getvalue()))); td = time.time() - t
print(te, td, 8 * len(b.getvalue()) / a.size)
'''


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    ap.add_argument('--size', type=int, default=8000)
    ap.add_argument('--variant', default='residual')
    ap.add_argument('--base-channels', type=int, default=32)
    ap.add_argument('--entropy', default='factorized', choices=['factorized', 'hyperprior'])
    ap.add_argument('--linear-skip', nargs='?', const='box', default=False, choices=['box', 'dct'],
                    help='the codec with the linear skip path (model.linear_skip): box (the default when given alone) or dct')
    ap.add_argument('--latent-channels', type=int, default=16, help='16 (16x compression); the DCT codec uses 4-256 across its rates')
    ap.add_argument('--round-offset', type=float, default=0.5, help='the encoder rounding offset (0.3: the deadzone of the rate-distortion benchmark)')
    ap.add_argument('--rd-lambda', type=float, default=128., help="with --linear-skip dct: the λ whose quantisation steps the DCT path starts at (`init_skip_steps`)")
    ap.add_argument('--out', default=str(ROOT/'benchmarks'/'results'/'codec_scene.csv'))
    a = ap.parse_args(argv)
    import numpy as np, pandas as pd, tifffile, torch, medrecipes
    from medrecipes.core import save_checkpoint
    from medrecipes.models.sar import sar_model
    from medrecipes.data.sar import SarPreprocess
    from _common import machine
    with tempfile.TemporaryDirectory() as d:
        d = Path(d); n = a.size
        rng = np.random.default_rng(0)
        # a uint16 amplitude scene (Gamma speckle on a smooth field), written as a tiled GeoTIFF by rows of tiles
        with tifffile.TiffWriter(d/'scene.tif', bigtiff=True) as tw:
            def tiles():
                for y in range(0, n, 512):
                    for x in range(0, n, 512):
                        h, w = min(512, n - y), min(512, n - x)
                        yy, xx = np.mgrid[y:y + 512, x:x + 512]
                        field = 300 + 200 * np.sin(xx / 700.) * np.cos(yy / 900.)
                        yield (field * np.sqrt(rng.gamma(4.4, 1 / 4.4, (512, 512)))).clip(1, 65535).astype(np.uint16)
            tw.write(tiles(), shape=(n, n), dtype=np.uint16, tile=(512, 512),
                     extratags=[(33550, 'd', 3, (10.0, 10.0, 0.0), True), (33922, 'd', 6, (0, 0, 0, 500000.0, 4649776.0, 0), True)])
        torch.manual_seed(0)
        m = sar_model(a.variant, a.latent_channels, base_channels=a.base_channels, entropy=a.entropy, linear_skip=a.linear_skip, round_offset=a.round_offset).eval()
        torch.nn.init.normal_(m.encoder.head.weight, std=0.05); m.init_skip_steps(a.rd_lambda); m.update()
        pre = SarPreprocess('amplitude', clip=(10., 60.))
        save_checkpoint(d/'ck.pt', model_state_dict=m.state_dict(), model_config=m.config, preprocessing_params=pre.checkpoint_params(), patch=128)
        cli = [sys.executable, '-m', 'medrecipes.cli', 'codec']
        tb, mb, _ = _run([sys.executable, '-c', 'import medrecipes.codec, medrecipes.cli'])   # the imports alone (torch's CUDA build: most of it)
        te, me, _ = _run(cli + ['compress', str(d/'ck.pt'), str(d/'scene.tif'), str(d/'scene.mrsar')])
        size = (d/'scene.mrsar').stat().st_size
        td, md, _ = _run(cli + ['decompress', str(d/'ck.pt'), str(d/'scene.mrsar'), str(d/'rec.tif'), '--out', 'db'])
        with tifffile.TiffFile(d/'rec.tif') as tf: assert 33922 in tf.pages[0].tags and tf.pages[0].shape == (n, n)
        bpp = 8 * size / n ** 2
        jt, jm, out = _run([sys.executable, '-c', JP2, str(d/'scene.tif'), str(max(bpp, 0.05))])
        je, jd, jb = map(float, out.split())
    mp = n * n / 1e6
    info = dict(date=time.strftime('%Y-%m-%d'), machine=machine(), torch=torch.__version__, medrecipes=medrecipes.__version__, size=n,
                variant=a.variant + ('' if a.entropy == 'factorized' else f'+{a.entropy}') + ({False: '', 'box': '+skip', 'dct': '+dct'}[a.linear_skip])
                + ('' if a.latent_channels == 16 else f'+c{a.latent_channels}') + ('' if a.round_offset == 0.5 else f'+dz{a.round_offset:g}'), base_channels=a.base_channels, threads=torch.get_num_threads())
    rows = [dict(info, step='import medrecipes.codec (baseline)', seconds=round(tb, 1), s_per_mp=None, peak_rss_mb=round(mb), bpp=None),
            dict(info, step='codec compress (GeoTIFF in)', seconds=round(te, 1), s_per_mp=round(te / mp, 3), peak_rss_mb=round(me), bpp=round(bpp, 4)),
            dict(info, step='codec decompress (GeoTIFF out)', seconds=round(td, 1), s_per_mp=round(td / mp, 3), peak_rss_mb=round(md), bpp=round(bpp, 4)),
            dict(info, step='JPEG2000 encode (Pillow, whole image)', seconds=round(je, 1), s_per_mp=round(je / mp, 3), peak_rss_mb=round(jm), bpp=round(jb, 4)),
            dict(info, step='JPEG2000 decode (Pillow, whole image)', seconds=round(jd, 1), s_per_mp=round(jd / mp, 3), peak_rss_mb=round(jm), bpp=round(jb, 4))]
    df = pd.DataFrame(rows)
    df['rss_over_baseline_mb'] = [0] + [round(r['peak_rss_mb'] - mb) for r in rows[1:3]] + [None, None]
    out = Path(a.out); out.parent.mkdir(parents=True, exist_ok=True)
    df.to_csv(out, mode='a', header=not out.exists(), index=False)
    print(df.drop(columns=['machine']).to_string(index=False))


if __name__ == '__main__':
    main()
