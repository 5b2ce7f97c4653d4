"""The SSIM op table: the two functions a fast backend implements, and the C++ backend.

| function | returns |
|---|---|
| `forward(x, y, win_size, sigma, c1, c2, save)` | `vals` (B*C,): per-plane SSIM; `coef` (B*C, 4, Ho, Wo) and `shift` (B*C, 2): the state the backward reads (empty when not `save`) |
| `backward(x, y, coef, shift, gvals, win_size, sigma, c1, c2, need)` | `(dx, dy)` in x's and y's dtype, contiguous, for the per-plane upstream gradient `gvals`; `None` where `need` says so |

x, y are B x C x H x W of any float dtype and layout (a backend copies what it must). `vals`, `coef`, `shift` are in
`state_dtype(x, backend)`. The Triton backend (`triton.py`) defines the same two functions.
"""
from __future__ import annotations
import torch
from .._common import compute_dtype
from .._backend import _cpu

__all__ = ['SSIM_OPS', 'state_dtype', 'CppSSIMOps']

SSIM_OPS = ('forward', 'backward')


def state_dtype(x:torch.Tensor, backend:str) -> torch.dtype:
    "The dtype of a backend's per-plane values and saved maps: float32, or float64 for float64 inputs in C++."
    return compute_dtype(x) if backend == 'cpp' else torch.float32


class CppSSIMOps:
    "The SSIM op table on `csrc/ssim.cpp` (CPU tensors; float64 computed in float64, every other dtype in float32)."
    @staticmethod
    def _planes(t, dt):
        B, C, H, W = t.shape
        return t.detach().to(dt).contiguous().reshape(B * C, H, W).numpy()

    @staticmethod
    def forward(x, y, win_size, sigma, c1, c2, save):
        dt = compute_dtype(x)
        xf, yf = CppSSIMOps._planes(x, dt), CppSSIMOps._planes(y, dt)
        # with save, four per-pixel coefficient maps make the backward one cheap pass (measured faster than recomputing)
        out = _cpu.ssim_forward(xf, yf, win_size, c1, c2, sigma=sigma, save=save)
        if not save: return torch.from_numpy(out), x.new_empty(0, dtype=dt), x.new_empty(0, dtype=dt)
        vals, (coef, shift) = out
        return torch.from_numpy(vals), torch.from_numpy(coef), torch.from_numpy(shift)

    @staticmethod
    def backward(x, y, coef, shift, gvals, win_size, sigma, c1, c2, need):
        dt = compute_dtype(x)
        saved = (coef.detach().contiguous().numpy(), shift.detach().contiguous().numpy()) if coef.numel() else None
        gp = gvals.detach().to(dt).contiguous().numpy()
        dx, dy = _cpu.ssim_backward(CppSSIMOps._planes(x, dt), CppSSIMOps._planes(y, dt), win_size, c1, c2, gp,
                                    sigma=sigma, saved=saved)
        return (torch.from_numpy(dx).view(x.shape).to(x.dtype) if need[0] else None,
                torch.from_numpy(dy).view(y.shape).to(y.dtype) if need[1] else None)
