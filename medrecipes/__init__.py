"""Training recipes for medical and radar imaging on fastai, with fused SSIM and CBAM kernels

Modules:

- `medrecipes.kernels.cbam.function`: CBAM's forward and backward as `torch.library` custom ops (`medrecipes::cbam_forward`, `medrecipes::cbam_backward`) with fake implementations and autograd: one differentiable op that drives any backend's six passes (the op table, `ops.py`) and does the small steps in PyTorch, and that `torch.compile` and `torch.export` trace without breaking the graph.
- `medrecipes.kernels.cbam.ops`: The CBAM op table: the six passes over the feature map a fast backend implements, and the C++ backend.
- `medrecipes.kernels.cbam.reference`: CBAM in plain PyTorch: the oracle of the whole module (`cbam_reference`, autograd, the path exporters trace) and of each of the six fused passes (`ReferenceCBAMOps`, from the formulas, accumulated in float64).
- `medrecipes.kernels.cbam.triton`: Triton backend of the fused CBAM passes: the six ops of the CBAM backend interface.
- `medrecipes.kernels.ssim.ops`: The SSIM op table: the two functions a fast backend implements, and the C++ backend.
- `medrecipes.kernels.ssim.reference`: SSIM in plain PyTorch with autograd: the oracle every backend is tested against, and the path exporters trace.
- `medrecipes.kernels.ssim.triton`: Fused SSIM forward and hand-written backward in Triton."""

__version__ = "0.1.0"
