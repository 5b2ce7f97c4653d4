"""The ENL target with decode-side speckle synthesis: each trained codec's test scenes coded into real `.mrsar` files,
decoded plainly and with `decompress(..., speckle='synthesize', seed=i)`, scored against the speckled original and
the clean reflectivity, with the ENL ratio (the decode's ENL over the original's, on the original's homogeneous
blocks) of every scene. Beside them: the clean reflectivity itself and the clean reflectivity times re-drawn speckle
with the looks `compress` stores (the limits analysis's "truth x re-drawn speckle", the point to approach).

    python benchmarks/sar_enl_synth.py --runs runs/sar_rd_fit/rd_curves runs/clean_ppi16/rd_curves --data runs/probe_clean_lr/data

Results: <out>.csv (every scene and codec), <out>.md (means, the ENL ratio's range, how many scenes lie in 0.7-1.3;
machine, versions, date, command).
"""
import argparse, sys, tempfile, time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT/'benchmarks'))
BAND = (0.7, 1.3)


def enl_rows(checkpoints, data:Path, split:str='test') -> list:
    "One row per scene and decode: each checkpoint plainly and with synthesised speckle (seed = the scene's index), and the two references"
    import numpy as np
    from medrecipes.codec import compress, decompress, read_codec_file, _speckled
    from medrecipes.models.sar import load_sar_model
    from medrecipes.data.sar import sar_files, read_sar_image
    from medrecipes.sar_experiments import _rd_scores
    files = sar_files(data/split)
    if not files: raise FileNotFoundError(f"{data/split}: no SAR scenes")
    rows = []
    with tempfile.TemporaryDirectory() as d:
        for k, ck in enumerate(checkpoints):
            model, pre, _ = load_sar_model(ck)
            name = str(Path(ck).parents[1]).removeprefix('runs/')   # the run's folder
            for i, f in enumerate(files):
                a = read_sar_image(f); x01 = np.asarray(pre.encode(a), np.float32)
                c = data/'clean'/split/f.name
                clean01 = np.asarray(pre.encode(np.load(c)), np.float32) if c.is_file() else None
                info = compress((model, pre), a, Path(d)/f'{k}_{i}.mrsar')
                for mode, kw in (('plain', {}), ('synthesized', dict(speckle='synthesize', seed=i))):
                    rec = decompress(info['path'], (model, pre), out='scaled', **kw)
                    rows.append(dict(codec=name, decode=mode, image=f.name, bpp=info['bpp'], **_rd_scores(x01, rec, pre, clean01)))
                if k == 0 and clean01 is not None:   # the references, once per scene, with the looks the file stores
                    looks = read_codec_file(info['path'])[0]['looks']
                    rows.append(dict(codec='clean reflectivity', decode='reference', image=f.name, bpp=np.nan, **_rd_scores(x01, clean01, pre, clean01)))
                    re01 = _speckled(clean01, pre, looks, seed=i)    # the synthesis decompress applies, on the truth
                    rows.append(dict(codec='clean x re-drawn speckle', decode='reference', image=f.name, bpp=np.nan, **_rd_scores(x01, re01, pre, clean01)))
    return rows


def summarize(df):
    "Means per codec and decode, with the ENL ratio's range and the scenes in the band"
    g = df.groupby(['codec', 'decode'], sort=False)
    out = g.mean(numeric_only=True)
    out['enl_min'], out['enl_max'] = g.enl_ratio.min(), g.enl_ratio.max()
    out['in_band'] = g.enl_ratio.apply(lambda e: f"{int(((e >= BAND[0]) & (e <= BAND[1])).sum())}/{len(e)}")
    return out.reset_index()


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    ap.add_argument('--runs', nargs='+', required=True, help="rd_curves folders (every run in them with checkpoints/best.pt) or checkpoint files")
    ap.add_argument('--data', required=True, help='the scenes the runs were trained on (test/ and clean/test/)')
    ap.add_argument('--out', default=str(ROOT/'benchmarks'/'results'/'sar_enl_synth'))
    a = ap.parse_args(argv)
    import warnings; warnings.filterwarnings('ignore')
    import pandas as pd, torch, medrecipes
    from medrecipes.sar_experiments import _md_table
    from _common import machine
    cks = []
    for r in map(Path, a.runs):
        if r.is_file(): cks.append(r)
        elif not r.is_dir(): raise SystemExit(f"--runs: {r} is neither a checkpoint nor a folder")
        else: cks += sorted(r.glob('*/checkpoints/best.pt'))
    if not cks: raise SystemExit(f"--runs: no checkpoints/best.pt under {' '.join(a.runs)}")
    t0 = time.time()
    df = pd.DataFrame(enl_rows(cks, Path(a.data)))
    out = Path(a.out); out.parent.mkdir(parents=True, exist_ok=True)
    df.to_csv(str(out) + '.csv', index=False)
    s = summarize(df)
    cmd = 'python benchmarks/sar_enl_synth.py ' + ' '.join(argv if argv is not None else sys.argv[1:])
    text = ['# Decode-side speckle synthesis: the ENL ratio and its PSNR cost', '',
            f"{time.strftime('%Y-%m-%d')}; {machine()}; medrecipes {medrecipes.__version__}, torch {torch.__version__}; `{cmd.strip()}`; "
            f"{(time.time() - t0) / 60:.1f} min. Every scene of {a.data}/test coded into a real file; means over the scenes, the ENL ratio's "
            f"range and the scenes within {BAND[0]}-{BAND[1]}; PSNR and SSIM on the dB scale against the speckled original and the clean reflectivity.", '',
            _md_table(s.round(4)), '']
    Path(str(out) + '.md').write_text('\n'.join(text))
    print('\n'.join(text))


if __name__ == '__main__':
    main()
