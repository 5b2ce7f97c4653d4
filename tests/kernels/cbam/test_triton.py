"""CBAM's Triton backend (`medrecipes/kernels/cbam/triton.py`): its six fused passes against the package's op-level
oracle (`medrecipes.kernels.cbam.reference.ReferenceCBAMOps`, itself checked against torch autograd) on random and
edge-case inputs (odd sizes, channels-last and mixed layouts, tied maxima, half types, reductions split across
programs), its argument errors, and the module end to end against timm's CbamModule: under Triton's interpreter on
CPU tensors, on a GPU (`pytest -m cuda`), and compiled for sm_90 without a GPU. How the groups run:
`tests/kernels/_harness.py`."""
import pytest, torch
from medrecipes.kernels.cbam.reference import ReferenceCBAMOps as R, _bc, _bp
from .._harness import TOL, env_vars, rel_err, to_layout, run_checks, run_on_cuda, aot_unavailable, compile_failures

GROUPS = ['ops', 'half', 'split', 'module']


# ------------------------------------------------------------------------------------------- oracle, from the formulas

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
    ('odd_cl', (2, 19, 7, 9), torch.float32, 'channels_last', 'channels_last', False),
    ('batch1_c3', (1, 3, 5, 4), torch.float32, 'nchw', 'nchw', False),
    ('c33_cl_g_nchw', (1, 33, 6, 6), torch.float32, 'channels_last', 'nchw', False),
    ('loops', (1, 40, 16, 17), torch.float32, 'nchw', 'channels_last', False),
    ('loops_cl', (2, 70, 6, 7), torch.float32, 'channels_last', 'channels_last', False),
    ('h1', (3, 40, 1, 13), torch.float32, 'nchw', 'nchw', False),
    ('w1_cl', (2, 5, 11, 1), torch.float32, 'channels_last', 'nchw', False),
    ('c1', (2, 1, 6, 5), torch.float32, 'nchw', 'nchw', False),
    ('hw1_cl', (3, 5, 1, 1), torch.float32, 'channels_last', 'nchw', False),
    ('strided_copy', (2, 6, 5, 7), torch.float32, 'strided', 'nchw', False),
    ('ties', (2, 19, 7, 9), torch.float32, 'nchw', 'nchw', True),
    ('ties_cl', (1, 21, 8, 8), torch.float32, 'channels_last', 'channels_last', True),
    ('ties_loops', (1, 24, 20, 15), torch.float32, 'nchw', 'nchw', True),  # both axes take 2+ steps of a tile
    ('ties_loops_cl', (1, 80, 6, 6), torch.float32, 'channels_last', 'channels_last', True),
]
_BY_NAME = {c[0]: c for c in OPS_CASES}
HALF_CASES = [(f'{n}_{str(dt)[6:]}', sh, dt, xl, gl, t) for dt in (torch.float16, torch.bfloat16)
              for n, sh, _, xl, gl, t in [_BY_NAME[k] for k in ('odd', 'odd_cl', 'loops', 'ties', 'ties_cl')]]
SPLIT_CASES = [_BY_NAME['odd'], _BY_NAME['odd_cl'], HALF_CASES[3],  # the split group's small tiles: splits of 2+ steps
               ('mid_cl_g_nchw', (1, 40, 9, 10), torch.float32, 'channels_last', 'nchw', False),
               ('ties_mid', (2, 40, 9, 10), torch.float32, 'nchw', 'nchw', True),
               ('ties_mid_cl', (2, 40, 6, 7), torch.float32, 'channels_last', 'channels_last', True)]
# relative tolerance of the x-sized outputs (out, dx), rounded to x's dtype
OUT_TOL = {dt: t.value for dt, t in TOL['cbam_pass'].items()}


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
    return to_layout(x.to(device), xl), to_layout(g.to(device), gl), p



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
            e = rel_err(got, ref); want(e < tol, f'{what} relative RMS error {e:.2e} >= {tol:.0e}')

    def full(got, ref, what):  # x-sized output: x's dtype and layout
        want(got.dtype == x.dtype, f'{what} dtype {got.dtype} != {x.dtype}')
        if xl != 'strided': want(got.stride() == x.stride(), f'{what} strides {got.stride()} != {x.stride()}')
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
            e = rel_err(got.float(), want)
            if not e < 1e-4: bad.append(f'{tag}: {what} relative RMS error {e:.2e} >= 1e-4')
    return bad


def check_compile():
    "Compile every kernel for sm_90 (NCHW float32 and channels_last bfloat16 tiles); needs no GPU, only ptxas."
    if (why := aot_unavailable()): return why
    import medrecipes.kernels.cbam.triton as K
    bad = []
    for name in ('channel_pool', 'spatial_pool', 'apply_gates', 'spatial_gate_grad', 'channel_gate_grad', 'input_grad'):
        fn = getattr(K, f'_{name}_kernel')
        for dtype, bc, bp in (('fp32', 8, 256), ('bf16', 64, 32)):
            meta = dict(BLOCK_C=bc, BLOCK_P=bp)
            sig = {n: 'constexpr' if n in meta else ('i32' if not n.endswith('_ptr') else
                   f'*{dtype}' if n in ('x_ptr', 'g_ptr', 'out_ptr', 'dx_ptr') else '*fp32') for n in fn.arg_names}
            bad += compile_failures(f'{name} {dtype} {bc}x{bp}', fn, sig,
                                    {(fn.arg_names.index(k),): v for k, v in meta.items()}, num_warps=8)
    return bad


def run_group(group, device):
    "Failures (a list of strings) of one group of checks on `device`, or a string saying why it does not apply."
    if group == 'compile': return check_compile()
    import medrecipes.kernels.cbam.triton as K
    if group == 'module':
        with env_vars(MEDRECIPES_BACKEND='triton'): return check_module(device)
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


@pytest.mark.parametrize('group', GROUPS)
def test_interpreter(group):
    run_checks('cbam', group, TRITON_INTERPRET='1')


def test_kernels_compile_for_sm90(tmp_path):
    run_checks('cbam', 'compile', TRITON_CACHE_DIR=str(tmp_path))


@pytest.mark.cuda
@pytest.mark.parametrize('group', GROUPS)
def test_cuda(group):
    run_on_cuda(run_group, group)
