"Helpers shared by the benchmark scripts (run them as `python benchmarks/<name>.py`, which puts this folder on the path)."
import os, platform


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
