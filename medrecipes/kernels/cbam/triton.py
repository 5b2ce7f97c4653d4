"""Triton backend of the fused CBAM passes: the six ops of the CBAM backend interface.

x, g: B x C x H x W, float32/float16/bfloat16, NCHW-contiguous or channels_last (read through their strides; H and W
are walked as one pixel axis, so only layouts where that is impossible are copied). Small tensors (a[B,C], s[B,H,W],
...) are float32. Every op reads each full-size tensor once; only `apply_gates` and `input_grad` write one (in x's
dtype and layout). All arithmetic is float32. Offsets within one sample are int32 (a sample spans < 2**31 elements).

Reductions are deterministic: a program loops over its part of the reduced axis with per-lane accumulators; when the
axis is split across programs (to fill the GPU), each program writes a partial to a small buffer and torch reduces the
buffer. A max comes with the count of elements equal to it, so gradients split evenly among ties like torch.amax's.

Works on CUDA tensors, and on CPU tensors when TRITON_INTERPRET=1 was set before triton was imported (`INTERPRETED`
records which mode this module was imported in).
"""
import functools

import torch
import triton
import triton.language as tl
from triton.runtime.interpreter import InterpretedFunction
from .._common import on_device as _on_device

__all__ = ['INTERPRETED', 'channel_pool', 'spatial_pool', 'apply_gates', 'spatial_gate_grad', 'channel_gate_grad', 'input_grad']

MIN_PROGRAMS = None  # programs a reduction aims to launch; None: 4 per SM on CUDA, 1 on CPU (the interpreter)
TILE = 2048  # elements of one [BLOCK_C, BLOCK_P] tile
LONG_SIDE = {'nchw': 256, 'channels_last': 64}  # tile length along the contiguous axis (pixels, channels)
_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


# ----------------------------------------------------------------------------------------------------------- kernels
@triton.jit
def _max_count_update(m, n, v, valid):
    "Per-lane running max `m` and count `n` of elements equal to it, updated with `v` where `valid`."
    v = tl.where(valid, v, float('-inf'))
    n = tl.where(v > m, 1, tl.where(valid & (v == m), n + 1, n))
    return tl.maximum(m, v), n


@triton.jit
def _max_count_reduce(m, n, AXIS: tl.constexpr):
    "Max of the per-lane maxima along AXIS and the total count of elements equal to it."
    mx = tl.max(m, axis=AXIS)
    return mx, tl.sum(tl.where(m == tl.expand_dims(mx, AXIS), n, 0), axis=AXIS).to(tl.float32)


@triton.jit
def _channel_pool_kernel(x_ptr, sum_ptr, max_ptr, cnt_ptr, C, HW, CHUNK, sxb, sxc, sxp,
                         BLOCK_C: tl.constexpr, BLOCK_P: tl.constexpr):
    "Grid (B, C blocks, splits of HW): sum, max and max count over pixels [split*CHUNK, +CHUNK) of BLOCK_C channels."
    b, sp = tl.program_id(0), tl.program_id(2)
    c = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
    cmask = c < C
    rows = x_ptr + b.to(tl.int64) * sxb + c[:, None] * sxc
    acc = tl.zeros([BLOCK_C, BLOCK_P], tl.float32)
    m = tl.full([BLOCK_C, BLOCK_P], float('-inf'), tl.float32)
    n = tl.zeros([BLOCK_C, BLOCK_P], tl.int32)
    start = sp * CHUNK
    for p0 in range(start, tl.minimum(start + CHUNK, HW), BLOCK_P):
        p = p0 + tl.arange(0, BLOCK_P)
        valid = cmask[:, None] & (p < HW)[None, :]
        v = tl.load(rows + p[None, :] * sxp, mask=valid, other=0.).to(tl.float32)
        acc += v
        m, n = _max_count_update(m, n, v, valid)
    mx, cnt = _max_count_reduce(m, n, 1)
    out = (sp * tl.num_programs(0) + b) * C + c
    tl.store(sum_ptr + out, tl.sum(acc, axis=1), mask=cmask)
    tl.store(max_ptr + out, mx, mask=cmask)
    tl.store(cnt_ptr + out, cnt, mask=cmask)


@triton.jit
def _spatial_pool_kernel(x_ptr, a_ptr, sum_ptr, max_ptr, cnt_ptr, C, HW, CHUNK, sxb, sxc, sxp,
                         BLOCK_C: tl.constexpr, BLOCK_P: tl.constexpr):
    "Grid (pixel blocks, B, splits of C): sum, max and max count of y = x*a over channels [split*CHUNK, +CHUNK)."
    b, sp = tl.program_id(1), tl.program_id(2)
    p = tl.program_id(0) * BLOCK_P + tl.arange(0, BLOCK_P)
    pmask = p < HW
    cols = x_ptr + b.to(tl.int64) * sxb + p[None, :] * sxp
    acc = tl.zeros([BLOCK_C, BLOCK_P], tl.float32)
    m = tl.full([BLOCK_C, BLOCK_P], float('-inf'), tl.float32)
    n = tl.zeros([BLOCK_C, BLOCK_P], tl.int32)
    start = sp * CHUNK
    for c0 in range(start, tl.minimum(start + CHUNK, C), BLOCK_C):
        c = c0 + tl.arange(0, BLOCK_C)
        valid = (c < C)[:, None] & pmask[None, :]
        av = tl.load(a_ptr + b * C + c, mask=c < C, other=0.)
        v = tl.load(cols + c[:, None] * sxc, mask=valid, other=0.).to(tl.float32) * av[:, None]
        acc += v
        m, n = _max_count_update(m, n, v, valid)
    mx, cnt = _max_count_reduce(m, n, 0)
    out = (sp * tl.num_programs(1) + b).to(tl.int64) * HW + p
    tl.store(sum_ptr + out, tl.sum(acc, axis=0), mask=pmask)
    tl.store(max_ptr + out, mx, mask=pmask)
    tl.store(cnt_ptr + out, cnt, mask=pmask)


@triton.jit
def _spatial_gate_grad_kernel(g_ptr, x_ptr, a_ptr, ds_ptr, C, HW, CHUNK, sgb, sgc, sgp, sxb, sxc, sxp,
                              BLOCK_C: tl.constexpr, BLOCK_P: tl.constexpr):
    "Grid (pixel blocks, B, splits of C): sum of g*x*a over channels [split*CHUNK, +CHUNK)."
    b, sp = tl.program_id(1), tl.program_id(2)
    p = tl.program_id(0) * BLOCK_P + tl.arange(0, BLOCK_P)
    pmask = p < HW
    gcols = g_ptr + b.to(tl.int64) * sgb + p[None, :] * sgp
    xcols = x_ptr + b.to(tl.int64) * sxb + p[None, :] * sxp
    acc = tl.zeros([BLOCK_C, BLOCK_P], tl.float32)
    start = sp * CHUNK
    for c0 in range(start, tl.minimum(start + CHUNK, C), BLOCK_C):
        c = c0 + tl.arange(0, BLOCK_C)
        valid = (c < C)[:, None] & pmask[None, :]
        av = tl.load(a_ptr + b * C + c, mask=c < C, other=0.)
        gv = tl.load(gcols + c[:, None] * sgc, mask=valid, other=0.).to(tl.float32)
        xv = tl.load(xcols + c[:, None] * sxc, mask=valid, other=0.).to(tl.float32)
        acc += gv * xv * av[:, None]
    tl.store(ds_ptr + (sp * tl.num_programs(1) + b).to(tl.int64) * HW + p, tl.sum(acc, axis=0), mask=pmask)


@triton.jit
def _dy1(gv, xv, av, pix, C, s_ptr, dmean_ptr, dmax_ptr, smax_ptr, scnt_ptr, pmask):
    "Gradient of y1 = x*a on a [BLOCK_C, BLOCK_P] tile: g*s + dmean/C + dmax*[x*a == smax]/scnt."
    sv = tl.load(s_ptr + pix, mask=pmask, other=0.)
    dmean = tl.load(dmean_ptr + pix, mask=pmask, other=0.) / C
    wmax = tl.load(dmax_ptr + pix, mask=pmask, other=0.) / tl.load(scnt_ptr + pix, mask=pmask, other=1.)
    smax = tl.load(smax_ptr + pix, mask=pmask, other=0.)
    tie = xv * av[:, None] == smax[None, :]
    return gv * sv[None, :] + dmean[None, :] + tl.where(tie, wmax[None, :], 0.)


@triton.jit
def _channel_gate_grad_kernel(g_ptr, x_ptr, a_ptr, s_ptr, dmean_ptr, dmax_ptr, smax_ptr, scnt_ptr, da_ptr,
                              C, HW, CHUNK, sgb, sgc, sgp, sxb, sxc, sxp,
                              BLOCK_C: tl.constexpr, BLOCK_P: tl.constexpr):
    "Grid (B, C blocks, splits of HW): sum of dy1*x over pixels [split*CHUNK, +CHUNK)."
    b, sp = tl.program_id(0), tl.program_id(2)
    c = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
    cmask = c < C
    av = tl.load(a_ptr + b * C + c, mask=cmask, other=0.)
    grows = g_ptr + b.to(tl.int64) * sgb + c[:, None] * sgc
    xrows = x_ptr + b.to(tl.int64) * sxb + c[:, None] * sxc
    acc = tl.zeros([BLOCK_C, BLOCK_P], tl.float32)
    start = sp * CHUNK
    for p0 in range(start, tl.minimum(start + CHUNK, HW), BLOCK_P):
        p = p0 + tl.arange(0, BLOCK_P)
        pmask = p < HW
        valid = cmask[:, None] & pmask[None, :]
        gv = tl.load(grows + p[None, :] * sgp, mask=valid, other=0.).to(tl.float32)
        xv = tl.load(xrows + p[None, :] * sxp, mask=valid, other=0.).to(tl.float32)
        dy1 = _dy1(gv, xv, av, b.to(tl.int64) * HW + p, C, s_ptr, dmean_ptr, dmax_ptr, smax_ptr, scnt_ptr, pmask)
        acc += dy1 * xv
    tl.store(da_ptr + (sp * tl.num_programs(0) + b) * C + c, tl.sum(acc, axis=1), mask=cmask)


@triton.jit
def _apply_gates_kernel(x_ptr, a_ptr, s_ptr, out_ptr, C, HW, sxb, sxc, sxp, sob, soc, sop,
                        BLOCK_C: tl.constexpr, BLOCK_P: tl.constexpr):
    "Grid (pixel blocks, C blocks, B): out = x * a[b,c] * s[b,p]."
    b = tl.program_id(2)
    p = tl.program_id(0) * BLOCK_P + tl.arange(0, BLOCK_P)
    c = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
    pmask, cmask = p < HW, c < C
    valid = cmask[:, None] & pmask[None, :]
    b64 = b.to(tl.int64)
    xv = tl.load(x_ptr + b64 * sxb + c[:, None] * sxc + p[None, :] * sxp, mask=valid, other=0.).to(tl.float32)
    av = tl.load(a_ptr + b * C + c, mask=cmask, other=0.)
    sv = tl.load(s_ptr + b64 * HW + p, mask=pmask, other=0.)
    out = xv * av[:, None] * sv[None, :]
    tl.store(out_ptr + b64 * sob + c[:, None] * soc + p[None, :] * sop, out.to(out_ptr.dtype.element_ty), mask=valid)


@triton.jit
def _input_grad_kernel(g_ptr, x_ptr, a_ptr, s_ptr, dmean_ptr, dmax_ptr, smax_ptr, scnt_ptr,
                       dcavg_ptr, dcmax_ptr, cmax_ptr, ccnt_ptr, dx_ptr, C, HW,
                       sgb, sgc, sgp, sxb, sxc, sxp, sob, soc, sop, BLOCK_C: tl.constexpr, BLOCK_P: tl.constexpr):
    "Grid (pixel blocks, C blocks, B): dx = dy1*a + dcavg/HW + dcmax*[x == cmax]/ccnt."
    b = tl.program_id(2)
    p = tl.program_id(0) * BLOCK_P + tl.arange(0, BLOCK_P)
    c = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
    pmask, cmask = p < HW, c < C
    valid = cmask[:, None] & pmask[None, :]
    b64 = b.to(tl.int64)
    gv = tl.load(g_ptr + b64 * sgb + c[:, None] * sgc + p[None, :] * sgp, mask=valid, other=0.).to(tl.float32)
    xv = tl.load(x_ptr + b64 * sxb + c[:, None] * sxc + p[None, :] * sxp, mask=valid, other=0.).to(tl.float32)
    bc = b * C + c
    av = tl.load(a_ptr + bc, mask=cmask, other=0.)
    dcavg = tl.load(dcavg_ptr + bc, mask=cmask, other=0.) / HW
    wmax = tl.load(dcmax_ptr + bc, mask=cmask, other=0.) / tl.load(ccnt_ptr + bc, mask=cmask, other=1.)
    cmax = tl.load(cmax_ptr + bc, mask=cmask, other=0.)
    dy1 = _dy1(gv, xv, av, b64 * HW + p, C, s_ptr, dmean_ptr, dmax_ptr, smax_ptr, scnt_ptr, pmask)
    dx = dy1 * av[:, None] + dcavg[:, None] + tl.where(xv == cmax[:, None], wmax[:, None], 0.)
    tl.store(dx_ptr + b64 * sob + c[:, None] * soc + p[None, :] * sop, dx.to(dx_ptr.dtype.element_ty), mask=valid)


INTERPRETED = isinstance(_channel_pool_kernel, InterpretedFunction)


# --------------------------------------------------------------------------------------------------------- launchers
def _big(name, t, like=None):
    "Check a full-size tensor; return it (copied only if H and W cannot be walked as one axis) and (sb, sc, sp)."
    if not isinstance(t, torch.Tensor) or t.dim() != 4:
        raise ValueError(f'{name} must be a B x C x H x W tensor, got {getattr(t, "shape", type(t).__name__)}')
    if t.dtype not in _DTYPES: raise TypeError(f'{name} must be float32, float16 or bfloat16, got {t.dtype}')
    if like is not None and (t.shape != like.shape or t.device != like.device):
        raise ValueError(f'{name} must have the shape and device of x ({tuple(like.shape)}, {like.device}), '
                         f'got {tuple(t.shape)} on {t.device}')
    if t.numel() == 0: raise ValueError(f'{name} must not be empty, got shape {tuple(t.shape)}')
    if sum((n - 1) * abs(st) for n, st in zip(t.shape[1:], t.stride()[1:])) >= 2**31:  # offsets within a sample: int32
        raise ValueError(f'{name} must span fewer than 2**31 elements per sample, got shape {tuple(t.shape)}')
    _, _, H, W = t.shape
    sb, sc, sh, sw = t.stride()
    if W == 1: return t, (sb, sc, sh)
    if H == 1 or sh == W * sw: return t, (sb, sc, sw)
    t = t.contiguous()
    return t, (t.stride(0), t.stride(1), 1)


def _small(name, t, shape, x):
    "A small float32 tensor of `shape` (any shape with that many elements is accepted) on x's device, contiguous."
    n = 1
    for d in shape: n *= d
    if not isinstance(t, torch.Tensor) or t.numel() != n or t.device != x.device:
        raise ValueError(f'{name} must be a float32 tensor of shape {tuple(shape)} on {x.device}, '
                         f'got {tuple(getattr(t, "shape", ()))} on {getattr(t, "device", None)}')
    return t.detach().reshape(shape).to(torch.float32).contiguous()


def _tile(x, C, HW):
    """BLOCK_C, BLOCK_P and the launch options: the contiguous axis (pixels in NCHW, channels in channels_last) gets
    the tile's long side; a warp per 256 elements (8 warps for a full tile keep registers low)."""
    np2 = triton.next_power_of_2
    if x.stride(1) == 1 and C > 1:
        bc = min(LONG_SIDE['channels_last'], np2(C)); bp = min(TILE // bc, np2(HW))
    else:
        bp = min(LONG_SIDE['nchw'], np2(HW)); bc = min(TILE // bp, np2(C))
    return bc, bp, dict(BLOCK_C=bc, BLOCK_P=bp, num_warps=max(1, min(8, bc * bp // 256)))


@functools.lru_cache(maxsize=None)
def _sm_count(index):
    return torch.cuda.get_device_properties(index).multi_processor_count


def _split(programs, n, block, device):
    "Split a reduced axis of n elements (walked `block` at a time) to launch about MIN_PROGRAMS: (splits, chunk)."
    target = MIN_PROGRAMS or (4 * _sm_count(device.index or 0) if device.type == 'cuda' else 1)
    steps = triton.cdiv(n, block)
    chunk = triton.cdiv(steps, max(1, min(steps, triton.cdiv(target, programs)))) * block
    return triton.cdiv(n, chunk), chunk


def _sum_parts(p): return p[0] if p.shape[0] == 1 else p.sum(0)


def _max_parts(pm, pn):
    "Combine per-split maxima and counts: the max, and the summed counts of the splits that reach it."
    if pm.shape[0] == 1: return pm[0], pn[0]
    m = pm.amax(0)
    return m, torch.where(pm == m, pn, 0.).sum(0)


def _parts(splits, *shape, device):
    return [torch.empty(splits, *shape, device=device, dtype=torch.float32) for _ in range(3)]


@_on_device
def channel_pool(x):
    "F1: per-(b, c) mean, max and count of elements equal to the max, over the pixels of x. Each [B, C] float32."
    x, sx = _big('x', x)
    B, C, H, W = x.shape
    HW = H * W
    bc, bp, meta = _tile(x, C, HW)
    nc = triton.cdiv(C, bc)
    splits, chunk = _split(B * nc, HW, bp, x.device)
    ps, pm, pn = _parts(splits, B, C, device=x.device)
    _channel_pool_kernel[(B, nc, splits)](x, ps, pm, pn, C, HW, chunk, *sx, **meta)
    return (_sum_parts(ps) / HW, *_max_parts(pm, pn))


@_on_device
def spatial_pool(x, a):
    "F2: per-(b, h, w) mean, max and count of the max over channels of y1 = x * a[b, c]. Each [B, H, W] float32."
    x, sx = _big('x', x)
    B, C, H, W = x.shape
    HW = H * W
    a = _small('a', a, (B, C), x)
    bc, bp, meta = _tile(x, C, HW)
    npb = triton.cdiv(HW, bp)
    splits, chunk = _split(B * npb, C, bc, x.device)
    ps, pm, pn = _parts(splits, B, H, W, device=x.device)
    _spatial_pool_kernel[(npb, B, splits)](x, a, ps, pm, pn, C, HW, chunk, *sx, **meta)
    return (_sum_parts(ps) / C, *_max_parts(pm, pn))


@_on_device
def apply_gates(x, a, s):
    "F3: out = x * a[b, c] * s[b, h, w], in x's dtype and layout."
    x, sx = _big('x', x)
    B, C, H, W = x.shape
    HW = H * W
    a, s = _small('a', a, (B, C), x), _small('s', s, (B, H, W), x)
    out, so = _big('out', torch.empty_like(x))
    bc, bp, meta = _tile(x, C, HW)
    _apply_gates_kernel[(triton.cdiv(HW, bp), triton.cdiv(C, bc), B)](x, a, s, out, C, HW, *sx, *so, **meta)
    return out


@_on_device
def spatial_gate_grad(g, x, a):
    "B1: ds[b, h, w] = sum_c g * x * a[b, c], [B, H, W] float32."
    x, sx = _big('x', x)
    g, sg = _big('g', g, like=x)
    B, C, H, W = x.shape
    HW = H * W
    a = _small('a', a, (B, C), x)
    bc, bp, meta = _tile(x, C, HW)
    npb = triton.cdiv(HW, bp)
    splits, chunk = _split(B * npb, C, bc, x.device)
    ds = torch.empty(splits, B, H, W, device=x.device, dtype=torch.float32)
    _spatial_gate_grad_kernel[(npb, B, splits)](g, x, a, ds, C, HW, chunk, *sg, *sx, **meta)
    return _sum_parts(ds)


@_on_device
def channel_gate_grad(g, x, a, s, dmean, dmax, smax, scnt):
    "B2: da[b, c] = sum_p dy1 * x with dy1 = g*s + dmean/C + dmax*[x*a == smax]/scnt, [B, C] float32."
    x, sx = _big('x', x)
    g, sg = _big('g', g, like=x)
    B, C, H, W = x.shape
    HW = H * W
    a = _small('a', a, (B, C), x)
    maps = [_small(k, v, (B, H, W), x) for k, v in dict(s=s, dmean=dmean, dmax=dmax, smax=smax, scnt=scnt).items()]
    bc, bp, meta = _tile(x, C, HW)
    nc = triton.cdiv(C, bc)
    splits, chunk = _split(B * nc, HW, bp, x.device)
    da = torch.empty(splits, B, C, device=x.device, dtype=torch.float32)
    _channel_gate_grad_kernel[(B, nc, splits)](g, x, a, *maps, da, C, HW, chunk, *sg, *sx, **meta)
    return _sum_parts(da)


@_on_device
def input_grad(g, x, a, s, dmean, dmax, smax, scnt, dcavg, dcmax, cmax, ccnt):
    "B3: dx = dy1 * a + dcavg/(H*W) + dcmax*[x == cmax]/ccnt, in x's dtype and layout."
    x, sx = _big('x', x)
    g, sg = _big('g', g, like=x)
    B, C, H, W = x.shape
    HW = H * W
    a = _small('a', a, (B, C), x)
    maps = [_small(k, v, (B, H, W), x) for k, v in dict(s=s, dmean=dmean, dmax=dmax, smax=smax, scnt=scnt).items()]
    vecs = [_small(k, v, (B, C), x) for k, v in dict(dcavg=dcavg, dcmax=dcmax, cmax=cmax, ccnt=ccnt).items()]
    dx, so = _big('dx', torch.empty_like(x))
    bc, bp, meta = _tile(x, C, HW)
    _input_grad_kernel[(triton.cdiv(HW, bp), triton.cdiv(C, bc), B)](g, x, a, *maps, *vecs, dx, C, HW, *sg, *sx, *so,
                                                                     **meta)
    return dx
