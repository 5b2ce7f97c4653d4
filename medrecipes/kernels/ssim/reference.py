"""SSIM in plain PyTorch with autograd: the oracle every backend is tested against, and the path exporters trace.

Conventions follow pytorch-msssim: an 11-tap Gaussian window (sigma 1.5) applied separably with no padding ("valid"
windows), population variances, `C1=(K1 L)^2`, `C2=(K2 L)^2`, the mean of the SSIM map over the valid area; an
image's value is the mean over its channels. Unlike pytorch-msssim, an image smaller than the window is an error.
"""
from __future__ import annotations
import torch
import torch.nn.functional as F
from .._common import gaussian_window

__all__ = ['check_ssim_inputs', 'ssim_constants', 'ssim_reference']


def check_ssim_inputs(x:torch.Tensor, y:torch.Tensor, win_size:int):
    "Raise a clear error for inputs SSIM cannot take (the NaN check is skipped while `torch.compile` traces)."
    for n, t in (('x', x), ('y', y)):
        if not isinstance(t, torch.Tensor): raise TypeError(f"{n} must be a tensor, not {type(t).__name__}")
        if t.dim() != 4: raise ValueError(f"{n} must be B x C x H x W, got shape {tuple(t.shape)}")
        if not t.is_floating_point(): raise TypeError(f"{n} must be a floating-point tensor, got {t.dtype}")
    if x.shape != y.shape: raise ValueError(f"x and y must have the same shape, got {tuple(x.shape)} and {tuple(y.shape)}")
    if x.device != y.device: raise ValueError(f"x and y are on different devices ({x.device}, {y.device})")
    if win_size < 1 or win_size % 2 == 0: raise ValueError(f"win_size must be a positive odd number, not {win_size}")
    H, W = x.shape[-2:]
    if H < win_size or W < win_size:
        raise ValueError(f"images of {H}x{W} are smaller than the {win_size}x{win_size} SSIM window; use a smaller win_size or larger images")
    if not torch.compiler.is_compiling():  # a data-dependent branch: it would split a compiled graph
        for n, t in (('x', x), ('y', y)):
            if torch.isnan(t).any(): raise ValueError(f"{n} contains NaN")


def ssim_constants(data_range, k) -> tuple[float, float]:
    "`(C1, C2) = ((K1 L)^2, (K2 L)^2)`."
    return (k[0] * data_range) ** 2, (k[1] * data_range) ** 2


def ssim_reference(x:torch.Tensor, y:torch.Tensor, data_range:float=1.0, win_size:int=11, sigma:float=1.5,
                   k=(0.01, 0.03)) -> torch.Tensor:
    "Per-image SSIM (B,) in plain PyTorch with autograd: the oracle. Half types are computed in float32."
    check_ssim_inputs(x, y, win_size)
    dt = torch.float64 if x.dtype == torch.float64 else torch.float32
    x, y = x.to(dt), y.to(dt)
    B, C, H, W = x.shape
    g = gaussian_window(win_size, sigma, dt, x.device)
    m = torch.cat([x, y, x * x, y * y, x * y], dim=1)            # the five moments, one grouped convolution pair
    m = F.conv2d(m, g.view(1, 1, 1, -1).expand(5 * C, 1, 1, win_size), groups=5 * C)
    m = F.conv2d(m, g.view(1, 1, -1, 1).expand(5 * C, 1, win_size, 1), groups=5 * C)
    mx, my, exx, eyy, exy = m.split(C, dim=1)
    c1, c2 = ssim_constants(data_range, k)
    sxx, syy, sxy = exx - mx * mx, eyy - my * my, exy - mx * my
    s = ((2 * mx * my + c1) * (2 * sxy + c2)) / ((mx * mx + my * my + c1) * (sxx + syy + c2))
    return s.mean(dim=(1, 2, 3))
