"""Rate–distortion curves of the learned SAR codec (factorized prior or scale hyperprior, rate–distortion loss) against JPEG2000 and JPEG-XL.

Generates realistic Sentinel-1-like scenes with their clean reflectivity (`make_sar(..., save_clean=True)`), trains each
variant at several λ with `medrecipes.sar_experiments.rd_curves` (the `sar_demo` settings unless overridden), codes the test
scenes into real `.mrsar` files, and puts them beside JPEG2000 (OpenJPEG) and JPEG-XL (libjxl, where imagecodecs is
installed) over the same range of file sizes, scored against
the speckled original and against the clean reflectivity. Every bpp is the whole file's (8 x bytes / pixels).

    python benchmarks/sar_rd.py                                   # residual and attention, lambda 8 32 128 512; attention against clean too
    python benchmarks/sar_rd.py --variants attention --lambdas 16 256 --epochs 4 --n 8 --size 64

Results: benchmarks/results/sar_rd.csv (every image and point), sar_rd_curves.csv, sar_rd_bd.csv (BD-rate and BD-PSNR
against JPEG2000, attention against residual), sar_rd.md (machine, versions, date, command, wall time) and sar_rd.png.
"""
import argparse, shutil, sys, time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT/'benchmarks'))


def _speed(runs:Path, data:Path, variant:str, lam:float, entropy:str='factorized', extra=(), target:str='input') -> dict:
    "Encode and decode seconds per megapixel of one trained codec and of JPEG2000 at its file sizes, on the test scenes (in-process, warm)"
    import io, numpy as np
    from PIL import Image
    from medrecipes.codec import compress, decompress
    from medrecipes.models.sar import load_sar_model
    from medrecipes.data.sar import sar_files, read_sar_image
    from medrecipes.sar_experiments import rd_run_name
    name = variant + ('' if entropy == 'factorized' else f'+{entropy}') + ('' if target == 'input' else f'+{target}')
    model, pre, _ = load_sar_model(runs/rd_run_name(name, lam, extra)/'checkpoints'/'best.pt')
    files = sar_files(data/'test'); imgs = [read_sar_image(f) for f in files]
    n = sum(a.size for a in imgs); t = dict(enc=0., dec=0., jenc=0., jdec=0.)
    compress((model, pre), imgs[0], runs/'warm.mrsar')                  # warm-up
    for i, a in enumerate(imgs):
        f = runs/f'speed{i}.mrsar'
        t0 = time.perf_counter(); info = compress((model, pre), a, f); t['enc'] += time.perf_counter() - t0
        t0 = time.perf_counter(); decompress(f, (model, pre)); t['dec'] += time.perf_counter() - t0
        im = Image.fromarray(np.round(pre.encode(a) * 65535).astype(np.uint16)); b = io.BytesIO()
        t0 = time.perf_counter()
        im.save(b, format='JPEG2000', quality_mode='rates', quality_layers=[16 / info['bpp']], irreversible=True, no_jp2=True)
        t['jenc'] += time.perf_counter() - t0
        t0 = time.perf_counter(); np.asarray(Image.open(io.BytesIO(b.getvalue()))); t['jdec'] += time.perf_counter() - t0
    mp = n / 1e6
    return dict(pixels=n, learned_encode_s_per_mp=t['enc'] / mp, learned_decode_s_per_mp=t['dec'] / mp,
                jpeg2000_encode_s_per_mp=t['jenc'] / mp, jpeg2000_decode_s_per_mp=t['jdec'] / mp)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    ap.add_argument('--variants', nargs='*', default=['residual', 'attention'], help='variants trained against the speckled original; none: only --clean-variants')
    ap.add_argument('--lambdas', type=float, nargs='+', default=[8., 32., 128., 512.])
    ap.add_argument('--points', nargs='+', default=None, metavar='LAMBDA[:OVERRIDE,...]',
                    help="instead of --lambdas: points with their own settings, e.g. 16:model.latent_channels=4 1024:model.latent_channels=64")
    ap.add_argument('--epochs', type=int, default=12)
    ap.add_argument('--clean-variants', nargs='*', default=['attention'], help='variants also trained against the clean reflectivity (despeckling compression); none: skip')
    ap.add_argument('--entropies', nargs='+', default=['factorized'], choices=['factorized', 'hyperprior'], help='entropy models, each variant trained with each')
    ap.add_argument('--clean-entropies', nargs='+', default=None, choices=['factorized', 'hyperprior'], help="entropy models of the clean-target runs (default: --entropies)")
    ap.add_argument('--n', type=int, default=32, help='training scenes (valid: n/4, test: n/8)')
    ap.add_argument('--size', type=int, default=128)
    ap.add_argument('--work', default=str(ROOT/'runs'/'sar_rd'))
    ap.add_argument('--out', default=str(ROOT/'benchmarks'/'results'/'sar_rd'))
    ap.add_argument('--resume', action='store_true', help="reuse --work's scenes and finished runs, continue interrupted ones, train only the missing points")
    ap.add_argument('overrides', nargs='*', help='config overrides for every run, e.g. model.base_channels=32')
    a = ap.parse_args(argv)
    if not a.variants and not a.clean_variants: ap.error('nothing to train: give --variants or --clean-variants')
    points = [(float(p.split(':')[0]), [o for o in p.split(':', 1)[1].split(',') if o] if ':' in p else []) for p in a.points] if a.points else [(l, []) for l in a.lambdas]
    a.lambdas = [l for l, _ in points]
    import warnings; warnings.filterwarnings('ignore')
    import pandas as pd, torch, medrecipes
    from medrecipes.synth import make_sar
    from medrecipes.sar_experiments import rd_curves, _md_table
    from _common import machine
    work, out = Path(a.work), Path(a.out); out.parent.mkdir(parents=True, exist_ok=True)
    data = work/'data'
    if data.exists() and not a.resume: shutil.rmtree(data)
    if not data.exists(): make_sar(data, n_train=a.n, n_valid=max(1, a.n // 4), n_test=max(1, a.n // 8), size=a.size, seed=0, save_clean=True, mode='realistic')
    t0 = time.time()
    curves = rd_curves('sar_demo', [f'data.path={data}', f'trainer.out_dir={work}', 'trainer.progress=false', f'trainer.max_epochs={a.epochs}',
                                    'trainer.codec_images=0', *a.overrides], variants=tuple(a.variants), rd_lambdas=tuple(points),
                        targets=(('input',) if a.variants else ()) + (('clean',) if a.clean_variants else ()), clean_variants=tuple(a.clean_variants),
                        entropies=tuple(a.entropies), clean_entropies=tuple(a.clean_entropies) if a.clean_entropies else None, resume=a.resume)
    minutes = (time.time() - t0) / 60
    src = work/'rd_curves'
    for name, dst in (('rd.csv', '.csv'), ('rd_curves.csv', '_curves.csv'), ('rd_bd.csv', '_bd.csv'), ('rd.png', '.png')):
        shutil.copyfile(src/name, str(out) + dst)
    bd = curves.attrs['bd']
    lam, extra = points[len(points) // 2]
    timed, target = (a.variants[-1], 'input') if a.variants else (a.clean_variants[-1], 'clean')
    speed = _speed(src, data, timed, lam, (a.entropies if a.variants else a.clean_entropies or a.entropies)[-1], extra, target)
    cmd = 'python benchmarks/sar_rd.py ' + ' '.join(argv if argv is not None else sys.argv[1:])
    text = [f"# SAR codec rate-distortion curves against JPEG2000", '',
            f"{time.strftime('%Y-%m-%d')}; {machine()}; medrecipes {medrecipes.__version__}, torch {torch.__version__}; `{cmd.strip()}`; "
            f"{minutes:.1f} min for {(len(a.variants) * len(a.entropies) + len(a.clean_variants) * len(a.clean_entropies or a.entropies)) * len(a.lambdas)} trainings{' (with --resume: the finished ones reused, not retrained)' if a.resume else ''} and the coding.", '',
            f"Data: `make_sar(n_train={a.n}, n_valid={max(1, a.n // 4)}, n_test={max(1, a.n // 8)}, size={a.size}, seed=0, save_clean=True, "
            f"mode='realistic')`; the `sar_demo` config with {' '.join(a.overrides) or 'no overrides'}, {a.epochs} epochs, entropy models {', '.join(a.entropies)}; every bpp is the whole "
            f".mrsar or .j2k file's. Means over the test scenes:", '',
            _md_table(curves.round(4)), '', "Bjøntegaard deltas (negative BD-rate and positive BD-quality: the test codec is better):", '',
            _md_table(bd.round(3)), '', f"Speed on this CPU ({torch.get_num_threads()} threads), seconds per megapixel over the test scenes "
            f"({speed.pop('pixels') / 1e6:.2f} MP), the {timed}{'' if target == 'input' else ' (clean target)'} codec at lambda {lam:g} {' '.join(extra)} beside JPEG2000 at the same file size:", '',
            _md_table(pd.DataFrame([speed]).round(4)), '']
    Path(str(out) + '.md').write_text('\n'.join(text))
    print('\n'.join(text))


if __name__ == '__main__':
    main()
