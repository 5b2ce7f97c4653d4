"""SSIM: `ssim(x, y)` and `SSIMLoss`, on fused kernels (C++ on CPU, Triton on CUDA), with a plain-PyTorch reference.

`reference.py` the oracle; `ops.py` the op table and the C++ backend; `triton.py` the Triton backend (imported on first
use); `function.py` the `torch.library` custom ops and their autograd; `module.py` the public function and module.

`medrecipes.kernels.ssim` is this module, and it is callable: `ssim(x, y)` calls `module.ssim`, so that
`from medrecipes.kernels import ssim` gives a function-like object while `import medrecipes.kernels.ssim as m` gives
the module (one object, not two meanings of one name)."""
import sys, types
from .reference import *
from .ops import *
from .function import *
from .module import *
from .module import ssim as _ssim
from .._common import gaussian_window
from .._backend import BACKENDS


class _CallableModule(types.ModuleType):
    def __call__(self, *args, **kwargs): return _ssim(*args, **kwargs)


sys.modules[__name__].__class__ = _CallableModule
