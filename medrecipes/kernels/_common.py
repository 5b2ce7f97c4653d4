"""Helpers every kernel shares: the Gaussian window, the compute-dtype rule, the launch-device context, layouts."""
from __future__ import annotations
import contextlib, functools
import torch

__all__ = ['gaussian_window', 'compute_dtype', 'device_ctx', 'on_device', 'is_channels_last']


def gaussian_window(win_size:int=11, sigma:float=1.5, dtype=torch.float32, device='cpu') -> torch.Tensor:
    "The normalised 1-D Gaussian window (computed in float64, then cast), as pytorch-msssim and the C++ kernel build it."
    if win_size < 1 or win_size % 2 == 0: raise ValueError(f"win_size must be a positive odd number, not {win_size}")
    if not sigma > 0: raise ValueError(f"sigma must be positive, not {sigma}")
    r = torch.arange(win_size, dtype=torch.float64) - win_size // 2
    g = torch.exp(-r ** 2 / (2 * sigma ** 2))
    return (g / g.sum()).to(dtype=dtype, device=device)


@functools.lru_cache(maxsize=32)
def cached_window(win_size:int, sigma:float, device) -> torch.Tensor:
    "`gaussian_window` in float32 on `device`, cached (the Triton launchers take it every call)."
    return gaussian_window(win_size, sigma, torch.float32, device)


def compute_dtype(t:torch.Tensor) -> torch.dtype:
    "The dtype the kernels compute in for input `t`: float64 stays float64 (so gradcheck can check them), all else float32."
    return torch.float64 if t.dtype == torch.float64 else torch.float32


def device_ctx(t:torch.Tensor):
    "The context that makes `t`'s CUDA device current (Triton launches on the current device); a no-op elsewhere."
    return torch.cuda.device(t.device) if t.is_cuda else contextlib.nullcontext()


def on_device(fn):
    "Run `fn` with its first tensor argument's CUDA device current."
    @functools.wraps(fn)
    def run(*args, **kw):
        with device_ctx(args[0]) if args and isinstance(args[0], torch.Tensor) else contextlib.nullcontext():
            return fn(*args, **kw)
    return run


def is_channels_last(x:torch.Tensor) -> bool:
    "Whether `x` is stored channels-last (NHWC memory) and not also NCHW-contiguous."
    return not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last)
