"""Why the SAR codecs miss the ENL-ratio target: where the speckle-free truth, despeckling filters, re-drawn speckle,
the learned codecs and JPEG2000 fall in PSNR against ENL ratio, on the same test scenes and metrics.

The generated scenes know their clean reflectivity (`make_sar(..., save_clean=True)`; the generator is deterministic,
so the test scenes are regenerated with their clean versions and checked byte for byte against the run's data).
Every row is scored by `medrecipes.codec.codec_metrics` against the speckled original, with the run's own
preprocessing (the clip its checkpoints carry), as the comparison scores the codecs:

- `truth (speckle-free)`: the clean reflectivity itself, the best any despeckler could do;
- `re-drawn speckle`: the clean scene times a new, independent speckle field of the same statistics (4.4 looks,
  correlated): a "codec" that keeps the speckle's statistics exactly but not its realisation;
- `boxcar k x k`: the original averaged over k x k pixels in linear intensity (classical multilooking);
- the learned codecs and JPEG2000 at the learned bitrate, from each variant's `codec.csv` of the run.

    python benchmarks/sar_limits.py RUN_DIR DATA_DIR [--out benchmarks/results/sar_limits]

RUN_DIR is one comparison (e.g. runs/sar_hour/seed0, holding <variant>/codec.csv and <variant>/checkpoints/best.pt);
DATA_DIR the data set it was trained on (its metadata.json gives the generator's arguments).
"""
import argparse, datetime, json, platform, sys, tempfile
from pathlib import Path
import numpy as np, pandas as pd, torch
from scipy import ndimage

from _common import machine


def main():
    ap = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    ap.add_argument('run'); ap.add_argument('data')
    ap.add_argument('--out', default=str(Path(__file__).parent/'results'/'sar_limits'))
    a = ap.parse_args()
    from medrecipes.synth import make_sar, correlated_speckle, SAR_REALISTIC
    from medrecipes.codec import codec_metrics
    from medrecipes.data.sar import read_sar_image
    from medrecipes.models.sar import load_sar_model
    run, data = Path(a.run), Path(a.data)
    meta = json.loads((data/'metadata.json').read_text())
    if meta.get('mode') != 'realistic': sys.exit(f"{data}: expected a realistic-mode generated set (metadata.json mode), not {meta.get('mode')!r}")
    cks = sorted(run.glob('*/checkpoints/best.pt'))
    if not cks: sys.exit(f"{run}: no <variant>/checkpoints/best.pt")
    _, pre, _ = load_sar_model(cks[0])   # every variant of one comparison fits the same clip on the same training data
    tests = sorted((data/'test').glob('*.npy'))
    with tempfile.TemporaryDirectory() as tmp:   # the same generator call, with the clean scenes
        s = meta['splits']
        make_sar(tmp, s['train'], s['valid'], s['test'], tuple(meta['size']), meta['looks'], meta['seed'], save_clean=True, mode='realistic')
        clean = {}
        for f in tests:
            if not np.array_equal(np.load(f), np.load(Path(tmp)/'test'/f.name)):
                sys.exit(f"{f} differs from the regenerated scene: the data set was not written by make_sar with {data/'metadata.json'}")
            clean[f.name] = np.load(Path(tmp)/'clean'/'test'/f.name)
    p, rows = SAR_REALISTIC, []
    rng = np.random.default_rng(1234)
    for f in tests:
        orig = np.asarray(read_sar_image(f), np.float32); x01 = np.asarray(pre.encode(orig), np.float32)
        enc = lambda lin: np.asarray(pre.encode(np.asarray(lin, np.float32)), np.float32)
        cands = {'truth (speckle-free)': clean[f.name],
                 're-drawn speckle': clean[f.name] * correlated_speckle(orig.shape, meta['looks'], p['n_looks'], p['resolution_px'], rng)}
        for k in (3, 5, 9): cands[f'boxcar {k}x{k}'] = ndimage.uniform_filter(orig, k, mode='reflect')
        for name, lin in cands.items(): rows.append(dict(image=f.name, codec=name, bpp=np.nan, **codec_metrics(x01, enc(lin), pre)))
    for v in ('baseline', 'resnet_lite', 'residual', 'attention'):
        fn = run/v/'codec.csv'
        if fn.is_file(): rows += pd.read_csv(fn).assign(codec=lambda d: d.codec.where(d.codec != 'jpeg2000', f'jpeg2000 (at {v} bpp)')).to_dict('records')
    df = pd.DataFrame(rows)
    keep = ['bpp', 'psnr_db', 'ssim_db', 'epi_db', 'psnr_linear', 'enl_ratio']
    mean = df.groupby('codec', sort=False)[keep].mean().reset_index()
    mean.insert(0, 'date', datetime.date.today().isoformat())
    mean['machine'], mean['python'], mean['torch'], mean['images'], mean['run'] = machine(), platform.python_version(), torch.__version__, len(tests), str(run)
    out = Path(a.out); out.parent.mkdir(parents=True, exist_ok=True)
    mean.to_csv(out.with_suffix('.csv'), index=False)
    print(mean[['codec', *keep]].to_string(index=False, float_format=lambda v: f'{v:.3f}'))
    import matplotlib; matplotlib.use('Agg'); import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(6.8, 4.8))
    ax.axvspan(0.7, 1.3, color='tab:green', alpha=.12, label='ENL-ratio target 0.7-1.3')
    styles = dict(learned=('o', 'tab:blue', 'learned codecs'), jpeg2000=('s', 'k', 'JPEG2000 at the learned bpp'),
                  ref=('^', 'tab:orange', 'references (no bitrate)'))
    seen = set()
    for r in mean.itertuples():
        kind = 'learned' if r.codec.startswith('learned') else 'jpeg2000' if r.codec.startswith('jpeg2000') else 'ref'
        m, c, lab = styles[kind]
        ax.scatter(r.enl_ratio, r.psnr_db, marker=m, color=c, zorder=3, label=None if kind in seen else lab); seen.add(kind)
        if kind != 'jpeg2000':
            name = r.codec.replace('learned (', '').replace(', 16x8 bit)', '') if kind == 'learned' else r.codec
            ax.annotate(name, (r.enl_ratio, r.psnr_db), fontsize=7, xytext=(4, 3), textcoords='offset points')
    ax.set_xscale('log'); ax.set_xlabel('ENL ratio (reconstruction / original, homogeneous blocks)'); ax.set_ylabel('PSNR, dB scale [0, 1]')
    ax.set_title(f'what keeping the speckle costs ({len(tests)} test scenes)'); ax.grid(alpha=.3, which='both')
    fig.legend(loc='lower center', ncol=2, fontsize=8, frameon=False)
    fig.tight_layout(rect=(0, 0.1, 1, 1)); fig.savefig(out.with_suffix('.png'), dpi=110)
    print(f"wrote {out.with_suffix('.csv')} and {out.with_suffix('.png')}")


if __name__ == '__main__':
    main()
