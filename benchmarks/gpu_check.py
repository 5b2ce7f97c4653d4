"""One prepared command for a GPU machine: install the carried wheels, run the CUDA kernel tests, time SSIM, CBAM and
the SAR attention training step against their peers, print one compact table and write CSV rows to `$OUT`.

    python benchmarks/gpu_check.py [--wheels benchmarks/wheels] [--repeats 20]   # on the GPU machine (`make gpu-check`)
    python benchmarks/gpu_check.py --dry-run      # on CPU: tiny shapes, Triton's interpreter (`make test` runs this)
    python benchmarks/gpu_check.py --steps ssim,cbam                            # a rerun of some steps only

Steps (each reports and the script goes on when one fails; the exit status is 1 if any failed):
1. wheels: `pip install --no-index --find-links WHEELS` for what the machine lacks (pytest, pytorch-msssim, fussim);
2. tests: `pytest -m cuda` on the Triton kernel tests (TF32 off, so the cuDNN references are float32);
3. SSIM forward+backward (gradient for x), 32x1x256x256 and 8x3x512x512: medrecipes Triton, pytorch-msssim, fussim,
   torchmetrics' SSIM, `torch.compile` of the reference;
4. CBAM training-mode forward+backward and peak extra memory, 32x64x128x128 and 8x256x56x56: medrecipes Triton, timm's
   `CbamModule` eager and under `torch.compile`;
5. the SAR `attention` training step (0.7 MSE + 0.3 (1 - SSIM), backward, Adam) on the fused kernels and on the reference.
Timings: `triton.testing.do_bench` medians (ms) on CUDA, rotating 4 input pairs so the L2 cache is not warm; the dry run
times one call with `time.perf_counter` (its numbers mean nothing). Peers that are not installed are listed as missing.
The dry run skips steps 1 and 2 and uses `use_backend('triton')` on CPU tensors and `backend='eager'` for compile.
"""
import argparse, os, sys

DRY = '--dry-run' in sys.argv
if DRY: os.environ['TRITON_INTERPRET'] = '1'  # before triton is imported: its kernels then run on CPU tensors

import csv, datetime, importlib, platform, subprocess, time, traceback
from pathlib import Path
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from medrecipes.kernels import ssim, ssim_reference, CBAM, use_backend  # noqa: E402

WHEEL_PKGS = {'pytest': 'pytest', 'pytorch_msssim': 'pytorch-msssim', 'fussim': 'fussim'}


def device_name(dev): return torch.cuda.get_device_name() if dev == 'cuda' else f'cpu ({platform.processor() or "cpu"}, dry run)'


def install_wheels(wheels):
    missing = [pkg for mod, pkg in WHEEL_PKGS.items() if importlib.util.find_spec(mod) is None]
    if not missing: return 'all present'
    if not Path(wheels).is_dir(): raise FileNotFoundError(f"{wheels} does not exist: run `make gpu-wheels` and carry it along")
    subprocess.run([sys.executable, '-m', 'pip', 'install', '--quiet', '--no-index', '--find-links', str(wheels), *missing], check=True)
    importlib.invalidate_caches()
    return 'installed ' + ', '.join(missing)


def run_tests():
    code = "import torch; torch.backends.cuda.matmul.allow_tf32 = False; torch.backends.cudnn.allow_tf32 = False\n" \
           "import sys, pytest; sys.exit(pytest.main(['-q', '-m', 'cuda', '-p', 'no:cacheprovider', 'tests/kernels/ssim/test_triton.py', 'tests/kernels/cbam/test_triton.py']))"
    r = subprocess.run([sys.executable, '-c', code], cwd=ROOT, capture_output=True, text=True, timeout=300,
                       env=dict(os.environ, PYTHONPATH=str(ROOT)))
    tail = (r.stdout + r.stderr).strip().splitlines()
    if r.returncode: raise RuntimeError('pytest -m cuda failed:\n' + '\n'.join(tail[-40:]))
    return tail[-1] if tail else 'ok'


def timer(dev):
    "ms of one call of fn: do_bench's median on CUDA; one timed call in the dry run."
    if dev == 'cuda':
        from triton.testing import do_bench
        return lambda fn: do_bench(fn, warmup=5, rep=20, return_mode='median')
    def once(fn):
        fn(); t0 = time.perf_counter(); fn(); return 1e3 * (time.perf_counter() - t0)
    return once


def peak_mb(fn, dev):
    if dev != 'cuda': return float('nan')
    torch.cuda.synchronize(); torch.cuda.reset_peak_memory_stats(); base = torch.cuda.memory_allocated()
    fn(); torch.cuda.synchronize()
    return (torch.cuda.max_memory_allocated() - base) / 2**20


def fwdbwd(f, xs, ys, extra=()):
    "A callable running forward+backward of f on the next of the rotating input pairs."
    i = [0]
    def step():
        x, y = xs[i[0] % len(xs)], ys[i[0] % len(ys)]; i[0] += 1
        f(x, y).backward(); x.grad = None
        for p in extra: p.grad = None
    return step


def ssim_impls(dev):
    out, missing = {}, []
    out['medrecipes triton'] = lambda x, y: ssim(x, y)
    try:
        import pytorch_msssim
        out['pytorch-msssim'] = lambda x, y: pytorch_msssim.ssim(x, y, data_range=1.0)
    except ImportError: missing.append('pytorch-msssim')
    try:
        from fussim import fused_ssim
        out['fussim'] = lambda x, y: fused_ssim(x, y, padding='valid')  # valid windows, as the others
    except Exception: missing.append('fussim')
    try:
        from torchmetrics.functional.image import structural_similarity_index_measure as tm_ssim
        out['torchmetrics'] = lambda x, y: tm_ssim(x, y, data_range=1.0)
    except Exception: missing.append('torchmetrics')
    comp = torch.compile(ssim_reference, backend='eager' if dev == 'cpu' else 'inductor')
    out['reference torch.compile'] = lambda x, y: comp(x, y).mean()
    return out, missing


def bench_ssim(dev, shapes, rows, bench):
    fns, missing = ssim_impls(dev)
    for shape in shapes:
        g = torch.Generator().manual_seed(0)
        xs = [torch.rand(shape, generator=g).to(dev).requires_grad_() for _ in range(4)]
        ys = [(x.detach() + 0.1 * torch.rand(shape, generator=g).to(dev)).clamp(0, 1) for x in xs]
        with use_backend('triton'):
            for name, f in fns.items():
                try: ms, err = bench(fwdbwd(f, xs, ys)), ''
                except Exception as e: ms, err = float('nan'), f'{type(e).__name__}: {e}'[:200]
                rows.append(dict(bench='ssim', shape='x'.join(map(str, shape)), dtype='float32', impl=name,
                                 fwdbwd_ms=ms, peak_extra_mb=float('nan'), note=err))
        rows += [dict(bench='ssim', shape='x'.join(map(str, shape)), dtype='float32', impl=n, fwdbwd_ms=float('nan'),
                      peak_extra_mb=float('nan'), note='not installed') for n in missing]


def bench_cbam(dev, shapes, dtypes, rows, bench):
    from timm.layers.cbam import CbamModule
    for shape in shapes:
        for dtype in dtypes:
            torch.manual_seed(0)
            t = CbamModule(shape[1]).to(dev).train()
            m = CBAM(shape[1]).to(dev).train(); m.load_state_dict(t.state_dict())
            t = t.to(dtype)
            tc = torch.compile(t, backend='eager' if dev == 'cpu' else 'inductor')
            g = torch.Generator().manual_seed(1)
            xs = [torch.randn(shape, generator=g).to(dev, dtype).requires_grad_() for _ in range(4)]
            gs = [torch.randn(shape, generator=g).to(dev, dtype) for _ in range(4)]
            for name, mod in (('medrecipes triton', m), ('timm eager', t), ('timm torch.compile', tc)):
                f = lambda x, gy, mod=mod: (mod(x) * gy).sum()
                step = fwdbwd(f, xs, gs, list(mod.parameters()))
                with use_backend('triton'):
                    try: ms, mb, err = bench(step), peak_mb(step, dev), ''
                    except Exception as e: ms, mb, err = float('nan'), float('nan'), f'{type(e).__name__}: {e}'[:200]
                rows.append(dict(bench='cbam', shape='x'.join(map(str, shape)), dtype=str(dtype)[6:], impl=name,
                                 fwdbwd_ms=ms, peak_extra_mb=mb, note=err))


def bench_sar(dev, batch, size, rows, bench):
    from medrecipes.models.sar import sar_model
    torch.manual_seed(0)
    model = sar_model('attention', base_channels=32 if dev == 'cuda' else 4, latent_channels=16 if dev == 'cuda' else 2).to(dev).train()
    opt = torch.optim.Adam(model.parameters(), lr=1e-4)
    x = torch.rand(batch, 1, size, size, generator=torch.Generator().manual_seed(0)).to(dev)
    def step():
        opt.zero_grad(set_to_none=True)
        out = model(x)
        loss = 0.7 * torch.nn.functional.mse_loss(out, x) + 0.3 * (1 - ssim(out, x))
        loss.backward(); torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0); opt.step()
    for name, be in (('fused (triton)', 'triton'), ('reference', 'torch')):
        with use_backend(be):
            try: ms, err = bench(step), ''
            except Exception as e: ms, err = float('nan'), f'{type(e).__name__}: {e}'[:200]
        rows.append(dict(bench='sar_step', shape=f'{batch}x1x{size}x{size}', dtype='float32', impl=name, fwdbwd_ms=ms,
                         peak_extra_mb=float('nan'), note=err))


def main():
    ap = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    ap.add_argument('--dry-run', action='store_true', help='CPU, tiny shapes, TRITON_INTERPRET=1')
    ap.add_argument('--wheels', default=str(ROOT/'benchmarks'/'wheels'))
    ap.add_argument('--out', default=os.environ.get('OUT', ''), help='folder for gpu_check.csv (default: $OUT)')
    ap.add_argument('--steps', default='wheels,tests,ssim,cbam,sar_step', help='comma-separated steps to run (a rerun can skip some)')
    a = ap.parse_args()
    dev = 'cpu' if a.dry_run else 'cuda'
    if dev == 'cuda' and not torch.cuda.is_available(): sys.exit('gpu_check: no CUDA GPU here; use --dry-run on CPU')
    torch.backends.cuda.matmul.allow_tf32 = False; torch.backends.cudnn.allow_tf32 = False
    bench, rows, status = timer(dev), [], {}
    steps = [('wheels', lambda: install_wheels(a.wheels)), ('tests', run_tests)] if not a.dry_run else []
    if a.dry_run:
        steps += [('ssim', lambda: bench_ssim(dev, [(1, 1, 16, 16)], rows, bench)),
                  ('cbam', lambda: bench_cbam(dev, [(2, 8, 6, 6)], [torch.float32], rows, bench)),
                  ('sar_step', lambda: bench_sar(dev, 1, 32, rows, bench))]
    else:
        steps += [('ssim', lambda: bench_ssim(dev, [(32, 1, 256, 256), (8, 3, 512, 512)], rows, bench)),
                  ('cbam', lambda: bench_cbam(dev, [(32, 64, 128, 128), (8, 256, 56, 56)], [torch.float32, torch.bfloat16], rows, bench)),
                  ('sar_step', lambda: bench_sar(dev, 32, 256, rows, bench))]
    want = set(a.steps.split(','))
    if want - {'wheels', 'tests', 'ssim', 'cbam', 'sar_step'}: sys.exit(f"gpu_check: unknown --steps {sorted(want)}")
    steps = [(n, f) for n, f in steps if n in want]
    t0 = time.time()
    for name, fn in steps:
        try: status[name] = f'ok: {fn() or "done"}'
        except Exception as e: status[name] = f'FAILED: {type(e).__name__}: {e}'; traceback.print_exc()
        print(f'[{time.time() - t0:6.1f} s] {name}: {status[name]}', flush=True)
    when, machine = datetime.datetime.now().isoformat(timespec='seconds'), device_name(dev)
    vers = dict(python=platform.python_version(), torch=torch.__version__,
                triton=getattr(importlib.import_module('triton'), '__version__', '') if importlib.util.find_spec('triton') else '')
    print(f"\n{machine} | torch {vers['torch']} | triton {vers['triton']}")
    print(f"{'bench':<9}{'shape':<16}{'dtype':<10}{'impl':<26}{'fwd+bwd ms':>11}{'peak MiB':>10}  note")
    for r in rows:
        print(f"{r['bench']:<9}{r['shape']:<16}{r['dtype']:<10}{r['impl']:<26}{r['fwdbwd_ms']:>11.3f}{r['peak_extra_mb']:>10.1f}  {r['note']}")
    if a.out:
        out = Path(a.out)/'gpu_check.csv'; out.parent.mkdir(parents=True, exist_ok=True); new = not out.exists()
        with open(out, 'a', newline='') as f:
            w = csv.DictWriter(f, fieldnames=['date', 'machine', 'python', 'torch', 'triton', 'dry_run', 'bench', 'shape',
                                              'dtype', 'impl', 'fwdbwd_ms', 'peak_extra_mb', 'note'])
            if new: w.writeheader()
            for r in rows: w.writerow(dict(date=when, machine=machine, **vers, dry_run=a.dry_run, **{k: (round(v, 4) if isinstance(v, float) else v) for k, v in r.items()}))
        print(f'wrote {len(rows)} rows to {out}')
    failed = [n for n, s in status.items() if s.startswith('FAILED')]
    print(f"{time.time() - t0:.0f} s; " + (f"failed: {', '.join(failed)}" if failed else 'every step ran'))
    sys.exit(1 if failed or any(r['note'] and r['note'] != 'not installed' for r in rows) else 0)


if __name__ == '__main__':
    main()
