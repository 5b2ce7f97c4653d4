"The entropy models' deadzone quantiser (`round_offset`): its bins' masses against scipy's normal distribution and the learned CDF, coded files, and the codec's use of it"
import numpy as np, pytest, torch
from scipy.stats import norm
from medrecipes.models.entropy import gaussian_mass, deadzone_round, EntropyBottleneck, ScaleHyperprior
from medrecipes.models.sar import sar_model


def _bins(k, offset):
    "The interval of values `sign(y) * floor(|y| + offset)` maps to integer k: written out case by case"
    if k == 0: return -(1 - offset), 1 - offset
    if k > 0: return k - offset, k + 1 - offset
    return k - 1 + offset, k + offset


@pytest.mark.parametrize('offset', [0.5, 0.4, 0.25, 0.1])
@pytest.mark.parametrize('sigma', [0.3, 1.0, 7.5])
def test_deadzone_masses_are_the_bins_probabilities(offset, sigma):
    ks = np.arange(-80, 81)
    got = gaussian_mass(torch.tensor(ks, dtype=torch.float64), torch.tensor(sigma, dtype=torch.float64), 0.5 - offset).numpy()
    want = np.array([norm.cdf(_bins(k, offset)[1], scale=sigma) - norm.cdf(_bins(k, offset)[0], scale=sigma) for k in ks])
    np.testing.assert_allclose(got, want, rtol=1e-9, atol=1e-15)
    assert abs(got.sum() - 1) < 1e-9
    y = np.random.default_rng(0).normal(0, sigma, 10_000) * 3
    q = deadzone_round(torch.tensor(y), offset).numpy()
    np.testing.assert_array_equal(q, np.sign(y) * np.floor(np.abs(y) + offset))          # the quantiser is the one the bins describe
    for k in (-2, 0, 1, 3):
        lo, hi = _bins(k, offset); inside = (y >= lo) & (y < hi) if k > 0 else (y > lo) & (y <= hi) if k < 0 else (y > lo) & (y < hi)
        assert ((q == k) == inside).all()
    if offset == 0.5: assert torch.equal(deadzone_round(torch.tensor(y), 0.5), torch.round(torch.tensor(y)))


def test_factorized_deadzone_masses_follow_its_cdf():
    "The entropy bottleneck's deadzone masses are differences of its own learned CDF at the bins' edges (float64)"
    torch.manual_seed(0)
    eb = EntropyBottleneck(3, round_offset=0.3).double()
    with torch.no_grad():
        for p in eb.biases: p.normal_()
    ks = torch.arange(-6., 7., dtype=torch.float64)
    got = eb._mass(ks.view(1, 1, -1).expand(3, 1, -1), 0.2)[:, 0]
    cdf = lambda x: torch.sigmoid(eb._logits_cumulative(torch.tensor(x, dtype=torch.float64).view(1, 1, 1).expand(3, 1, 1)))[:, 0, 0]
    for j, k in enumerate(ks.tolist()):
        lo, hi = _bins(int(k), 0.3)
        torch.testing.assert_close(got[:, j], cdf(hi) - cdf(lo), rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize('kind', [EntropyBottleneck, ScaleHyperprior])
def test_deadzone_coding_round_trips_and_saves_bits(kind):
    "The same latent coded with rounding and with a deadzone: both files decode bitwise to their symbols; the deadzone's is smaller, has more zeros, and its size is what the likelihoods of its bins say"
    torch.manual_seed(0)
    y = torch.randn(1, 4, 16, 16) * torch.tensor([0.6, 1.5, 4., 12.]).view(1, 4, 1, 1)
    sizes, zeros = {}, {}
    for off in (0.5, 0.25):
        m = kind(4, round_offset=off)
        m.train(); m(y)                                            # a first training batch starts the density / scales
        m.eval().update()
        q = m.symbols(y)[0]
        assert np.array_equal(q, deadzone_round(y, off)[0].numpy().astype(np.int32).clip(q.min(), q.max()))
        data = m.encode(q)
        np.testing.assert_array_equal(m.decode(data, q.shape[1:]), q)
        with torch.no_grad(): est = float(-torch.log2(m(y)[1]).sum())                   # eval: the likelihoods of the deadzone bins
        assert abs(8 * len(data) - est) < 0.08 * est + 64, (off, 8 * len(data), est)
        sizes[off], zeros[off] = len(data), (q == 0).mean()
    assert sizes[0.25] < 0.95 * sizes[0.5] and zeros[0.25] > zeros[0.5]


def test_autoencoder_round_offset():
    "`sar_model(round_offset=)` codes `deadzone_round` of the scaled latent, keeps it in its config (absent at 0.5), and refuses what it cannot mean"
    torch.manual_seed(0)
    m = sar_model('residual', latent_channels=8, base_channels=8, entropy='hyperprior', linear_skip='dct', round_offset=0.3).eval()
    torch.nn.init.normal_(m.encoder.head.weight, std=0.5)
    x = torch.rand(2, 1, 32, 32)
    with torch.no_grad(): z = m.encoder(x) * m.latent_scale; q = m.compress(x)
    torch.testing.assert_close(q, deadzone_round(z, 0.3).to(torch.int32), rtol=0, atol=0)
    assert (q != torch.round(z).to(torch.int32)).any()
    assert m.config['round_offset'] == 0.3 and sar_model(**m.config).config == m.config
    assert 'round_offset' not in sar_model('residual', entropy='hyperprior').config
    for bad in (0, 0.6, True, '0.3'):
        with pytest.raises(ValueError, match='round_offset'): sar_model('residual', entropy='hyperprior', round_offset=bad)
    with pytest.raises(ValueError, match='round_offset.*entropy model'): sar_model('residual', round_offset=0.3)



@pytest.mark.parametrize('offset', [0.5, 0.3])
def test_hyperprior_sees_the_symbols_it_codes(offset):
    """The hyper-encoder reads the rounded symbols in eval, as the coder does (`_hyper`), and straight through in training, so
    the scales a model is trained and estimated with are the ones its files are coded with (it read the unrounded latent
    before, and a trained 256-channel codec's files came out 25% larger than its estimate, most of its values being below one step)"""
    torch.manual_seed(0)
    hp = ScaleHyperprior(8, round_offset=offset)
    y = torch.randn(2, 8, 16, 16) * 0.8
    seen = []
    hp.h_a.register_forward_hook(lambda m, inp, out: seen.append(inp[0].detach().clone()))
    q = deadzone_round(y, offset)
    for mode in ('train', 'eval'):
        getattr(hp, mode)(); seen.clear()
        y_ = y.clone().requires_grad_()
        _, lik = hp(y_)
        torch.testing.assert_close(seen[0], q.abs(), rtol=0, atol=0)             # the symbols' magnitudes, not the latent's
        assert (q.abs() != y.abs()).float().mean() > 0.9
        if mode == 'train':
            (-torch.log2(lik).sum()).backward(); assert y_.grad.abs().sum() > 0   # the rate still reaches the latent
    hp.update(); seen.clear()
    z_coder = hp._hyper(hp.symbols(y)[0].astype(np.int32))
    with torch.no_grad(): hp(y)
    with torch.no_grad(): z_eval = torch.round(hp.h_a(seen[0]))[0].numpy().astype(np.int64)
    np.testing.assert_array_equal(z_eval, z_coder)


def test_hyper_channels():
    "`sar_model(hyper_channels=)`: a narrower hyper-latent (less side information), kept in the config (absent when None), refused without the hyperprior"
    m = sar_model('residual', latent_channels=64, base_channels=8, entropy='hyperprior', linear_skip='dct', hyper_channels=8)
    assert m.entropy_bottleneck.hyper_channels == 8 and m.entropy_bottleneck.h_s[-1].out_channels == 64
    assert m.config['hyper_channels'] == 8 and sar_model(**m.config).config == m.config
    assert 'hyper_channels' not in sar_model('residual', entropy='hyperprior').config
    x = torch.rand(1, 1, 64, 64)
    m.train(); m(x)
    n_z = m.likelihoods.numel() - 64 * 4 * 4                                   # the hyper-latent's values: 8 channels at 1/4 of the latent
    assert n_z == 8 * 1 * 1
    for bad in (0, 2.5, True):
        with pytest.raises(ValueError, match='hyper_channels'): sar_model('residual', entropy='hyperprior', hyper_channels=bad)
    with pytest.raises(ValueError, match="hyper_channels.*hyperprior"): sar_model('residual', entropy='factorized', hyper_channels=8)
