"Image-quality metrics on cases with known answers."
import math
import pytest, torch
import torch.nn.functional as F
from medrecipes.metrics import psnr, enl, enl_ratio, homogeneous_blocks, epi, ImageMetric, SSIMMetric, PSNRMetric, ENLRatioMetric, EPIMetric
from medrecipes.kernels import ssim, gaussian_window


def _speckle(L, shape, seed):
    g = torch.Generator().manual_seed(seed)
    return torch._standard_gamma(torch.full(shape, float(L)), generator=g) / L   # unit-mean Gamma(L, 1/L)


def test_psnr_known_values():
    t = torch.rand(3, 2, 8, 8)
    assert torch.allclose(psnr(t + 0.1, t), torch.full((3,), 20.), atol=1e-4)
    assert torch.allclose(psnr(t + 2.55, t, data_range=255.), torch.full((3,), 40.), atol=1e-4)
    assert torch.allclose(psnr(t, t), torch.full((3,), 100.))


@pytest.mark.parametrize('L', [1, 3, 8])
def test_enl_of_pure_speckle_is_the_number_of_looks(L):
    x = _speckle(L, (2, 1, 256, 256), L)
    m = homogeneous_blocks(x, frac=1.0)
    assert torch.allclose(enl(x, m), torch.full((2,), float(L)), rtol=0.1)


def test_enl_ratio_of_multilook_over_single_look():
    one, four = _speckle(1, (1, 1, 256, 256), 0), _speckle(4, (1, 1, 256, 256), 1)
    assert torch.allclose(enl_ratio(four, one, frac=1.0), torch.tensor([4.]), rtol=0.1)
    assert torch.allclose(enl_ratio(one, one), torch.ones(1))


def test_enl_picks_the_homogeneous_blocks():
    x = _speckle(1, (1, 1, 64, 64), 3)
    x[..., :32, :] *= torch.linspace(0.1, 10, 64)   # a strong ramp: not homogeneous
    m = homogeneous_blocks(x, window=16, frac=0.5).view(4, 4)
    assert m[2:].sum() >= 6 and m[:2].sum() <= 2     # the homogeneous half is the bottom one


def _gblur(x, s):
    w = gaussian_window(9, s); x = F.pad(x, (4,) * 4, mode='replicate')
    return F.conv2d(F.conv2d(x, w.view(1, 1, 1, 9)), w.view(1, 1, 9, 1))


def test_epi_identity_gain_and_blurred_edge():
    c = torch.arange(48.) - 23.5
    edge = torch.tanh(c / 1.5).view(1, 1, 1, 48).expand(1, 1, 48, 48).contiguous()
    assert torch.allclose(epi(edge, edge), torch.ones(1)) and torch.allclose(epi(2 * edge - 3, edge), torch.ones(1))
    vals = [epi(_gblur(edge, s), edge).item() for s in (0.5, 1, 2, 3)]
    assert vals == sorted(vals, reverse=True) and vals[0] < 1 and vals[-1] > 0
    # independent computation of the correlation of the Laplacians with a different formula (numpy-free torch.corrcoef)
    lap = lambda x: (x[..., :-2, 1:-1] + x[..., 2:, 1:-1] + x[..., 1:-1, :-2] + x[..., 1:-1, 2:] - 4 * x[..., 1:-1, 1:-1]).flatten()
    b = _gblur(edge, 2)
    assert math.isclose(epi(b, edge).item(), torch.corrcoef(torch.stack([lap(edge), lap(b)]))[0, 1].item(), rel_tol=1e-4)


def test_metric_errors_name_the_problem():
    with pytest.raises(ValueError, match='differ in shape'): psnr(torch.rand(1, 1, 4, 4), torch.rand(1, 1, 4, 5))
    with pytest.raises(ValueError, match='smaller than the 16x16 ENL window'): enl_ratio(torch.rand(1, 1, 8, 8), torch.rand(1, 1, 8, 8))
    with pytest.raises(ValueError, match='frac'): homogeneous_blocks(torch.rand(1, 1, 32, 32), frac=0)


def test_fastai_metrics_average_over_images_not_batches():
    class L: pass
    x = torch.rand(5, 1, 32, 32); y = (x + 0.1 * torch.rand(5, 1, 32, 32)).clamp(0, 1)
    for mk, f in [(SSIMMetric, lambda p, t: ssim(p, t, reduction='none')), (PSNRMetric, psnr), (EPIMetric, epi),
                  (lambda: ENLRatioMetric(window=8), lambda p, t: enl_ratio(p, t, window=8))]:
        m = mk(); m.reset(); l = L()
        for sl in (slice(0, 4), slice(4, 5)):   # a batch of 4 then a batch of 1
            l.pred, l.yb = x[sl], (y[sl],); m.accumulate(l)
        assert math.isclose(m.value, f(x, y).mean().item(), rel_tol=1e-5)
