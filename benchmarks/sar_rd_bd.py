"""Bjøntegaard deltas of rate-distortion curves already measured by `benchmarks/sar_rd.py`, recomputed from their
`*_curves.csv` (`medrecipes.sar_experiments.rd_deltas`: over each curve's rising part, with `medrecipes.codec.bd_rate`'s
piecewise cubic fit). Several files' learned codecs are put together (the same generated scenes: the references are taken
from the first file), so that e.g. attention is compared with residual across two runs.

    python benchmarks/sar_rd_bd.py benchmarks/results/sar_rd_skip_curves.csv benchmarks/results/sar_rd_skip_variants_curves.csv \
        --out benchmarks/results/sar_rd_skip_all

Results: <out>_bd.csv and <out>_bd.md (machine, versions, date, command).
"""
import argparse, sys, time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT/'benchmarks'))


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    ap.add_argument('curves', nargs='+', help='rd_curves.csv files (sar_rd.py writes <out>_curves.csv)')
    ap.add_argument('--out', required=True, help='prefix of the files written')
    a = ap.parse_args(argv)
    import pandas as pd, medrecipes
    from medrecipes.sar_experiments import rd_deltas, _md_table
    from _common import machine
    refs = ('jpeg2000', 'jpegxl')
    frames = [pd.read_csv(f) for f in a.curves]
    curves = pd.concat([frames[0]] + [f[~f.codec.isin(refs)] for f in frames[1:]], ignore_index=True)
    if curves.duplicated(['codec', 'point']).any():
        raise SystemExit(f"the files share learned points: {sorted(set(curves[curves.duplicated(['codec', 'point'])].codec))}")
    bd = rd_deltas(curves)
    out = Path(a.out); bd.to_csv(str(out) + '_bd.csv', index=False)
    cmd = 'python benchmarks/sar_rd_bd.py ' + ' '.join(argv if argv is not None else sys.argv[1:])
    text = ['# Bjøntegaard deltas (piecewise cubic fit)', '', f"{time.strftime('%Y-%m-%d')}; {machine()}; medrecipes {medrecipes.__version__}; `{cmd}`", '',
            'Negative BD-rate and positive BD-quality: the test codec is better. Over each curve\'s rising part.', '', _md_table(bd.round(3)), '']
    Path(str(out) + '_bd.md').write_text('\n'.join(text)); print('\n'.join(text))


if __name__ == '__main__':
    main()
