"""SSIM's C++ kernels: the bindings of `medrecipes._cpu` (`ssim_forward`, `ssim_backward`) in float32 and float64
against a plain PyTorch float64 reference and pytorch-msssim, on random and structured images; their errors, thread
independence, and the custom op on the C++ backend under gradcheck."""
import numpy as np
import pytest, torch
import torch.nn.functional as F
from .._harness import cpp_ext as _cpu, rel_err, skip_without_cpp

needs_cpp = skip_without_cpp('ssim')

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
    assert rel_err(dx, rx) < 1e-4 and rel_err(dy, ry) < 1e-4, (rel_err(dx, rx), rel_err(dy, ry))


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
    assert rel_err(torch.from_numpy(dx).view(2, 2, 20, 25), Xr.grad) < 1e-4
    assert rel_err(torch.from_numpy(dy).view(2, 2, 20, 25), Yr.grad) < 1e-4


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
    assert rel_err(torch.from_numpy(dx).view(shape), rx) < 1e-10 and rel_err(torch.from_numpy(dy).view(shape), ry) < 1e-10


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
    assert rel_err(x.grad, x2.grad) < 1e-10 and rel_err(y.grad, y2.grad) < 1e-10
    assert torch.autograd.gradcheck(lambda a, b: ssim(a, b, win_size=5, reduction='none'), (x[:1, :2].detach().requires_grad_(), y[:1, :2].detach().requires_grad_()))
