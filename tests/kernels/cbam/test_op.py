"""CBAM's public API (`medrecipes.kernels.cbam`, `CBAM`): parity with timm's CbamModule (copied weights) and the
reference, training and eval mode, dtypes, layouts, errors, the custom op under torch.compile and torch.export, on the
in-process backends (torch, cpp)."""
import pytest, torch
from timm.layers.cbam import CbamModule
from medrecipes.kernels import CBAM, cbam, cbam_reference, cbam_backend
from .._harness import TOL, Tol, rel_err, assert_matches, to_layout, skip_without_cpp

needs_cpp = skip_without_cpp('cbam')

# odd sizes, batch 1, C not divisible by 16 (and C < 16), a one-row image
SHAPES = [(2, 32, 16, 16), (1, 20, 7, 9), (3, 17, 5, 13), (2, 1, 6, 5), (4, 48, 1, 8)]


def _pair(C, seed=0, **kw):
    "A timm CbamModule with non-trivial batch-norm parameters and statistics, and a CBAM holding its weights."
    torch.manual_seed(seed)
    t = CbamModule(C, **kw)
    with torch.no_grad():
        bn = t.spatial.conv.bn
        bn.weight.fill_(1.3); bn.bias.fill_(-0.2); bn.running_mean.fill_(0.1); bn.running_var.fill_(2.0)
    m = CBAM(C, **kw)
    m.load_state_dict(t.state_dict())
    return t, m


def _step(mod, x, g):
    "Output, input gradient and parameter gradients of one forward/backward."
    xr = x.detach().clone().requires_grad_()
    mod.zero_grad(set_to_none=True)
    out = mod(xr); out.backward(g)
    return out.detach(), xr.grad, {k: p.grad for k, p in mod.named_parameters()}


def _compare(got, want, tol, what=''):
    "Two `_step` results: the output within `tol.value`, the input's and every parameter's gradient within `tol.grad` (relative RMS)."
    out, gx, gp = got; out_r, gx_r, gp_r = want
    assert_matches(what, tol, value=(out, out_r), grads={'input': (gx, gx_r), **{k: (gp[k], gp_r[k]) for k in gp_r}})


@pytest.mark.parametrize('shape', SHAPES)
@pytest.mark.parametrize('layout', ['nchw', 'channels_last'])
@needs_cpp
def test_matches_timm_train_and_eval(shape, layout):
    t, m = _pair(shape[1])
    g = torch.Generator().manual_seed(1)
    x = torch.randn(shape, generator=g) * 2
    gout = torch.randn(shape, generator=g)
    x = to_layout(x, layout)
    assert cbam_backend(x) == 'cpp'
    for mode in ('train', 'eval', 'train'):
        t.train(mode == 'train'); m.train(mode == 'train')
        got, want = _step(m, x, gout), _step(t, x, gout)
        _compare(got, want, Tol(1e-5, 1e-5), f'{shape} {layout} {mode}')
        if layout == 'channels_last': assert got[0].is_contiguous(memory_format=torch.channels_last)
        # running statistics and the batch counter: updated once per training forward, as nn.BatchNorm2d does
        for k, v in t.state_dict().items():
            torch.testing.assert_close(m.state_dict()[k], v, atol=1e-6, rtol=1e-6, msg=lambda s: f'{k} after {mode}: {s}')
    assert m.spatial.conv.bn.num_batches_tracked.item() == 2  # one per training forward


@needs_cpp
def test_functional_forms():
    t, m = _pair(24)
    x = torch.randn(3, 24, 10, 7)
    # a timm module passed to the functional form: its weights, its mode, its running statistics
    t2, _ = _pair(24)
    t.train(); t2.train()
    torch.testing.assert_close(cbam(x, t2), t(x), atol=1e-5, rtol=0)
    assert torch.equal(t2.spatial.conv.bn.running_var, t.spatial.conv.bn.running_var) or \
        torch.allclose(t2.spatial.conv.bn.running_var, t.spatial.conv.bn.running_var, atol=1e-7)
    assert t2.spatial.conv.bn.num_batches_tracked.item() == 1
    # the tensor form, as F.batch_norm takes running statistics, and the reference with the same arguments
    bn = m.spatial.conv.bn
    ps = (m.channel.fc1.weight, m.channel.fc2.weight, m.spatial.conv.conv.weight, bn.weight, bn.bias)
    rm1, rv1, rm2, rv2 = bn.running_mean.clone(), bn.running_var.clone(), bn.running_mean.clone(), bn.running_var.clone()
    a = cbam(x, *ps, running_mean=rm1, running_var=rv1, training=True, momentum=0.3)
    b = cbam_reference(x, *ps, running_mean=rm2, running_var=rv2, training=True, momentum=0.3)
    torch.testing.assert_close(a, b, atol=1e-5, rtol=0)
    torch.testing.assert_close(rm1, rm2, atol=1e-7, rtol=0); torch.testing.assert_close(rv1, rv2, atol=1e-6, rtol=0)
    assert not torch.equal(rm1, bn.running_mean)
    with pytest.raises(TypeError, match='cbam takes a CBAM module'): cbam(x, ps[0])


@needs_cpp
def test_momentum_none_and_no_running_stats():
    "Cumulative averages (momentum=None) and track_running_stats=False behave as nn.BatchNorm2d."
    t, m = _pair(16)
    for mod in (t, m): mod.spatial.conv.bn.momentum = None
    x = torch.randn(2, 16, 8, 8)
    for _ in range(3):
        torch.testing.assert_close(m(x), t(x), atol=1e-5, rtol=0)
        x = x * 1.5 + 0.3
    torch.testing.assert_close(m.spatial.conv.bn.running_var, t.spatial.conv.bn.running_var, atol=1e-6, rtol=0)
    torch.manual_seed(0)
    t = CbamModule(16); t.spatial.conv.bn = torch.nn.BatchNorm2d(1, track_running_stats=False)
    m = CBAM(16); m.spatial.conv.bn = torch.nn.BatchNorm2d(1, track_running_stats=False)
    m.load_state_dict(t.state_dict())
    t.eval(); m.eval()  # batch statistics in eval mode too
    torch.testing.assert_close(m(x), t(x), atol=1e-5, rtol=0)


@pytest.mark.parametrize('kw', [dict(rd_ratio=0.25), dict(rd_channels=5, mlp_bias=True), dict(spatial_kernel_size=3),
                                dict(rd_ratio=1 / 8, rd_divisor=4)])
@needs_cpp
def test_options_match_timm(kw):
    t, m = _pair(40, **kw)
    assert list(m.state_dict()) == list(t.state_dict())
    assert all(a.shape == b.shape for a, b in zip(m.state_dict().values(), t.state_dict().values()))
    x, g = torch.randn(2, 40, 9, 8), torch.randn(2, 40, 9, 8)
    _compare(_step(m, x, g), _step(t, x, g), Tol(1e-5, 1e-5), str(kw))


@needs_cpp
def test_same_init_as_timm():
    torch.manual_seed(3); t = CbamModule(64)
    torch.manual_seed(3); m = CBAM(64)
    for (k, a), b in zip(m.state_dict().items(), t.state_dict().values()): assert torch.equal(a, b), k


@pytest.mark.parametrize('layout', ['nchw', 'channels_last'])
@needs_cpp
def test_ties_in_max_pooling(layout):
    "Integer-valued inputs tie often in both max poolings; the gradient is split evenly, as torch.amax's."
    t, m = _pair(20)
    g = torch.Generator().manual_seed(5)
    for x in (torch.randint(-2, 3, (3, 20, 7, 9), generator=g).float(), torch.ones(2, 20, 6, 6)):
        x = to_layout(x, layout)
        gout = torch.randn(x.shape, generator=g)
        for mode in (True, False):
            t.train(mode); m.train(mode)
            _compare(_step(m, x, gout), _step(t, x, gout), Tol(1e-5, 1e-5), f'ties {layout} train={mode}')


@needs_cpp
def test_layouts_agree():
    t, m = _pair(33)
    x, g = torch.randn(2, 33, 11, 10), torch.randn(2, 33, 11, 10)
    a = _step(m, x, g)
    b = _step(m, to_layout(x, 'channels_last'), to_layout(g, 'channels_last'))
    c = _step(m, to_layout(x, 'strided'), g)  # neither layout: copied to NCHW
    _compare(b, a, Tol(1e-6, 1e-5), 'channels_last vs nchw'); _compare(c, a, Tol(1e-6, 1e-5), 'strided vs nchw')


@pytest.mark.parametrize('dtype', [torch.float16, torch.bfloat16])
@pytest.mark.parametrize('layout', ['nchw', 'channels_last'])
@needs_cpp
def test_half_types(dtype, layout):
    "Half inputs are computed in float32: compared with the reference in float32 on the same rounded input."
    t, m = _pair(32)
    x = (torch.randn(2, 32, 12, 9) * 2).to(dtype)
    g = torch.randn(2, 32, 12, 9).to(dtype)
    x, g = to_layout(x, layout), to_layout(g, layout)
    for mode in (True, False):
        t.train(mode); m.train(mode)
        got = _step(m, x, g)
        assert got[0].dtype == dtype and got[1].dtype == dtype
        if layout == 'channels_last': assert got[0].is_contiguous(memory_format=torch.channels_last)
        want = _step(t, x.float(), g.float())
        _compare(got, want, TOL['cbam'][dtype], f'{dtype} train={mode}')


@needs_cpp
def test_half_module():
    "A module converted to float16 (parameters and statistics) runs; the batch-norm statistics stay float16."
    t, m = _pair(16)
    m.half(); t.train(); m.train()
    x = torch.randn(2, 16, 8, 8)
    out = m(x.half())
    torch.testing.assert_close(out.float(), t(x.half().float()), atol=5e-3, rtol=0)
    assert m.spatial.conv.bn.running_mean.dtype == torch.float16
    torch.testing.assert_close(m.spatial.conv.bn.running_var.float(), t.spatial.conv.bn.running_var, atol=2e-3, rtol=0)
    out.float().sum().backward()
    assert m.channel.fc1.weight.grad.dtype == torch.float16 and torch.isfinite(m.channel.fc1.weight.grad).all()


@needs_cpp
def test_gradient_of_parameters_only_and_expanded_grad():
    "x without grad (backward skips the input-gradient pass); an expanded incoming gradient (out.sum())."
    t, m = _pair(24)
    x = torch.randn(2, 24, 9, 9)
    m(x).sum().backward(); t(x).sum().backward()
    for (k, p), q in zip(m.named_parameters(), t.parameters()): assert rel_err(p.grad, q.grad) < 1e-5, k


@needs_cpp
def test_double_backward_is_a_clear_error():
    m = CBAM(16).train()
    x = torch.randn(2, 16, 6, 6, requires_grad=True)
    gx, = torch.autograd.grad(m(x).square().sum(), x, create_graph=True)
    with pytest.raises(RuntimeError, match='cbam_backward.*no autograd formula'): gx.sum().backward()


@pytest.mark.parametrize('backend', ['torch', 'cpp'])
@pytest.mark.parametrize('training', [True, False])
@needs_cpp
def test_gradcheck_float64(backend, training, monkeypatch):
    monkeypatch.setenv('MEDRECIPES_BACKEND', backend)
    torch.manual_seed(0)
    m = CBAM(6, rd_ratio=0.5, spatial_kernel_size=3, mlp_bias=True).double()
    bn = m.spatial.conv.bn
    with torch.no_grad(): bn.running_mean.fill_(0.2); bn.running_var.fill_(1.5)
    ps = [m.channel.fc1.weight, m.channel.fc2.weight, m.spatial.conv.conv.weight, bn.weight, bn.bias, m.channel.fc1.bias, m.channel.fc2.bias]
    ps = [p.detach().clone().requires_grad_() for p in ps]
    for layout in ('nchw', 'channels_last'):
        x = torch.randn(2, 6, 4, 5, dtype=torch.float64)
        x = to_layout(x, layout)
        x.requires_grad_()
        rm, rv = (None, None) if training else (bn.running_mean, bn.running_var)
        f = lambda x, w1, w2, cw, bw, bb, b1, b2: cbam(x, w1, w2, cw, bw, bb, rm, rv, training, 0.1, 1e-5, b1, b2)
        assert torch.autograd.gradcheck(f, (x, *ps)), (backend, training, layout)


@pytest.mark.parametrize('make,err,match', [
    (lambda: torch.randn(16, 8, 8), ValueError, 'B x C x H x W'),
    (lambda: torch.randn(2, 15, 8, 8), ValueError, 'x has 15 channels but the CBAM module was built for 16'),
    (lambda: torch.randint(0, 9, (2, 16, 8, 8)), TypeError, 'float32, float16, bfloat16 or float64'),
    (lambda: torch.randn(1, 16, 1, 1), ValueError, 'more than one value per batch'),
    (lambda: torch.randn(2, 16, 0, 4), ValueError, 'must not be empty'),
])
@needs_cpp
def test_bad_inputs(make, err, match):
    m = CBAM(16).train()
    with pytest.raises(err, match=match): m(make())


@needs_cpp
def test_eval_mode_takes_a_single_pixel():
    t, m = _pair(16); t.eval(); m.eval()
    x = torch.randn(1, 16, 1, 1)
    torch.testing.assert_close(m(x), t(x), atol=1e-5, rtol=0)


@needs_cpp
def test_bad_construction():
    with pytest.raises(ValueError, match='spatial_kernel_size must be a positive odd number'): CBAM(16, spatial_kernel_size=4)
    m = CBAM(16)
    bn = m.spatial.conv.bn
    with pytest.raises(ValueError, match='conv_weight must have shape'):
        cbam(torch.randn(2, 16, 8, 8), m.channel.fc1.weight, m.channel.fc2.weight, torch.randn(1, 2, 4, 4), bn.weight, bn.bias)


@needs_cpp
def test_backend_switch(monkeypatch):
    t, m = _pair(16); t.train(); m.train()
    x = torch.randn(2, 16, 8, 8)
    monkeypatch.setenv('MEDRECIPES_BACKEND', 'torch'); assert cbam_backend(x) == 'torch'
    a = m(x)
    monkeypatch.setenv('MEDRECIPES_BACKEND', 'cpp'); assert cbam_backend(x) == 'cpp'
    torch.testing.assert_close(m(x), a, atol=1e-5, rtol=0)
    torch.testing.assert_close(t(x), a, atol=1e-5, rtol=0)
    monkeypatch.setenv('MEDRECIPES_BACKEND', 'triton'); monkeypatch.delenv('TRITON_INTERPRET', raising=False)
    with pytest.raises(RuntimeError, match='MEDRECIPES_BACKEND=triton'): m(x)
    monkeypatch.setenv('MEDRECIPES_BACKEND', 'cuda')
    with pytest.raises(ValueError, match='MEDRECIPES_BACKEND must be one of'): m(x)
    monkeypatch.delenv('MEDRECIPES_BACKEND'); assert cbam_backend(x) == 'cpp'
    assert cbam_backend(x.double()) == 'cpp'


# ---- torch.library custom ops: fake implementations, autograd, torch.compile, export ----

@needs_cpp
def test_custom_op_opcheck():
    "Schema, fake implementation and autograd registration of the CBAM forward op (C++ backend), in both modes."
    t, m = _pair(8)
    bn = m.spatial.conv.bn
    x = torch.randn(2, 8, 5, 6, requires_grad=True).contiguous(memory_format=torch.channels_last)
    ps = [m.channel.fc1.weight, m.channel.fc2.weight, m.spatial.conv.conv.weight, bn.weight, bn.bias]
    for stats in ((None, None), (bn.running_mean, bn.running_var)):
        torch.library.opcheck(torch.ops.medrecipes.cbam_forward.default, (x, *ps, None, None, *stats, stats[0] is None, 1e-5, 'cpp'),
                              test_utils=('test_schema', 'test_autograd_registration', 'test_faketensor'))


@needs_cpp
def test_sar_attention_model_compiles_without_graph_breaks():
    "The SAR `attention` autoencoder (CBAM in every block): no graph break; compiled forward, backward, statistics as eager."
    import copy
    from medrecipes.models.sar import sar_model
    torch._dynamo.reset()
    torch.manual_seed(0)
    model = sar_model('attention', latent_channels=2, base_channels=4).train()
    x = torch.rand(2, 1, 32, 32)
    assert torch._dynamo.explain(copy.deepcopy(model))(x).graph_break_count == 0
    eager, comp = copy.deepcopy(model), copy.deepcopy(model)
    out_e = eager(x); out_e.square().mean().backward()
    out_c = torch.compile(comp, backend='aot_eager', fullgraph=True)(x); out_c.square().mean().backward()
    torch.testing.assert_close(out_c, out_e, atol=1e-5, rtol=0)
    for (k, p), q in zip(comp.named_parameters(), eager.parameters()): assert rel_err(p.grad, q.grad) < 1e-5, k
    for (k, b), c in zip(comp.named_buffers(), eager.buffers()): torch.testing.assert_close(b, c, atol=1e-6, rtol=0, msg=k)


@needs_cpp
def test_reference_kernels_export_plain_ops():
    "Under `reference_kernels()` torch.export traces CBAM to plain aten ops; otherwise it keeps the fused op."
    from medrecipes.kernels import reference_kernels
    t, m = _pair(16); m.eval()
    x = torch.randn(1, 16, 6, 6)
    with reference_kernels(): ep = torch.export.export(m, (x,))
    assert 'medrecipes' not in str(ep.graph)
    torch.testing.assert_close(ep.module()(x), t.eval()(x), atol=1e-5, rtol=0)
    assert 'medrecipes.cbam_forward' in str(torch.export.export(m, (x,)).graph)


@pytest.mark.parametrize('layout', ['nchw', 'channels_last'])
@pytest.mark.parametrize('dtype', [torch.float32, torch.float64, torch.float16, torch.bfloat16])
@pytest.mark.parametrize('backend', ['torch', 'cpp'])
@needs_cpp
def test_backend_dtype_layout(backend, dtype, layout):
    "Every in-process backend x dtype x layout against timm's module on the same rounded input (float32; float64 for float64), training mode."
    from medrecipes.kernels import use_backend
    t, m = _pair(24)
    t.train(); m.train()
    if dtype == torch.float64: m.double()  # float64 end to end (half inputs run with float32 parameters)
    g = torch.Generator().manual_seed(4)
    x = (torch.randn(2, 24, 7, 9, generator=g) * 2).to(dtype); gout = torch.randn(2, 24, 7, 9, generator=g).to(dtype)
    x, gout = to_layout(x, layout), to_layout(gout, layout)
    with use_backend(backend):
        assert cbam_backend(x) == backend
        got = _step(m, x, gout)
    assert got[0].dtype == dtype and got[1].dtype == dtype
    if layout == 'channels_last' and backend == 'cpp': assert got[0].is_contiguous(memory_format=torch.channels_last)
    rd = torch.float64 if dtype == torch.float64 else torch.float32
    want = _step(t.to(rd), x.to(rd), gout.to(rd))
    _compare(got, want, TOL['cbam'][dtype], f'{backend} {dtype} {layout}')
