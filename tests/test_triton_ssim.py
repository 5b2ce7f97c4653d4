"""Triton SSIM backend (medrecipes/kernels/ssim/triton.py) against the float64 reference and pytorch-msssim.

The checks run on CPU tensors under TRITON_INTERPRET=1 in a subprocess (the variable must be set before triton is
imported, and other tests of the same worker import triton first), and in-process on CUDA when a GPU is present.
This file is also that subprocess's script: `python tests/test_triton_ssim.py GROUP DEVICE` runs one group of checks,
prints the failures, exits 0 (all pass) or 1 (failures). The interpreter is slow: shapes are small.
A third test compiles the kernels for sm_90 without a GPU, which the interpreter does not do.
"""
import contextlib, os, subprocess, sys
import pytest, torch
from _utils import TOL, rel_err as _rel

GROUPS = ['shapes', 'edges']
SHAPES = [(2, 1, 32, 32), (1, 3, 23, 37), (1, 1, 11, 11), (2, 5, 16, 40)]
VAL_TOL, GRAD_TOL = TOL['ssim'][torch.float32]  # max abs error of SSIM values, relative RMS error of gradients
HALF_TOL = {dt: TOL['ssim'][dt] for dt in (torch.float16, torch.bfloat16)}  # (value, gradient) for half inputs


@contextlib.contextmanager
def _env(**kw):
    old = {k: os.environ.get(k) for k in kw}
    os.environ.update(kw)
    try: yield
    finally:
        for k, v in old.items():
            if v is None: os.environ.pop(k)
            else: os.environ[k] = v


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
    for i, shape in enumerate(SHAPES):
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


if __name__ == '__main__':
    res = run_group(sys.argv[1], sys.argv[2])
    print('\n'.join(res) or 'ok')
    sys.exit(1 if res else 0)
