"""Fused kernels behind one call each: the fastest backend for the tensor's device, a PyTorch reference as the oracle.

Imports with torch alone (no fastai; Triton optional). The modules are exported from `nbs/10_kernels.ssim.ipynb` and `nbs/11_kernels.cbam.ipynb`; the Triton kernels are plain files in `triton/`."""
from .ssim import *
from .cbam import *
