"""Fused kernels behind one call each: the fastest backend for the tensor's device, a PyTorch reference as the oracle.

Imports with torch alone (no fastai; Triton optional). One folder per op (`ssim/`, `cbam/`), each with its reference,
op table, custom ops, module and Triton file; `_backend.py` chooses the backend for both, `_common.py` holds the
helpers they share. These are plain files (not exported from notebooks); `nbs/04_kernels.ssim.ipynb` and
`nbs/05_kernels.cbam.ipynb` document and test them.

`ssim` and `cbam` are the op modules, callable as the functions (`ssim(x, y)`, `cbam(x, module)`)."""
from ._common import gaussian_window
from ._backend import BACKENDS, DEVICE_BACKENDS, interpret_requested, use_backend, reference_kernels
from . import ssim, cbam
from .ssim import (SSIMLoss, ssim_reference, ssim_backend, cpp_available, triton_available, check_ssim_inputs,
                   ssim_constants)
from .cbam import (CBAM, cbam_reference, cbam_backend, cbam_cpp_available, cbam_triton_available, CBAM_OPS,
                   check_cbam_inputs, CppCBAMOps, ReferenceCBAMOps)

__all__ = ['gaussian_window', 'BACKENDS', 'DEVICE_BACKENDS', 'interpret_requested', 'use_backend', 'reference_kernels',
           'ssim', 'SSIMLoss', 'ssim_reference', 'ssim_backend', 'cpp_available', 'triton_available', 'check_ssim_inputs',
           'ssim_constants', 'cbam', 'CBAM', 'cbam_reference', 'cbam_backend', 'cbam_cpp_available',
           'cbam_triton_available', 'CBAM_OPS', 'check_cbam_inputs', 'CppCBAMOps', 'ReferenceCBAMOps']
