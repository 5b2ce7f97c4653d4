"""Bjøntegaard deltas of rate-distortion curves already measured by `benchmarks/sar_rd.py`, recomputed from their
`*_curves.csv` (`medrecipes.sar_experiments.rd_deltas`: over each curve's rising part, with `medrecipes.codec.bd_rate`'s
piecewise cubic fit). Several files' learned codecs are put together (the same generated scenes: the references are taken
from the first file), so that e.g. attention is compared with residual across two runs.

    python benchmarks/sar_rd_bd.py benchmarks/results/sar_rd_skip_curves.csv benchmarks/results/sar_rd_skip_variants_curves.csv \
        --out benchmarks/results/sar_rd_skip_all

Beside the deltas, every learned point against JPEG2000 at its own file bpp (`point_gaps`): JPEG2000's quality there
(interpolated linearly in log-rate between its measured points) and JPEG2000's best quality at any measured rate up to
that bpp (its envelope: against the clean reflectivity JPEG2000 gets worse as it spends more bits on the speckle, and a
user would pick the better, smaller file).

Results: <out>_bd.csv, <out>_points.csv and <out>_bd.md (machine, versions, date, command).
"""
import argparse, sys, time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT/'benchmarks'))
REFS = ('jpeg2000', 'jpegxl')   # the reference codecs' rows in an rd_curves.csv


def point_gaps(curves, # rd_curves.csv's means per point: codec, point, bpp and the qualities
               anchor:str='jpeg2000', qualities=('psnr_db', 'psnr_clean_db')):
    "Each learned point's quality against `anchor`'s at the same bpp (log-rate interpolation; NaN outside its measured range) and against its envelope (its best at no more bits: measured points below, or the interpolation)"
    import numpy as np, pandas as pd
    ref = curves[curves.codec == anchor].sort_values('bpp'); rows = []
    for r in curves[~curves.codec.isin(REFS)].itertuples():
        row = dict(codec=r.codec, point=r.point, bpp=r.bpp)
        for q in qualities:
            if q not in curves or ref[q].isna().all(): continue
            lb = np.log(ref.bpp.values); inside = lb[0] <= np.log(r.bpp) <= lb[-1]
            at = float(np.interp(np.log(r.bpp), lb, ref[q].values)) if inside else np.nan
            env = np.nanmax([at, *ref[ref.bpp <= r.bpp][q]]) if inside else np.nan   # where it is monotone, the same as `at`
            row.update({q: getattr(r, q), f'{q}_{anchor}': at, f'{q}_gap': getattr(r, q) - at, f'{q}_{anchor}_envelope': env, f'{q}_gap_envelope': getattr(r, q) - env})
        rows.append(row)
    return pd.DataFrame(rows).sort_values(['codec', 'bpp'], ignore_index=True)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    ap.add_argument('curves', nargs='+', help='rd_curves.csv files (sar_rd.py writes <out>_curves.csv)')
    ap.add_argument('--out', required=True, help='prefix of the files written')
    a = ap.parse_args(argv)
    import pandas as pd, medrecipes
    from medrecipes.sar_experiments import rd_deltas, _md_table
    from _common import machine
    frames = [pd.read_csv(f) for f in a.curves]
    curves = pd.concat([frames[0]] + [f[~f.codec.isin(REFS)] for f in frames[1:]], ignore_index=True)
    if curves.duplicated(['codec', 'point']).any():
        raise SystemExit(f"the files share learned points: {sorted(set(curves[curves.duplicated(['codec', 'point'])].codec))}")
    bd = rd_deltas(curves); gaps = point_gaps(curves)
    out = Path(a.out); bd.to_csv(str(out) + '_bd.csv', index=False); gaps.to_csv(str(out) + '_points.csv', index=False)
    cmd = 'python benchmarks/sar_rd_bd.py ' + ' '.join(argv if argv is not None else sys.argv[1:])
    text = ['# Bjøntegaard deltas (piecewise cubic fit)', '', f"{time.strftime('%Y-%m-%d')}; {machine()}; medrecipes {medrecipes.__version__}; `{cmd}`", '',
            'Negative BD-rate and positive BD-quality: the test codec is better. Over each curve\'s rising part.', '', _md_table(bd.round(3)), '',
            'Each learned point against JPEG2000 at its own file bpp (`_gap`: interpolated in log-rate; `_gap_envelope`: against '
            "JPEG2000's best at any measured rate up to that bpp):", '', _md_table(gaps.round(3)), '']
    Path(str(out) + '_bd.md').write_text('\n'.join(text)); print('\n'.join(text))


if __name__ == '__main__':
    main()
