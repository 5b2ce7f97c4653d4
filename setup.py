"""Builds the optional C++ CPU kernels (`medrecipes._cpu`, pybind11 + OpenMP).

Everything else about the package lives in pyproject.toml. The extension uses no torch headers (it works on raw
float buffers), so it builds without torch in the isolated build environment and is not tied to one torch version.
If no compiler is present or the build fails, the package still installs: the kernels fall back to the PyTorch
reference with a one-time warning.
"""
import os, sys, glob
from setuptools import setup
from setuptools.command.build_ext import build_ext

try:
    from pybind11.setup_helpers import Pybind11Extension
except ImportError:  # pybind11 missing from the build environment: install the pure-Python package
    Pybind11Extension = None


class OptionalBuildExt(build_ext):
    "Build the C++ kernels if possible; a failed build is a warning, not an error."
    def build_extension(self, ext):
        try: super().build_extension(ext)
        except Exception as e:  # compiler missing or failing
            print(f"WARNING: medrecipes C++ kernels not built ({e}); the PyTorch reference will be used.", file=sys.stderr)


def _openmp_flags():
    if sys.platform == "darwin": return [], []            # Apple clang ships no OpenMP by default
    if sys.platform == "win32": return ["/openmp"], []
    return ["-fopenmp"], ["-fopenmp"]


ext_modules = []
if Pybind11Extension is not None and os.environ.get("MEDRECIPES_NO_CPP") != "1":
    cflags, lflags = _openmp_flags()
    opt = ["/O2"] if sys.platform == "win32" else ["-O3", "-fno-math-errno", "-ffp-contract=fast"]
    ext_modules.append(Pybind11Extension(
        "medrecipes._cpu",
        sorted(glob.glob("csrc/*.cpp")),
        include_dirs=["csrc"],
        extra_compile_args=opt + cflags,
        extra_link_args=lflags,
        cxx_std=17,
    ))

setup(ext_modules=ext_modules, cmdclass={"build_ext": OptionalBuildExt})
