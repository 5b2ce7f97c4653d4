"""The near-duplicate grouping (`medrecipes.data.cache.near_duplicate_groups`) from 1,000 to 10,000 images: time per 1,000
images and how it grows.

Generated radiographs (`make_btxrd`, small: 96-160 px a side, so that 10,000 are written in minutes) are cached at a
stored size of `--stored` px; the first `n` of them are grouped, for each `n` of `--sizes`. A few planted copies of the
first images (a horizontal flip, an inverted copy, 5% cropped off each side, a 5 degree rotation, 8% of padding: one of
each, turn by turn) tell that the grouping still finds them at that size, and every other group counts as a false group.
The stages, timed apart:

- `hashes`: the 64-bit perceptual hashes, read from the cache's manifest;
- `keys`: `dup_keys` of every image (2 query and 100 index hashes: turned, flipped, inverted, cropped 0/5/10% a side,
  rotated +-2.5/5 degrees), read from the memory-mapped cache;
- `search`: the multi-index Hamming search (`hamming_join`: the 64 bits cut into 5 bands, only hashes that share a band
  value compared, found by sorting and `searchsorted`; never every pair), with the candidate pairs it returns;
- `confirm`: the thumbnail check of the plain candidates and the aligned check (`aligned_similarity`) of the transformed
  ones: the whole `near_duplicate_pairs` less the search and the keys.

`false_pairs` counts the pairs that are not planted; `false_pairs_plain_rule` those of them that the plain rule (hash
within 4 bits and 32 x 32 thumbnails correlating >= 0.95, as before issue 26.4) accepts on its own: at 96-160 px the
generated bones are simple enough for it to link look-alikes.

Rows are appended to `benchmarks/results/dup_groups.csv` (machine, versions, date, load average).

    python benchmarks/dup_groups.py [--sizes 1000,2000,5000,10000] [--stored 128] [--data DIR]
"""
import argparse, datetime, os, platform, shutil, sys, tempfile, time
from pathlib import Path
import numpy as np

from _common import machine, append_rows


def load() -> str:
    try: return ' '.join(open('/proc/loadavg').read().split()[:3])
    except OSError: return ''


def plant(src: Path, k: int) -> list:
    "`k` transformed copies of the first images (one kind after another), written beside them: [(copy, original)]."
    from PIL import Image, ImageOps
    kinds = [('hflip', ImageOps.mirror), ('invert', ImageOps.invert),
             ('crop5', lambda g: g.crop((round(.05 * g.width), round(.05 * g.height), round(.95 * g.width), round(.95 * g.height)))),
             ('rot5', lambda g: g.rotate(5, Image.BILINEAR)), ('pad8', lambda g: ImageOps.expand(g, round(.08 * max(g.size)), 0))]
    files = sorted((src/'images').glob('IMG*'))
    out = []
    for i in range(k):
        name, f = kinds[i % len(kinds)]
        c = src/'planted'/f'copy{i:03d}_{name}.jpeg'; c.parent.mkdir(exist_ok=True)
        if not c.exists(): f(Image.open(files[i]).convert('L')).save(c, quality=85)
        out.append((c, files[i]))
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    ap.add_argument('--sizes', default='1000,2000,5000,10000')
    ap.add_argument('--stored', type=int, default=128)
    ap.add_argument('--planted', type=int, default=10)
    ap.add_argument('--data', default=None, help='reuse a generated data set (written there if missing)')
    ap.add_argument('--out', default=str(Path(__file__).parent/'results'/'dup_groups.csv'))
    a = ap.parse_args()
    sizes = [int(s) for s in a.sizes.split(',')]
    import PIL, scipy, imagehash
    from medrecipes.synth import make_btxrd
    from medrecipes.data.cache import build_cache, StoredImages, near_duplicate_pairs, hamming_join, _MEETS, _hash_bits
    tmp = Path(tempfile.mkdtemp())
    src = Path(a.data) if a.data else tmp/'btxrd'
    if len(list((src/'images').glob('IMG*'))) < max(sizes):   # none yet, or too few
        t0 = time.perf_counter(); make_btxrd(src, n=max(sizes), seed=0, size_range=(96, 160))
        print(f"generated {max(sizes)} radiographs in {time.perf_counter() - t0:.0f} s", flush=True)
    planted = plant(src, a.planted)
    base = sorted((src/'images').glob('IMG*'))[:max(sizes)]
    every = [c for c, _ in planted] + base
    t0 = time.perf_counter()
    cache = build_cache(every, tmp/'cache', stored=a.stored, draft=a.stored, progress=False)
    print(f"cached {len(every)} images at {a.stored} px in {time.perf_counter() - t0:.0f} s", flush=True)
    rows = []
    common = dict(date=datetime.datetime.now().isoformat(timespec='seconds'), machine=machine(), python=platform.python_version(),
                  numpy=np.__version__, scipy=scipy.__version__, pillow=PIL.__version__, imagehash=imagehash.__version__, stored=a.stored)
    for n in sizes:
        files = [c for c, _ in planted] + base[:n - len(planted)]
        r = StoredImages(a.stored, a.stored, cache=cache)
        t0 = time.perf_counter(); h = r.hashes(files); t_hash = time.perf_counter() - t0
        sim = r.similarity(files)
        t0 = time.perf_counter(); q, k = sim.keys(); t_keys = time.perf_counter() - t0
        t0 = time.perf_counter()
        cand = set()
        for v, meets in enumerate(_MEETS):   # as near_duplicate_pairs searches: each query view against the index views it meets
            ca, cb, _ = hamming_join(q[:, v], np.arange(n), k[:, meets].ravel(), np.repeat(np.arange(n), len(meets)), 4)
            cand |= {(min(x, y), max(x, y)) for x, y in zip(ca.tolist(), (cb // len(meets)).tolist())}
        hb = _hash_bits(h); pa, pb, _ = hamming_join(hb, np.arange(n), hb, np.arange(n), 4)
        t_search = time.perf_counter() - t0
        cand, plain = len(cand), int((pa < pb).sum())
        t0 = time.perf_counter(); pairs = near_duplicate_pairs(h, similar=sim); t_pairs = time.perf_counter() - t0
        t0 = time.perf_counter(); plain_pairs = set((i, j) for i, j, _ in near_duplicate_pairs(h, similar=sim.__call__)); t_plain = time.perf_counter() - t0
        t_confirm = t_pairs - t_search
        pos = {f: i for i, f in enumerate(files)}
        want = {(min(pos[c], pos[o]), max(pos[c], pos[o])) for c, o in planted if o in pos}
        got = {(i, j) for i, j, _ in pairs}
        total = t_hash + t_keys + t_pairs
        row = dict(common, images=n, hashes_s=round(t_hash, 2), keys_s=round(t_keys, 2), search_s=round(t_search, 2),
                   confirm_s=round(t_confirm, 2), total_s=round(total, 2), s_per_1000=round(total / n * 1000, 2),
                   candidate_pairs=cand, plain_candidate_pairs=plain, planted=len(want), planted_found=len(want & got),
                   false_pairs=len(got - want), false_pairs_plain_rule=len(plain_pairs - want), load=load())
        rows.append(row)
        print(f"{n:6d} images: hashes {t_hash:5.1f} s, keys {t_keys:6.1f} s, search {t_search:5.2f} s ({cand} candidate pairs), "
              f"confirm {t_confirm:6.1f} s; {total / n * 1000:5.1f} s per 1,000; planted {len(want & got)}/{len(want)}, "
              f"false pairs {len(got - want)}, of which the plain hash + thumbnail rule's {len(plain_pairs - want)} (load {row['load']})", flush=True)
    append_rows(rows, a.out)
    shutil.rmtree(tmp, ignore_errors=True)


if __name__ == '__main__':
    main()
