"""The CBAM op table: the six passes over the feature map a fast backend implements, and the C++ backend.

| pass | reads | returns |
|---|---|---|
| `channel_pool(x)` | x | `cavg, cmax, ccnt` (B x C: mean, max, number of maxima over the pixels) |
| `spatial_pool(x, a)` | x | `smean, smax, scnt` (B x H x W, of `y1 = x * a` over the channels) |
| `apply_gates(x, a, s)` | x | `out = x * a * s` (x's dtype and layout) |
| `spatial_gate_grad(g, x, a)` | g, x | `ds = sum_c g * x * a` |
| `channel_gate_grad(g, x, a, s, dmean, dmax, smax, scnt)` | g, x | `da = sum_p dy1 * x`, `dy1 = g s + dmean / C + [x a == smax] dmax / scnt` |
| `input_grad(g, x, a, s, dmean, dmax, smax, scnt, dcavg, dcmax, cmax, ccnt)` | g, x | `dx = dy1 a + dcavg / HW + [x == cmax] dcmax / ccnt` |

Small tensors are float32 and contiguous (float64 for float64 inputs in C++). Max pooling passes its gradient evenly
to tied maxima, as torch's `amax` does. The Triton backend (`triton.py`) and the oracle
(`reference.ReferenceCBAMOps`) define the same six passes.
"""
from __future__ import annotations
import torch
from .._common import compute_dtype, is_channels_last
from .._backend import _cpu

__all__ = ['CBAM_OPS', 'CppCBAMOps']

CBAM_OPS = ('channel_pool', 'spatial_pool', 'apply_gates', 'spatial_gate_grad', 'channel_gate_grad', 'input_grad')


class CppCBAMOps:
    "The six CBAM passes of `csrc/cbam.cpp` on CPU tensors (channels-last handled natively; half types in float32)."
    @staticmethod
    def _big(t, x):
        "`t` (B x C x H x W) as the C++ kernels take it: `x`'s layout (NCHW, or NHWC memory), float32/float64."
        t = t.detach().to(compute_dtype(x))
        return (t.permute(0, 2, 3, 1) if is_channels_last(x) else t).contiguous().numpy()
    @staticmethod
    def _small(t, x): return t.detach().to(compute_dtype(x)).contiguous().numpy()
    @staticmethod
    def _out(o, x):
        o = torch.from_numpy(o)
        return (o.permute(0, 3, 1, 2) if is_channels_last(x) else o).to(x.dtype)
    @staticmethod
    def _call(name, x, big, small):
        return getattr(_cpu, 'cbam_' + name)(*[CppCBAMOps._big(t, x) for t in big], *[CppCBAMOps._small(t, x) for t in small],
                                              channels_last=is_channels_last(x))

    @staticmethod
    def channel_pool(x):
        return tuple(map(torch.from_numpy, CppCBAMOps._call('channel_pool', x, [x], [])))
    @staticmethod
    def spatial_pool(x, a):
        return tuple(map(torch.from_numpy, CppCBAMOps._call('spatial_pool', x, [x], [a])))
    @staticmethod
    def apply_gates(x, a, s): return CppCBAMOps._out(CppCBAMOps._call('apply_gates', x, [x], [a, s]), x)
    @staticmethod
    def spatial_gate_grad(g, x, a): return torch.from_numpy(CppCBAMOps._call('spatial_gate_grad', x, [g, x], [a]))
    @staticmethod
    def channel_gate_grad(g, x, a, s, dmean, dmax, smax, scnt):
        return torch.from_numpy(CppCBAMOps._call('channel_gate_grad', x, [g, x], [a, s, dmean, dmax, smax, scnt]))
    @staticmethod
    def input_grad(g, x, a, s, dmean, dmax, smax, scnt, dcavg, dcmax, cmax, ccnt):
        return CppCBAMOps._out(CppCBAMOps._call('input_grad', x, [g, x], [a, s, dmean, dmax, smax, scnt, dcavg, dcmax, cmax, ccnt]), x)
