"Helpers shared by the benchmark scripts (run them as `python benchmarks/<name>.py`, which puts this folder on the path)."
import csv, os, platform
from pathlib import Path


def machine() -> str:
    "Host name, CPU model, CPU count and, when there is one, the GPU: the `machine` column of every results file."
    cpu = platform.processor() or ''
    try: cpu = next(l.split(':', 1)[1].strip() for l in open('/proc/cpuinfo') if l.startswith('model name'))
    except Exception: pass
    gpu = ''
    try:
        import torch
        if torch.cuda.is_available(): gpu = f" | {torch.cuda.get_device_name()}"
    except Exception: pass
    return f"{platform.node()} | {cpu} | {os.cpu_count()} cpus{gpu}"


def append_rows(rows:list, out) -> Path:
    "Append `rows` (dicts with the same keys) to the results CSV `out`, with a header when the file is new"
    out = Path(out); out.parent.mkdir(parents=True, exist_ok=True)
    new = not out.exists()
    with open(out, 'a', newline='') as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        if new: w.writeheader()
        w.writerows(rows)
    print(f"appended {len(rows)} rows to {out}")
    return out
