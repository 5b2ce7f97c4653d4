"""Training-step time on CPU of fp32 against bf16 autocast, for the image-folder recipe's default model.

One training step is what the recipe does per batch: forward under `torch.autocast('cpu', bfloat16)` (or none for fp32),
class-weighted cross-entropy on float32 logits, backward, gradient clipping at norm 1, AdamW step, zero_grad. Both modes
start from the same weights and see the same random batch; they alternate every `--steps` steps so that machine drift hits
both alike. Each step is timed on its own; the fastest step of each mode (`*_min_ms`, the least disturbed by other work on
a shared machine) and the median (`*_ms`) are reported, with the 1-minute load average before and after the run. `--isa` caps the instruction set oneDNN may use (its
`ONEDNN_MAX_CPU_ISA`, e.g. AVX512_CORE: no native bf16 instructions; AVX2), to see what a CPU without native bf16 gets.
The recipe's CPU default for `precision='auto'` (`medrecipes.folder.CPU_AUTO_PRECISION`) is set from these rows.
Results are appended to `benchmarks/results/folder_precision.csv`.

    python benchmarks/folder_precision.py [--arch resnet18] [--size 32] [--bs 64] [--steps 2] [--rounds 10] [--threads 2] [--isa AVX512_CORE] [--fp16]
"""
import argparse, csv, datetime, os, platform, statistics, time
from pathlib import Path


from _common import machine


def main():
    ap = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    ap.add_argument('--arch', default='resnet18'); ap.add_argument('--size', type=int, default=32)
    ap.add_argument('--bs', type=int, default=64); ap.add_argument('--classes', type=int, default=10)
    ap.add_argument('--steps', type=int, default=2, help='timed steps per mode and round')
    ap.add_argument('--rounds', type=int, default=10); ap.add_argument('--threads', type=int, default=2)
    ap.add_argument('--isa', default=None, help="oneDNN's ONEDNN_MAX_CPU_ISA (default: all the CPU has)")
    ap.add_argument('--fp16', action='store_true', help='also time fp16 autocast (slow on most CPUs)')
    ap.add_argument('--out', default=str(Path(__file__).parent/'results'/'folder_precision.csv'))
    a = ap.parse_args()
    if a.isa: os.environ['ONEDNN_MAX_CPU_ISA'] = a.isa   # read when oneDNN first runs: set before importing torch
    import torch, timm, fastai
    import torch.nn.functional as F
    from medrecipes.classify import create_classifier
    from medrecipes.folder import cpu_bf16_native
    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    model = create_classifier(a.arch, a.classes, pretrained=False)
    init = {k: v.clone() for k, v in model.state_dict().items()}
    x = torch.randn(a.bs, 3, a.size, a.size); y = torch.randint(0, a.classes, (a.bs,))
    w = torch.rand(a.classes) + 0.5
    modes = {'fp32': None, 'bf16': torch.bfloat16, **({'fp16': torch.float16} if a.fp16 else {})}
    state = {}
    for m in modes:
        model.load_state_dict(init)
        state[m] = (dict(init), torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.01))

    def steps(mode, n):
        dtype = modes[mode]
        opt = state[mode][1]
        model.load_state_dict(state[mode][0]); model.train()
        losses, dts = [], []
        for _ in range(n):
            t0 = time.perf_counter()
            with torch.autocast('cpu', dtype=dtype or torch.bfloat16, enabled=dtype is not None):
                out = model(x)
            loss = F.cross_entropy(out.float(), y, weight=w)
            loss.backward(); torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0); opt.step(); opt.zero_grad()
            losses.append(float(loss)); dts.append(time.perf_counter() - t0)
        state[mode] = ({k: v.clone() for k, v in model.state_dict().items()}, opt)
        return dts, losses

    # the optimizers hold references to the model's parameters, which load_state_dict updates in place: one model serves all
    load0 = os.getloadavg()[0]
    for m in modes: steps(m, 2)  # warm-up (oneDNN primitive creation)
    times = {m: [] for m in modes}; last = {}
    for r in range(a.rounds):
        for m in (modes if r % 2 == 0 else list(modes)[::-1]):
            dts, losses = steps(m, a.steps); times[m] += dts; last[m] = losses[-1]
    med = {m: statistics.median(v) for m, v in times.items()}
    best = {m: min(v) for m, v in times.items()}
    for m in modes:
        if not (last[m] == last[m] and abs(last[m]) < 1e4): raise RuntimeError(f"{m}: loss is not finite ({last[m]})")
    row = dict(date=datetime.datetime.now().isoformat(timespec='seconds'), machine=machine(), python=platform.python_version(),
               torch=torch.__version__, timm=timm.__version__, fastai=fastai.__version__, threads=a.threads,
               allocator=os.environ.get('LD_PRELOAD') or 'glibc malloc', cpu_native_bf16=cpu_bf16_native(),
               onednn_max_isa=os.environ.get('ONEDNN_MAX_CPU_ISA', 'default'), arch=a.arch, size=a.size, bs=a.bs,
               steps=a.steps, rounds=a.rounds, load_before=round(load0, 2), load_after=round(os.getloadavg()[0], 2),
               fp32_min_ms=round(1e3 * best['fp32'], 1), bf16_min_ms=round(1e3 * best['bf16'], 1),
               fp32_ms=round(1e3 * med['fp32'], 1), bf16_ms=round(1e3 * med['bf16'], 1),
               fp16_min_ms=round(1e3 * best['fp16'], 1) if 'fp16' in best else '', fp16_ms=round(1e3 * med['fp16'], 1) if 'fp16' in med else '',
               bf16_speedup_min=round(best['fp32'] / best['bf16'], 3), bf16_speedup_median=round(med['fp32'] / med['bf16'], 3))
    out = Path(a.out); new = not out.exists(); out.parent.mkdir(parents=True, exist_ok=True)
    with open(out, 'a', newline='') as f:
        wr = csv.DictWriter(f, fieldnames=list(row))
        if new: wr.writeheader()
        wr.writerow(row)
    print(', '.join(f'{k}={v}' for k, v in row.items()))


if __name__ == '__main__': main()
