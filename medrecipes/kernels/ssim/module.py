"""`ssim(x, y)` and `SSIMLoss`: one call, the fastest backend for the tensor's device, the reference as the oracle."""
from __future__ import annotations
import torch
import torch.nn as nn
from .._backend import KernelOp
from .reference import check_ssim_inputs, ssim_constants, ssim_reference
from .function import ssim_planes

__all__ = ['SSIM', 'ssim_backend', 'cpp_available', 'triton_available', 'ssim', 'SSIMLoss']

SSIM = KernelOp('SSIM', ('ssim_forward', 'ssim_backward'), 'medrecipes.kernels.ssim.triton', ('forward', 'backward'))


def ssim_backend(t:torch.Tensor) -> str:
    "The backend `ssim` uses for tensor `t`: the one asked for (`use_backend`, `MEDRECIPES_BACKEND`), else the fastest for its device."
    return SSIM.backend(t)


def cpp_available() -> bool:
    "Whether the C++ SSIM kernel was built."
    return SSIM.cpp_available()


def triton_available(t:torch.Tensor|None=None) -> bool:
    "Whether the Triton SSIM kernel can run on `t` (or, without `t`, imports): CUDA tensors, or CPU ones in Triton's interpreter."
    return SSIM.triton_available(t)


def ssim(x:torch.Tensor, y:torch.Tensor, # B x C x H x W images, any float dtype
         data_range:float=1.0, # value range of the images (1 for [0,1], 255 for 8-bit)
         win_size:int=11, sigma:float=1.5, k=(0.01, 0.03), # Gaussian window and constants, as pytorch-msssim
         reduction:str='mean', # 'mean' over the batch, or 'none' for one value per image
        ) -> torch.Tensor:
    "Structural similarity of `x` and `y`, differentiable in both."
    if reduction not in ('mean', 'none'): raise ValueError(f"reduction must be 'mean' or 'none', not {reduction!r}")
    check_ssim_inputs(x, y, win_size)
    be = SSIM.backend(x)
    if be == 'torch': s = ssim_reference(x, y, data_range, win_size, sigma, k).to(x.dtype)
    else:
        B, C = x.shape[:2]
        s = ssim_planes(x, y, win_size, sigma, *ssim_constants(data_range, k), be).view(B, C).mean(1).to(x.dtype)
    return s.mean() if reduction == 'mean' else s


class SSIMLoss(nn.Module):
    "1 - SSIM, usable as a fastai `loss_func` or combined with other losses."
    def __init__(self, data_range:float=1.0, win_size:int=11, sigma:float=1.5, k=(0.01, 0.03)):
        super().__init__(); self.data_range, self.win_size, self.sigma, self.k = data_range, win_size, sigma, tuple(k)
    def forward(self, pred, targ): return 1 - ssim(pred, targ, self.data_range, self.win_size, self.sigma, self.k)
