"""`cbam(x, ...)` and `CBAM(channels)`: timm's `CbamModule` (same parameters, state-dict keys and maths) on fused
passes over the feature map: C++ on CPU, Triton on CUDA, the plain-PyTorch reference elsewhere or when asked for."""
from __future__ import annotations
import torch
import torch.nn as nn
import torch.nn.functional as F
from .._backend import KernelOp
from .reference import check_cbam_inputs, cbam_reference
from .ops import CBAM_OPS
from .function import cbam_fused

__all__ = ['CBAM_OP', 'cbam_backend', 'cbam_cpp_available', 'cbam_triton_available', 'cbam', 'CBAM']

CBAM_OP = KernelOp('CBAM', ['cbam_' + n for n in CBAM_OPS], 'medrecipes.kernels.cbam.triton', CBAM_OPS,
                   triton_dtypes=(torch.float32, torch.float16, torch.bfloat16))


def cbam_backend(x:torch.Tensor) -> str:
    "The backend `cbam` uses for `x`: the one asked for (`use_backend`, `MEDRECIPES_BACKEND`), else the fastest for its device."
    return CBAM_OP.backend(x)


def cbam_cpp_available() -> bool:
    "Whether the C++ CBAM kernels were built."
    return CBAM_OP.cpp_available()


def cbam_triton_available(x:torch.Tensor|None=None) -> bool:
    "Whether the Triton CBAM kernels can run on `x` (or, without `x`, import): CUDA tensors, or CPU ones in Triton's interpreter."
    return CBAM_OP.triton_available(x)


def _check_params(channels, w1, w2, cw, bw, bb):
    R = w1.shape[0]
    for n, t, shape in (('fc1_weight', w1, (R, channels, 1, 1)), ('fc2_weight', w2, (channels, R, 1, 1))):
        if tuple(t.shape) != shape: raise ValueError(f"{n} must have shape {shape}, got {tuple(t.shape)}")
    k = cw.shape[-1]
    if cw.dim() != 4 or tuple(cw.shape[:3]) != (1, 2, k) or k % 2 == 0:
        raise ValueError(f"conv_weight must have shape (1, 2, k, k) with an odd k, got {tuple(cw.shape)}")
    for n, t in (('bn_weight', bw), ('bn_bias', bb)):
        if t.numel() != 1: raise ValueError(f"{n} must have one element, got shape {tuple(t.shape)}")

def _bn_step(bn:nn.BatchNorm2d):
    "The running statistics and factor `nn.BatchNorm2d.forward` would use now, counting the batch as it does."
    factor = 0.0 if bn.momentum is None else bn.momentum
    if bn.training and bn.track_running_stats and bn.num_batches_tracked is not None:
        bn.num_batches_tracked.add_(1)
        factor = 1.0 / float(bn.num_batches_tracked) if bn.momentum is None else bn.momentum
    use_running = not bn.training or bn.track_running_stats
    rm, rv = (bn.running_mean, bn.running_var) if use_running else (None, None)
    return rm, rv, factor

def _cbam_modules(x, mod):
    "CBAM through the module's own layers: for a batch norm the fused path cannot run itself (a synchronised one)."
    fc, cv = mod.channel, mod.spatial.conv
    mlp = lambda p: fc.fc2(F.relu(fc.fc1(p)))
    a = torch.sigmoid(mlp(x.mean((2, 3), keepdim=True)) + mlp(x.amax((2, 3), keepdim=True)))
    y1 = x * a
    return y1 * torch.sigmoid(cv.bn(cv.conv(torch.cat([y1.mean(1, keepdim=True), y1.amax(1, keepdim=True)], 1))))

def cbam(x:torch.Tensor, # B x C x H x W, float32/float16/bfloat16 (float64 too), contiguous or channels-last
         fc1_weight, # (R, C, 1, 1), or a `CBAM` / timm `CbamModule` whose parameters and mode are used
         fc2_weight=None, conv_weight=None, bn_weight=None, bn_bias=None, # (C, R, 1, 1), (1, 2, k, k), (1,), (1,)
         running_mean=None, running_var=None, # the batch norm's running statistics, updated in place in training
         training:bool=False, # batch statistics (the running ones are then updated) instead of the running ones
         momentum:float=0.1, eps:float=1e-5, fc1_bias=None, fc2_bias=None) -> torch.Tensor:
    "CBAM attention on `x`, through the fastest backend for its device."
    if isinstance(fc1_weight, nn.Module):
        mod = fc1_weight
        fc, bn = mod.channel, mod.spatial.conv.bn
        batch_stats = bn.training or bn.running_mean is None
        check_cbam_inputs(x, fc.fc1.in_channels, batch_stats)
        if batch_stats and not isinstance(bn, nn.BatchNorm2d): return _cbam_modules(x, mod)
        rm, rv, factor = _bn_step(bn)
        return cbam(x, fc.fc1.weight, fc.fc2.weight, mod.spatial.conv.conv.weight, bn.weight, bn.bias, rm, rv,
                    bn.training, factor, bn.eps, fc.fc1.bias, fc.fc2.bias)
    if any(t is None for t in (fc2_weight, conv_weight, bn_weight, bn_bias)):
        raise TypeError("cbam takes a CBAM module, or fc1_weight, fc2_weight, conv_weight, bn_weight and bn_bias")
    batch_stats = training or running_mean is None
    check_cbam_inputs(x, fc1_weight.shape[1], batch_stats)
    _check_params(x.shape[1], fc1_weight, fc2_weight, conv_weight, bn_weight, bn_bias)
    be = CBAM_OP.backend(x)
    if be == 'torch':
        return cbam_reference(x, fc1_weight, fc2_weight, conv_weight, bn_weight, bn_bias, running_mean, running_var,
                              training, momentum, eps, fc1_bias, fc2_bias)
    return cbam_fused(x, fc1_weight, fc2_weight, conv_weight, bn_weight, bn_bias, fc1_bias, fc2_bias, running_mean,
                      running_var, batch_stats, momentum, eps, be)

class _ChannelGate(nn.Module):
    "Holds the channel gate's MLP as timm's `ChannelAttn` does (`fc1`, `fc2`)."
    def __init__(self, channels, rd_channels, bias, **dd):
        super().__init__()
        self.fc1 = nn.Conv2d(channels, rd_channels, 1, bias=bias, **dd)
        self.fc2 = nn.Conv2d(rd_channels, channels, 1, bias=bias, **dd)

class _ConvBN(nn.Module):
    "Holds the spatial gate's convolution and batch norm as timm's `ConvNormAct` does (`conv`, `bn`)."
    def __init__(self, kernel_size, **dd):
        super().__init__()
        self.conv = nn.Conv2d(2, 1, kernel_size, padding=kernel_size // 2, bias=False, **dd)
        self.bn = nn.BatchNorm2d(1, **dd)

class _SpatialGate(nn.Module):
    "Holds the spatial gate as timm's `SpatialAttn` does (`conv`)."
    def __init__(self, kernel_size, **dd):
        super().__init__()
        self.conv = _ConvBN(kernel_size, **dd)

class CBAM(nn.Module):
    "CBAM attention (Woo et al. 2018) with timm `CbamModule`'s parameters, state-dict keys and maths, on fused kernels."
    def __init__(self, channels:int, # input channels
                 rd_ratio:float=1/16, # hidden channels of the channel gate's MLP, as a fraction of `channels`
                 spatial_kernel_size:int=7, # odd size of the spatial gate's convolution
                 *, rd_channels:int|None=None, rd_divisor:int=1, mlp_bias:bool=False, # as timm's `CbamModule`
                 device=None, dtype=None):
        super().__init__()
        if channels < 1: raise ValueError(f"channels must be positive, not {channels}")
        if spatial_kernel_size < 1 or spatial_kernel_size % 2 == 0:
            raise ValueError(f"spatial_kernel_size must be a positive odd number, not {spatial_kernel_size}")
        if not rd_channels:  # timm's make_divisible(channels * rd_ratio, rd_divisor, round_limit=0.)
            rd_channels = max(rd_divisor, int(channels * rd_ratio + rd_divisor / 2) // rd_divisor * rd_divisor)
        dd = dict(device=device, dtype=dtype)
        self.channel = _ChannelGate(channels, rd_channels, mlp_bias, **dd)
        self.spatial = _SpatialGate(spatial_kernel_size, **dd)
    def forward(self, x): return cbam(x, self)
    def extra_repr(self):
        return f"channels={self.channel.fc1.in_channels}, rd_channels={self.channel.fc1.out_channels}, spatial_kernel_size={self.spatial.conv.conv.kernel_size[0]}"
