"""Training throughput of the X-ray recipe against a plain PyTorch loop, on CPU.

Both sides train the same timm model (same initial weights) on the same generated BTXRD-format data, through the same
fastai DataLoader (same batch size, same augmentations), with the same class-weighted cross-entropy and AdamW.
The recipe runs `learn.fit` with all its callbacks (loss mode, recorder, per-class recall, training log and curves,
collapse warning, checkpoints, early stopping); only the training phase of each epoch is timed on both sides.
Epochs alternate between the two so that machine drift hits both alike. Results are appended to
`benchmarks/results/xray_throughput.csv`.

    python benchmarks/xray_throughput.py [--n 240] [--size 128] [--bs 32] [--epochs 3] [--threads 2]
"""
import argparse, csv, datetime, os, platform, statistics, sys, tempfile, time
from pathlib import Path
import torch, torch.nn.functional as F


from _common import machine


def main():
    ap = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    ap.add_argument('--n', type=int, default=240); ap.add_argument('--size', type=int, default=128)
    ap.add_argument('--bs', type=int, default=32); ap.add_argument('--epochs', type=int, default=3)
    ap.add_argument('--threads', type=int, default=2); ap.add_argument('--arch', default='efficientnet_b0')
    ap.add_argument('--out', default=str(Path(__file__).parent/'results'/'xray_throughput.csv'))
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    import fastai, timm
    from fastai.callback.core import Callback
    from medrecipes.synth import make_btxrd
    from medrecipes.xray import XrayDataLoaders, xray_learner
    tmp = Path(tempfile.mkdtemp())
    src = make_btxrd(tmp/'btxrd', n=a.n, seed=0)
    dls = XrayDataLoaders.from_btxrd(src, split='stratified', size=a.size, bs=a.bs, num_workers=0)
    n_train = len(dls.train_ds)

    class TrainTimer(Callback):
        order = -100
        def before_fit(self): self.times = []
        def before_train(self): self.t0 = time.perf_counter()
        def after_train(self): self.times.append(time.perf_counter() - self.t0)

    torch.manual_seed(0)
    timer = TrainTimer()
    learn = xray_learner(dls, arch=a.arch, pretrained=False, out_dir=tmp/'run', patience=None, cbs=[timer])
    torch.manual_seed(0)
    import timm as _t
    plain = _t.create_model(a.arch, pretrained=False, num_classes=3, drop_rate=0.2)
    plain.load_state_dict(learn.model.state_dict())
    opt = torch.optim.AdamW(plain.parameters(), lr=1e-3, weight_decay=0.01, betas=(0.9, 0.99), eps=1e-5)
    w = learn.class_weights

    def plain_epoch():
        plain.train(); t0 = time.perf_counter()
        for xb, yb in dls.train:
            xb, yb = xb.as_subclass(torch.Tensor), yb.as_subclass(torch.Tensor)  # fastai's CastToTensor does the same
            loss = F.cross_entropy(plain(xb), yb, weight=w)
            loss.backward(); opt.step(); opt.zero_grad()
        return time.perf_counter() - t0

    recipe_t, plain_t = [], []
    plain_epoch(); learn.fit(1, 1e-3)  # warm-up of both
    for _ in range(a.epochs):
        with learn.no_bar(): learn.fit(1, 1e-3)
        recipe_t.append(timer.times[-1])
        plain_t.append(plain_epoch())
    r_ips, p_ips = n_train / statistics.median(recipe_t), n_train / statistics.median(plain_t)
    overhead = p_ips / r_ips - 1
    row = dict(date=datetime.datetime.now().isoformat(timespec='seconds'), machine=machine(), python=platform.python_version(),
               torch=torch.__version__, fastai=fastai.__version__, timm=timm.__version__, threads=a.threads,
               allocator=os.environ.get('LD_PRELOAD') or 'glibc malloc', arch=a.arch, size=a.size, bs=a.bs, n_train=n_train,
               epochs=a.epochs, recipe_img_s=round(r_ips, 2), plain_img_s=round(p_ips, 2), overhead_pct=round(100 * overhead, 1))
    out = Path(a.out); new = not out.exists(); out.parent.mkdir(parents=True, exist_ok=True)
    with open(out, 'a', newline='') as f:
        wr = csv.DictWriter(f, fieldnames=list(row))
        if new: wr.writeheader()
        wr.writerow(row)
    print(f"recipe {r_ips:.2f} img/s, plain loop {p_ips:.2f} img/s, recipe overhead {100*overhead:+.1f}% "
          f"(median of {a.epochs} epochs of {n_train} images, {a.arch} {a.size}px bs {a.bs}, {a.threads} threads)")
    print(f"appended to {out}")


if __name__ == '__main__': sys.exit(main())
