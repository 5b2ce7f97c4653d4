"""CBAM's C++ kernels (`medrecipes._cpu`): the bindings' argument checks, the float64 path at exact ties against the
reference's, and results that are bitwise the same from run to run and (but for one gradient) across thread counts."""
import os, subprocess, sys
import pytest, torch
from medrecipes.kernels import CBAM
from .._harness import cpp_ext as _cpu, skip_without_cpp

needs_cpp = skip_without_cpp('cbam')


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
