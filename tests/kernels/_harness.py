"""What the kernel tests share: `tests/kernels/<op>/test_op.py` (the public API and its dispatch, the custom ops),
`test_cpp.py` (the C++ extension `medrecipes._cpu`) and `test_triton.py` (the Triton kernels), for op in ssim, cbam.

- Tolerances: `TOL[op][dtype]` is `(value, grad)` (defined in `tests/_utils.py`, with `rel_err`, the relative RMS
  error every gradient is measured by).
- Comparisons with a reference: `mismatches` (failure descriptions, for the Triton checks that report every failure
  of a group at once) and `assert_matches`, one value by its largest absolute error, gradients by `rel_err`.
- Inputs: `image_pair` (an image and a noisy copy of it, or two independent images), `to_layout` (NCHW,
  channels-last, or strided in neither layout).
- The Triton harness. A `test_triton.py` defines `run_group(group, device)`: the failures (a list of strings) of one
  group of checks on `device`, or a string saying why the group does not apply here. Its tests run each group on CPU
  tensors under `TRITON_INTERPRET=1` in a fresh interpreter (`run_checks`: the variable must be set before triton is
  imported, and other tests of the same worker import triton first), in-process on CUDA when a GPU is present
  (`run_on_cuda`, `pytest -m cuda`), and compile the kernels for the H100 (sm_90) without a GPU (`compile_failures`,
  in a fresh interpreter too), which the interpreter does not check. The interpreter is slow: shapes are small.

This file is also the interpreter's script, for a group run by hand:

    TRITON_INTERPRET=1 python tests/kernels/_harness.py OP GROUP [DEVICE]     # e.g. ssim edges; cbam split cpu
    python tests/kernels/_harness.py OP compile                                # sm_90, without TRITON_INTERPRET

prints the failures and exits 0 (all pass), 1 (failures) or 77 (the group does not apply here).
"""
import importlib, os, subprocess, sys
from pathlib import Path

TESTS = Path(__file__).resolve().parents[1]   # tests/: `_utils` and the package `kernels` import from here
# run as a script: tests/ first on the path, as under pytest (not tests/kernels/: `ssim` and `cbam` are no top-level names)
if __name__ == '__main__': sys.path[0] = str(TESTS)

import pytest, torch
from _utils import TOL, Tol, rel_err, env_vars

__all__ = ['TOL', 'Tol', 'rel_err', 'env_vars', 'cpp_ext', 'skip_without_cpp', 'mismatches', 'assert_matches', 'image_pair',
           'to_layout', 'SKIP', 'run_checks', 'run_on_cuda', 'aot_unavailable', 'compile_failures']

SKIP = 77                                     # the script's exit status for a group that does not apply here

try: from medrecipes import _cpu as cpp_ext
except ImportError: cpp_ext = None  # not built (e.g. on a GPU machine running `pytest -m cuda`)


def skip_without_cpp(op:str):
    "A mark that skips a test unless `medrecipes._cpu` was built with the C++ kernels of `op` ('ssim' or 'cbam')."
    from medrecipes.kernels import cpp_available, cbam_cpp_available
    built = {'ssim': cpp_available, 'cbam': cbam_cpp_available}[op]()
    return pytest.mark.skipif(not built, reason=f'medrecipes._cpu was built without the {op} kernels '
                                                 '(rebuild: python setup.py build_ext --inplace)')


# ------------------------------------------------------------------------------------------- comparisons, inputs

def mismatches(what:str, tol:Tol, value=None, grads=None) -> list:
    """Failures, as strings starting with `what`: `value`, a `(got, reference)` pair, must have the reference's shape
    and differ from it by at most `tol.value` anywhere (in float64); each `grads[name]`, a `(got, reference)` pair,
    must have a relative RMS error (`rel_err`) below `tol.grad`."""
    bad = []
    if value is not None:
        got, ref = value
        if tuple(got.shape) != tuple(ref.shape): bad.append(f'{what}: value shape {tuple(got.shape)} != {tuple(ref.shape)}')
        elif got.numel():
            e = (got.detach().double().cpu() - ref.detach().double().cpu()).abs().max().item()
            if not e <= tol.value: bad.append(f'{what}: value error {e:.2e} > {tol.value:.0e}')
    for name, (got, ref) in (grads or {}).items():
        e = rel_err(got, ref)
        if not e < tol.grad: bad.append(f'{what}: gradient of {name} relative RMS error {e:.2e} >= {tol.grad:.0e}')
    return bad


def assert_matches(what:str, tol:Tol, value=None, grads=None):
    "Assert that `mismatches(what, tol, value, grads)` finds nothing."
    bad = mismatches(what, tol, value, grads)
    assert not bad, '\n'.join(bad)


def image_pair(shape, seed:int, independent=False, scale=1.0, device='cpu'):
    "Uniform images `x` in [0, scale] and `y`: x plus up to 20% noise (clamped), or another independent image."
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(shape, generator=g)
    y = torch.rand(shape, generator=g) if independent else (x + 0.2 * torch.rand(shape, generator=g)).clamp(0, 1)
    return (scale * x).to(device), (scale * y).to(device)


def to_layout(t:torch.Tensor, layout:str) -> torch.Tensor:
    "`t` in `layout`: 'nchw' (contiguous), 'channels_last', or 'strided' (H and W not one axis: neither of the two)."
    if layout == 'channels_last': return t.contiguous(memory_format=torch.channels_last)
    if layout == 'strided': return t.transpose(2, 3).contiguous().transpose(2, 3)
    if layout == 'nchw': return t.contiguous()
    raise ValueError(f"layout must be 'nchw', 'channels_last' or 'strided', got {layout!r}")


# ------------------------------------------------------------------------------------------------ the Triton harness

def run_checks(op:str, group:str, **env):
    """Run one group of `op`'s Triton checks (`kernels.<op>.test_triton.run_group(group, 'cpu')`) in a fresh interpreter,
    with this process's environment less TRITON_INTERPRET, one OpenMP thread, and `env`; fail with its report, or
    skip when the group does not apply here."""
    pytest.importorskip('triton')
    env = {**{k: v for k, v in os.environ.items() if k != 'TRITON_INTERPRET'}, 'OMP_NUM_THREADS': '1', **env}
    r = subprocess.run([sys.executable, __file__, op, group, 'cpu'], env=env, capture_output=True, text=True, timeout=600)
    if r.returncode == SKIP: pytest.skip(r.stdout.strip())
    assert r.returncode == 0, f'{op} {group} checks failed:\n{r.stdout[-6000:]}\n{r.stderr[-6000:]}'


def run_on_cuda(run_group, group:str):
    "Run one group of checks in this process on the GPU; skip without Triton or a GPU, or when the group does not apply."
    pytest.importorskip('triton')
    if not torch.cuda.is_available(): pytest.skip('needs a CUDA GPU')
    res = run_group(group, 'cuda')
    if isinstance(res, str): pytest.skip(res)
    assert not res, '\n'.join(res)


def aot_unavailable():
    "Why this Triton cannot compile kernels ahead of time for a GPU it does not have (a string), or None."
    try:
        import triton  # noqa: F401
        from triton.backends.compiler import GPUTarget  # noqa: F401
        from triton.compiler import ASTSource  # noqa: F401
    except ImportError as e: return f'this Triton cannot compile ahead of time ({e})'


def compile_failures(what:str, fn, signature:dict, constexprs:dict, num_warps:int) -> list:
    """Compile the Triton kernel `fn` for the H100 (sm_90) without a GPU (Triton's frontend, LLVM and ptxas): no
    failure if that gives a cubin, else one that names `what`."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource
    try:
        k = triton.compile(ASTSource(fn, signature, constexprs=constexprs), target=GPUTarget('cuda', 90, 32),
                           options={'num_warps': num_warps})
        return [] if len(k.asm['cubin']) > 0 else [f'compile {what}: empty cubin']
    except Exception as e: return [f'compile {what}: {type(e).__name__}: {e}'[:2000]]


def main(argv) -> int:
    "The script: run `run_group(GROUP, DEVICE)` of `kernels.<OP>.test_triton`, print its failures; the exit status."
    if len(argv) not in (2, 3): print(__doc__); return 2
    op, group, device = (list(argv) + ['cpu'])[:3]
    res = importlib.import_module(f'kernels.{op}.test_triton').run_group(group, device)
    if isinstance(res, str): print(res); return SKIP
    print('\n'.join(res) or 'ok')
    return 1 if res else 0


if __name__ == '__main__':  # python tests/kernels/_harness.py OP GROUP [DEVICE]
    from kernels._harness import main  # noqa: F811 (this file as the module the test files import, whose names they share)
    sys.exit(main(sys.argv[1:]))
