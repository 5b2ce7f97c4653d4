"""CBAM, every backend: the public API (`medrecipes.kernels.cbam`: parity with timm's CbamModule and the reference, the
C++ path, dtypes, layouts, errors, the custom ops under torch.compile and torch.export), and the Triton backend's six
fused passes against the package's op-level oracle (`medrecipes.kernels.cbam.reference.ReferenceCBAMOps`).

The Triton checks run on CPU tensors under TRITON_INTERPRET=1 in a subprocess (the variable must be set before triton
is imported, and other tests of the same worker import triton first), and in-process on CUDA when a GPU is present
(`pytest -m cuda`). Without a GPU, the kernels are also compiled for the H100 (sm_90) to catch what the interpreter
does not check. This file is also that subprocess's script: `python tests/test_kernels_cbam.py GROUP DEVICE` runs one
group of checks, prints the failures, exits 0 (all pass), 1 (failures) or 77 (group not applicable here).
"""
import contextlib, hashlib, os, subprocess, sys
import pytest, torch
from _utils import TOL, rel_err, env_vars as _env
try: from medrecipes import _cpu
except ImportError: _cpu = None  # not built (e.g. on a GPU machine running `pytest -m cuda`)

from timm.layers.cbam import CbamModule
from medrecipes.kernels import CBAM, cbam, cbam_reference, cbam_backend, cbam_cpp_available
_rel_rms = rel_err

# odd sizes, batch 1, C not divisible by 16 (and C < 16), a one-row image
SHAPES = [(2, 32, 16, 16), (1, 20, 7, 9), (3, 17, 5, 13), (2, 1, 6, 5), (4, 48, 1, 8)]

needs_cpp = pytest.mark.skipif(not cbam_cpp_available(), reason='C++ CBAM kernels not built (setup.py build_ext --inplace)')



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


def _compare(got, want, out_tol, grad_tol, what=''):
    out, gx, gp = got; out_r, gx_r, gp_r = want
    torch.testing.assert_close(out.double(), out_r.double(), atol=out_tol, rtol=0, msg=lambda m: f'{what} output: {m}')
    assert _rel_rms(gx, gx_r) < grad_tol, f'{what} input grad rel RMS {_rel_rms(gx, gx_r):.2e}'
    for k in gp_r:
        assert _rel_rms(gp[k], gp_r[k]) < grad_tol, f'{what} grad of {k} rel RMS {_rel_rms(gp[k], gp_r[k]):.2e}'


@pytest.mark.parametrize('shape', SHAPES)
@pytest.mark.parametrize('layout', ['nchw', 'channels_last'])
@needs_cpp
def test_matches_timm_train_and_eval(shape, layout):
    t, m = _pair(shape[1])
    g = torch.Generator().manual_seed(1)
    x = torch.randn(shape, generator=g) * 2
    gout = torch.randn(shape, generator=g)
    if layout == 'channels_last': x = x.contiguous(memory_format=torch.channels_last)
    assert cbam_backend(x) == 'cpp'
    for mode in ('train', 'eval', 'train'):
        t.train(mode == 'train'); m.train(mode == 'train')
        got, want = _step(m, x, gout), _step(t, x, gout)
        _compare(got, want, 1e-5, 1e-5, f'{shape} {layout} {mode}')
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
    _compare(_step(m, x, g), _step(t, x, g), 1e-5, 1e-5, str(kw))


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
        if layout == 'channels_last': x = x.contiguous(memory_format=torch.channels_last)
        gout = torch.randn(x.shape, generator=g)
        for mode in (True, False):
            t.train(mode); m.train(mode)
            _compare(_step(m, x, gout), _step(t, x, gout), 1e-5, 1e-5, f'ties {layout} train={mode}')


@needs_cpp
def test_layouts_agree():
    t, m = _pair(33)
    x, g = torch.randn(2, 33, 11, 10), torch.randn(2, 33, 11, 10)
    a = _step(m, x, g)
    b = _step(m, x.contiguous(memory_format=torch.channels_last), g.contiguous(memory_format=torch.channels_last))
    c = _step(m, x.transpose(2, 3).contiguous().transpose(2, 3), g)  # neither layout: copied to NCHW
    _compare(b, a, 1e-6, 1e-5, 'channels_last vs nchw'); _compare(c, a, 1e-6, 1e-5, 'strided vs nchw')


@pytest.mark.parametrize('dtype', [torch.float16, torch.bfloat16])
@pytest.mark.parametrize('layout', ['nchw', 'channels_last'])
@needs_cpp
def test_half_types(dtype, layout):
    "Half inputs are computed in float32: compared with the reference in float32 on the same rounded input."
    t, m = _pair(32)
    x = (torch.randn(2, 32, 12, 9) * 2).to(dtype)
    g = torch.randn(2, 32, 12, 9).to(dtype)
    if layout == 'channels_last': x, g = x.contiguous(memory_format=torch.channels_last), g.contiguous(memory_format=torch.channels_last)
    for mode in (True, False):
        t.train(mode); m.train(mode)
        got = _step(m, x, g)
        assert got[0].dtype == dtype and got[1].dtype == dtype
        if layout == 'channels_last': assert got[0].is_contiguous(memory_format=torch.channels_last)
        want = _step(t, x.float(), g.float())
        _compare(got, want, *TOL['cbam'][dtype], f'{dtype} train={mode}')


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
    for (k, p), q in zip(m.named_parameters(), t.parameters()): assert _rel_rms(p.grad, q.grad) < 1e-5, k


@needs_cpp
def test_double_backward_is_a_clear_error():
    m = CBAM(16).train()
    x = torch.randn(2, 16, 6, 6, requires_grad=True)
    gx, = torch.autograd.grad(m(x).square().sum(), x, create_graph=True)
    with pytest.raises(RuntimeError, match='cbam_backward.*no autograd formula'): gx.sum().backward()


@needs_cpp
def test_deterministic_and_thread_independent():
    """Bitwise the same results on repeated runs; with 1 or 2 OpenMP threads too, except the convolution's weight
    gradient, which torch's own convolution backward computes in a thread-count dependent order."""
    code = ("import torch,hashlib;from medrecipes.kernels import CBAM\n"
            "for rep in range(2):\n"
            " torch.manual_seed(0);m=CBAM(40).train();h,k=hashlib.sha256(),hashlib.sha256()\n"
            " for cl in (False,True):\n"
            "  x=torch.randint(-3,4,(3,40,33,35)).float()+0.25*torch.randn(3,40,33,35).round()\n"
            "  x=x.contiguous(memory_format=torch.channels_last) if cl else x\n"
            "  x.requires_grad_();m.zero_grad();y=m(x);y.backward(torch.randn_like(y))\n"
            "  [h.update(t.detach().contiguous().numpy().tobytes()) for t in (y,x.grad,*[p.grad for n,p in m.named_parameters() if n!='spatial.conv.conv.weight'])]\n"
            "  k.update(m.spatial.conv.conv.weight.grad.numpy().tobytes())\n"
            " print(h.hexdigest(),k.hexdigest())")
    runs = []
    for n in ('1', '2'):
        env = dict(os.environ, OMP_NUM_THREADS=n)
        r = subprocess.run([sys.executable, '-c', code], env=env, capture_output=True, text=True, timeout=300)
        assert r.returncode == 0, r.stderr[-3000:]
        runs.append(r.stdout.split())
    assert len(runs[1]) == 4 and runs[1][:2] == runs[1][2:], 'results vary between runs'
    assert runs[0][0] == runs[1][0] and runs[0][:2] == runs[0][2:], 'results depend on the thread count'


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
        if layout == 'channels_last': x = x.contiguous(memory_format=torch.channels_last)
        x.requires_grad_()
        rm, rv = (None, None) if training else (bn.running_mean, bn.running_var)
        f = lambda x, w1, w2, cw, bw, bb, b1, b2: cbam(x, w1, w2, cw, bw, bb, rm, rv, training, 0.1, 1e-5, b1, b2)
        assert torch.autograd.gradcheck(f, (x, *ps)), (backend, training, layout)


@needs_cpp
def test_gradcheck_ties_cpp(monkeypatch):
    "float64 C++ path at exact ties: the even split of the max-pooling gradient against the reference's."
    torch.manual_seed(0)
    m = CBAM(8, rd_ratio=0.25).double().train()
    x = torch.randint(-1, 2, (2, 8, 5, 5)).double().requires_grad_()
    g = torch.randn(2, 8, 5, 5, dtype=torch.float64)
    out = {}
    for be in ('cpp', 'torch'):
        monkeypatch.setenv('MEDRECIPES_BACKEND', be)
        x.grad = None; m.zero_grad()
        m(x).backward(g)
        out[be] = [x.grad.clone()] + [p.grad.clone() for p in m.parameters()]
    for a, b in zip(out['cpp'], out['torch']): torch.testing.assert_close(a, b, atol=1e-12, rtol=1e-10)


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
def test_cpp_ops_check_their_arguments():
    x = torch.randn(2, 4, 5, 6).numpy(); a = torch.rand(2, 4).numpy()
    with pytest.raises(ValueError, match='cbam_spatial_pool: a must have shape \\(2, 4\\); got \\(2, 5\\)'):
        _cpu.cbam_spatial_pool(x, torch.rand(2, 5).numpy())
    with pytest.raises(ValueError, match='cbam_channel_pool: x must be float32'):
        _cpu.cbam_channel_pool(x.astype('float16'))
    with pytest.raises(ValueError, match='a must be float64 like x'):
        _cpu.cbam_spatial_pool(x.astype('float64'), a)
    with pytest.raises(ValueError, match='must be C-contiguous'):
        _cpu.cbam_apply_gates(x, a, torch.rand(2, 6, 5).numpy().transpose(0, 2, 1))
    with pytest.raises(ValueError, match='x must be 4-D'):
        _cpu.cbam_channel_pool(x[0])


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
    for (k, p), q in zip(comp.named_parameters(), eager.parameters()): assert _rel_rms(p.grad, q.grad) < 1e-5, k
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
    if layout == 'channels_last': x, gout = x.contiguous(memory_format=torch.channels_last), gout.contiguous(memory_format=torch.channels_last)
    with use_backend(backend):
        assert cbam_backend(x) == backend
        got = _step(m, x, gout)
    assert got[0].dtype == dtype and got[1].dtype == dtype
    if layout == 'channels_last' and backend == 'cpp': assert got[0].is_contiguous(memory_format=torch.channels_last)
    rd = torch.float64 if dtype == torch.float64 else torch.float32
    want = _step(t.to(rd), x.to(rd), gout.to(rd))
    _compare(got, want, *TOL['cbam'][dtype], f'{backend} {dtype} {layout}')


# ========================================================== the Triton backend (medrecipes/kernels/cbam/triton.py)

_rel = rel_err

GROUPS = ['ops', 'half', 'split', 'module']
SKIP = 77


# ------------------------------------------------------------------------------------------- oracle, from the formulas
from medrecipes.kernels.cbam.reference import ReferenceCBAMOps as R, _bc, _bp

ref_channel_pool, ref_spatial_pool, ref_apply_gates = R.channel_pool, R.spatial_pool, R.apply_gates
ref_spatial_gate_grad, ref_channel_gate_grad, ref_input_grad = R.spatial_gate_grad, R.channel_gate_grad, R.input_grad


def autograd_grads(g, x, a, s, dmean, dmax, dcavg, dcmax):
    "ds, da, dx by torch autograd through mean/amax (torch's own tie splitting), float32: checks the oracle above."
    xf = x.float().requires_grad_(); af = a.clone().requires_grad_(); sf = s.clone().requires_grad_()
    y1 = xf * _bc(af)
    loss = ((g.float() * y1 * _bp(sf)).sum() + (dmean * y1.mean(1)).sum() + (dmax * y1.amax(1)).sum()
            + (dcavg * xf.mean((2, 3))).sum() + (dcmax * xf.amax((2, 3))).sum())
    return torch.autograd.grad(loss, (sf, af, xf))


# ----------------------------------------------------------------------------------------------------------- cases
# (name, shape, dtype, x layout, g layout, integer-valued x with one gate value for all channels: ties)
OPS_CASES = [
    ('odd', (2, 19, 7, 9), torch.float32, 'nchw', 'nchw', False),
    ('odd_cl', (2, 19, 7, 9), torch.float32, 'cl', 'cl', False),
    ('batch1_c3', (1, 3, 5, 4), torch.float32, 'nchw', 'nchw', False),
    ('c33_cl_g_nchw', (1, 33, 6, 6), torch.float32, 'cl', 'nchw', False),
    ('loops', (1, 40, 16, 17), torch.float32, 'nchw', 'cl', False),
    ('loops_cl', (2, 70, 6, 7), torch.float32, 'cl', 'cl', False),
    ('h1', (3, 40, 1, 13), torch.float32, 'nchw', 'nchw', False),
    ('w1_cl', (2, 5, 11, 1), torch.float32, 'cl', 'nchw', False),
    ('c1', (2, 1, 6, 5), torch.float32, 'nchw', 'nchw', False),
    ('hw1_cl', (3, 5, 1, 1), torch.float32, 'cl', 'nchw', False),
    ('strided_copy', (2, 6, 5, 7), torch.float32, 'hw_transposed', 'nchw', False),
    ('ties', (2, 19, 7, 9), torch.float32, 'nchw', 'nchw', True),
    ('ties_cl', (1, 21, 8, 8), torch.float32, 'cl', 'cl', True),
    ('ties_loops', (1, 24, 20, 15), torch.float32, 'nchw', 'nchw', True),  # both axes take 2+ steps of a tile
    ('ties_loops_cl', (1, 80, 6, 6), torch.float32, 'cl', 'cl', True),
]
_BY_NAME = {c[0]: c for c in OPS_CASES}
HALF_CASES = [(f'{n}_{str(dt)[6:]}', sh, dt, xl, gl, t) for dt in (torch.float16, torch.bfloat16)
              for n, sh, _, xl, gl, t in [_BY_NAME[k] for k in ('odd', 'odd_cl', 'loops', 'ties', 'ties_cl')]]
SPLIT_CASES = [_BY_NAME['odd'], _BY_NAME['odd_cl'], HALF_CASES[3],  # the split group's small tiles: splits of 2+ steps
               ('mid_cl_g_nchw', (1, 40, 9, 10), torch.float32, 'cl', 'nchw', False),
               ('ties_mid', (2, 40, 9, 10), torch.float32, 'nchw', 'nchw', True),
               ('ties_mid_cl', (2, 40, 6, 7), torch.float32, 'cl', 'cl', True)]
# relative tolerance of the x-sized outputs (out, dx), rounded to x's dtype
OUT_TOL = {dt: t.value for dt, t in TOL['cbam_pass'].items()}


def _layout(t, kind):
    if kind == 'cl': return t.contiguous(memory_format=torch.channels_last)
    if kind == 'hw_transposed': return t.transpose(2, 3).contiguous().transpose(2, 3)  # H, W not one axis
    return t.contiguous()


def make_inputs(shape, dtype, xl, gl, ties, device, seed=0):
    gen = torch.Generator().manual_seed(seed + sum(shape))
    B, C, H, W = shape
    if ties:
        x = torch.randint(-3, 4, shape, generator=gen).float()
        a = torch.full((B, C), 0.5) + torch.arange(B)[:, None] * 0.25  # same gate over channels: ties in x*a too
    else:
        x = torch.randn(shape, generator=gen); a = torch.rand(B, C, generator=gen)
    x = x.to(dtype)
    g = torch.randn(shape, generator=gen).to(dtype)
    p = dict(a=a, s=torch.rand(B, H, W, generator=gen), dmean=torch.randn(B, H, W, generator=gen),
             dmax=torch.randn(B, H, W, generator=gen), dcavg=torch.randn(B, C, generator=gen),
             dcmax=torch.randn(B, C, generator=gen))
    p = {k: v.to(device) for k, v in p.items()}
    return _layout(x.to(device), xl), _layout(g.to(device), gl), p



def check_case(K, case, device):
    "Run the six ops on one case; return a list of failure descriptions."
    name, shape, dtype, xl, gl, ties = case
    x, g, p = make_inputs(shape, dtype, xl, gl, ties, device)
    a, s, dmean, dmax, dcavg, dcmax = (p[k] for k in ('a', 's', 'dmean', 'dmax', 'dcavg', 'dcmax'))
    bad = []

    def want(ok, what):
        if not ok: bad.append(f'{name}: {what}')

    def same(got, ref, what):  # exact: maxima and counts
        want(got.shape == ref.shape and got.dtype == torch.float32 and torch.equal(got, ref),
             f'{what} differs: {got.flatten()[:6].tolist()} vs {ref.flatten()[:6].tolist()}')

    def close(got, ref, tol, what):
        want(got.shape == ref.shape, f'{what} shape {tuple(got.shape)} != {tuple(ref.shape)}')
        if got.shape == ref.shape:
            e = _rel(got, ref); want(e < tol, f'{what} relative RMS error {e:.2e} >= {tol:.0e}')

    def full(got, ref, what):  # x-sized output: x's dtype and layout
        want(got.dtype == x.dtype, f'{what} dtype {got.dtype} != {x.dtype}')
        if xl != 'hw_transposed': want(got.stride() == x.stride(), f'{what} strides {got.stride()} != {x.stride()}')
        close(got.float(), ref.float(), OUT_TOL[dtype], what)

    cavg, cmax, ccnt = K.channel_pool(x)
    r_cavg, r_cmax, r_ccnt = ref_channel_pool(x)
    close(cavg, r_cavg, 1e-5, 'channel_pool mean'); same(cmax, r_cmax, 'channel_pool max')
    same(ccnt, r_ccnt, 'channel_pool count')
    smean, smax, scnt = K.spatial_pool(x, a)
    r_smean, r_smax, r_scnt = ref_spatial_pool(x, a)
    close(smean, r_smean, 1e-5, 'spatial_pool mean'); same(smax, r_smax, 'spatial_pool max')
    same(scnt, r_scnt, 'spatial_pool count')
    if ties: want(r_ccnt.max() > 1 and r_scnt.max() > 1, 'tie case has no tied maxima')
    full(K.apply_gates(x, a, s), ref_apply_gates(x, a, s), 'apply_gates')

    close(K.spatial_gate_grad(g, x, a), ref_spatial_gate_grad(g, x, a), 1e-5, 'spatial_gate_grad')
    args = (g, x, a, s, dmean, dmax, r_smax, r_scnt)
    da = K.channel_gate_grad(*args)
    close(da, ref_channel_gate_grad(*args), 1e-5, 'channel_gate_grad')
    dx = K.input_grad(*args, dcavg, dcmax, r_cmax, r_ccnt)
    r_dx = ref_input_grad(*args, dcavg, dcmax, r_cmax, r_ccnt)
    full(dx, r_dx, 'input_grad')
    if dtype == torch.float32:  # the oracle's tie handling is torch.amax's
        ds_ag, da_ag, dx_ag = autograd_grads(g, x, a, s, dmean, dmax, dcavg, dcmax)
        close(ref_spatial_gate_grad(g, x, a), ds_ag, 1e-5, 'oracle ds vs autograd')
        close(ref_channel_gate_grad(*args), da_ag, 1e-5, 'oracle da vs autograd')
        close(r_dx, dx_ag, 1e-5, 'oracle dx vs autograd')
    return bad


def check_errors(K, device):
    bad = []
    x = torch.randn(1, 3, 4, 4, device=device)
    for call, err, words in [
        (lambda: K.channel_pool(x[0]), ValueError, 'x must be a B x C x H x W'),
        (lambda: K.channel_pool(x.double()), TypeError, 'x must be float32, float16 or bfloat16'),
        (lambda: K.spatial_pool(x, torch.rand(1, 4, device=device)), ValueError, 'a must be a float32 tensor'),
        (lambda: K.spatial_gate_grad(torch.randn(1, 3, 4, 5, device=device), x, torch.rand(1, 3, device=device)),
         ValueError, 'g must have the shape and device of x'),
    ]:
        try: call(); bad.append(f'errors: no {err.__name__} for "{words}"')
        except err as e:
            if words not in str(e): bad.append(f'errors: "{e}" does not say "{words}"')
    return bad


def check_module(device):
    "End to end: medrecipes' CBAM on the triton backend vs timm's CbamModule with the same weights (train mode)."
    try:
        import importlib
        M = importlib.import_module('medrecipes.kernels.cbam'); M.CBAM
    except (ImportError, AttributeError) as e:
        return f'medrecipes.kernels.cbam.CBAM not available ({e})'
    from timm.layers.cbam import CbamModule
    bad = []
    for shape, cl, dense_grad in [((2, 32, 9, 11), False, True), ((1, 40, 8, 7), True, True),
                                  ((3, 19, 5, 6), True, False)]:
        torch.manual_seed(0)
        ref = CbamModule(shape[1]).to(device)
        mod = M.CBAM(shape[1]).to(device)
        missing = mod.load_state_dict(ref.state_dict(), strict=False)
        if missing.missing_keys or missing.unexpected_keys:
            return [f'module: state dict of CBAM does not match timm CbamModule: {missing}']
        ref.train(); mod.train()
        x = torch.randn(shape, device=device)
        if cl: x = x.contiguous(memory_format=torch.channels_last)
        if M.cbam_backend(x) != 'triton': return [f'module: MEDRECIPES_BACKEND=triton gives {M.cbam_backend(x)}']
        xr = x.clone().requires_grad_(); xm = x.clone().requires_grad_()
        out_r = ref(xr); out_m = mod(xm)
        go = torch.randn_like(out_r)
        for o in (out_r, out_m):  # out.sum(): the incoming gradient is an expanded tensor (all strides 0)
            (o * go).sum().backward() if dense_grad else o.sum().backward()
        tag = f'module {shape} {"cl" if cl else "nchw"}'
        for what, got, want in [('output', out_m, out_r), ('input grad', xm.grad, xr.grad)] + [
                (f'grad {k}', dict(mod.named_parameters())[k].grad, p.grad) for k, p in ref.named_parameters()]:
            e = _rel(got.float(), want)
            if not e < 1e-4: bad.append(f'{tag}: {what} relative RMS error {e:.2e} >= 1e-4')
    return bad


def check_compile():
    "Compile every kernel for sm_90 (NCHW float32 and channels_last bfloat16 tiles); needs no GPU, only ptxas."
    try:
        import triton
        from triton.compiler import ASTSource
        from triton.backends.compiler import GPUTarget
    except ImportError as e: return f'this Triton cannot compile ahead of time ({e})'
    import medrecipes.kernels.cbam.triton as K
    bad = []
    for name in ('channel_pool', 'spatial_pool', 'apply_gates', 'spatial_gate_grad', 'channel_gate_grad', 'input_grad'):
        fn = getattr(K, f'_{name}_kernel')
        for dtype, bc, bp in (('fp32', 8, 256), ('bf16', 64, 32)):
            meta = dict(BLOCK_C=bc, BLOCK_P=bp)
            sig = {n: 'constexpr' if n in meta else ('i32' if not n.endswith('_ptr') else
                   f'*{dtype}' if n in ('x_ptr', 'g_ptr', 'out_ptr', 'dx_ptr') else '*fp32') for n in fn.arg_names}
            src = ASTSource(fn, sig, constexprs={(fn.arg_names.index(k),): v for k, v in meta.items()})
            try: assert triton.compile(src, target=GPUTarget('cuda', 90, 32), options=dict(num_warps=8)).asm['cubin']
            except Exception as e: bad.append(f'compile {name} {dtype} {bc}x{bp}: {type(e).__name__}: {e}'[:2000])
    return bad


def run_group(group, device):
    "Failures (a list of strings) of one group of checks on `device`, or a string saying why it does not apply."
    if group == 'compile': return check_compile()
    import medrecipes.kernels.cbam.triton as K
    if group == 'module':
        with _env(MEDRECIPES_BACKEND='triton'): return check_module(device)
    if group == 'split':  # small tiles, reduced axes split across programs; and run-to-run equality
        saved = K.MIN_PROGRAMS, K.TILE, dict(K.LONG_SIDE)
        K.MIN_PROGRAMS, K.TILE = 8, 256
        K.LONG_SIDE.update(nchw=64, channels_last=32)
        try:
            bad = [] if K._split(2, 40, 16, torch.device(device))[0] > 1 else ['split: the settings do not split']
            bad += sum((check_case(K, c, device) for c in SPLIT_CASES), [])
            x, _, p = make_inputs((2, 40, 9, 10), torch.float32, 'nchw', 'nchw', False, device)
            one, two = K.channel_pool(x) + K.spatial_pool(x, p['a']), K.channel_pool(x) + K.spatial_pool(x, p['a'])
            if not all(torch.equal(u, v) for u, v in zip(one, two)): bad.append('split: results vary between runs')
            return bad
        finally:
            K.MIN_PROGRAMS, K.TILE = saved[:2]; K.LONG_SIDE.update(saved[2])
    cases = OPS_CASES if group == 'ops' else HALF_CASES
    return sum((check_case(K, c, device) for c in cases), []) + (check_errors(K, device) if group == 'ops' else [])


def _run_script(group, **env):
    env = {**{k: v for k, v in os.environ.items() if k != 'TRITON_INTERPRET'}, 'OMP_NUM_THREADS': '1', **env}
    r = subprocess.run([sys.executable, __file__, group, 'cpu'], env=env, capture_output=True, text=True, timeout=600)
    if r.returncode == SKIP: pytest.skip(r.stdout.strip())
    assert r.returncode == 0, f'{group} checks failed:\n{r.stdout[-6000:]}\n{r.stderr[-6000:]}'


@pytest.mark.parametrize('group', GROUPS)
def test_interpreter(group):
    pytest.importorskip('triton')
    _run_script(group, TRITON_INTERPRET='1')


def test_kernels_compile_for_sm90(tmp_path):
    pytest.importorskip('triton')
    _run_script('compile', TRITON_CACHE_DIR=str(tmp_path))


@pytest.mark.cuda
@pytest.mark.parametrize('group', GROUPS)
def test_cuda(group):
    pytest.importorskip('triton')
    if not torch.cuda.is_available(): pytest.skip('needs a CUDA GPU')
    res = run_group(group, 'cuda')
    if isinstance(res, str): pytest.skip(res)
    assert not res, '\n'.join(res)


if __name__ == '__main__':  # the interpreter subprocess: python tests/test_kernels_cbam.py GROUP DEVICE
    res = run_group(sys.argv[1], sys.argv[2])
    if isinstance(res, str): print(res); sys.exit(SKIP)
    print('\n'.join(res) or 'ok')
    sys.exit(1 if res else 0)
