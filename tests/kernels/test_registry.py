"""What SSIM and CBAM share in `medrecipes.kernels`: one backend registry (one reading of MEDRECIPES_BACKEND and
TRITON_INTERPRET, one in-process override, the same errors), and a package that imports with torch alone."""
import subprocess, sys
import pytest, torch
from medrecipes.kernels import ssim_backend


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

