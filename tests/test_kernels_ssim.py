"""SSIM, every backend: the public API (dispatch, parity with the float64 reference and pytorch-msssim, dtypes, layouts,
errors, the custom ops under torch.compile and torch.export), the C++ kernels' own bindings, and the Triton kernels.

The Triton checks run on CPU tensors under TRITON_INTERPRET=1 in a subprocess (the variable must be set before triton
is imported, and other tests of the same worker import triton first), and in-process on CUDA when a GPU is present
(`pytest -m cuda`). This file is also that subprocess's script: `python tests/test_kernels_ssim.py GROUP DEVICE` runs
one group of checks, prints the failures, exits 0 (all pass) or 1 (failures). The interpreter is slow: shapes are
small. The kernels are also compiled for sm_90 without a GPU, which the interpreter does not do.
"""
import contextlib, os, subprocess, sys
import numpy as np
import pytest, torch
import torch.nn.functional as F
import pytorch_msssim
from _utils import TOL, rel_err, env_vars as _env
try: from medrecipes import _cpu
except ImportError: _cpu = None  # not built (e.g. on a GPU machine running `pytest -m cuda`)

needs_cpp = pytest.mark.skipif(not hasattr(_cpu, 'ssim_forward'),
                               reason='medrecipes._cpu was built without ssim_forward (rebuild: setup.py build_ext --inplace)')

from medrecipes.kernels import ssim, ssim_reference, SSIMLoss, ssim_backend, cpp_available, ssim_constants

SHAPES = [(2, 1, 32, 32), (1, 3, 23, 37), (2, 17, 16, 16), (1, 1, 11, 11), (3, 2, 40, 13)]

F32 = TOL['ssim'][torch.float32]


@pytest.mark.parametrize('shape', SHAPES)
def test_values_and_grads_match_reference_and_msssim(shape):
    g = torch.Generator().manual_seed(sum(shape))
    x = torch.rand(shape, generator=g); y = (x + 0.2 * torch.rand(shape, generator=g)).clamp(0, 1)
    xa, ya = x.clone().requires_grad_(), y.clone().requires_grad_()
    s = ssim(xa, ya, reduction='none'); s.sum().backward()
    x64, y64 = x.double().requires_grad_(), y.double().requires_grad_()
    r = ssim_reference(x64, y64); r.sum().backward()
    torch.testing.assert_close(s.double(), r.detach(), atol=F32.value, rtol=0)
    if min(shape[-2:]) >= 11:
        m = pytorch_msssim.ssim(x, y, data_range=1, size_average=False)
        torch.testing.assert_close(s.detach(), m, atol=F32.value, rtol=0)
    assert rel_err(xa.grad, x64.grad) < F32.grad and rel_err(ya.grad, y64.grad) < F32.grad


def test_cpu_dispatches_to_cpp():
    assert cpp_available() and ssim_backend(torch.rand(1, 1, 11, 11)) == 'cpp'


@pytest.mark.parametrize('dtype', [torch.float16, torch.bfloat16])
def test_half_types(dtype):
    tol = TOL['ssim'][dtype].value
    x = torch.rand(2, 3, 24, 24); y = (x + 0.1 * torch.rand_like(x)).clamp(0, 1)
    xh = x.to(dtype).requires_grad_()
    s = ssim(xh, y.to(dtype), reduction='none')
    assert s.dtype == dtype
    ref = ssim_reference(x.to(dtype).float(), y.to(dtype).float())
    torch.testing.assert_close(s.float(), ref, atol=tol, rtol=0)
    s.sum().backward(); assert xh.grad.dtype == dtype and torch.isfinite(xh.grad.float()).all()


def test_non_contiguous_and_one_sided_grad():
    base = torch.rand(2, 24, 20, 3)
    x = base.permute(0, 3, 1, 2); y = torch.rand(2, 3, 24, 20)
    assert not x.is_contiguous()
    yr = y.clone().requires_grad_()
    s = ssim(x, yr); s.backward()
    yr2 = y.clone().requires_grad_(); ssim_reference(x.contiguous(), yr2).mean().backward()
    torch.testing.assert_close(s, ssim_reference(x.contiguous(), y).mean(), atol=1e-5, rtol=0)
    assert rel_err(yr.grad, yr2.grad) < F32.grad


def test_reference_gradcheck_float64():
    x = torch.rand(1, 2, 12, 13, dtype=torch.float64, requires_grad=True)
    y = torch.rand(1, 2, 12, 13, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda a, b: ssim_reference(a, b, win_size=5), (x, y))


@pytest.mark.parametrize('args,err,match', [
    ((torch.rand(1, 1, 10, 30), torch.rand(1, 1, 10, 30)), ValueError, '10x30 are smaller than the 11x11'),
    ((torch.rand(1, 1, 16, 16), torch.rand(1, 2, 16, 16)), ValueError, 'same shape'),
    ((torch.randint(0, 255, (1, 1, 16, 16)), torch.randint(0, 255, (1, 1, 16, 16))), TypeError, 'floating-point'),
    ((torch.rand(1, 16, 16), torch.rand(1, 16, 16)), ValueError, 'B x C x H x W'),
    ((torch.full((1, 1, 16, 16), float('nan')), torch.rand(1, 1, 16, 16)), ValueError, 'x contains NaN'),
])
def test_bad_inputs(args, err, match):
    with pytest.raises(err, match=match): ssim(*args)


def test_backend_switch(monkeypatch):
    x, y = torch.rand(1, 1, 16, 16), torch.rand(1, 1, 16, 16)
    monkeypatch.setenv('MEDRECIPES_BACKEND', 'torch'); assert ssim_backend(x) == 'torch'
    a = ssim(x, y)
    monkeypatch.setenv('MEDRECIPES_BACKEND', 'cpp'); torch.testing.assert_close(ssim(x, y), a, atol=1e-5, rtol=0)
    monkeypatch.setenv('MEDRECIPES_BACKEND', 'triton')
    with pytest.raises(RuntimeError, match='triton'): ssim(x, y)
    monkeypatch.setenv('MEDRECIPES_BACKEND', 'cuda')
    with pytest.raises(ValueError, match='MEDRECIPES_BACKEND must be one of'): ssim(x, y)


def test_ssim_loss():
    x = torch.rand(2, 1, 20, 20, requires_grad=True); y = torch.rand(2, 1, 20, 20)
    l = SSIMLoss()(x, y); l.backward()
    torch.testing.assert_close(l, 1 - ssim_reference(x, y).mean(), atol=1e-5, rtol=0)
    assert x.grad is not None and SSIMLoss()(y, y).abs() < 1e-5


# ---- torch.library custom ops: fake implementations, autograd, torch.compile, export ----

def test_custom_ops_opcheck():
    "Schema, fake implementation and autograd registration of both SSIM ops (C++ backend), as torch.library.opcheck checks them."
    x, y = torch.rand(1, 2, 13, 12, requires_grad=True), torch.rand(1, 2, 13, 12, requires_grad=True)
    c1, c2 = ssim_constants(1.0, (0.01, 0.03))
    torch.library.opcheck(torch.ops.medrecipes.ssim_forward.default, (x, y, 5, 1.5, c1, c2, True, 'cpp'),
                          test_utils=('test_schema', 'test_autograd_registration', 'test_faketensor'))
    _, coef, shift = torch.ops.medrecipes.ssim_forward(x.detach(), y.detach(), 5, 1.5, c1, c2, True, 'cpp')
    torch.library.opcheck(torch.ops.medrecipes.ssim_backward.default,
                          (x.detach(), y.detach(), coef, shift, torch.rand(2), 5, 1.5, c1, c2, True, False, 'cpp'),
                          test_utils=('test_schema', 'test_faketensor'))


def test_compiled_ssim_loss_has_no_graph_breaks_and_matches_eager():
    torch._dynamo.reset()
    x, y = torch.rand(2, 3, 24, 20), torch.rand(2, 3, 24, 20)
    loss = SSIMLoss()
    xe = x.clone().requires_grad_()
    assert torch._dynamo.explain(loss)(xe, y).graph_break_count == 0
    le = loss(xe, y); le.backward()
    xc = x.clone().requires_grad_()
    lc = torch.compile(loss, backend='aot_eager', fullgraph=True)(xc, y); lc.backward()
    torch.testing.assert_close(lc, le, atol=1e-6, rtol=0)
    torch.testing.assert_close(xc.grad, xe.grad, atol=1e-7, rtol=1e-5)


def test_reference_kernels_is_in_process_and_exports_plain_ops(monkeypatch):
    "`reference_kernels()` switches to the reference without touching os.environ; torch.export then sees no custom op."
    from medrecipes.kernels import reference_kernels, use_backend
    import os
    monkeypatch.setenv('MEDRECIPES_BACKEND', 'cpp')
    x, y = torch.rand(1, 1, 16, 16), torch.rand(1, 1, 16, 16)
    with reference_kernels():
        assert ssim_backend(x) == 'torch' and os.environ['MEDRECIPES_BACKEND'] == 'cpp'
        ep = torch.export.export(SSIMLoss(), (x, y))
    assert ssim_backend(x) == 'cpp'
    assert 'medrecipes' not in str(ep.graph)
    ep = torch.export.export(SSIMLoss(), (x, y))  # the fused op is exported as itself
    assert 'medrecipes.ssim_forward' in str(ep.graph)
    torch.testing.assert_close(ep.module()(x, y), SSIMLoss()(x, y))
    with pytest.raises(ValueError, match='use_backend'):
        with use_backend('cuda'): pass


def test_module_and_function_are_one_object():
    "`import medrecipes.kernels.ssim as m` is the module; the package's `ssim` is that module, callable as the function."
    import medrecipes.kernels.ssim as m
    import medrecipes.kernels as K
    assert type(m).__name__ == '_CallableModule' and K.ssim is m and callable(m.ssim) and m.ssim is not m
    x = torch.rand(1, 1, 12, 12); torch.testing.assert_close(m(x, x), m.ssim(x, x))


def _layout(t, layout):
    if layout == 'channels_last': return t.contiguous(memory_format=torch.channels_last)
    if layout == 'strided': return t.transpose(2, 3).contiguous().transpose(2, 3)
    return t.contiguous()


@pytest.mark.parametrize('layout', ['nchw', 'channels_last', 'strided'])
@pytest.mark.parametrize('dtype', [torch.float32, torch.float64, torch.float16, torch.bfloat16])
@pytest.mark.parametrize('backend', ['torch', 'cpp'])
def test_backend_dtype_layout(backend, dtype, layout, monkeypatch):
    "Every in-process backend x dtype x layout against the float64 reference on the same rounded inputs: values and both gradients."
    from medrecipes.kernels import use_backend
    g = torch.Generator().manual_seed(3)
    x = torch.rand(2, 3, 17, 14, generator=g); y = (x + 0.2 * torch.rand(x.shape, generator=g)).clamp(0, 1)
    x, y = _layout(x.to(dtype), layout).requires_grad_(), _layout(y.to(dtype), layout).requires_grad_()
    w = torch.tensor([0.7, 1.3])
    with use_backend(backend):
        assert ssim_backend(x) == backend
        s = ssim(x, y, reduction='none')
    (s.double() * w).sum().backward()
    x64, y64 = x.detach().double().requires_grad_(), y.detach().double().requires_grad_()
    r = ssim_reference(x64, y64); (r * w).sum().backward()
    tol = TOL['ssim'][dtype]
    assert s.dtype == dtype and x.grad.dtype == dtype and y.grad.dtype == dtype
    torch.testing.assert_close(s.double(), r.detach(), atol=tol.value, rtol=0)
    assert rel_err(x.grad, x64.grad) < tol.grad and rel_err(y.grad, y64.grad) < tol.grad



def test_one_backend_registry(monkeypatch):
    "SSIM and CBAM share one registry: one reading of TRITON_INTERPRET, one override, the same errors."
    from medrecipes.kernels import interpret_requested, cbam_backend, use_backend
    for v, want in [('1', True), ('true', True), (' ON', True), ('yes', True), ('0', False), ('', False), ('no', False)]:
        monkeypatch.setenv('TRITON_INTERPRET', v); assert interpret_requested() is want, v
    monkeypatch.delenv('TRITON_INTERPRET')
    x = torch.rand(1, 1, 12, 12)
    for backend_of in (ssim_backend, cbam_backend):
        with use_backend('torch'): assert backend_of(x) == 'torch'
        with use_backend('triton'), pytest.raises(RuntimeError, match='MEDRECIPES_BACKEND=triton: .*TRITON_INTERPRET=1'): backend_of(x)
        monkeypatch.setenv('MEDRECIPES_BACKEND', 'gpu')
        with pytest.raises(ValueError, match='MEDRECIPES_BACKEND must be one of'): backend_of(x)
        with use_backend('torch'): assert backend_of(x) == 'torch'  # the in-process choice wins over the variable
        monkeypatch.delenv('MEDRECIPES_BACKEND')


def test_imports_with_torch_alone():
    "`medrecipes.kernels` imports without fastai, and without Triton (which it imports only on first use)."
    code = ("import sys; sys.modules['triton'] = None\n"
            "import torch, medrecipes.kernels as K\n"
            "assert 'fastai' not in sys.modules, 'fastai imported'\n"
            "x = torch.rand(1, 1, 12, 12); print(float(K.ssim(x, x)), K.triton_available(), K.cbam_triton_available())")
    r = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-3000:]
    assert r.stdout.split() == ['1.0', 'False', 'False'], r.stdout


# ======================================================== the C++ kernels (medrecipes._cpu) against a float64 reference

rel_rms = rel_err

K1, K2, WIN, SIGMA = 0.01, 0.03, 11, 1.5


def _consts(L=1.0): return (K1 * L) ** 2, (K2 * L) ** 2


def ref_ssim(X, Y, win=WIN, sigma=SIGMA, L=1.0):
    "Plain PyTorch SSIM per (image, channel): valid separable Gaussian blur, population variances. Returns (B, C)."
    C = X.shape[1]
    c = torch.arange(win, dtype=X.dtype) - win // 2
    g = torch.exp(-c ** 2 / (2 * sigma ** 2)); g = g / g.sum()
    gh, gv = g.view(1, 1, 1, win).repeat(C, 1, 1, 1), g.view(1, 1, win, 1).repeat(C, 1, 1, 1)
    blur = lambda t: F.conv2d(F.conv2d(t, gh, groups=C), gv, groups=C)
    c1, c2 = _consts(L)
    mx, my = blur(X), blur(Y)
    sxx, syy, sxy = blur(X * X) - mx * mx, blur(Y * Y) - my * my, blur(X * Y) - mx * my
    S = ((2 * mx * my + c1) * (2 * sxy + c2)) / ((mx * mx + my * my + c1) * (sxx + syy + c2))
    return S.flatten(2).mean(-1)


def cpp_ssim(X, Y, win=WIN, **kw):
    B, C, H, W = X.shape
    c1, c2 = _consts()
    x = X.detach().float().reshape(B * C, H, W).numpy(); y = Y.detach().float().reshape(B * C, H, W).numpy()
    return torch.from_numpy(_cpu.ssim_forward(x, y, win, c1, c2, **kw)).view(B, C)


def cpp_grads(X, Y, G, win=WIN, saved=False):
    "C++ dL/dX, dL/dY for L = sum(G * ssim_per_plane)."
    B, C, H, W = X.shape
    c1, c2 = _consts()
    x = X.detach().float().reshape(B * C, H, W).numpy(); y = Y.detach().float().reshape(B * C, H, W).numpy()
    g = G.detach().float().reshape(-1).numpy()
    kw = {}
    if saved: kw['saved'] = _cpu.ssim_forward(x, y, win, c1, c2, save=True)[1]
    dx, dy = _cpu.ssim_backward(x, y, win, c1, c2, g, **kw)
    return torch.from_numpy(dx).view(B, C, H, W), torch.from_numpy(dy).view(B, C, H, W)


def ref_grads(X, Y, G, win=WIN):
    X = X.detach().double().requires_grad_(); Y = Y.detach().double().requires_grad_()
    (ref_ssim(X, Y, win) * G.double()).sum().backward()
    return X.grad, Y.grad



def structured(B, C, H, W, seed=0):
    "Smooth gradients, a blob and hard edges, plus a little noise, in [0, 1]."
    g = torch.Generator().manual_seed(seed)
    yy, xx = torch.meshgrid(torch.linspace(0, 1, H, dtype=torch.float64), torch.linspace(0, 1, W, dtype=torch.float64), indexing='ij')
    out = []
    for _ in range(B * C):
        a, b, c = torch.rand(3, generator=g, dtype=torch.float64)
        img = 0.3 * a * xx + 0.3 * b * yy + 0.2 * torch.exp(-((xx - c) ** 2 + (yy - 0.5) ** 2) / 0.05)
        img = img + 0.3 * (xx > c).double() * (yy > 0.4).double()
        img = img + 0.02 * torch.randn(H, W, generator=g, dtype=torch.float64)
        out.append(img.clamp(0, 1))
    return torch.stack(out).view(B, C, H, W)


def pair(kind, shape, seed=0):
    g = torch.Generator().manual_seed(seed)
    if kind == 'random':
        X = torch.rand(*shape, generator=g, dtype=torch.float64)
        Y = (X + 0.2 * torch.randn(*shape, generator=g, dtype=torch.float64)).clamp(0, 1)
    elif kind == 'uniform':
        X, Y = torch.rand(*shape, generator=g, dtype=torch.float64), torch.rand(*shape, generator=g, dtype=torch.float64)
    elif kind == 'structured':
        X = structured(*shape, seed=seed)
        Y = (0.8 * X + 0.1 + 0.05 * torch.randn(*shape, generator=g, dtype=torch.float64)).clamp(0, 1)
    # round to float32 so the C++ kernel and the reference see the same inputs
    return X.float().double(), Y.float().double()


CASES = [('random', (2, 3, 32, 32)), ('uniform', (2, 1, 40, 40)), ('structured', (2, 2, 48, 48)),
         ('structured', (1, 1, 23, 37)), ('random', (1, 1, 37, 23)), ('random', (2, 17, 16, 16)),
         ('random', (1, 1, 11, 11)), ('structured', (3, 1, 11, 14)), ('structured', (1, 3, 64, 96))]


@pytest.mark.parametrize('kind,shape', CASES)
@needs_cpp
def test_forward_matches_reference(kind, shape):
    X, Y = pair(kind, shape)
    np.testing.assert_allclose(cpp_ssim(X, Y).double(), ref_ssim(X, Y), atol=1e-5, rtol=0)


@pytest.mark.parametrize('kind,shape', [c for c in CASES if c[1][2] >= 11 and c[1][3] >= 11])
@needs_cpp
def test_forward_matches_pytorch_msssim(kind, shape):
    pm = pytest.importorskip('pytorch_msssim')
    X, Y = pair(kind, shape)
    expect = pm.ssim(X, Y, data_range=1, size_average=False)    # per image, averaged over channels
    np.testing.assert_allclose(cpp_ssim(X, Y).double().mean(1), expect, atol=1e-5, rtol=0)


@pytest.mark.parametrize('saved', [False, True])
@pytest.mark.parametrize('kind,shape', CASES)
@needs_cpp
def test_backward_matches_autograd(kind, shape, saved):
    X, Y = pair(kind, shape)
    G = torch.randn(shape[0], shape[1], generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    dx, dy = cpp_grads(X, Y, G, saved=saved)
    rx, ry = ref_grads(X, Y, G)
    assert rel_rms(dx, rx) < 1e-4 and rel_rms(dy, ry) < 1e-4, (rel_rms(dx, rx), rel_rms(dy, ry))


@needs_cpp
def test_identical_images():
    X, _ = pair('structured', (2, 3, 30, 41))
    np.testing.assert_allclose(cpp_ssim(X, X), np.ones((2, 3)), atol=1e-5)
    dx, dy = cpp_grads(X, X, torch.ones(2, 3))
    assert dx.abs().max() < 1e-4 and dy.abs().max() < 1e-4     # SSIM is maximal at Y == X


@needs_cpp
def test_other_window_and_range():
    "win/sigma/constants are honoured (compared with the reference at win=7, sigma=1, data range 255)."
    X, Y = pair('random', (2, 2, 20, 25))
    X, Y = (X * 255).float().double(), (Y * 255).float().double()
    L = 255.0
    c1, c2 = (K1 * L) ** 2, (K2 * L) ** 2
    x, y = X.float().view(4, 20, 25).numpy(), Y.float().view(4, 20, 25).numpy()
    got = _cpu.ssim_forward(x, y, 7, c1, c2, sigma=1.0)
    np.testing.assert_allclose(got, ref_ssim(X, Y, win=7, sigma=1.0, L=L).view(-1), atol=1e-5, rtol=0)
    G = torch.randn(2, 2, dtype=torch.float64)
    dx, dy = _cpu.ssim_backward(x, y, 7, c1, c2, G.float().view(-1).numpy(), sigma=1.0)
    Xr, Yr = X.clone().requires_grad_(), Y.clone().requires_grad_()
    (ref_ssim(Xr, Yr, win=7, sigma=1.0, L=L) * G).sum().backward()
    assert rel_rms(torch.from_numpy(dx).view(2, 2, 20, 25), Xr.grad) < 1e-4
    assert rel_rms(torch.from_numpy(dy).view(2, 2, 20, 25), Yr.grad) < 1e-4


@needs_cpp
def test_finite_difference_spot_check():
    X, Y = pair('structured', (1, 1, 16, 19))
    G = torch.ones(1, 1)
    dx, _ = cpp_grads(X, Y, G)
    eps = 1e-3
    for (i, j) in [(0, 0), (8, 9), (15, 18), (3, 12)]:
        Xp, Xm = X.clone(), X.clone()
        Xp[0, 0, i, j] += eps; Xm[0, 0, i, j] -= eps
        fd = (ref_ssim(Xp, Y) - ref_ssim(Xm, Y)).item() / (2 * eps)
        assert abs(dx[0, 0, i, j].item() - fd) < 1e-4 * max(1.0, abs(fd)) + 1e-6


@needs_cpp
def test_errors():
    c1, c2 = _consts()
    a = np.zeros((2, 10, 20), np.float32)
    with pytest.raises(ValueError, match='smaller than the window'): _cpu.ssim_forward(a, a, 11, c1, c2)
    with pytest.raises(ValueError, match='smaller than the window'): _cpu.ssim_backward(a, a, 11, c1, c2, np.ones(2, np.float32))
    b, b2 = np.zeros((2, 16, 16), np.float32), np.zeros((2, 16, 17), np.float32)
    with pytest.raises(ValueError, match='same shape'): _cpu.ssim_forward(b, b2, 11, c1, c2)
    with pytest.raises(ValueError, match='same shape'): _cpu.ssim_forward(b, np.zeros((3, 16, 16), np.float32), 11, c1, c2)
    with pytest.raises(ValueError, match='odd'): _cpu.ssim_forward(b, b, 10, c1, c2)
    with pytest.raises(ValueError, match=r'\(planes, H, W\)'): _cpu.ssim_forward(b[0], b[0], 11, c1, c2)
    with pytest.raises(ValueError, match='grad_out'): _cpu.ssim_backward(b, b, 11, c1, c2, np.ones(3, np.float32))
    with pytest.raises(ValueError, match='saved'):
        _cpu.ssim_backward(b, b, 11, c1, c2, np.ones(2, np.float32), saved=(np.zeros((2, 4, 5, 5), np.float32), np.zeros((2, 2), np.float32)))


@needs_cpp
def test_threads_agree():
    "Results do not depend on the row/plane split (run with the default thread count; compare planes one by one)."
    X, Y = pair('random', (1, 5, 33, 29))
    c1, c2 = _consts()
    x, y = X.float().view(5, 33, 29).numpy(), Y.float().view(5, 33, 29).numpy()
    whole = _cpu.ssim_forward(x, y, WIN, c1, c2)
    single = np.concatenate([_cpu.ssim_forward(x[i:i + 1], y[i:i + 1], WIN, c1, c2) for i in range(5)])
    np.testing.assert_array_equal(whole, single)


# ---- float64: the same functions dispatch on the dtype of x and y ----

def cpp_ssim64(X, Y, win=WIN):
    B, C, H, W = X.shape
    c1, c2 = _consts()
    out = _cpu.ssim_forward(X.reshape(B * C, H, W).numpy(), Y.reshape(B * C, H, W).numpy(), win, c1, c2)
    assert out.dtype == np.float64
    return torch.from_numpy(out).view(B, C)


@pytest.mark.parametrize('kind,shape', CASES)
@needs_cpp
def test_float64_forward_matches_reference(kind, shape):
    X, Y = pair(kind, shape, seed=3)
    torch.testing.assert_close(cpp_ssim64(X, Y), ref_ssim(X, Y), atol=1e-10, rtol=0)


@pytest.mark.parametrize('saved', [False, True])
@pytest.mark.parametrize('kind,shape', CASES[:5])
@needs_cpp
def test_float64_backward_matches_autograd(kind, shape, saved):
    X, Y = pair(kind, shape, seed=4)
    B, C, H, W = shape
    G = torch.randn(B, C, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    c1, c2 = _consts()
    x, y = X.reshape(B * C, H, W).numpy(), Y.reshape(B * C, H, W).numpy()
    kw = {'saved': _cpu.ssim_forward(x, y, WIN, c1, c2, save=True)[1]} if saved else {}
    if saved: assert all(a.dtype == np.float64 for a in kw['saved'])
    dx, dy = _cpu.ssim_backward(x, y, WIN, c1, c2, G.reshape(-1).numpy(), **kw)
    assert dx.dtype == dy.dtype == np.float64
    rx, ry = ref_grads(X, Y, G)
    assert rel_rms(torch.from_numpy(dx).view(shape), rx) < 1e-10 and rel_rms(torch.from_numpy(dy).view(shape), ry) < 1e-10


@needs_cpp
def test_float32_stays_float32():
    x = np.random.default_rng(0).random((2, 16, 16), dtype=np.float32)
    c1, c2 = _consts()
    v, (coef, shift) = _cpu.ssim_forward(x, x * 0.5, WIN, c1, c2, save=True)
    assert v.dtype == coef.dtype == shift.dtype == np.float32
    dx, dy = _cpu.ssim_backward(x, x * 0.5, WIN, c1, c2, np.ones(2, np.float64))   # grad_out is converted
    assert dx.dtype == dy.dtype == np.float32


@needs_cpp
def test_dtype_errors():
    c1, c2 = _consts()
    a32, a64 = np.zeros((2, 16, 16), np.float32), np.zeros((2, 16, 16), np.float64)
    with pytest.raises(TypeError, match='x must be a float32 or float64 array; got dtype float16'):
        _cpu.ssim_forward(a32.astype(np.float16), a32.astype(np.float16), WIN, c1, c2)
    with pytest.raises(TypeError, match='y must be a float32 or float64 array; got dtype int64'):
        _cpu.ssim_forward(a64, a64.astype(np.int64), WIN, c1, c2)
    with pytest.raises(TypeError, match='same dtype; got x float32 and y float64'):
        _cpu.ssim_forward(a32, a64, WIN, c1, c2)
    with pytest.raises(TypeError, match='ssim_backward: x must be a float32 or float64 array; got dtype uint8'):
        _cpu.ssim_backward(a32.astype(np.uint8), a32.astype(np.uint8), WIN, c1, c2, np.ones(2))
    saved32 = _cpu.ssim_forward(a32, a32, WIN, c1, c2, save=True)[1]
    with pytest.raises(TypeError, match='saved coefficient maps have dtype float32 but x and y are float64'):
        _cpu.ssim_backward(a64, a64, WIN, c1, c2, np.ones(2), saved=saved32)


# ---- the C++ custom op in float64: gradcheck and values against the package reference ----

GRADCHECK = [((1, 2, 12, 13), 5), ((1, 1, 11, 11), 11), ((2, 1, 13, 12), 11)]


@pytest.mark.parametrize('shape,win', GRADCHECK)
@needs_cpp
def test_cpp_autograd_gradcheck_float64(shape, win):
    from medrecipes.kernels.ssim import ssim_planes, ssim_reference
    g = torch.Generator().manual_seed(win + shape[-1])
    x = torch.rand(shape, generator=g, dtype=torch.float64).requires_grad_()
    y = (x.detach() + 0.3 * torch.rand(shape, generator=g, dtype=torch.float64)).clamp(0, 1).requires_grad_()
    f = lambda a, b: ssim_planes(a, b, win, 1.5, *_consts(), 'cpp').view(shape[:2]).mean(1)  # the custom op, C++ backend
    s = f(x, y)
    assert s.dtype == torch.float64
    torch.testing.assert_close(s, ssim_reference(x, y, win_size=win), atol=1e-10, rtol=0)
    assert torch.autograd.gradcheck(f, (x, y))


@needs_cpp
def test_ssim_forced_cpp_float64(monkeypatch):
    "The public `ssim` with MEDRECIPES_BACKEND=cpp keeps float64 in float64: values to 1e-10, gradients to 1e-10 rel. RMS, gradcheck."
    from medrecipes.kernels import ssim, ssim_reference, ssim_backend
    monkeypatch.setenv('MEDRECIPES_BACKEND', 'cpp')
    g = torch.Generator().manual_seed(7)
    x = torch.rand(2, 3, 12, 13, generator=g, dtype=torch.float64).requires_grad_()
    y = torch.rand(2, 3, 12, 13, generator=g, dtype=torch.float64).requires_grad_()
    assert ssim_backend(x) == 'cpp'
    s = ssim(x, y, win_size=5, reduction='none'); s.sum().backward()
    x2, y2 = x.detach().clone().requires_grad_(), y.detach().clone().requires_grad_()
    r = ssim_reference(x2, y2, win_size=5); r.sum().backward()
    assert s.dtype == torch.float64 and x.grad.dtype == torch.float64
    torch.testing.assert_close(s, r, atol=1e-10, rtol=0)
    assert rel_rms(x.grad, x2.grad) < 1e-10 and rel_rms(y.grad, y2.grad) < 1e-10
    assert torch.autograd.gradcheck(lambda a, b: ssim(a, b, win_size=5, reduction='none'), (x[:1, :2].detach().requires_grad_(), y[:1, :2].detach().requires_grad_()))


# ============================================================== the Triton backend (medrecipes/kernels/ssim/triton.py)

_rel = rel_err

GROUPS = ['shapes', 'edges']
TRITON_SHAPES = [(2, 1, 32, 32), (1, 3, 23, 37), (1, 1, 11, 11), (2, 5, 16, 40)]
VAL_TOL, GRAD_TOL = TOL['ssim'][torch.float32]  # max abs error of SSIM values, relative RMS error of gradients
HALF_TOL = {dt: TOL['ssim'][dt] for dt in (torch.float16, torch.bfloat16)}  # (value, gradient) for half inputs


def _pair(shape, device, seed, independent=False, scale=1.0):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(shape, generator=g)
    y = torch.rand(shape, generator=g) if independent else (x + 0.2 * torch.rand(shape, generator=g)).clamp(0, 1)
    return (scale * x).to(device), (scale * y).to(device)


def check(tag, x, y, grads=(True, True), msssim=False, val_tol=VAL_TOL, grad_tol=GRAD_TOL, **kw):
    """Failures of `ssim(x, y, reduction='none', **kw)` (the public call, which must pick Triton) against the float64
    reference evaluated on the same (rounded) inputs: values, dtypes, and the gradients asked for in `grads`."""
    from medrecipes.kernels import ssim, ssim_reference, ssim_backend
    import pytorch_msssim
    bad = []
    if ssim_backend(x) != 'triton': return [f'{tag}: dispatch chose {ssim_backend(x)!r}, not triton']
    xa, ya = x.detach().requires_grad_(grads[0]), y.detach().requires_grad_(grads[1])  # keep the caller's layout
    s = ssim(xa, ya, reduction='none', **kw)
    if s.dtype != x.dtype or s.shape != x.shape[:1]: bad.append(f'{tag}: output {s.dtype} {tuple(s.shape)}, expected {x.dtype} {tuple(x.shape[:1])}')
    x64, y64 = x.detach().double().cpu().requires_grad_(grads[0]), y.detach().double().cpu().requires_grad_(grads[1])
    r = ssim_reference(x64, y64, **kw)
    e = (s.detach().double().cpu() - r.detach()).abs().max().item()
    if not e <= val_tol: bad.append(f'{tag}: value error {e:.2e} > {val_tol:.0e}')
    if msssim:
        m = pytorch_msssim.ssim(x.float(), y.float(), data_range=kw.get('data_range', 1.0), size_average=False,
                                win_size=kw.get('win_size', 11), win_sigma=kw.get('sigma', 1.5), K=kw.get('k', (0.01, 0.03)))
        e = (s.detach().float() - m).abs().max().item()
        if not e <= val_tol: bad.append(f'{tag}: differs from pytorch_msssim by {e:.2e} > {val_tol:.0e}')
    if any(grads):
        w = torch.linspace(0.5, 1.5, x.shape[0], dtype=torch.float64)  # a non-uniform upstream gradient
        (s * w.to(s)).sum().backward(); (r * w).sum().backward()
        for n, t, t64, need in (('x', xa, x64, grads[0]), ('y', ya, y64, grads[1])):
            if not need:
                if t.grad is not None: bad.append(f'{tag}: d{n} computed although {n} does not require grad')
                continue
            if t.grad is None or t.grad.dtype != t.dtype or t.grad.shape != t.shape:
                bad.append(f'{tag}: d{n} missing or of the wrong dtype/shape'); continue
            e = _rel(t.grad.cpu(), t64.grad)
            if not e <= grad_tol: bad.append(f'{tag}: d{n} relative RMS error {e:.2e} > {grad_tol:.0e}')
    return bad


def group_shapes(device):
    bad = []
    for i, shape in enumerate(TRITON_SHAPES):
        x, y = _pair(shape, device, seed=i, independent=(i == 1))
        bad += check(f'{shape}', x, y, msssim=True)
    return bad


def group_edges(device):
    import medrecipes.kernels.ssim.triton as K
    from medrecipes.kernels import ssim
    bad = []
    # non-contiguous x (channels-last view), gradient for y only
    base, y = _pair((1, 16, 20, 3), device, seed=10)
    bad += check('non-contiguous x, dy only', base.permute(0, 3, 1, 2), y.permute(0, 3, 1, 2).contiguous(), grads=(False, True))
    # gradient for x only, y a strided slice
    x, y = _pair((2, 1, 16, 32), device, seed=11)
    bad += check('dx only, strided y', x[..., ::2], y[..., ::2], grads=(True, False))
    # half types: compared with the reference on the rounded inputs; the output and gradients are rounded to the type
    for dt, (vt, gt) in HALF_TOL.items():
        x, y = _pair((1, 2, 16, 20), device, seed=12)
        bad += check(f'{dt}', x.to(dt), y.to(dt), val_tol=vt, grad_tol=gt)
    # other window, constants and data range: 8-bit values (the plane-mean shift keeps float32 accurate)
    x, y = _pair((1, 2, 20, 24), device, seed=13, scale=255.)
    bad += check('win 7, sigma 1, data_range 255, k (0.02, 0.05)', x, y, msssim=True,
                 data_range=255., win_size=7, sigma=1.0, k=(0.02, 0.05))
    # flat planes: zero variance
    c = torch.full((1, 1, 12, 12), 0.5, device=device)
    bad += check('constant x, random y', c, _pair((1, 1, 12, 12), device, seed=14)[1])
    # small tiles: seams between tiles in both directions, forward and backward
    saved = K.TILE
    K.TILE = (8, 16)
    try: bad += check('8 x 16 tiles', *_pair((1, 1, 24, 40), device, seed=15))
    finally: K.TILE = saved
    # identical images: SSIM 1 and a zero gradient (the maximum)
    x = _pair((1, 1, 16, 16), device, seed=16)[0]
    xa = x.clone().requires_grad_()
    s = ssim(xa, x, reduction='none'); s.sum().backward()
    if not (s.float() - 1).abs().max() < 1e-6: bad.append(f'ssim(x, x) = {s.tolist()}, expected 1')
    if not xa.grad.abs().max() < 1e-6: bad.append(f'ssim(x, x): gradient {xa.grad.abs().max():.2e}, expected 0')
    # run-to-run equality (no atomics)
    x, y = _pair((1, 2, 16, 16), device, seed=17)
    outs = []
    for _ in range(2):
        xa = x.clone().requires_grad_()
        s = ssim(xa, y, reduction='none'); s.sum().backward(); outs.append((s.detach(), xa.grad))
    if not (torch.equal(outs[0][0], outs[1][0]) and torch.equal(outs[0][1], outs[1][1])): bad.append('results vary between runs')
    # an empty batch
    e = torch.rand(0, 2, 12, 12, device=device, requires_grad=True)
    s = ssim(e, torch.rand(0, 2, 12, 12, device=device), reduction='none'); s.sum().backward()
    if s.shape != (0,) or e.grad.shape != e.shape: bad.append(f'empty batch: value {tuple(s.shape)}, gradient {e.grad}')
    # argument errors from the launcher itself
    for args, msg in [((x, y[:, :1]), 'same shape'), ((x[0], y[0]), 'B x C x H x W'), ((x, y), 'win_size must be a positive odd')]:
        try: K.ssim_triton_planes(*args, win_size=4 if 'odd' in msg else 11)
        except (ValueError, RuntimeError) as e:
            if msg not in str(e): bad.append(f'error for {msg!r} says {e}')
        else: bad.append(f'no error for {msg!r}')
    return bad


def run_group(group, device):
    "Failures (a list of strings) of one group of checks on `device`, with the Triton backend forced."
    with _env(MEDRECIPES_BACKEND='triton'):
        return {'shapes': group_shapes, 'edges': group_edges}[group](device)


@pytest.mark.parametrize('group', GROUPS)
def test_interpreter(group):
    pytest.importorskip('triton')
    env = dict(os.environ, TRITON_INTERPRET='1', OMP_NUM_THREADS='1')
    r = subprocess.run([sys.executable, __file__, group, 'cpu'], env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, f'{group} checks failed:\n{r.stdout[-6000:]}\n{r.stderr[-6000:]}'


@pytest.mark.cuda
@pytest.mark.parametrize('group', GROUPS)
def test_cuda(group):
    pytest.importorskip('triton')
    if not torch.cuda.is_available(): pytest.skip('needs a CUDA GPU')
    res = run_group(group, 'cuda')
    assert not res, '\n'.join(res)


def test_kernels_compile_for_sm90():
    "The compiled (not interpreted) path: both kernels go through Triton's frontend, LLVM and ptxas for an H100."
    pytest.importorskip('triton')
    try:
        import triton
        from triton.backends.compiler import GPUTarget
        from triton.compiler import ASTSource
    except ImportError as e: pytest.skip(f'this Triton has no ASTSource/GPUTarget: {e}')
    import medrecipes.kernels.ssim.triton as K
    if K.INTERPRETED: pytest.skip('Triton was imported in interpreter mode in this process')
    common = dict(shift_ptr='*fp32', g_ptr='*fp32', coef_ptr='*fp32', H='i32', W='i32', Ho='i32', Wo='i32',
                  n_tw='i32', n_th='i32', WIN='constexpr', BH='constexpr', BW='constexpr')
    for dt in ('*fp32', '*bf16'):
        fwd = ASTSource(K._ssim_fwd_kernel, dict(common, x_ptr=dt, y_ptr=dt, part_ptr='*fp32', c1='fp32', c2='fp32', SAVE='constexpr'),
                        constexprs=dict(WIN=11, BH=K.BH, BW=K.MAX_BW, SAVE=True))
        bwd = ASTSource(K._ssim_bwd_kernel, dict(common, x_ptr=dt, y_ptr=dt, scale_ptr='*fp32', dx_ptr=dt, dy_ptr=dt,
                                                 NEED_DX='constexpr', NEED_DY='constexpr'),
                        constexprs=dict(WIN=11, BH=K.BH, BW=K.MAX_BW, NEED_DX=True, NEED_DY=True))
        for src, nw in ((fwd, K.FWD_WARPS), (bwd, K.BWD_WARPS)):
            k = triton.compile(src, target=GPUTarget('cuda', 90, 32), options={'num_warps': nw})
            assert len(k.asm['cubin']) > 0


if __name__ == '__main__':  # the interpreter subprocess: python tests/test_kernels_ssim.py GROUP DEVICE
    res = run_group(sys.argv[1], sys.argv[2])
    print('\n'.join(res) or 'ok')
    sys.exit(1 if res else 0)
