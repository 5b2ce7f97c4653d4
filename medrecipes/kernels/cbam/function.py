"""CBAM's forward and backward as `torch.library` custom ops (`medrecipes::cbam_forward`, `medrecipes::cbam_backward`)
with fake implementations and autograd: one differentiable op that drives any backend's six passes (the op table,
`ops.py`) and does the small steps in PyTorch, and that `torch.compile` and `torch.export` trace without breaking the graph.

The small steps are the MLP on the pooled B x C values, the convolution, batch norm and sigmoid on the B x 2 x H x W
map. Their gradients are written out (a custom op's implementation runs below autograd); the convolution's as
convolutions (several times faster on CPU than torch's convolution backward for one output channel). The batch norm's
running statistics are not touched here: the op returns the convolved map `z` and the caller updates them with
`F.batch_norm` itself (a custom op with autograd may not mutate its inputs).
"""
from __future__ import annotations
import torch
import torch.nn.functional as F
from typing import Optional
from torch import Tensor
from .._common import compute_dtype, is_channels_last
from .ops import CppCBAMOps

__all__ = ['cbam_ops', 'cbam_fused']


def cbam_ops(backend:str):
    "The op table of `backend` ('cpp' or 'triton')."
    if backend == 'cpp': return CppCBAMOps
    if backend == 'triton':
        from . import triton
        return triton
    raise ValueError(f"the CBAM ops have backends 'cpp' and 'triton', not {backend!r}")


def _like_x(t, x):
    "`t` in x's memory format: channels-last when x is, else NCHW-contiguous (what the fake implementations promise)."
    return t.contiguous(memory_format=torch.channels_last if is_channels_last(x) else torch.contiguous_format)


def _empty_like_x(x, dtype=None):
    return torch.empty(x.shape, dtype=dtype or x.dtype, device=x.device,
                       memory_format=torch.channels_last if is_channels_last(x) else torch.contiguous_format)


def _channel_gate(cavg, cmax, w1, b1, w2, b2):
    "`sigmoid(MLP(cavg) + MLP(cmax))` on B x C pooled values; the 1x1 convolutions as matrix products."
    B = cavg.shape[0]
    h = F.linear(F.relu(F.linear(torch.cat([cavg, cmax]), w1.flatten(1), b1)), w2.flatten(1), b2)
    return torch.sigmoid(h[:B] + h[B:])


@torch.library.custom_op('medrecipes::cbam_forward', mutates_args=())
def cbam_forward(x:Tensor, w1:Tensor, w2:Tensor, cw:Tensor, bw:Tensor, bb:Tensor, b1:Optional[Tensor], b2:Optional[Tensor],
                 running_mean:Optional[Tensor], running_var:Optional[Tensor], batch_stats:bool, eps:float, backend:str
                 ) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    """CBAM of `x` with batch statistics (`batch_stats`) or the given running ones; returns `out` and the state the
    backward reads: cavg, cmax, ccnt, a, m, z, s, smax, scnt and the (mean, variance) the batch norm used."""
    ops, ct = cbam_ops(backend), compute_dtype(x)
    w1, w2, cw, bw, bb, b1, b2 = (None if t is None else t.detach().to(ct) for t in (w1, w2, cw, bw, bb, b1, b2))
    cavg, cmax, ccnt = ops.channel_pool(x)
    a = _channel_gate(cavg, cmax, w1, b1, w2, b2).contiguous()
    smean, smax, scnt = ops.spatial_pool(x, a)
    m = torch.stack([smean, smax], 1)
    z = F.conv2d(m, cw, padding=cw.shape[-1] // 2)
    if batch_stats:
        zn = F.batch_norm(z, None, None, bw, bb, True, 0., eps)
        stats = torch.stack([z.mean(), z.var(unbiased=False)])
    else:
        rm, rv = running_mean.detach().to(ct), running_var.detach().to(ct)
        zn = F.batch_norm(z, rm, rv, bw, bb, False, 0., eps)
        stats = torch.cat([rm.reshape(1), rv.reshape(1)])
    s = torch.sigmoid(zn)[:, 0].contiguous()
    out = _like_x(ops.apply_gates(x, a, s), x)
    return (out, *(t.contiguous() for t in (cavg, cmax, ccnt)), a, m, z, s, smax.contiguous(), scnt.contiguous(), stats)


@cbam_forward.register_fake
def _(x, w1, w2, cw, bw, bb, b1, b2, running_mean, running_var, batch_stats, eps, backend):
    B, C, H, W = x.shape
    ct = compute_dtype(x)
    e = lambda *shape: x.new_empty(shape, dtype=ct)
    return (_empty_like_x(x), e(B, C), e(B, C), e(B, C), e(B, C), e(B, 2, H, W), e(B, 1, H, W), e(B, H, W), e(B, H, W),
            e(B, H, W), e(2))


@torch.library.custom_op('medrecipes::cbam_backward', mutates_args=())
def cbam_backward(g:Tensor, x:Tensor, cavg:Tensor, cmax:Tensor, ccnt:Tensor, a:Tensor, m:Tensor, z:Tensor, s:Tensor,
                  smax:Tensor, scnt:Tensor, stats:Tensor, w1:Tensor, w2:Tensor, cw:Tensor, bw:Tensor, b1:Optional[Tensor],
                  batch_stats:bool, need_dx:bool, eps:float, backend:str
                  ) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    "Gradients (dx, dw1, dw2, dcw, dbw, dbb, db1, db2) of CBAM for the upstream gradient `g`; dx empty unless `need_dx`."
    ops, ct = cbam_ops(backend), compute_dtype(x)
    w1, w2, cw, bw = (t.detach().to(ct) for t in (w1, w2, cw, bw))
    b1 = None if b1 is None else b1.detach().to(ct)
    B = x.shape[0]
    # spatial gate: sigmoid and batch norm on the B x H x W map
    ds = ops.spatial_gate_grad(g, x, a)
    inv = (stats[1] + eps).rsqrt()
    zhat = (z[:, 0] - stats[0]) * inv
    dzn = ds * s * (1 - s)
    dbb, dbw = dzn.sum().reshape(1), (dzn * zhat).sum().reshape(1)
    dzh = dzn * bw.reshape(())
    dz = (dzh - dzh.mean() - zhat * (dzh * zhat).mean()) * inv if batch_stats else dzh * inv
    dz = dz[:, None]
    # the 2 -> 1 convolution's gradients as convolutions
    pad = cw.shape[-1] // 2
    dm = F.conv2d(dz, cw.flip(-1, -2).transpose(0, 1), padding=pad)
    dcw = torch.nn.grad.conv2d_weight(m, cw.shape, dz, padding=pad)
    dmean, dmax = dm[:, 0].contiguous(), dm[:, 1].contiguous()
    # channel gate: the MLP on the pooled values, both branches at once
    da = ops.channel_gate_grad(g, x, a, s, dmean, dmax, smax, scnt)
    v = torch.cat([cavg, cmax])
    pre = F.linear(v, w1.flatten(1), b1)
    r = F.relu(pre)
    dh = da * a * (1 - a)
    dh = torch.cat([dh, dh])
    dw2 = (dh.t() @ r).reshape(w2.shape)
    dpre = (dh @ w2.flatten(1)) * (pre > 0)
    dw1 = (dpre.t() @ v).reshape(w1.shape)
    dv = dpre @ w1.flatten(1)
    dx = x.new_empty(0)
    if need_dx:
        dx = _like_x(ops.input_grad(g, x, a, s, dmean, dmax, smax, scnt, dv[:B].contiguous(), dv[B:].contiguous(), cmax, ccnt), x).to(x.dtype)
    db1 = dpre.sum(0) if b1 is not None else x.new_empty(0, dtype=ct)
    return dx, dw1, dw2, dcw, dbw.reshape(bw.shape), dbb.reshape(bw.shape), db1, dh.sum(0)


@cbam_backward.register_fake
def _(g, x, cavg, cmax, ccnt, a, m, z, s, smax, scnt, stats, w1, w2, cw, bw, b1, batch_stats, need_dx, eps, backend):
    ct = compute_dtype(x)
    e = lambda shape: x.new_empty(shape, dtype=ct)
    return (_empty_like_x(x) if need_dx else x.new_empty(0), e(w1.shape), e(w2.shape), e(cw.shape), e(bw.shape),
            e(bw.shape), e(b1.shape if b1 is not None else (0,)), e((w2.shape[0],)))


def _setup_context(ctx, inputs, output):
    x, w1, w2, cw, bw, bb, b1, b2, rm, rv, batch_stats, eps, backend = inputs
    ctx.save_for_backward(x, *output[1:], w1, w2, cw, bw, b1)
    ctx.mark_non_differentiable(*output[1:])
    ctx.args = (batch_stats, eps, backend)
    ctx.dtypes = [None if t is None else t.dtype for t in (w1, w2, cw, bw, bb, b1, b2)]


def _backward(ctx, g, *unused):
    x, cavg, cmax, ccnt, a, m, z, s, smax, scnt, stats, w1, w2, cw, bw, b1 = ctx.saved_tensors
    batch_stats, eps, backend = ctx.args
    need = ctx.needs_input_grad
    grads = cbam_backward(g, x, cavg, cmax, ccnt, a, m, z, s, smax, scnt, stats, w1, w2, cw, bw, b1, batch_stats,
                          need[0], eps, backend)
    dx = grads[0] if need[0] else None
    ps = [None if dt is None or not need[i + 1] else d.to(dt) for i, (d, dt) in enumerate(zip(grads[1:], ctx.dtypes))]
    return (dx, *ps, None, None, None, None, None)


cbam_forward.register_autograd(_backward, setup_context=_setup_context)


def cbam_fused(x, w1, w2, cw, bw, bb, b1, b2, running_mean, running_var, batch_stats:bool, momentum:float, eps:float,
               backend:str) -> Tensor:
    "CBAM through the custom op on `backend`; in batch-statistics mode the running statistics (if any) are updated in place."
    out, *_, z, s, smax, scnt, stats = cbam_forward(x, w1, w2, cw, bw, bb, b1, b2,
                                                    None if batch_stats else running_mean,
                                                    None if batch_stats else running_var, batch_stats, float(eps), backend)
    if batch_stats and running_mean is not None:
        from .reference import _batch_norm
        with torch.no_grad(): _batch_norm(z, running_mean, running_var, None, None, True, momentum, eps)
    return out
