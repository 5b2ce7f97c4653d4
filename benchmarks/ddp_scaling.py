"""Data-parallel scaling of a recipe: training throughput with 1, 2, ... processes (torchrun, DistributedDataParallel).

The script launches itself with `python -m torch.distributed.run --nproc_per_node N` for each N of `--procs`; each
worker builds the recipe's data and learner exactly as `train_sar` / `train_xray` do and fits inside
`medrecipes.distributed.distributed` (gloo on CPU, NCCL on CUDA: one process per GPU). Only the training phase of each
epoch is timed (validation, logs and checkpoints are not), the first epoch is a warm-up, and the throughput is the
training set size over the median epoch time, in samples per second for the whole job. By default the batch per process
is fixed (`--bs`: the global batch grows with N, as when one adds GPUs); `--strong` keeps the global batch at `--bs`
instead. Rows are appended to `benchmarks/results/ddp_scaling.csv` with the speed-up and the efficiency against the
1-process row of the same invocation.

    python benchmarks/ddp_scaling.py                          # CPU: 1 and 2 processes, 1 thread each
    python benchmarks/ddp_scaling.py --device cuda --procs 1 2 4 8
    python benchmarks/ddp_scaling.py --recipe xray --arch resnet18 --size 128
"""
import argparse, csv, datetime, json, os, platform, socket, statistics, subprocess, sys, tempfile, time
from pathlib import Path


from _common import machine


def _args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    ap.add_argument('--recipe', choices=('sar', 'xray'), default='sar')
    ap.add_argument('--procs', type=int, nargs='+', default=None, help='process counts (default: 1 2; on CUDA 1 2 4 ... up to the GPUs)')
    ap.add_argument('--device', default='cpu', help="'cpu' (gloo) or 'cuda' (NCCL, one GPU per process)")
    ap.add_argument('--threads', type=int, default=1, help='torch threads per process')
    ap.add_argument('--bs', type=int, default=16, help='batch per process (with --strong: the global batch)')
    ap.add_argument('--strong', action='store_true', help='keep the global batch fixed at --bs (bs per process = bs / N)')
    ap.add_argument('--epochs', type=int, default=4, help='epochs per run; the first is a warm-up')
    ap.add_argument('--images', type=int, default=None, help='training images (sar default 16, xray 240)')
    ap.add_argument('--size', type=int, default=None, help='sar: patch (default 64); xray: image side (default 64)')
    ap.add_argument('--variant', default='baseline', help='sar variant'); ap.add_argument('--base-channels', type=int, default=16)
    ap.add_argument('--arch', default='resnet10t', help='xray: timm architecture')
    ap.add_argument('--sync-bn', action='store_true')
    ap.add_argument('--out', default=str(Path(__file__).parent/'results'/'ddp_scaling.csv'))
    ap.add_argument('--worker', default=None, help=argparse.SUPPRESS)   # internal: data folder, result file
    return ap.parse_args(argv)


def worker(a):
    import torch
    torch.set_num_threads(a.threads)
    from fastai.callback.core import Callback
    from medrecipes.core import set_seed
    from medrecipes.distributed import init_distributed, distributed, is_rank0, world_size
    data, result = a.worker.split(',')
    init_distributed(a.device)
    ws = world_size()
    bs = a.bs // ws if a.strong else a.bs
    if bs < 1: raise SystemExit(f"--strong --bs {a.bs} is smaller than {ws} processes")
    set_seed(0)
    out = Path(tempfile.mkdtemp())
    if a.recipe == 'sar':
        from medrecipes.data.sar import SarDataLoaders
        from medrecipes.sar import sar_learner
        dls = SarDataLoaders.from_folder(data, patch=a.size or 64, bs=bs, patches_per_image=8, seed=0, device=a.device)
        learn = sar_learner(dls, variant=a.variant, base_channels=a.base_channels, out_dir=out, patience=None, plateau=False, hist_every=0)
    else:
        from medrecipes.xray import XrayDataLoaders, xray_learner
        dls = XrayDataLoaders.from_btxrd(data, split='stratified', size=a.size or 64, bs=bs, num_workers=0, seed=0, device=a.device)
        learn = xray_learner(dls, arch=a.arch, pretrained=False, out_dir=out, patience=None)
    n_train = len(dls.train.dataset)

    class TrainTimer(Callback):
        order = -100
        def before_fit(self): self.times = []
        def before_train(self):
            if torch.cuda.is_available() and a.device != 'cpu': torch.cuda.synchronize()
            self.t0 = time.perf_counter()
        def after_train(self):
            if torch.cuda.is_available() and a.device != 'cpu': torch.cuda.synchronize()
            self.times.append(time.perf_counter() - self.t0)

    timer = TrainTimer(); learn.add_cb(timer)
    with distributed(learn, sync_bn=a.sync_bn), learn.no_bar(), learn.no_logging():
        learn.fit(a.epochs, 1e-4)
    if is_rank0():
        med = statistics.median(timer.times[1:] or timer.times)
        Path(result).write_text(json.dumps(dict(world_size=ws, bs_per_proc=bs, n_train=n_train, epoch_s=med,
                                                samples_s=n_train / med, times=timer.times)))


def _free_port():
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0)); return s.getsockname()[1]


def main():
    a = _args()
    if a.worker: return worker(a)
    import torch, fastai, accelerate
    from medrecipes.synth import make_sar, make_btxrd
    cuda = a.device.startswith('cuda')
    if cuda and not torch.cuda.is_available(): raise SystemExit("--device cuda asked for but CUDA is not available")
    n_gpu = torch.cuda.device_count() if cuda else 0
    procs = a.procs or ([p for p in (1, 2, 4, 8, 16) if p <= max(n_gpu, 1)] if cuda else [1, 2])
    if cuda and max(procs) > n_gpu: raise SystemExit(f"{max(procs)} processes need {max(procs)} GPUs, this machine has {n_gpu}")
    tmp = Path(tempfile.mkdtemp())
    data = (make_sar(tmp/'sar', n_train=a.images or 16, n_valid=2, size=max(128, 2 * (a.size or 64)), seed=0) if a.recipe == 'sar'
            else make_btxrd(tmp/'btxrd', n=a.images or 240, seed=0))
    argv = [a for a in sys.argv[1:]]
    env = {k: v for k, v in os.environ.items() if k not in ('RANK', 'WORLD_SIZE', 'LOCAL_RANK')}
    env.update(OMP_NUM_THREADS=str(a.threads), PYTHONWARNINGS='ignore')
    rows, base = [], None
    for p in procs:
        res = tmp/f'result_{p}.json'
        load = os.getloadavg()[0]   # other work on the machine before this run (timings on a shared machine vary)
        cmd = [sys.executable, '-m', 'torch.distributed.run', '--nproc_per_node', str(p), '--master_addr', '127.0.0.1',
               '--master_port', str(_free_port()), __file__, *argv, '--worker', f'{data},{res}']
        r = subprocess.run(cmd, env=env, capture_output=True, text=True)
        if r.returncode != 0: raise SystemExit(f"{p} process(es) failed:\n{r.stderr[-3000:]}")
        out = json.loads(res.read_text())
        base = base or out['samples_s']
        dev = torch.cuda.get_device_name(0) if cuda else 'cpu'
        row = dict(date=datetime.datetime.now().isoformat(timespec='seconds'), machine=machine(), device=dev,
                   backend='nccl' if cuda else 'gloo', python=platform.python_version(), torch=torch.__version__,
                   fastai=fastai.__version__, accelerate=accelerate.__version__, procs=p, threads_per_proc=a.threads,
                   allocator=os.environ.get('LD_PRELOAD') or 'glibc malloc', load_avg_1min=round(load, 2), recipe=a.recipe,
                   model=(f'{a.variant}/c{a.base_channels}' if a.recipe == 'sar' else a.arch), size=a.size or 64,
                   scaling='strong' if a.strong else 'weak', bs_per_proc=out['bs_per_proc'], global_bs=out['bs_per_proc'] * p,
                   sync_bn=a.sync_bn, n_train=out['n_train'], epochs=a.epochs, epoch_s=round(out['epoch_s'], 3),
                   samples_s=round(out['samples_s'], 2), speedup=round(out['samples_s'] / base, 3),
                   efficiency=round(out['samples_s'] / base / p, 3))
        rows.append(row); print(json.dumps(row))
    path = Path(a.out); new = not path.exists(); path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, 'a', newline='') as f:
        wr = csv.DictWriter(f, fieldnames=list(rows[0]))
        if new: wr.writeheader()
        wr.writerows(rows)


if __name__ == '__main__': main()
