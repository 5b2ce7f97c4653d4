"""The X-ray data pipeline on radiographs at BTXRD's real size: full decode, JPEG draft decode, decode-once cache.

Generated BTXRD-format radiographs of 1500-3600 px a side (`make_btxrd(..., size_range=(1500, 3600))`, the range of
the real release's larger images) go through `XrayDataLoaders.from_btxrd` at 224 px with the training augmentations on:

- `full decode`: every image decoded in full and letterboxed to the input every epoch (the pipeline before the cache:
  `cache=False, draft=False`, no stored size);
- `draft decode`: JPEG draft decoding (DCT scaling to >= 2x the input) and the stored size, no cache;
- `cache cold`: the first epoch with a new cache: building it (decode, shrink, hash, write) plus the epoch;
- `cache warm`: an epoch read from the memory-mapped cache;
- `monai PersistentDataset` (when monai is installed): MONAI's own decode-once cache doing the same decode and resize,
  cold and warm;
- `items only`: the item stage alone (read, letterbox, to tensor) with the full decode and the warm cache: what
  loader workers do when the batch transforms run on a GPU;
- one end-to-end training epoch of EfficientNet-B0 at 224 px (random init; fastai `Learner.fit`) without and with the
  (warm) cache;
- `cache build` / `cache open` with `verify=stamp` (the default: a file is unchanged if its size and mtime are) and
  `verify=hash` (`data.cache_verify=hash`: also a BLAKE2b hash of every file's bytes): the cold build over every image,
  and opening the finished cache (what every run does before training). The files are in the page cache (just
  generated or read), so the hash rows are the hashing itself; from a cold disk, reading the files adds to them.
  `--verify-only` runs these rows alone.

The loader rows run in the main process (`num_workers=0`) with `--threads` torch threads, so their images/s is per
loader core when `--threads 1`. The machine's load average is recorded with every row: on a shared machine other
processes take CPU time, and the absolute figures drop with them. Rows are appended to
`benchmarks/results/xray_data.csv`.

    python benchmarks/xray_data.py [--n 60] [--size 224] [--bs 16] [--threads 1] [--train-threads 2] [--repeats 3] [--no-train] [--verify-only]
"""
import argparse, datetime, os, platform, shutil, sys, tempfile, time
from pathlib import Path
import numpy as np, torch

from _common import machine, append_rows


def load() -> str:
    "The 1-, 5- and 15-minute load averages of the machine (/proc/loadavg)."
    try: return ' '.join(open('/proc/loadavg').read().split()[:3])
    except OSError: return ''


def epoch(dl) -> float:
    "Seconds to iterate `dl` once (decode, item and batch transforms on the CPU)."
    t0 = time.perf_counter()
    for _ in dl: pass
    return time.perf_counter() - t0


def monai_rows(src, items, size, tmp):
    "MONAI's PersistentDataset + DataLoader, the same decode and letterbox to `size`: (cold s, warm s) for one pass."
    from monai.data import PersistentDataset, DataLoader
    from monai.transforms import Compose, LoadImaged, EnsureChannelFirstd, Resized, SpatialPadd, ScaleIntensityd, RandAffined
    keys = ['img']
    tf = Compose([LoadImaged(keys, image_only=True), EnsureChannelFirstd(keys), Resized(keys, spatial_size=size, size_mode='longest'),
                  SpatialPadd(keys, (size, size)), ScaleIntensityd(keys),
                  RandAffined(keys, prob=.75, rotate_range=.17, scale_range=.1, padding_mode='zeros')])
    ds = PersistentDataset([{'img': str(src/'images'/i)} for i in items], tf, cache_dir=tmp/'monai', weights_only=False)   # its own files
    dl = DataLoader(ds, batch_size=16, num_workers=0, shuffle=True)
    return epoch(dl), epoch(dl)


def verify_rows(src, a, row, tmp):
    "The cache's build and open with `verify='stamp'` and `verify='hash'` over every image of the data set (no loaders)."
    import pandas as pd
    from medrecipes.data.cache import stored_images
    files = [src/'images'/i for i in pd.read_csv(src/'dataset.csv').image_id]
    nbytes = sum(f.stat().st_size for f in files)
    for f in files: f.read_bytes()                                             # in the page cache, as after a first epoch
    def timed(f):
        t0 = time.perf_counter(); f(); return time.perf_counter() - t0
    for verify in ('stamp', 'hash'):
        d = tmp/f'cache-{verify}'
        build = lambda: stored_images(files, a.size, src, cache_dir=d, cache_verify=verify, progress=False)
        secs = timed(build)
        row(f'cache build: verify={verify}', len(files), secs, a.threads, f'all {len(files)} images ({nbytes / 1e6:.0f} MB of files) decoded, shrunk, hashed, written')
        row(f'cache open: verify={verify}', len(files), min(timed(build) for _ in range(a.repeats)), a.threads,
            f'a finished cache opened (nothing changed): ' + ('one stat per file' if verify == 'stamp' else f'one stat + BLAKE2b of {nbytes / 1e6:.0f} MB')
            + f'; best of {a.repeats}')


def main():
    ap = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    ap.add_argument('--n', type=int, default=60); ap.add_argument('--size', type=int, default=224)
    ap.add_argument('--bs', type=int, default=16); ap.add_argument('--threads', type=int, default=1)
    ap.add_argument('--train-threads', type=int, default=2); ap.add_argument('--no-train', action='store_true')
    ap.add_argument('--repeats', type=int, default=3, help='loader epochs per row (the best one is reported)')
    ap.add_argument('--data', default=None, help='reuse a generated data set (written there if missing)')
    ap.add_argument('--verify-only', action='store_true', help='only the cache build / open rows with verify=stamp and verify=hash')
    ap.add_argument('--out', default=str(Path(__file__).parent/'results'/'xray_data.csv'))
    a = ap.parse_args()
    import fastai, timm, PIL
    from medrecipes.synth import make_btxrd
    from medrecipes.data.xray import XrayDataLoaders
    tmp = Path(tempfile.mkdtemp())
    src = Path(a.data) if a.data else tmp/'btxrd'
    if not (src/'dataset.csv').exists():
        t0 = time.perf_counter(); make_btxrd(src, n=a.n, seed=0, size_range=(1500, 3600))
        print(f"generated {a.n} radiographs in {time.perf_counter() - t0:.0f} s", flush=True)
    common = dict(split='stratified', size=a.size, bs=a.bs, num_workers=0, device='cpu', progress=False)
    rows, base = [], dict(date=datetime.datetime.now().isoformat(timespec='seconds'), machine=machine(),
                          python=platform.python_version(), torch=torch.__version__, fastai=fastai.__version__,
                          timm=timm.__version__, pillow=PIL.__version__, n_images=a.n, size=a.size, bs=a.bs)
    def row(what, n, secs, threads, note=''):
        ld = load()
        busy = ld and float(ld.split()[0]) > 0.5 * (os.cpu_count() or 1)
        r = dict(base, what=what, threads=threads, images=n, seconds=round(secs, 2), images_per_s=round(n / secs, 1),
                 load=ld, note=note + ('; machine shared with other jobs (see load)' if busy else ''))
        rows.append(r); print(f"{what:34s} {n:4d} images {secs:7.2f} s {n / secs:7.1f} img/s  (load {r['load']})", flush=True)

    torch.set_num_threads(a.threads)
    verify_rows(src, a, row, tmp)
    if a.verify_only: return write(rows, a.out, tmp)
    full = XrayDataLoaders.from_btxrd(src, cache=False, draft=False, cache_size=100000, min_image_size=0, **common)
    n_tr = len(full.train_ds)
    best = lambda dl: min(epoch(dl) for _ in range(a.repeats))
    row('pipeline: full decode', n_tr, best(full.train), a.threads,
        f'decode in full + Resize every epoch (before the cache); best of {a.repeats} epochs')
    dr = XrayDataLoaders.from_btxrd(src, cache=False, draft=True, **common)
    row('pipeline: draft decode', n_tr, best(dr.train), a.threads,
        f'JPEG draft >= {2 * a.size} px, stored {2 * a.size} px, no cache; best of {a.repeats} epochs')
    cdir = tmp/'cache'
    t0 = time.perf_counter()
    cached = XrayDataLoaders.from_btxrd(src, cache=True, cache_dir=cdir, **common)
    build = time.perf_counter() - t0
    cold = epoch(cached.train)
    row('pipeline: cache cold (build + epoch)', n_tr, build + cold, a.threads,
        f'build over all {a.n} images (train, valid, test) {build:.1f} s + first epoch {cold:.1f} s')
    row('pipeline: cache warm', n_tr, best(cached.train), a.threads, f'best of {a.repeats} epochs; gray images stored and letterboxed as one channel')
    # the item stage alone (read, letterbox, to tensor): what loader workers do when the batch transforms run on a GPU
    items = lambda dl: [dl.do_item(i) for i in range(len(dl.dataset))]   # fastai: create_item + after_item (Resize, ToTensor)
    def timed(f):
        t0 = time.perf_counter(); f(); return time.perf_counter() - t0
    for what, dl in (('items only: full decode', full.train), ('items only: cache warm', cached.train)):
        row(what, n_tr, min(timed(lambda: items(dl)) for _ in range(a.repeats)), a.threads,
            f'no batch transforms (on a GPU they run on the device); best of {a.repeats} passes')
    try:
        import monai
        ids = list(cached.train.items.image_id)
        mc, mw = monai_rows(src, ids, a.size, tmp)
        row('pipeline: monai PersistentDataset cold', n_tr, mc, a.threads, f'monai {monai.__version__}: LoadImage, resize, pad, scale, RandAffine')
        row('pipeline: monai PersistentDataset warm', n_tr, mw, a.threads, f'monai {monai.__version__}')
    except ImportError: print('monai is not installed: no PersistentDataset row')

    if not a.no_train:
        from fastai.learner import Learner
        from fastai.losses import CrossEntropyLossFlat
        torch.set_num_threads(a.train_threads)
        for what, dls in (('epoch efficientnet_b0: full decode', full), ('epoch efficientnet_b0: cache warm', cached)):
            torch.manual_seed(0)
            learn = Learner(dls, timm.create_model('efficientnet_b0', pretrained=False, num_classes=3), loss_func=CrossEntropyLossFlat())
            with learn.no_bar(), learn.no_logging():
                learn.fit(1, 1e-3)                                   # warm-up: first-call allocations
                t0 = time.perf_counter(); learn.fit(1, 1e-3); secs = time.perf_counter() - t0
            row(what, n_tr, secs, a.train_threads, f'train {n_tr} + valid {len(dls.valid_ds)} images, second epoch timed; images = train')
    write(rows, a.out, tmp)


def write(rows, out, tmp):
    "Append `rows` to the results file `out`; remove the scratch folder."
    append_rows(rows, out)
    shutil.rmtree(tmp, ignore_errors=True)


if __name__ == '__main__':
    main()
