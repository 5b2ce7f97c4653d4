"""Triton kernels (optional). Importing this package never imports Triton; `HAS_TRITON` says whether it is installed.

The kernels live in submodules (`medrecipes.kernels.triton.ssim`) that import Triton themselves; the dispatch in
`medrecipes.kernels` imports them lazily. Triton decides at import time whether its kernels run on the GPU or in the
CPU interpreter: set `TRITON_INTERPRET=1` before the first import to run them on CPU tensors."""
import importlib.util

HAS_TRITON = importlib.util.find_spec('triton') is not None
