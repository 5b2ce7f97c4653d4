"""SSIM's public API (`medrecipes.kernels.ssim`): dispatch, parity with the float64 reference and pytorch-msssim,
dtypes, layouts, errors, the custom ops under torch.compile and torch.export, on the in-process backends (torch, cpp)."""
import pytest, torch
import pytorch_msssim
from medrecipes.kernels import ssim, ssim_reference, SSIMLoss, ssim_backend, cpp_available, ssim_constants
from .._harness import TOL, rel_err, assert_matches, image_pair, to_layout

SHAPES = [(2, 1, 32, 32), (1, 3, 23, 37), (2, 17, 16, 16), (1, 1, 11, 11), (3, 2, 40, 13)]

F32 = TOL['ssim'][torch.float32]


@pytest.mark.parametrize('shape', SHAPES)
def test_values_and_grads_match_reference_and_msssim(shape):
    x, y = image_pair(shape, seed=sum(shape))
    xa, ya = x.clone().requires_grad_(), y.clone().requires_grad_()
    s = ssim(xa, ya, reduction='none'); s.sum().backward()
    x64, y64 = x.double().requires_grad_(), y.double().requires_grad_()
    r = ssim_reference(x64, y64); r.sum().backward()
    assert_matches(f'{shape}', F32, value=(s, r), grads={'x': (xa.grad, x64.grad), 'y': (ya.grad, y64.grad)})
    if min(shape[-2:]) >= 11:
        m = pytorch_msssim.ssim(x, y, data_range=1, size_average=False)
        assert_matches(f'{shape} against pytorch_msssim', F32, value=(s, m))


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


@pytest.mark.parametrize('layout', ['nchw', 'channels_last', 'strided'])
@pytest.mark.parametrize('dtype', [torch.float32, torch.float64, torch.float16, torch.bfloat16])
@pytest.mark.parametrize('backend', ['torch', 'cpp'])
def test_backend_dtype_layout(backend, dtype, layout, monkeypatch):
    "Every in-process backend x dtype x layout against the float64 reference on the same rounded inputs: values and both gradients."
    from medrecipes.kernels import use_backend
    x, y = image_pair((2, 3, 17, 14), seed=3)
    x, y = to_layout(x.to(dtype), layout).requires_grad_(), to_layout(y.to(dtype), layout).requires_grad_()
    w = torch.tensor([0.7, 1.3])
    with use_backend(backend):
        assert ssim_backend(x) == backend
        s = ssim(x, y, reduction='none')
    (s.double() * w).sum().backward()
    x64, y64 = x.detach().double().requires_grad_(), y.detach().double().requires_grad_()
    r = ssim_reference(x64, y64); (r * w).sum().backward()
    assert s.dtype == dtype and x.grad.dtype == dtype and y.grad.dtype == dtype
    assert_matches(f'{backend} {dtype} {layout}', TOL['ssim'][dtype], value=(s, r),
                   grads={'x': (x.grad, x64.grad), 'y': (y.grad, y64.grad)})
