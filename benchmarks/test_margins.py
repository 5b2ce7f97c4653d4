"""The margins of the tests that assert what a short training reached (pytest marker `trained`), over seeds and CPU
float paths.

A short training amplifies the small differences between CPUs' float paths (AVX-512 or AVX2 kernels, oneDNN or not):
a threshold set from one run on one machine can fail on the next (the CAM fixture at lr 1e-2 learnt on an Intel Xeon
and collapsed to "all Normal" on an AMD EPYC). This script measures each such test's quantity under several seeds and
several CPU float paths, one process per run, with the very helpers the tests call, and writes the spread beside
each test's threshold. The float paths: ATen's own kernels at the machine's capability (`native`), at `avx2` and at
`default` (no vector ISA) through `ATEN_CPU_CAPABILITY`, and oneDNN's convolutions capped at AVX2 or SSE4.1 through
`ONEDNN_MAX_CPU_ISA` (`onednn-avx2`, `onednn-sse41`): ATen's setting alone leaves oneDNN's convolutions as they were.

    python benchmarks/test_margins.py                     # seeds 0-4 on all five paths
    python benchmarks/test_margins.py --seeds 0 1 --capabilities default onednn-avx2

Results: benchmarks/results/test_margins.csv (one row per run) and test_margins.md (min/max per quantity and its
threshold), with the machine, versions and date.
"""
import argparse, json, os, subprocess, sys, tempfile, time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT/'tests')); sys.path.insert(0, str(ROOT/'benchmarks'))


def measure(seed:int) -> dict:
    "Every trained test's quantity under `seed`, in this process (its ATen capability is fixed at start)."
    import numpy as np, torch
    import test_predict as tp, test_sar_models as tsm, test_cache as tc, test_synth as ts
    out = {'seed': seed, 'capability': torch.backends.cpu.get_cpu_capability()}
    with tempfile.TemporaryDirectory() as d:
        d = Path(d); t0 = time.time()
        t = tp.train_cam_fixture(d/'cam', seed=seed)
        mass, area = tp.cam_box_masses(t)
        out.update(cam_valid_accuracy=t['res']['accuracy'], cam_tumours_recognised=len(mass),
                   cam_mean_mass=float(np.nanmean(mass)) if len(mass) else float('nan'),
                   cam_mass_over_area=float(np.nanmean(mass) / area.mean()) if len(mass) else float('nan'),
                   cam_seconds=round(time.time() - t0, 1))
        for v, c in (('baseline', None), ('resnet_lite', None), ('residual', None), ('attention', None)):
            out[f'learn_ratio_{v}'] = tsm.learn_ratio(v, c, seed=seed)
        out['learn_ratio_attention_timm'] = tsm.learn_ratio('attention', tsm.timm_cbam, seed=seed)
        pix, dtr, dva = tc.draft_loss_change(d/'draft', seed)
        out.update(draft_pixel_diff_max=float(pix.max()), draft_pixel_diff_mean=float(pix.mean()), draft_train_loss_change=float(dtr), draft_valid_loss_change=float(dva))
        bal, shuf = ts.linear_probe(d, seed)
        out.update(probe_balanced=bal, probe_gap=bal - shuf)
    return out


def _draft_pixels(seed:int) -> tuple:
    "The stored pixels' mean absolute difference, draft against full decoding, of `draft_loss_change`'s images: (max, mean) over them"
    import numpy as np, os
    from PIL import Image
    from medrecipes.synth import make_btxrd
    from medrecipes.data.images import read_stored
    with tempfile.TemporaryDirectory() as d:
        src = make_btxrd(Path(d)/'b', n=12, seed=seed); fs = sorted(os.listdir(src/'images')); pix = []
        for f in fs:
            im = Image.open(src/'images'/f); im.resize((im.size[0] * 5, im.size[1] * 5), Image.BICUBIC).save(src/'images'/f, quality=90)
        for f in fs[:6]:
            da, db = read_stored(src/'images'/f, 64, 64), read_stored(src/'images'/f, 64)
            a = np.asarray(da.resize(db.size, Image.BILINEAR) if da.size != db.size else da, np.float32)
            pix.append(float(np.abs(a - np.asarray(db, np.float32)).mean()))
    return max(pix), sum(pix) / len(pix)


# quantity -> (threshold, 'min' if it must stay above, 'max' if below): the tests' own constants
def thresholds() -> dict:
    import test_predict as tp, test_sar_models as tsm, test_cache as tc, test_synth as ts
    th = {'cam_valid_accuracy': (tp.CAM_MIN_ACCURACY, 'above'), 'cam_tumours_recognised': (8, 'above'),
          'cam_mean_mass': (0.5, 'above'), 'cam_mass_over_area': (1.6, 'above'),
          'draft_pixel_diff_max': (tc.DRAFT_MAX_PIXEL_DIFF, 'below'), 'draft_pixel_diff_mean': (tc.DRAFT_MAX_MEAN_PIXEL_DIFF, 'below'),
          'draft_train_loss_change': (tc.DRAFT_MAX_LOSS_CHANGE, 'below'), 'draft_valid_loss_change': (tc.DRAFT_MAX_LOSS_CHANGE, 'below'),
          'probe_balanced': (ts.PROBE_MIN, 'above'), 'probe_gap': (ts.PROBE_GAP, 'above')}
    for v in ('baseline', 'resnet_lite', 'residual', 'attention', 'attention_timm'): th[f'learn_ratio_{v}'] = (tsm.LEARN_RATIO_MAX, 'below')
    return th


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    ap.add_argument('--seeds', type=int, nargs='+', default=[0, 1, 2, 3, 4])
    ap.add_argument('--capabilities', nargs='+', default=['native', 'avx2', 'default', 'onednn-avx2', 'onednn-sse41'],
                    help="ATEN_CPU_CAPABILITY values ('native' leaves it unset), or onednn-<isa> for ONEDNN_MAX_CPU_ISA=<ISA>")
    ap.add_argument('--jobs', type=int, default=2, help='runs at a time (one thread each)')
    ap.add_argument('--out', default=str(ROOT/'benchmarks'/'results'/'test_margins'))
    ap.add_argument('--rerun-failed', action='store_true', help="run again only the runs the results file records as failed, and rewrite it")
    ap.add_argument('--one', type=int, help=argparse.SUPPRESS)   # internal: measure one seed and print JSON
    a = ap.parse_args(argv)
    if a.one is not None:
        print('RESULT ' + json.dumps(measure(a.one))); return
    import numpy as np, pandas as pd
    import torch
    from _common import machine
    runs, kept = [(c, s) for c in a.capabilities for s in a.seeds], []
    if a.rerun_failed:
        old = pd.read_csv(Path(a.out).with_suffix('.csv'))
        bad = old.error.notna() if 'error' in old else pd.Series(False, index=old.index)
        runs, kept = [(r.asked, int(r.seed)) for r in old[bad].itertuples()], old[~bad].drop(columns=['error'], errors='ignore').to_dict('records')
        a.seeds, a.capabilities = sorted(set(old.seed.astype(int))), list(dict.fromkeys(old.asked))
    procs, rows, t0 = [], [], time.time()
    def start(c, s):
        env = {**os.environ, 'OMP_NUM_THREADS': '1', 'PYTHONWARNINGS': 'ignore'}
        env.pop('ATEN_CPU_CAPABILITY', None); env.pop('ONEDNN_MAX_CPU_ISA', None)
        if c.startswith('onednn-'): env['ONEDNN_MAX_CPU_ISA'] = c[len('onednn-'):].upper()
        elif c != 'native': env['ATEN_CPU_CAPABILITY'] = c
        return (c, s, subprocess.Popen([sys.executable, __file__, '--one', str(s)], env=env, cwd=ROOT, text=True,
                                        stdout=subprocess.PIPE, stderr=subprocess.PIPE))
    while runs or procs:
        while runs and len(procs) < a.jobs: procs.append(start(*runs.pop(0)))
        for p in list(procs):
            c, s, pr = p
            if pr.poll() is None: continue
            procs.remove(p); out, err = pr.communicate()
            line = next((l for l in out.splitlines() if l.startswith('RESULT ')), None)
            if line is None:   # a helper's own check failed: that run counts as failing every quantity
                print(f'run capability={c} seed={s} failed:\n{err[-2000:]}', flush=True)
                rows.append({'seed': s, 'asked': c, 'error': err.strip().splitlines()[-1] if err.strip() else f'exit {pr.returncode}'}); continue
            r = json.loads(line[7:]); r['asked'] = c; rows.append(r)
            print(f"{c:>8} seed {s}: cam acc {r['cam_valid_accuracy']:.3f}, tumours {r['cam_tumours_recognised']}, "
                  f"mass {r['cam_mean_mass']:.3f} ({r['cam_seconds']} s)", flush=True)
        time.sleep(0.5)
    df = pd.DataFrame(kept + rows).sort_values(['asked', 'seed'])
    out = Path(a.out); out.parent.mkdir(parents=True, exist_ok=True)
    df.to_csv(out.with_suffix('.csv'), index=False)
    if 'draft_pixel_diff_mean' not in df:   # runs made before the pixel comparison was fixed: re-measure the pixels (PIL: the same on every path)
        px = {s_: _draft_pixels(s_) for s_ in sorted(set(df.seed.astype(int)))}
        df['draft_pixel_diff_max'] = [px[int(s_)][0] for s_ in df.seed]; df['draft_pixel_diff_mean'] = [px[int(s_)][1] for s_ in df.seed]
        df.to_csv(out.with_suffix('.csv'), index=False)
    th, lines = thresholds(), []
    info = f'{machine()}; torch {torch.__version__}, ATen native capability {torch.backends.cpu.get_cpu_capability()}'
    lines += [f"# Margins of the trained-model tests", '',
              f"{time.strftime('%Y-%m-%d')}; {info}; `python benchmarks/test_margins.py --seeds {' '.join(map(str, a.seeds))} "
              f"--capabilities {' '.join(a.capabilities)}`; " + (f"{len(df)} runs, of which {len(rows)} failed run(s) re-run now (`--rerun-failed`, {time.time() - t0:.0f} s)."
              if a.rerun_failed else f"{len(df)} runs in {time.time() - t0:.0f} s.") + " Each run is one process with one thread.", '',
              'Float paths (ATen\'s capability as it reports it): ' + ', '.join(f'{k} -> {v}' for k, v in
                                                                 df.groupby('asked').capability.first().items()) + '.', '',
              '| quantity | test threshold | min | median | max | worst margin | runs failing |', '|---|---|---|---|---|---|---|']
    for k, (t, side) in th.items():
        v = df[k].astype(float) if k in df else pd.Series([np.nan] * len(df))
        worst = (v.min() - t) if side == 'above' else (t - v.max())
        fail = int((~(v > t)).sum() if side == 'above' else (~(v < t)).sum())   # a run that failed before measuring counts too
        lines.append(f"| {k} | {'>' if side == 'above' else '<'} {t:g} | {v.min():.4g} | {v.median():.4g} | {v.max():.4g} | "
                     f"{worst:+.4g} | {fail} of {len(v)} |")
    lines += ['', 'The draft pixel differences come from PIL and libjpeg alone (the same on every float path); the draft-decoded image '
              'is resized to the full decode\'s grid where DCT scaling made it one pixel larger.']
    if 'error' in df and df.error.notna().any():
        lines += ['', 'Runs that failed before measuring:', ''] + [f"- {r.asked} seed {r.seed}: {r.error}" for r in df[df.error.notna()].itertuples()]
    out.with_suffix('.md').write_text('\n'.join(lines) + '\n')
    print('\n'.join(lines))


if __name__ == '__main__':
    main()
