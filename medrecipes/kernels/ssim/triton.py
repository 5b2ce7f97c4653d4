"""Fused SSIM forward and hand-written backward in Triton.

Runs on CUDA tensors, or on CPU tensors when Triton's interpreter is on (`TRITON_INTERPRET=1` set before Triton is
first imported; `INTERPRETED` records which mode this module was imported in).

Conventions are those of pytorch-msssim and of `csrc/ssim.cpp`, which this mirrors: a normalised 1-D Gaussian window
g (size `win`, odd), separable "valid" blur (output Ho x Wo = (H-win+1) x (W-win+1)), population (co)variances,
C1=(K1*L)^2, C2=(K2*L)^2, per-plane value = mean of the SSIM map, per-image value = mean over channels.
Inputs of any float dtype are read as they are and accumulated in float32.

Numerics (as csrc/ssim.cpp): every plane is shifted by its own mean (x' = x - cx, y' = y - cy, the means computed by
torch in float32) before the moments are blurred; covariances are shift invariant and the means are shifted back, so
the function is unchanged but E[x'^2] - mu_x'^2 cancels far less in float32.

Forward (`_ssim_fwd_kernel`): one program per (plane, tile of BH x BW output pixels). It walks the BH + win - 1 input
rows of the tile and its halo; for each row it blurs the five moments x', y', x'^2, y'^2, x'y' horizontally (win
shifted loads of the row, products formed in registers) and adds the row, weighted by the vertical taps, to the
BH x BW accumulators of the output rows it touches (a rank-1 update with weights g[r - i]). The blurred moments never
leave registers. The program writes one partial sum of the SSIM map; torch sums the partials per plane (deterministic,
no atomics) in float64.

Backward, with A1=2mx my+C1, A2=2vxy+C2, B1=mx^2+my^2+C1, B2=vxx+vyy+C2, S=A1A2/(B1B2), s=grad_out/Npix:
  dS/dA1 = A2/(B1B2), dS/dA2 = A1/(B1B2), dS/dB1 = -S/B1, dS/dB2 = -S/B2
  gv = dS/dB2 (coefficient of E[x'^2] and E[y'^2]),  gc = 2 dS/dA2 (coefficient of E[x'y'])
  ax = 2my dS/dA1 + 2mx dS/dB1 - 2mu_x' gv - mu_y' gc   (coefficient of mu_x'), ay symmetric
  dL/dx = s (T(ax) + 2x' T(gv) + y' T(gc)),  dL/dy = s (T(ay) + 2y' T(gv) + x' T(gc))
where T is the transpose of the valid blur (full correlation with zero padding). The forward saves the four
coefficient maps (ax, ay, gv, gc) when a gradient is needed: 4 float32 buffers of Ho x Wo per plane, i.e. about four
float32 copies of the input on top of the inputs themselves (which are kept in their own dtype). The backward
(`_ssim_bwd_kernel`) is then one pass with the same tiling: one program per BH x BW tile of dx/dy, walking the
BH + win - 1 map rows that reach it, transposed horizontal blur of the four maps, rank-1 vertical accumulation, and
the combination with x', y' above.
"""
from __future__ import annotations
import torch
import triton
import triton.language as tl
from triton.runtime.interpreter import InterpretedFunction
from .._common import cached_window, device_ctx

__all__ = ['INTERPRETED', 'forward', 'backward', 'ssim_triton_planes', 'ssim_triton_backward']

BH = 16          # output rows per program (the tile also reads win - 1 halo rows)
MAX_BW = 64      # output columns per program
# warps per program, chosen from `ptxas -v` for sm_90 at 16 x 64 tiles, float32 (no spills either way): forward 141
# registers at 4 warps, 80 at 8; backward 91 at 4, 73 at 8. Not yet timed on a GPU.
FWD_WARPS, BWD_WARPS = 8, 4


@triton.jit
def _ssim_fwd_kernel(x_ptr, y_ptr, shift_ptr, g_ptr, part_ptr, coef_ptr,
                     H, W, Ho, Wo, n_tw, n_th, c1, c2,
                     WIN: tl.constexpr, BH: tl.constexpr, BW: tl.constexpr, SAVE: tl.constexpr):
    pid = tl.program_id(0)
    tw = pid % n_tw
    th = (pid // n_tw) % n_th
    p = (pid // (n_tw * n_th)).to(tl.int64)
    i0 = th * BH
    rows = tl.arange(0, BH)                      # local output rows
    cols = tw * BW + tl.arange(0, BW)            # output columns
    cm = cols < Wo
    cx = tl.load(shift_ptr + 2 * p)
    cy = tl.load(shift_ptr + 2 * p + 1)
    xbase = p * H * W
    u0 = tl.zeros([BH, BW], dtype=tl.float32)    # mu_x'
    u1 = tl.zeros([BH, BW], dtype=tl.float32)    # mu_y'
    e2 = tl.zeros([BH, BW], dtype=tl.float32)    # E[x'^2]
    e3 = tl.zeros([BH, BW], dtype=tl.float32)    # E[y'^2]
    e4 = tl.zeros([BH, BW], dtype=tl.float32)    # E[x'y']
    orow = i0 + rows
    # input row `row` feeds output rows row - t, 0 <= t < WIN: the tile's BH rows and its WIN-1 halo rows, within H
    for row in range(i0, tl.minimum(i0 + BH + WIN - 1, H)):
        # valid horizontal blur of the five shifted moments of the row (helpers inlined: the interpreter pays per call)
        xr = x_ptr + xbase + row * W + cols
        yr = y_ptr + xbase + row * W + cols
        h0 = tl.zeros([BW], dtype=tl.float32)
        h1 = tl.zeros([BW], dtype=tl.float32)
        h2 = tl.zeros([BW], dtype=tl.float32)
        h3 = tl.zeros([BW], dtype=tl.float32)
        h4 = tl.zeros([BW], dtype=tl.float32)
        for u in tl.static_range(WIN):
            gu = tl.load(g_ptr + u)
            a = tl.load(xr + u, mask=cm, other=0.).to(tl.float32) - cx
            b = tl.load(yr + u, mask=cm, other=0.).to(tl.float32) - cy
            ga = gu * a
            gb = gu * b
            h0 += ga
            h1 += gb
            h2 += ga * a
            h3 += gb * b
            h4 += ga * b
        t = row - orow
        w = tl.load(g_ptr + t, mask=(t >= 0) & (t < WIN), other=0.)[:, None]
        u0 += w * h0[None, :]
        u1 += w * h1[None, :]
        e2 += w * h2[None, :]
        e3 += w * h3[None, :]
        e4 += w * h4[None, :]
    vxx = e2 - u0 * u0
    vyy = e3 - u1 * u1
    vxy = e4 - u0 * u1
    mx = u0 + cx
    my = u1 + cy
    A1 = 2. * mx * my + c1
    A2 = 2. * vxy + c2
    B1 = mx * mx + my * my + c1
    B2 = vxx + vyy + c2
    inv = 1. / (B1 * B2)
    S = A1 * A2 * inv
    valid = (orow < Ho)[:, None] & cm[None, :]
    tl.store(part_ptr + pid, tl.sum(tl.sum(tl.where(valid, S, 0.), axis=1), axis=0))
    if SAVE:
        dA1 = A2 * inv
        gc = 2. * A1 * inv
        dB1 = -S / B1
        gv = -S / B2
        ax = 2. * (my * dA1 + mx * dB1) - 2. * u0 * gv - u1 * gc
        ay = 2. * (mx * dA1 + my * dB1) - 2. * u1 * gv - u0 * gc
        n = Ho * Wo
        q = coef_ptr + p * 4 * n + orow[:, None] * Wo + cols[None, :]
        tl.store(q, ax, mask=valid)
        tl.store(q + n, ay, mask=valid)
        tl.store(q + 2 * n, gv, mask=valid)
        tl.store(q + 3 * n, gc, mask=valid)


@triton.jit
def _ssim_bwd_kernel(x_ptr, y_ptr, shift_ptr, g_ptr, coef_ptr, scale_ptr, dx_ptr, dy_ptr,
                     H, W, Ho, Wo, n_tw, n_th,
                     WIN: tl.constexpr, BH: tl.constexpr, BW: tl.constexpr,
                     NEED_DX: tl.constexpr, NEED_DY: tl.constexpr):
    pid = tl.program_id(0)
    tw = pid % n_tw
    th = (pid // n_tw) % n_th
    p = (pid // (n_tw * n_th)).to(tl.int64)
    r0 = th * BH
    rows = tl.arange(0, BH)                      # local input (dx/dy) rows
    cols = tw * BW + tl.arange(0, BW)            # input columns
    cm = cols < W
    cw = cols - Wo
    n = Ho * Wo
    cbase = coef_ptr + p * 4 * n
    rr = r0 + rows
    o0 = tl.zeros([BH, BW], dtype=tl.float32)    # T(ax)
    o1 = tl.zeros([BH, BW], dtype=tl.float32)    # T(ay)
    o2 = tl.zeros([BH, BW], dtype=tl.float32)    # T(gv)
    o3 = tl.zeros([BH, BW], dtype=tl.float32)    # T(gc)
    # map row i feeds rows i + t, 0 <= t < WIN: the map rows r0 - (WIN-1) .. r0 + BH - 1, within 0 .. Ho-1
    for i in range(tl.maximum(r0 - (WIN - 1), 0), tl.minimum(r0 + BH, Ho)):
        # transposed horizontal blur (full correlation, zero padding) of the row of the four maps
        q0 = cbase + i * Wo + cols
        q1 = q0 + n
        q2 = q1 + n
        q3 = q2 + n
        h0 = tl.zeros([BW], dtype=tl.float32)
        h1 = tl.zeros([BW], dtype=tl.float32)
        h2 = tl.zeros([BW], dtype=tl.float32)
        h3 = tl.zeros([BW], dtype=tl.float32)
        for u in tl.static_range(WIN):
            gu = tl.load(g_ptr + u)
            m = (cols >= u) & (cw < u)           # 0 <= cols - u < Wo
            h0 += gu * tl.load(q0 - u, mask=m, other=0.)
            h1 += gu * tl.load(q1 - u, mask=m, other=0.)
            h2 += gu * tl.load(q2 - u, mask=m, other=0.)
            h3 += gu * tl.load(q3 - u, mask=m, other=0.)
        t = rr - i
        w = tl.load(g_ptr + t, mask=(t >= 0) & (t < WIN), other=0.)[:, None]
        o0 += w * h0[None, :]
        o1 += w * h1[None, :]
        o2 += w * h2[None, :]
        o3 += w * h3[None, :]
    s = tl.load(scale_ptr + p)
    cx = tl.load(shift_ptr + 2 * p)
    cy = tl.load(shift_ptr + 2 * p + 1)
    m2 = (rr < H)[:, None] & cm[None, :]
    off = p * H * W + rr[:, None] * W + cols[None, :]
    a = tl.load(x_ptr + off, mask=m2, other=0.).to(tl.float32) - cx
    b = tl.load(y_ptr + off, mask=m2, other=0.).to(tl.float32) - cy
    if NEED_DX:
        tl.store(dx_ptr + off, s * (o0 + 2. * a * o2 + b * o3), mask=m2)
    if NEED_DY:
        tl.store(dy_ptr + off, s * (o1 + 2. * b * o2 + a * o3), mask=m2)


INTERPRETED = isinstance(_ssim_fwd_kernel, InterpretedFunction)


def _check(x, y, win_size, sigma):
    for nm, t in (('x', x), ('y', y)):
        if not isinstance(t, torch.Tensor) or t.dim() != 4 or not t.is_floating_point():
            raise ValueError(f"Triton SSIM: {nm} must be a floating-point B x C x H x W tensor, got "
                             f"{tuple(t.shape) if isinstance(t, torch.Tensor) else type(t).__name__}")
    if x.shape != y.shape: raise ValueError(f"Triton SSIM: x and y must have the same shape, got {tuple(x.shape)} and {tuple(y.shape)}")
    if x.device != y.device: raise ValueError(f"Triton SSIM: x and y are on different devices ({x.device}, {y.device})")
    if x.device.type != 'cuda' and not (INTERPRETED and x.device.type == 'cpu'):
        raise RuntimeError(f"Triton SSIM takes CUDA tensors (or CPU tensors with TRITON_INTERPRET=1 set before Triton "
                           f"is imported), not {x.device.type} tensors")
    if win_size < 1 or win_size % 2 == 0: raise ValueError(f"win_size must be a positive odd number, not {win_size}")
    if not sigma > 0: raise ValueError(f"sigma must be positive, not {sigma}")
    H, W = x.shape[-2:]
    if H < win_size or W < win_size:
        raise ValueError(f"images of {H}x{W} are smaller than the {win_size}x{win_size} SSIM window")


TILE = None  # (BH, BW) for every launch when set: the tests use small tiles to put tile seams into small images


def _tile(rows, cols):
    """(BH, BW) for an output of rows x cols. Compiled: 16 x min(64, cols) tiles. Interpreted (programs run one after
    another in Python and cost about the same per row walked, whatever the tile's width): tiles up to 64 x 64, as tall
    as the output, so each input row is walked about once."""
    if TILE is not None: return TILE
    if INTERPRETED: return min(64, triton.next_power_of_2(rows)), min(64, triton.next_power_of_2(cols))
    return BH, min(MAX_BW, max(16, triton.next_power_of_2(cols)))


def ssim_triton_planes(x, y, data_range=1.0, win_size=11, sigma=1.5, k=(0.01, 0.03), save=False):
    """Per-plane SSIM, float32 (B*C,), of B x C x H x W tensors x, y (made contiguous here; no autograd).
    With `save`, returns `(values, coef, shift)`: the four float32 coefficient maps (B*C, 4, Ho, Wo) and the plane
    means (B*C, 2) that `ssim_triton_backward` takes."""
    c1, c2 = (k[0] * data_range) ** 2, (k[1] * data_range) ** 2
    return _planes(x, y, win_size, sigma, c1, c2, save)


def _planes(x, y, win_size, sigma, c1, c2, save):
    _check(x, y, win_size, sigma)
    x, y = x.detach().contiguous(), y.detach().contiguous()
    B, C, H, W = x.shape
    P, Ho, Wo = B * C, H - win_size + 1, W - win_size + 1
    shift = torch.stack([x.view(P, H * W).mean(1, dtype=torch.float32), y.view(P, H * W).mean(1, dtype=torch.float32)], 1).contiguous()
    if P == 0:
        e = x.new_zeros(0, dtype=torch.float32)
        return (e, x.new_zeros((0, 4, Ho, Wo), dtype=torch.float32), x.new_zeros((0, 2), dtype=torch.float32)) if save else e
    g = cached_window(win_size, float(sigma), x.device)
    bh, BW = _tile(Ho, Wo)
    n_tw, n_th = triton.cdiv(Wo, BW), triton.cdiv(Ho, bh)
    part = torch.empty(P * n_th * n_tw, dtype=torch.float32, device=x.device)
    coef = torch.empty((P, 4, Ho, Wo) if save else (1,), dtype=torch.float32, device=x.device)
    with device_ctx(x):
        _ssim_fwd_kernel[(P * n_th * n_tw,)](x, y, shift, g, part, coef, H, W, Ho, Wo, n_tw, n_th, float(c1), float(c2),
                                             WIN=win_size, BH=bh, BW=BW, SAVE=save, num_warps=FWD_WARPS)
    vals = (part.view(P, -1).sum(1, dtype=torch.float64) / (Ho * Wo)).float()
    return (vals, coef, shift) if save else vals


def ssim_triton_backward(x, y, coef, shift, scale, win_size=11, sigma=1.5, need=(True, True)):
    """Gradients (dx, dy) of sum_p scale[p] * Npix * ssim_p, from `ssim_triton_planes(..., save=True)`'s coef and
    shift; `scale` is float32 (B*C,) (the upstream gradient per plane divided by the map size). dx, dy are in x's and
    y's dtype; either is None when `need` says so."""
    x, y = x.detach().contiguous(), y.detach().contiguous()
    B, C, H, W = x.shape
    P, Ho, Wo = B * C, H - win_size + 1, W - win_size + 1
    if coef.shape != (P, 4, Ho, Wo): raise ValueError(f"coef must have shape {(P, 4, Ho, Wo)}, got {tuple(coef.shape)}")
    g = cached_window(win_size, float(sigma), x.device)
    dx = torch.empty_like(x) if need[0] else None
    dy = torch.empty_like(y) if need[1] else None
    if P == 0: return dx, dy
    bh, BW = _tile(H, W)
    n_tw, n_th = triton.cdiv(W, BW), triton.cdiv(H, bh)
    scale = scale.to(device=x.device, dtype=torch.float32).contiguous()
    with device_ctx(x):
        _ssim_bwd_kernel[(P * n_th * n_tw,)](x, y, shift, g, coef, scale, dx if need[0] else x, dy if need[1] else y,
                                             H, W, Ho, Wo, n_tw, n_th, WIN=win_size, BH=bh, BW=BW,
                                             NEED_DX=bool(need[0]), NEED_DY=bool(need[1]), num_warps=BWD_WARPS)
    return dx, dy


# ------------------------------------------------------------------------------------- the SSIM op table (ops.py)
def forward(x, y, win_size, sigma, c1, c2, save):
    "Per-plane SSIM (B*C,) float32 and, with `save`, the coefficient maps and plane means the backward reads."
    if save: return _planes(x, y, win_size, sigma, c1, c2, True)
    e = x.new_empty(0, dtype=torch.float32)
    return _planes(x, y, win_size, sigma, c1, c2, False), e, e.clone()


def backward(x, y, coef, shift, gvals, win_size, sigma, c1, c2, need):
    "(dx, dy) for the per-plane upstream gradient `gvals`; the forward is rerun when it saved nothing."
    if coef.numel() == 0: _, coef, shift = _planes(x, y, win_size, sigma, c1, c2, True)
    H, W = x.shape[-2:]
    scale = gvals.detach().float() / ((H - win_size + 1) * (W - win_size + 1))
    return ssim_triton_backward(x, y, coef, shift, scale, win_size, sigma, need=need)
