"""The SSIM forward and backward as `torch.library` custom ops (`medrecipes::ssim_forward`, `medrecipes::ssim_backward`)
with fake implementations and autograd: one differentiable op that drives any backend of the op table, and that
`torch.compile` and `torch.export` trace without breaking the graph."""
from __future__ import annotations
import torch
from torch import Tensor
from .ops import CppSSIMOps, state_dtype

__all__ = ['ssim_ops', 'ssim_planes']


def ssim_ops(backend:str):
    "The op table of `backend` ('cpp' or 'triton')."
    if backend == 'cpp': return CppSSIMOps
    if backend == 'triton':
        from . import triton
        return triton
    raise ValueError(f"the SSIM ops have backends 'cpp' and 'triton', not {backend!r}")


@torch.library.custom_op('medrecipes::ssim_forward', mutates_args=())
def ssim_forward(x:Tensor, y:Tensor, win_size:int, sigma:float, c1:float, c2:float, save:bool,
                 backend:str) -> tuple[Tensor, Tensor, Tensor]:
    "Per-plane SSIM (B*C,) of `x` and `y`, and (with `save`) the state its backward reads."
    return tuple(t.contiguous() for t in ssim_ops(backend).forward(x, y, win_size, sigma, c1, c2, save))


@ssim_forward.register_fake
def _(x, y, win_size, sigma, c1, c2, save, backend):
    B, C, H, W = x.shape
    P, dt = B * C, state_dtype(x, backend)
    if not save: return x.new_empty(P, dtype=dt), x.new_empty(0, dtype=dt), x.new_empty(0, dtype=dt)
    return (x.new_empty(P, dtype=dt), x.new_empty((P, 4, H - win_size + 1, W - win_size + 1), dtype=dt),
            x.new_empty((P, 2), dtype=dt))


@torch.library.custom_op('medrecipes::ssim_backward', mutates_args=())
def ssim_backward(x:Tensor, y:Tensor, coef:Tensor, shift:Tensor, gvals:Tensor, win_size:int, sigma:float, c1:float,
                  c2:float, need_dx:bool, need_dy:bool, backend:str) -> tuple[Tensor, Tensor]:
    "(dx, dy) of `sum_p gvals[p] * ssim_p(x, y)`, each empty where not needed."
    dx, dy = ssim_ops(backend).backward(x, y, coef, shift, gvals, win_size, sigma, c1, c2, (need_dx, need_dy))
    return (dx.contiguous() if need_dx else x.new_empty(0)), (dy.contiguous() if need_dy else y.new_empty(0))


@ssim_backward.register_fake
def _(x, y, coef, shift, gvals, win_size, sigma, c1, c2, need_dx, need_dy, backend):
    return x.new_empty(x.shape if need_dx else (0,)), y.new_empty(y.shape if need_dy else (0,))


def _setup_context(ctx, inputs, output):
    x, y, win_size, sigma, c1, c2, save, backend = inputs
    _, coef, shift = output
    ctx.save_for_backward(x, y, coef, shift)
    ctx.args = (win_size, sigma, c1, c2)
    ctx.backend = backend


def _backward(ctx, gvals, gcoef, gshift):
    x, y, coef, shift = ctx.saved_tensors
    need = ctx.needs_input_grad[:2]
    if not any(need): return (None,) * 8
    dx, dy = ssim_backward(x, y, coef, shift, gvals, *ctx.args, need[0], need[1], ctx.backend)
    return dx if need[0] else None, dy if need[1] else None, None, None, None, None, None, None


ssim_forward.register_autograd(_backward, setup_context=_setup_context)


def ssim_planes(x:Tensor, y:Tensor, win_size:int, sigma:float, c1:float, c2:float, backend:str) -> Tensor:
    "Per-plane SSIM (B*C,) through the custom op, differentiable in `x` and `y`; the backward's state is saved only when needed."
    save = torch.is_grad_enabled() and (x.requires_grad or y.requires_grad)
    return ssim_forward(x, y, int(win_size), float(sigma), float(c1), float(c2), save, backend)[0]
