"""Training recipes for medical and radar imaging on fastai, with fused SSIM and CBAM kernels

Modules:

- `medrecipes.kernels.cbam`: `CBAM(channels)`: timm's `CbamModule` (same parameters, state-dict keys and maths), run by fused passes over the feature map: C++ on CPU, Triton on CUDA, a plain-PyTorch reference as the oracle.
- `medrecipes.kernels.triton.cbam`: Triton backend of the fused CBAM passes: the six ops of the CBAM backend interface.
- `medrecipes.kernels.triton.ssim`: Fused SSIM forward and hand-written backward in Triton."""

__version__ = "0.1.0"
