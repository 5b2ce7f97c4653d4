"""Training-step time of the SAR `attention` autoencoder with medrecipes' fast kernels against the same model on the
plain-PyTorch reference kernels (SSIM in the loss, CBAM in every block).

One step = forward, the recipe's loss (0.7 MSE + 0.3 (1 - SSIM)), backward, gradient clipping and an Adam step, on a
fixed batch. The backend is switched in-process with `medrecipes.kernels.use_backend` (the automatic choice: C++ on
CPU / Triton on CUDA; `torch`: the reference); the two are timed in turn within every repeat and the medians reported. CPU: batch 16 of 1x128x128
(base_channels 32); CUDA (when present): batch 32 of 1x256x256. Rows go to `benchmarks/results/sar_step.csv` with
the machine, versions, date, thread count and allocator.

    python benchmarks/sar_step.py [--threads 2] [--repeats 10] [--no-cuda] [--no-cpu]
"""
import argparse, os, sys

if __name__ == '__main__':
    _t = next((sys.argv[i + 1] for i, a in enumerate(sys.argv[:-1]) if a == '--threads'), '2')
    os.environ['OMP_NUM_THREADS'] = _t

import csv, datetime, platform, statistics, time
from pathlib import Path
import torch
from ssim import machine, versions


def run(device, bs, size, repeats, threads, out, base_channels=32):
    from medrecipes.models.sar import sar_model
    from medrecipes.sar import SarLoss
    import contextlib
    from medrecipes.kernels import ssim_backend, use_backend
    sync = torch.cuda.synchronize if device == 'cuda' else (lambda: None)
    torch.manual_seed(0)
    model = sar_model('attention', base_channels=base_channels).to(device).train()
    opt = torch.optim.Adam(model.parameters(), lr=1e-4)
    loss_fn = SarLoss()
    x = torch.rand(bs, 1, size, size, generator=torch.Generator().manual_seed(0)).to(device)
    def step():
        opt.zero_grad(set_to_none=True)
        loss = loss_fn(model(x), x); loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0); opt.step()
    backends = {'fast': None, 'reference': 'torch'}
    def use(b): return contextlib.nullcontext() if b is None else use_backend(b)
    times = {k: [] for k in backends}
    for k, b in backends.items():
        with use(b): step(); step()   # warm-up
    for _ in range(repeats):
        for k, b in backends.items():
            with use(b): sync(); t0 = time.perf_counter(); step(); sync(); times[k].append(time.perf_counter() - t0)
    fast_name = ssim_backend(x)
    med = {k: 1e3 * statistics.median(v) for k, v in times.items()}
    row = dict(date=datetime.datetime.now().isoformat(timespec='seconds'), machine=machine(), **versions(), device=device,
               threads=threads if device == 'cpu' else '', allocator=os.environ.get('LD_PRELOAD') or 'glibc malloc',
               batch=f"{bs}x1x{size}x{size}", base_channels=base_channels, fast_backend=fast_name,
               fast_step_ms=round(med['fast'], 2), reference_step_ms=round(med['reference'], 2),
               speedup=round(med['reference'] / med['fast'], 2), repeats=repeats)
    print(f"{device} attention step {row['batch']}: fast ({fast_name}) {med['fast']:.1f} ms, reference {med['reference']:.1f} ms, "
          f"{row['speedup']}x")
    out = Path(out); new = not out.exists(); out.parent.mkdir(parents=True, exist_ok=True)
    with open(out, 'a', newline='') as f:
        w = csv.DictWriter(f, fieldnames=list(row))
        if new: w.writeheader()
        w.writerow(row)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    ap.add_argument('--threads', type=int, default=2); ap.add_argument('--repeats', type=int, default=10)
    ap.add_argument('--no-cuda', action='store_true'); ap.add_argument('--no-cpu', action='store_true')
    ap.add_argument('--out', default=str(Path(__file__).parent/'results'/'sar_step.csv'))
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    if not a.no_cpu: run('cpu', 16, 128, a.repeats, a.threads, a.out)
    if not a.no_cuda and torch.cuda.is_available(): run('cuda', 32, 256, a.repeats, a.threads, a.out)


if __name__ == '__main__':
    main()
