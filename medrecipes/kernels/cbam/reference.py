"""CBAM in plain PyTorch: the oracle of the whole module (`cbam_reference`, autograd, the path exporters trace) and
of each of the six fused passes (`ReferenceCBAMOps`, from the formulas, accumulated in float64).

CBAM (Woo et al. 2018) as timm's `CbamModule` computes it, for x of shape B x C x H x W: channel gate
`a = sigmoid(MLP(mean_hw x) + MLP(amax_hw x))`; `y1 = x * a`; spatial gate `s = sigmoid(BN(conv([mean_c y1, amax_c y1])))`;
`out = y1 * s`.
"""
from __future__ import annotations
import torch
import torch.nn.functional as F

__all__ = ['check_cbam_inputs', 'cbam_reference', 'ReferenceCBAMOps']


def check_cbam_inputs(x:torch.Tensor, channels:int, training:bool):
    "Raise a clear error for inputs CBAM cannot take."
    if not isinstance(x, torch.Tensor): raise TypeError(f"x must be a tensor, not {type(x).__name__}")
    if x.dim() != 4: raise ValueError(f"x must be B x C x H x W, got shape {tuple(x.shape)}")
    if x.dtype not in (torch.float32, torch.float16, torch.bfloat16, torch.float64):
        raise TypeError(f"x must be float32, float16, bfloat16 or float64, got {x.dtype}")
    B, C, H, W = x.shape
    if C != channels: raise ValueError(f"x has {C} channels but the CBAM module was built for {channels}")
    if B < 1 or H < 1 or W < 1: raise ValueError(f"x must not be empty, got shape {tuple(x.shape)}")
    if training and B * H * W < 2:
        raise ValueError(f"the spatial gate's batch norm needs more than one value per batch in training mode; "
                         f"x of shape {tuple(x.shape)} gives B*H*W = 1 (use eval mode or a larger input)")

def _batch_norm(z, running_mean, running_var, weight, bias, use_batch_stats:bool, momentum:float, eps:float):
    "`F.batch_norm` in `z`'s dtype: batch statistics (updating the running ones in place if given) or the running ones."
    if running_mean is None: return F.batch_norm(z, None, None, weight, bias, True, 0., eps)
    if not use_batch_stats:
        return F.batch_norm(z, running_mean.to(z.dtype), running_var.to(z.dtype), weight, bias, False, 0., eps)
    if running_mean.dtype == z.dtype: return F.batch_norm(z, running_mean, running_var, weight, bias, True, momentum, eps)
    rm, rv = running_mean.to(z.dtype), running_var.to(z.dtype)  # e.g. float16 buffers: update a copy, copy it back
    out = F.batch_norm(z, rm, rv, weight, bias, True, momentum, eps)
    with torch.no_grad(): running_mean.copy_(rm); running_var.copy_(rv)
    return out

def cbam_reference(x:torch.Tensor, # B x C x H x W
                   fc1_weight, fc2_weight, # the MLP's 1x1 convolutions: (R, C, 1, 1) and (C, R, 1, 1)
                   conv_weight, # the spatial gate's convolution, (1, 2, k, k)
                   bn_weight, bn_bias, # the spatial gate's batch norm affine parameters, (1,)
                   running_mean=None, running_var=None, # its running statistics, (1,); updated in place in training
                   training:bool=False, # batch statistics (and a running-statistics update) instead of running ones
                   momentum:float=0.1, # the exponential-average factor of the update, as `F.batch_norm` takes it
                   eps:float=1e-5, fc1_bias=None, fc2_bias=None) -> torch.Tensor:
    "CBAM in plain PyTorch with autograd: the oracle. Half types are computed in float32, float64 in float64."
    check_cbam_inputs(x, fc1_weight.shape[1], training)
    dt = torch.float64 if x.dtype == torch.float64 else torch.float32
    xf = x.to(dt)
    w1, w2, cw, bw, bb = (t.to(dt) for t in (fc1_weight, fc2_weight, conv_weight, bn_weight, bn_bias))
    b1, b2 = (None if t is None else t.to(dt) for t in (fc1_bias, fc2_bias))
    mlp = lambda v: F.conv2d(F.relu(F.conv2d(v, w1, b1)), w2, b2)
    a = torch.sigmoid(mlp(xf.mean((2, 3), keepdim=True)) + mlp(xf.amax((2, 3), keepdim=True)))
    y = xf * a
    m = torch.cat([y.mean(1, keepdim=True), y.amax(1, keepdim=True)], 1)
    z = F.conv2d(m, cw, padding=cw.shape[-1] // 2)
    z = _batch_norm(z, running_mean, running_var, bw, bb, training or running_mean is None, momentum, eps)
    return (y * torch.sigmoid(z)).to(x.dtype)


def _bc(v): return v[:, :, None, None]  # [B, C] -> broadcast over pixels
def _bp(v): return v[:, None]  # [B, H, W] -> broadcast over channels


class ReferenceCBAMOps:
    """The six passes of the CBAM op table (`ops.py`) from their formulas: the oracle of every backend's passes.
    Sums in float64; maxima (and the tie masks) in float32 as the fused passes compute them; small outputs float32."""
    @staticmethod
    def channel_pool(x):
        xf = x.float(); m = xf.amax((2, 3))
        return x.double().mean((2, 3)).float(), m, (xf == _bc(m)).sum((2, 3)).float()

    @staticmethod
    def spatial_pool(x, a):
        y = x.float() * _bc(a); m = y.amax(1)
        return (x.double() * _bc(a.double())).mean(1).float(), m, (y == _bp(m)).sum(1).float()

    @staticmethod
    def apply_gates(x, a, s): return (x.float() * _bc(a) * _bp(s)).to(x.dtype)

    @staticmethod
    def spatial_gate_grad(g, x, a): return (g.double() * x.double() * _bc(a.double())).sum(1).float()

    @staticmethod
    def _dy1(g, x, a, s, dmean, dmax, smax, scnt):
        "float64 dy1; the tie mask compares x*a computed in float32, as the forward's max was."
        tie = (x.float() * _bc(a) == _bp(smax)).double()
        return g.double() * _bp(s.double()) + _bp(dmean.double()) / x.shape[1] + _bp(dmax.double() / scnt.double()) * tie

    @staticmethod
    def channel_gate_grad(g, x, a, s, dmean, dmax, smax, scnt):
        return (ReferenceCBAMOps._dy1(g, x, a, s, dmean, dmax, smax, scnt) * x.double()).sum((2, 3)).float()

    @staticmethod
    def input_grad(g, x, a, s, dmean, dmax, smax, scnt, dcavg, dcmax, cmax, ccnt):
        HW = x.shape[2] * x.shape[3]
        tie = (x.float() == _bc(cmax)).double()
        dx = (ReferenceCBAMOps._dy1(g, x, a, s, dmean, dmax, smax, scnt) * _bc(a.double()) + _bc(dcavg.double()) / HW
              + _bc(dcmax.double() / ccnt.double()) * tie)
        return dx.to(x.dtype)
