"""Training recipes for medical and radar imaging on fastai, with fused SSIM and CBAM kernels."""
__version__ = "0.1.0"
