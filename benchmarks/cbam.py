"""Speed and peak memory of medrecipes' CBAM against timm's CbamModule, training mode.

CPU: 16x64x64x64 float32, medrecipes' C++ backend against timm eager, contiguous and channels-last inputs.
CUDA (when a GPU is present): 32x64x128x128, medrecipes' Triton backend against timm eager and torch.compile(timm),
float32 and bfloat16.
Both modules hold the same weights and run in training mode (batch statistics, running statistics updated). Timed:
forward (autograd recording, as in training), backward alone (of a forward run untimed), forward+backward. The
implementations are timed in turn within each repeat, so machine load hits them alike; the median and the minimum
are reported (on a shared machine the minimum is the better estimate of the unloaded time).
Peak memory: the extra memory one forward+backward needs beyond the input and its incoming gradient (CPU: peak RSS of
a fresh process after a warm-up on a small input, from /proc/self/status VmHWM reset before the step; CUDA: `torch.cuda.max_memory_allocated`).
Rows are appended to `benchmarks/results/cbam.csv`.

    python benchmarks/cbam.py [--threads 2] [--repeats 30] [--no-cuda] [--no-cpu]
"""
import argparse, os, sys

if __name__ == '__main__':  # OpenMP reads the thread count when the runtime starts: set it before torch loads
    _threads = next((sys.argv[i + 1] for i, a in enumerate(sys.argv[:-1]) if a == '--threads'), '2')
    os.environ['OMP_NUM_THREADS'] = _threads

import csv, datetime, json, platform, statistics, subprocess, time
from pathlib import Path
import torch


from _common import machine


def make_pair(C, device, dtype=torch.float32):
    "timm's CbamModule and medrecipes' CBAM with the same weights, in training mode."
    from timm.layers.cbam import CbamModule
    from medrecipes.kernels import CBAM
    torch.manual_seed(0)
    t = CbamModule(C).to(device).train()
    m = CBAM(C).to(device).train()
    m.load_state_dict(t.state_dict())
    return t, m


def make_input(shape, device, dtype, layout):
    g = torch.Generator(device='cpu').manual_seed(0)
    x = torch.randn(shape, generator=g).to(device=device, dtype=dtype)
    gy = torch.randn(shape, generator=g).to(device=device, dtype=dtype)
    if layout == 'channels_last':
        x, gy = x.contiguous(memory_format=torch.channels_last), gy.contiguous(memory_format=torch.channels_last)
    return x.requires_grad_(), gy


def timed(fn, sync):
    sync(); t0 = time.perf_counter(); r = fn(); sync(); return time.perf_counter() - t0, r


def bench(impls, x, gy, repeats, sync):
    "Median ms of forward, backward and forward+backward of each implementation, timed in turn in every repeat."
    res = {n: dict(fwd=[], bwd=[], fwdbwd=[]) for n in impls}
    def fb(f): y = f(x); y.backward(gy)
    for f in impls.values():  # warm-up (compilation, allocator)
        for _ in range(3): fb(f); x.grad = None
    for _ in range(repeats):
        for n, f in impls.items():
            t, y = timed(lambda: f(x), sync); res[n]['fwd'].append(t)
            t, _ = timed(lambda: y.backward(gy), sync); res[n]['bwd'].append(t); x.grad = None; del y
            t, _ = timed(lambda: fb(f), sync); res[n]['fwdbwd'].append(t); x.grad = None
    return {n: {**{k: 1e3 * statistics.median(v) for k, v in r.items()}, **{k + '_min': 1e3 * min(v) for k, v in r.items()}}
            for n, r in res.items()}


def _status_mb(key):
    with open('/proc/self/status') as f: return next(int(l.split()[1]) for l in f if l.startswith(key + ':')) / 1024


def cpu_peak_child(impl, shape, layout):
    "Run in a fresh process: extra peak RSS (MiB) of one training forward+backward (Linux: VmHWM reset first)."
    t, m = make_pair(shape[1], 'cpu')
    f = t if impl == 'timm' else m
    xs, gs = make_input((2, shape[1], 8, 8), 'cpu', torch.float32, layout)
    f(xs).backward(gs)  # load the code paths (their pages count as RSS) on a small input first
    x, gy = make_input(shape, 'cpu', torch.float32, layout)
    with open('/proc/self/clear_refs', 'w') as fh: fh.write('5')  # reset the peak-RSS mark to the current RSS
    base = _status_mb('VmRSS')
    f(x).backward(gy)
    print(json.dumps(dict(peak_mb=_status_mb('VmHWM') - base)))


def cpu_peak(impl, shape, layout, threads):
    env = dict(os.environ, OMP_NUM_THREADS=str(threads))
    r = subprocess.run([sys.executable, __file__, '--peak-child', impl, ','.join(map(str, shape)), layout],
                       env=env, capture_output=True, text=True, timeout=600)
    if r.returncode: raise RuntimeError(f"peak-memory child failed:\n{r.stderr[-3000:]}")
    return json.loads(r.stdout.strip().splitlines()[-1])['peak_mb']


def cuda_peak(f, x, gy):
    torch.cuda.synchronize(); torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    f(x).backward(gy); x.grad = None
    torch.cuda.synchronize()
    return (torch.cuda.max_memory_allocated() - base) / 2**20


def times(v, timm, nd):
    "The CSV columns of one implementation's timings (ms) and its forward+backward speed-up over timm eager."
    cols = {f'{k}_ms': round(v[k], nd) for k in ('fwd', 'bwd', 'fwdbwd', 'fwd_min', 'bwd_min', 'fwdbwd_min')}
    return dict(cols, speedup_fwdbwd_vs_timm=round(timm['fwdbwd'] / v['fwdbwd'], 2),
                speedup_fwdbwd_min_vs_timm=round(timm['fwdbwd_min'] / v['fwdbwd_min'], 2))


def versions():
    import timm
    try: import triton; tv = triton.__version__
    except ImportError: tv = ''
    return dict(python=platform.python_version(), torch=torch.__version__, timm=timm.__version__, triton=tv)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    ap.add_argument('--threads', type=int, default=2); ap.add_argument('--repeats', type=int, default=30)
    ap.add_argument('--cpu-shape', default='16,64,64,64'); ap.add_argument('--cuda-shape', default='32,64,128,128')
    ap.add_argument('--no-cpu', action='store_true'); ap.add_argument('--no-cuda', action='store_true')
    ap.add_argument('--out', default=str(Path(__file__).parent/'results'/'cbam.csv'))
    a = ap.parse_args()
    from medrecipes.kernels import cbam_backend
    common = dict(date=datetime.datetime.now().isoformat(timespec='seconds'), machine=machine(), **versions(),
                  allocator=os.environ.get('LD_PRELOAD') or 'glibc malloc')
    rows = []
    if not a.no_cpu:
        torch.set_num_threads(a.threads)
        shape = tuple(map(int, a.cpu_shape.split(',')))
        load = os.getloadavg()[0]
        for layout in ('contiguous', 'channels_last'):
            t, m = make_pair(shape[1], 'cpu')
            x, gy = make_input(shape, 'cpu', torch.float32, layout)
            be = cbam_backend(x)
            r = bench({'timm eager': t, f'medrecipes {be}': m}, x, gy, a.repeats, lambda: None)
            peaks = {'timm eager': cpu_peak('timm', shape, layout, a.threads), f'medrecipes {be}': cpu_peak('medrecipes', shape, layout, a.threads)}
            for n, v in r.items():
                rows.append(dict(common, device='cpu', threads=a.threads, load_avg_1min=round(load, 2), shape='x'.join(map(str, shape)),
                                 dtype='float32', layout=layout, impl=n, **times(v, r['timm eager'], 3), peak_mb=round(peaks[n], 1)))
    if not a.no_cuda and torch.cuda.is_available():
        shape = tuple(map(int, a.cuda_shape.split(',')))
        sync = torch.cuda.synchronize
        for dtype in (torch.float32, torch.bfloat16):
            for layout in ('contiguous', 'channels_last'):
                t, m = make_pair(shape[1], 'cuda')
                x, gy = make_input(shape, 'cuda', dtype, layout)
                be = cbam_backend(x)
                tc = torch.compile(t)
                # timm takes the input's dtype: its parameters follow it (bfloat16 runs as a bfloat16 module)
                if dtype != torch.float32: t.to(dtype)
                impls = {'timm eager': t, 'timm torch.compile': tc, f'medrecipes {be}': m}
                r = bench(impls, x, gy, a.repeats, sync)
                for n, f in impls.items():
                    v = r[n]
                    rows.append(dict(common, device=torch.cuda.get_device_name(), threads='', load_avg_1min='',
                                     shape='x'.join(map(str, shape)), dtype=str(dtype).replace('torch.', ''), layout=layout,
                                     impl=n, **times(v, r['timm eager'], 4), peak_mb=round(cuda_peak(f, x, gy), 1)))
    out = Path(a.out); new = not out.exists(); out.parent.mkdir(parents=True, exist_ok=True)
    fields = ['date', 'machine', 'device', 'python', 'torch', 'timm', 'triton', 'threads', 'allocator', 'load_avg_1min',
              'shape', 'dtype', 'layout', 'impl', 'fwd_ms', 'bwd_ms', 'fwdbwd_ms', 'fwd_min_ms', 'bwd_min_ms', 'fwdbwd_min_ms',
              'peak_mb', 'speedup_fwdbwd_vs_timm', 'speedup_fwdbwd_min_vs_timm']
    with open(out, 'a', newline='') as f:
        w = csv.DictWriter(f, fieldnames=fields)
        if new: w.writeheader()
        for row in rows: w.writerow(row)
    for row in rows:
        print(f"{row['device']:>10} {row['dtype']:>8} {row['layout']:>13} {row['impl']:>20}: median (min) ms: "
              f"fwd {row['fwd_ms']:.3f} ({row['fwd_min_ms']:.3f})  bwd {row['bwd_ms']:.3f} ({row['bwd_min_ms']:.3f})  "
              f"fwd+bwd {row['fwdbwd_ms']:.3f} ({row['fwdbwd_min_ms']:.3f})  peak {row['peak_mb']:.1f} MiB  "
              f"speed-up x{row['speedup_fwdbwd_vs_timm']} (x{row['speedup_fwdbwd_min_vs_timm']})")
    print(f"appended {len(rows)} rows to {out}")


if __name__ == '__main__':
    if len(sys.argv) > 1 and sys.argv[1] == '--peak-child':
        cpu_peak_child(sys.argv[2], tuple(map(int, sys.argv[3].split(','))), sys.argv[4])
    else: main()
