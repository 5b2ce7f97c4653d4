"""CBAM: `CBAM(channels)` (timm's `CbamModule`) and `cbam(x, ...)` on fused kernels (C++ on CPU, Triton on CUDA),
with a plain-PyTorch reference.

`reference.py` the oracles (the module's and each pass's); `ops.py` the op table and the C++ backend; `triton.py` the
Triton backend (imported on first use); `function.py` the `torch.library` custom ops and their autograd; `module.py`
the public function and module.

`medrecipes.kernels.cbam` is this module, and it is callable: `cbam(x, ...)` calls `module.cbam` (see
`medrecipes.kernels.ssim` for why)."""
import sys, types
from .reference import *
from .ops import *
from .function import *
from .module import *
from .module import cbam as _cbam


class _CallableModule(types.ModuleType):
    def __call__(self, *args, **kwargs): return _cbam(*args, **kwargs)


sys.modules[__name__].__class__ = _CallableModule
