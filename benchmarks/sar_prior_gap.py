"""How many bits the trained SAR codecs' entropy models spend beyond a static per-channel histogram of their own symbols.

For every trained point of a rate-distortion sweep (`benchmarks/sar_rd.py --work W`: the runs in `W/rd_curves/*/`), the
codec (its best checkpoint) codes the test scenes into real files, and the same symbols are counted as a static
per-channel coder would spend them: each latent channel's histogram of the symbols the codec gives on the training
scenes (add-half smoothed over the symbols seen on either split), as cross-entropy on the test scenes. No side
information, no spatial adaptation: the factorized prior a perfectly trained density would reach. A hyperprior that
learned where the image is busy would code below it; one that did not pays its side information and its Gaussian's
misfit on top of it. The sweep's `.mrsar` payload (the coded streams, without the file's header) is set beside it.

    python benchmarks/sar_prior_gap.py --work runs/sar_rd_dct --out benchmarks/results/sar_prior_gap

Results: `<out>.md` and `<out>.csv` (machine, versions, date).
"""
import argparse, sys, tempfile, time, warnings
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT/'benchmarks'))


def histogram_bits(train:list, # symbol arrays (C x h x w) the histograms are counted on
                   test:list, # symbol arrays (C x h x w) to count the bits of
                   smoothing:float=0.5) -> float:
    "Bits of the `test` symbols under each channel's `train` histogram, add-`smoothing` over the symbols seen on either side"
    import numpy as np
    bits = 0.
    for ch in range(train[0].shape[0]):
        a = np.concatenate([t[ch].ravel() for t in train]); b = np.concatenate([t[ch].ravel() for t in test])
        lo, hi = int(min(a.min(), b.min())), int(max(a.max(), b.max()))
        p = np.bincount(a - lo, minlength=hi - lo + 1) + smoothing
        bits -= float(np.log2(p[b - lo] / p.sum()).sum())
    return bits


def gap_rows(work:Path, # a sar_rd.py --work folder: its trained points are `work/rd_curves/*/checkpoints/best.pt`
             train_scenes:int|None=None, # training scenes the histograms are counted on (default: all)
             data:Path|None=None) -> list: # the scenes (train/ and test/ or valid/; default: `work/data`)
    "One row per trained point of `work/rd_curves`: the test files' bpp, their payload's, and the static per-channel histogram's"
    import numpy as np, torch
    from medrecipes.sar import load_sar_model
    from medrecipes.checkpoint import read_checkpoint
    from medrecipes.codec import compress, encode_strips, _Rows
    from medrecipes.data.sar import sar_files, read_sar_image
    data = Path(data or work/'data'); split = 'test' if (data/'test').is_dir() else 'valid'
    train, test = sar_files(data/'train')[:train_scenes], sar_files(data/split)
    rows = []
    for path in sorted((work/'rd_curves').glob('*/checkpoints/best.pt')):
        ck = read_checkpoint(path, 'sar'); model, pre, _ = load_sar_model(ck, name=str(path))
        if model.entropy_bottleneck is None: continue
        sym = lambda a: encode_strips(model, _Rows(a, pre))
        images = [read_sar_image(f) for f in test]; n = sum(a.size for a in images)   # read once: symbols and files
        tr, te = [sym(read_sar_image(f)) for f in train], [sym(a) for a in images]
        with tempfile.TemporaryDirectory() as d:
            infos = [compress((model, pre), a, Path(d)/f'{f.stem}.mrsar') for f, a in zip(test, images)]
        file_bits = sum(8 * i['bytes'] for i in infos); payload_bits = sum(i['payload_bpp'] * a.size for i, a in zip(infos, images))
        hist = histogram_bits(tr, te)
        rows.append(dict(run=path.parent.parent.name, entropy=model.entropy, target=ck['config']['data']['target'], latent_channels=model.latent_channels,
                         rd_lambda=ck['config']['trainer']['rd_lambda'],
                         file_bpp=file_bits / n, payload_bpp=payload_bits / n, histogram_bpp=hist / n,
                         payload_over_histogram_pct=100 * (payload_bits / hist - 1), zero_symbols=float(np.mean(np.concatenate([t.ravel() for t in te]) == 0))))
    return rows


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    ap.add_argument('--work', default=str(ROOT/'runs'/'sar_rd'), help="a sar_rd.py --work folder (its data/ and rd_curves/)")
    ap.add_argument('--out', default=str(ROOT/'benchmarks'/'results'/'sar_prior_gap'))
    ap.add_argument('--train-scenes', type=int, default=None, help='training scenes the histograms are counted on (default: all)')
    a = ap.parse_args(argv)
    warnings.filterwarnings('ignore')
    import pandas as pd, torch, medrecipes
    from medrecipes.sar_experiments import _md_table
    from _common import machine
    work, out = Path(a.work), Path(a.out)
    if not (work/'rd_curves').is_dir(): raise SystemExit(f"--work {work}: no rd_curves/ folder (run benchmarks/sar_rd.py --work {work} first)")
    df = pd.DataFrame(gap_rows(work, a.train_scenes))
    if df.empty: raise SystemExit(f"--work {work}: no trained entropy-coded runs under rd_curves/")
    df = df.sort_values(['entropy', 'file_bpp'])
    out.parent.mkdir(parents=True, exist_ok=True)
    df.to_csv(str(out) + '.csv', index=False)
    cmd = 'python benchmarks/sar_prior_gap.py ' + ' '.join(argv if argv is not None else sys.argv[1:])
    Path(str(out) + '.md').write_text('\n'.join([
        "# The entropy models against a static per-channel histogram of their own symbols", '',
        f"{time.strftime('%Y-%m-%d')}; {machine()}; medrecipes {medrecipes.__version__}, torch {torch.__version__}; `{cmd.strip()}`", '',
        "bpp over the test scenes: `file_bpp` the real `.mrsar` files, `payload_bpp` their coded streams (no header), `histogram_bpp` "
        "the same symbols under each channel's histogram on the training scenes (no side information). A positive "
        "`payload_over_histogram_pct` is what the entropy model spends beyond that static coder.", '',
        _md_table(df.round(4)), '']))
    print(_md_table(df.round(4)))


if __name__ == '__main__': main()
