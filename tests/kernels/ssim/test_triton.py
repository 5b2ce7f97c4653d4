"""SSIM's Triton backend (`medrecipes/kernels/ssim/triton.py`) through the public `ssim`, against the float64 reference
and pytorch-msssim: values and gradients on random and edge-case inputs, under Triton's interpreter on CPU tensors,
on a GPU (`pytest -m cuda`), and compiled for sm_90 without a GPU. How the groups run: `tests/kernels/_harness.py`."""
import pytest, torch
from .._harness import TOL, env_vars, mismatches, image_pair, run_checks, run_on_cuda, aot_unavailable, compile_failures

GROUPS = ['shapes', 'edges']
TRITON_SHAPES = [(2, 1, 32, 32), (1, 3, 23, 37), (1, 1, 11, 11), (2, 5, 16, 40)]
F32 = TOL['ssim'][torch.float32]  # max abs error of SSIM values, relative RMS error of gradients
HALF_TOL = {dt: TOL['ssim'][dt] for dt in (torch.float16, torch.bfloat16)}  # (value, gradient) for half inputs


def check(tag, x, y, grads=(True, True), msssim=False, tol=F32, **kw):
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
    bad += mismatches(tag, tol, value=(s, r))
    if msssim:
        m = pytorch_msssim.ssim(x.float(), y.float(), data_range=kw.get('data_range', 1.0), size_average=False,
                                win_size=kw.get('win_size', 11), win_sigma=kw.get('sigma', 1.5), K=kw.get('k', (0.01, 0.03)))
        bad += mismatches(f'{tag} against pytorch_msssim', tol, value=(s.float(), m))
    if any(grads):
        w = torch.linspace(0.5, 1.5, x.shape[0], dtype=torch.float64)  # a non-uniform upstream gradient
        (s * w.to(s)).sum().backward(); (r * w).sum().backward()
        for n, t, t64, need in (('x', xa, x64, grads[0]), ('y', ya, y64, grads[1])):
            if not need:
                if t.grad is not None: bad.append(f'{tag}: d{n} computed although {n} does not require grad')
                continue
            if t.grad is None or t.grad.dtype != t.dtype or t.grad.shape != t.shape:
                bad.append(f'{tag}: d{n} missing or of the wrong dtype/shape'); continue
            bad += mismatches(tag, tol, grads={n: (t.grad.cpu(), t64.grad)})
    return bad


def group_shapes(device):
    bad = []
    for i, shape in enumerate(TRITON_SHAPES):
        x, y = image_pair(shape, seed=i, independent=(i == 1), device=device)
        bad += check(f'{shape}', x, y, msssim=True)
    return bad


def group_edges(device):
    import medrecipes.kernels.ssim.triton as K
    from medrecipes.kernels import ssim
    bad = []
    # non-contiguous x (channels-last view), gradient for y only
    base, y = image_pair((1, 16, 20, 3), seed=10, device=device)
    bad += check('non-contiguous x, dy only', base.permute(0, 3, 1, 2), y.permute(0, 3, 1, 2).contiguous(), grads=(False, True))
    # gradient for x only, y a strided slice
    x, y = image_pair((2, 1, 16, 32), seed=11, device=device)
    bad += check('dx only, strided y', x[..., ::2], y[..., ::2], grads=(True, False))
    # half types: compared with the reference on the rounded inputs; the output and gradients are rounded to the type
    for dt, tol in HALF_TOL.items():
        x, y = image_pair((1, 2, 16, 20), seed=12, device=device)
        bad += check(f'{dt}', x.to(dt), y.to(dt), tol=tol)
    # other window, constants and data range: 8-bit values (the plane-mean shift keeps float32 accurate)
    x, y = image_pair((1, 2, 20, 24), seed=13, scale=255., device=device)
    bad += check('win 7, sigma 1, data_range 255, k (0.02, 0.05)', x, y, msssim=True,
                 data_range=255., win_size=7, sigma=1.0, k=(0.02, 0.05))
    # flat planes: zero variance
    c = torch.full((1, 1, 12, 12), 0.5, device=device)
    bad += check('constant x, random y', c, image_pair((1, 1, 12, 12), seed=14, device=device)[1])
    # small tiles: seams between tiles in both directions, forward and backward
    saved = K.TILE
    K.TILE = (8, 16)
    try: bad += check('8 x 16 tiles', *image_pair((1, 1, 24, 40), seed=15, device=device))
    finally: K.TILE = saved
    # identical images: SSIM 1 and a zero gradient (the maximum)
    x = image_pair((1, 1, 16, 16), seed=16, device=device)[0]
    xa = x.clone().requires_grad_()
    s = ssim(xa, x, reduction='none'); s.sum().backward()
    if not (s.float() - 1).abs().max() < 1e-6: bad.append(f'ssim(x, x) = {s.tolist()}, expected 1')
    if not xa.grad.abs().max() < 1e-6: bad.append(f'ssim(x, x): gradient {xa.grad.abs().max():.2e}, expected 0')
    # run-to-run equality (no atomics)
    x, y = image_pair((1, 2, 16, 16), seed=17, device=device)
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


def check_compile():
    "The compiled (not interpreted) path: both kernels, float32 and bfloat16 inputs, through Triton's frontend, LLVM and ptxas for an H100."
    if (why := aot_unavailable()): return why
    import medrecipes.kernels.ssim.triton as K
    if K.INTERPRETED: return 'Triton was imported in interpreter mode in this process'
    common = dict(shift_ptr='*fp32', g_ptr='*fp32', coef_ptr='*fp32', H='i32', W='i32', Ho='i32', Wo='i32',
                  n_tw='i32', n_th='i32', WIN='constexpr', BH='constexpr', BW='constexpr')
    bad = []
    for dt in ('*fp32', '*bf16'):
        bad += compile_failures(f'_ssim_fwd_kernel {dt}', K._ssim_fwd_kernel,
                                dict(common, x_ptr=dt, y_ptr=dt, part_ptr='*fp32', c1='fp32', c2='fp32', SAVE='constexpr'),
                                dict(WIN=11, BH=K.BH, BW=K.MAX_BW, SAVE=True), K.FWD_WARPS)
        bad += compile_failures(f'_ssim_bwd_kernel {dt}', K._ssim_bwd_kernel,
                                dict(common, x_ptr=dt, y_ptr=dt, scale_ptr='*fp32', dx_ptr=dt, dy_ptr=dt,
                                     NEED_DX='constexpr', NEED_DY='constexpr'),
                                dict(WIN=11, BH=K.BH, BW=K.MAX_BW, NEED_DX=True, NEED_DY=True), K.BWD_WARPS)
    return bad


def run_group(group, device):
    "Failures (a list of strings) of one group of checks on `device`, with the Triton backend forced; or why it does not apply."
    if group == 'compile': return check_compile()
    with env_vars(MEDRECIPES_BACKEND='triton'):
        return {'shapes': group_shapes, 'edges': group_edges}[group](device)


@pytest.mark.parametrize('group', GROUPS)
def test_interpreter(group):
    run_checks('ssim', group, TRITON_INTERPRET='1')


@pytest.mark.cuda
@pytest.mark.parametrize('group', GROUPS)
def test_cuda(group):
    run_on_cuda(run_group, group)


def test_kernels_compile_for_sm90(tmp_path):
    "Both kernels compiled for sm_90 in a fresh interpreter (Triton not in interpreter mode; a private kernel cache)."
    run_checks('ssim', 'compile', TRITON_CACHE_DIR=str(tmp_path))
