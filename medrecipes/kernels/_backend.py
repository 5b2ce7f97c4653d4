"""One backend registry for every kernel.

Each op (SSIM, CBAM) has up to three backends: `torch` (the plain-PyTorch reference, the oracle), `cpp` (`csrc/`,
CPU tensors) and `triton` (CUDA tensors; CPU tensors only in Triton's interpreter). The choice for a tensor is, in
order: the backend set by `use_backend(...)` in this thread/context, else the `MEDRECIPES_BACKEND` environment
variable, else the fastest backend for the tensor's device type (`DEVICE_BACKENDS`), falling back to the reference
with a one-time warning when that backend is not built. A backend that is asked for by name and cannot run the
tensor is an error, never a silent fallback.
"""
from __future__ import annotations
import contextlib, contextvars, importlib, os, warnings
import torch
try: from medrecipes import _cpu
except ImportError: _cpu = None

__all__ = ['BACKENDS', 'DEVICE_BACKENDS', 'interpret_requested', 'use_backend', 'reference_kernels', 'forced_backend',
           'KernelOp']

BACKENDS = ('torch', 'cpp', 'triton')
DEVICE_BACKENDS = {'cpu': 'cpp', 'cuda': 'triton'}  # the fastest backend per device type; other devices: the reference
_TRUE = ('1', 'true', 'on', 'yes')


def interpret_requested() -> bool:
    "Whether `TRITON_INTERPRET` asks for Triton's CPU interpreter (1, true, on or yes, any case)."
    return os.environ.get('TRITON_INTERPRET', '').strip().lower() in _TRUE


_override = contextvars.ContextVar('medrecipes_kernels_backend', default=None)


def _check_name(name, source):
    if name not in BACKENDS: raise ValueError(f"{source} must be one of {BACKENDS}, not {name!r}")
    return name


@contextlib.contextmanager
def use_backend(name:str):
    """Inside the block every kernel uses backend `name`, in this thread (or async context) only; it wins over
    `MEDRECIPES_BACKEND` and does not touch `os.environ`."""
    token = _override.set(_check_name(str(name).strip().lower(), 'use_backend(name)'))
    try: yield
    finally: _override.reset(token)


def reference_kernels():
    "Inside the block the kernels take their plain-PyTorch reference path, which `torch.export` and the ONNX exporter trace."
    return use_backend('torch')


def forced_backend() -> str:
    "The backend asked for by `use_backend` or `MEDRECIPES_BACKEND`, or '' for the automatic choice."
    o = _override.get()
    if o is not None: return o
    forced = os.environ.get('MEDRECIPES_BACKEND', '').strip().lower()
    return _check_name(forced, 'MEDRECIPES_BACKEND') if forced else ''


class KernelOp:
    "One kernel's backends: which are built here, which one a tensor gets, and why another cannot run it."
    def __init__(self, name:str, # shown in messages: 'SSIM', 'CBAM'
                 cpp_functions, # the functions of `medrecipes._cpu` the C++ backend needs
                 triton_module:str, # the module holding the Triton backend (imported on first use)
                 triton_functions=(), # the callables that module must define
                 triton_dtypes=None): # the input dtypes the Triton backend takes (None: every float dtype)
        self.name, self.cpp_functions, self.triton_module_name = name, tuple(cpp_functions), triton_module
        self.triton_functions, self.triton_dtypes, self._triton, self._warned = tuple(triton_functions), triton_dtypes, None, set()

    def cpp_available(self) -> bool:
        "Whether the C++ kernels were built."
        return _cpu is not None and all(hasattr(_cpu, f) for f in self.cpp_functions)

    def triton_module(self):
        "The Triton backend's module (imported on first use: Triton is optional), or a string saying why it is unavailable."
        if self._triton is None:
            try:
                mod = importlib.import_module(self.triton_module_name)
                missing = [n for n in self.triton_functions if not callable(getattr(mod, n, None))]
                self._triton = mod if not missing else f"{self.triton_module_name} lacks {', '.join(missing)}"
            except Exception as e:
                self._triton = (f"{self.triton_module_name} does not import ({type(e).__name__}: {e}); "
                                "install Triton with `pip install medrecipes[triton]`")
        return self._triton

    def triton_available(self, t:torch.Tensor|None=None) -> bool:
        """Whether the Triton kernels can run on `t` (without `t`: whether they import): CUDA tensors, or CPU tensors
        in Triton's interpreter (`TRITON_INTERPRET=1` set before Triton is first imported)."""
        mod = self.triton_module()
        if isinstance(mod, str): return False
        if t is None: return True
        if self.triton_dtypes is not None and t.dtype not in self.triton_dtypes: return False
        if t.device.type == 'cuda': return True
        return t.device.type == 'cpu' and interpret_requested() and getattr(mod, 'INTERPRETED', False)

    def _why_not_triton(self, t):
        mod = self.triton_module()
        if isinstance(mod, str): return mod
        if self.triton_dtypes is not None and t.dtype not in self.triton_dtypes:
            return f"the Triton {self.name} kernels take {', '.join(str(d)[6:] for d in self.triton_dtypes)}, not {str(t.dtype)[6:]}"
        return (f"the Triton {self.name} kernels take CUDA tensors, or CPU tensors in Triton's interpreter "
                f"(TRITON_INTERPRET=1 set before Triton is first imported), not {t.device.type} tensors")

    def backend(self, t:torch.Tensor) -> str:
        "The backend for tensor `t`: the one asked for (`use_backend`, `MEDRECIPES_BACKEND`), else the fastest for its device."
        forced, dev = forced_backend(), t.device.type
        if forced == 'torch': return 'torch'
        if forced == 'cpp':
            if not self.cpp_available():
                raise RuntimeError(f"MEDRECIPES_BACKEND=cpp: the C++ {self.name} kernels were not built (reinstall with a C++ compiler)")
            if dev != 'cpu': raise RuntimeError(f"MEDRECIPES_BACKEND=cpp: the C++ {self.name} kernels take CPU tensors, not {dev}")
            return 'cpp'
        if forced == 'triton':
            if not self.triton_available(t): raise RuntimeError(f"MEDRECIPES_BACKEND=triton: {self._why_not_triton(t)}")
            return 'triton'
        best = DEVICE_BACKENDS.get(dev)
        if best == 'cpp':
            if self.cpp_available(): return 'cpp'
            self._warn('cpp', f"medrecipes C++ kernels are not built; {self.name} uses the PyTorch reference")
        elif best == 'triton':
            if self.triton_available(t): return 'triton'
            self._warn('triton', f"{self.name} uses the PyTorch reference on CUDA: {self._why_not_triton(t)}")
        return 'torch'

    def _warn(self, key, msg):
        if key not in self._warned: self._warned.add(key); warnings.warn(msg)
