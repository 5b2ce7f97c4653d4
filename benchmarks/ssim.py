"""Speed and peak memory of medrecipes' SSIM against pytorch-msssim and the plain-PyTorch reference.

CPU: 16x1x256x256 and 8x3x512x512 float32; medrecipes dispatches to its C++ kernel.
CUDA (when a GPU is present): 32x1x256x256 and 8x3x512x512; medrecipes dispatches to its Triton kernel, and is also
compared with `torch.compile` of the reference and with fused-ssim's CUDA kernel when it is installed (fused-ssim pads
its windows, so its value differs; only its speed is comparable).
Timed, as a loss is used (gradient with respect to the first image only): forward (autograd recording), backward alone
(of a forward run untimed), forward+backward. All implementations are timed in turn within every repeat so that machine
load hits them alike; medians are reported. Peak memory (CUDA only): the allocator's peak during one forward+backward
beyond the inputs. Rows are appended to `benchmarks/results/ssim.csv` with the machine, versions, date, thread count and
allocator (PyTorch CPU timings swing with glibc malloc's page faults; preload jemalloc or tcmalloc to compare).

    python benchmarks/ssim.py [--threads 2] [--repeats 20] [--no-cuda] [--no-cpu]
"""
import argparse, os, sys

if __name__ == '__main__':  # OpenMP reads the thread count when its runtime starts: set it before torch loads
    _t = next((sys.argv[i + 1] for i, a in enumerate(sys.argv[:-1]) if a == '--threads'), '2')
    os.environ['OMP_NUM_THREADS'] = _t

import csv, datetime, platform, statistics, time
from pathlib import Path
import torch


from _common import machine


def versions():
    v = dict(python=platform.python_version(), torch=torch.__version__)
    for m in ('triton', 'pytorch_msssim', 'fused_ssim'):
        try: v[m] = getattr(__import__(m), '__version__', 'installed')
        except Exception: v[m] = ''
    return v


def impls(device):
    import pytorch_msssim
    from medrecipes.kernels import ssim, ssim_reference, ssim_backend
    out = {'medrecipes': lambda x, y: ssim(x, y),
           'pytorch_msssim': lambda x, y: pytorch_msssim.ssim(x, y, data_range=1.0),
           'reference': lambda x, y: ssim_reference(x, y).mean()}
    if device == 'cuda':
        comp = torch.compile(ssim_reference)
        out['reference_compiled'] = lambda x, y: comp(x, y).mean()
        try:
            from fused_ssim import fused_ssim
            out['fused_ssim'] = lambda x, y: fused_ssim(x, y)
        except Exception: pass
        try:  # fussim: fused-ssim's kernels in prebuilt wheels; valid windows as the others
            from fussim import fused_ssim as fussim_ssim
            out['fussim'] = lambda x, y: fussim_ssim(x, y, padding='valid')
        except Exception: pass
        try:
            from torchmetrics.functional.image import structural_similarity_index_measure as tm_ssim
            out['torchmetrics'] = lambda x, y: tm_ssim(x, y, data_range=1.0)
        except Exception: pass
    return out


def bench(fns, x, y, repeats, sync):
    res = {n: dict(fwd=[], bwd=[], fwdbwd=[]) for n in fns}
    def t(f):
        sync(); t0 = time.perf_counter(); r = f(); sync(); return time.perf_counter() - t0, r
    for n, f in fns.items():   # warm-up (and compilation)
        for _ in range(3): f(x, y).backward(); x.grad = None
    for _ in range(repeats):
        for n, f in fns.items():
            dt, s = t(lambda: f(x, y)); res[n]['fwd'].append(dt)
            dt, _ = t(lambda: s.backward()); res[n]['bwd'].append(dt); x.grad = None
            dt, _ = t(lambda: f(x, y).backward()); res[n]['fwdbwd'].append(dt); x.grad = None
    return {n: {k: 1e3 * statistics.median(v) for k, v in d.items()} for n, d in res.items()}


def peak_mb(f, x, y, device):
    if device != 'cuda': return float('nan')
    torch.cuda.synchronize(); torch.cuda.reset_peak_memory_stats(); base = torch.cuda.memory_allocated()
    f(x, y).backward(); x.grad = None; torch.cuda.synchronize()
    return (torch.cuda.max_memory_allocated() - base) / 2**20


def run(device, shapes, repeats, threads, out):
    from medrecipes.kernels import ssim_backend
    sync = torch.cuda.synchronize if device == 'cuda' else (lambda: None)
    fns = impls(device); rows = []
    for shape in shapes:
        g = torch.Generator().manual_seed(0)
        x0 = torch.rand(shape, generator=g); y = (x0 + 0.1 * torch.rand(shape, generator=g)).clamp(0, 1).to(device)
        x = x0.to(device).requires_grad_()
        ms = bench(fns, x, y, repeats, sync)
        img_mb = x.numel() * 4 / 2**20
        for n, d in ms.items():
            row = dict(date=datetime.datetime.now().isoformat(timespec='seconds'), machine=machine(), **versions(), device=device,
                       threads=threads if device == 'cpu' else '', allocator=os.environ.get('LD_PRELOAD') or 'glibc malloc',
                       shape='x'.join(map(str, shape)), impl=n, backend=ssim_backend(x) if n == 'medrecipes' else '',
                       fwd_ms=round(d['fwd'], 3), bwd_ms=round(d['bwd'], 3), fwdbwd_ms=round(d['fwdbwd'], 3),
                       speedup_fwdbwd_vs_msssim=round(ms['pytorch_msssim']['fwdbwd'] / d['fwdbwd'], 2),
                       speedup_fwdbwd_vs_reference=round(ms['reference']['fwdbwd'] / d['fwdbwd'], 2),
                       peak_extra_mb=round(peak_mb(fns[n], x, y, device), 2), image_mb=round(img_mb, 2), repeats=repeats)
            rows.append(row)
            print(f"{device} {row['shape']:>12} {n:>18}: fwd {d['fwd']:8.2f} ms  bwd {d['bwd']:8.2f} ms  fwd+bwd {d['fwdbwd']:8.2f} ms"
                  f"  ({row['speedup_fwdbwd_vs_msssim']}x vs pytorch-msssim, {row['speedup_fwdbwd_vs_reference']}x vs reference)")
    out = Path(out); new = not out.exists(); out.parent.mkdir(parents=True, exist_ok=True)
    with open(out, 'a', newline='') as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        if new: w.writeheader()
        w.writerows(rows)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    ap.add_argument('--threads', type=int, default=2); ap.add_argument('--repeats', type=int, default=20)
    ap.add_argument('--no-cuda', action='store_true'); ap.add_argument('--no-cpu', action='store_true')
    ap.add_argument('--out', default=str(Path(__file__).parent/'results'/'ssim.csv'))
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    if not a.no_cpu: run('cpu', [(16, 1, 256, 256), (8, 3, 512, 512)], a.repeats, a.threads, a.out)
    if not a.no_cuda and torch.cuda.is_available(): run('cuda', [(32, 1, 256, 256), (8, 3, 512, 512)], a.repeats, a.threads, a.out)


if __name__ == '__main__':
    main()
