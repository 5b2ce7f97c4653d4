"""What the kernel tests share: one tolerance table and one relative-error helper.

`TOL[op][dtype]` is `(value, grad)`: the largest absolute error of a value (SSIM per image, the CBAM output) and the
largest relative RMS error (`rel_err`) of a gradient, for inputs of `dtype` compared with the reference evaluated in
float64 (float32 for the half types) on the same rounded inputs. `cbam_pass` is one fused pass's x-sized output
(relative RMS, the value and gradient alike).
"""
from collections import namedtuple
import torch

Tol = namedtuple('Tol', 'value grad')
TOL = {
    'ssim': {torch.float32: Tol(1e-5, 1e-4), torch.float64: Tol(1e-10, 1e-10),
             torch.float16: Tol(2e-3, 5e-3), torch.bfloat16: Tol(1e-2, 2e-2)},
    'cbam': {torch.float32: Tol(1e-5, 1e-5), torch.float64: Tol(1e-10, 1e-10),
             torch.float16: Tol(2e-3, 5e-3), torch.bfloat16: Tol(1.6e-2, 4e-2)},
    'cbam_pass': {torch.float32: Tol(1e-5, 1e-5), torch.float16: Tol(1e-3, 1e-3), torch.bfloat16: Tol(8e-3, 8e-3)},
}


def rel_err(a:torch.Tensor, b:torch.Tensor) -> float:
    "Relative RMS error of `a` against the reference `b`, in float64 (on the CPU)."
    a, b = a.detach().double().cpu(), b.detach().double().cpu()
    return ((a - b).norm() / b.norm().clamp_min(1e-30)).item()
