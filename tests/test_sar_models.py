"Tests for `medrecipes.models.sar`: the four SAR autoencoders"
import numpy as np, pytest, torch
import torch.nn.functional as F
from medrecipes.models.sar import *

try:
    from medrecipes.kernels import CBAM as KernelCBAM
except ImportError:
    KernelCBAM = None

def timm_cbam(c):
    from timm.layers.cbam import CbamModule
    return CbamModule(c, rd_ratio=1/16, spatial_kernel_size=7)

# the 'attention' variant with the project's CBAM (skipped until medrecipes.kernels provides it) and with timm's
CBAMS = [pytest.param(None, id='kernels-CBAM', marks=pytest.mark.skipif(KernelCBAM is None, reason='medrecipes.kernels.CBAM not available')),
         pytest.param(timm_cbam, id='timm-CbamModule')]
VARIANTS = [pytest.param(v, None, id=v) for v in ('baseline', 'resnet_lite', 'residual')] + \
           [pytest.param('attention', c.values[0], id=f'attention-{c.id}', marks=c.marks) for c in CBAMS]


@pytest.mark.parametrize('variant,cbam', VARIANTS)
def test_forward_backward_and_ratio(variant, cbam):
    torch.manual_seed(0)
    m = sar_model(variant, cbam=cbam)
    x = torch.rand(2, 1, 48, 80, requires_grad=True)
    y = m(x)
    assert y.shape == x.shape and 0 < y.min() and y.max() < 1                     # through a sigmoid
    F.mse_loss(y, x.detach()).backward()
    grads = [p.grad for p in m.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads) and x.grad is not None
    assert sum(float(g.abs().sum()) for g in grads) > 0
    for shape in [(1, 128, 128), (64, 48), (3, 1, 32, 160)]:
        assert compression_ratio(m, shape) == 16.0
    assert m.training
    if variant == 'attention':
        n_attn = sum(type(mod).__name__ in ('CBAM', 'CbamModule') for mod in m.modules())
        assert n_attn == 8                                                           # one per block: 4 encoder + 4 decoder stages


@pytest.mark.parametrize('variant,cbam', VARIANTS)
def test_encoder_and_decoder_alone(variant, cbam):
    torch.manual_seed(1)
    m = sar_model(variant, cbam=cbam).eval()
    x = torch.rand(3, 1, 64, 96)
    with torch.no_grad():
        z = m.encoder(x)
        assert z.shape == (3, 16, 4, 6) and x.numel() / z.numel() == 16
        y = m.decoder(m.quantizer(z))                                                # the 8-bit latent in between
        assert y.shape == x.shape
        q = m.compress(x)
        assert q.dtype == torch.int32 and 0 <= q.min() and q.max() <= 255 and torch.equal(q, torch.round(torch.sigmoid(z) * 255).int())
        torch.testing.assert_close(y, m(x)); torch.testing.assert_close(m.decompress(q), y)
        assert m.decoder(torch.randn(1, 16, 2, 3)).shape == (1, 1, 32, 48)           # any latent size decodes


def test_ratio_formula():
    # ratio = C_in*H*W / (C_lat * H/16 * W/16) = C_in*256/C_lat
    for c_lat, c_in, exp in [(16, 1, 16.), (8, 1, 32.), (32, 1, 8.), (16, 2, 32.)]:
        m = sar_model('baseline', latent_channels=c_lat, in_channels=c_in)
        assert compression_ratio(m, (c_in, 64, 64)) == exp
        assert m(torch.rand(1, c_in, 32, 32)).shape == (1, c_in, 32, 32)


def test_parameter_counts():
    counts = {v: count_parameters(sar_model(v, cbam=timm_cbam)) for v in SAR_VARIANTS}
    assert counts['baseline'] == 272_881 and counts['baseline'] < 300_000            # small enough for a CPU demo
    assert counts['baseline'] < counts['resnet_lite'] < counts['residual'] < counts['attention'] < 1_250_000
    assert counts['attention'] - counts['residual'] < 10_000                         # CBAM is all that differs
    assert count_parameters(sar_model('baseline', base_channels=16)) < counts['baseline'] / 3
    m = sar_model('baseline')
    for p in m.encoder.parameters(): p.requires_grad_(False)
    assert count_parameters(m) == count_parameters(m.decoder) < count_parameters(m, trainable=False) == counts['baseline']


def test_config_rebuilds_the_model():
    m = sar_model('residual', latent_channels=8, base_channels=16)
    assert m.config == dict(variant='residual', latent_channels=8, base_channels=16, in_channels=1, quant_bits=8, quant_proxy='ste')
    m2 = sar_model(**m.config)
    m2.load_state_dict(m.state_dict())                                               # same architecture, key for key
    m.eval(); m2.eval(); x = torch.rand(1, 1, 32, 32)
    torch.testing.assert_close(m(x), m2(x))


def learn_ratio(variant:str, cbam=None, seed:int=0, steps:int=40) -> float:
    "The MSE after `steps` Adam steps on one batch of smooth 32x32 images, over the MSE before them."
    torch.manual_seed(seed)
    m = sar_model(variant, base_channels=16, cbam=cbam)
    x = F.interpolate(torch.rand(8, 1, 4, 4), size=(32, 32), mode='bilinear', align_corners=False)
    opt = torch.optim.Adam(m.parameters(), lr=3e-3)
    losses = []
    for _ in range(steps):
        loss = F.mse_loss(m(x), x); opt.zero_grad(); loss.backward(); opt.step(); losses.append(loss.item())
    return losses[-1] / losses[0]


# The threshold against the ratio measured by benchmarks/test_margins.py (seeds 0-4 under the native, avx2 and
# default ATen CPU capabilities; benchmarks/results/test_margins.md): the largest ratio of any variant stays well below 0.5.
LEARN_RATIO_MAX = 0.5


@pytest.mark.trained
@pytest.mark.parametrize('variant,cbam', VARIANTS)
def test_learns(variant, cbam, train_seed):
    "A few steps on one batch of smooth images cut the reconstruction error"
    r = learn_ratio(variant, cbam, seed=train_seed)
    assert r < LEARN_RATIO_MAX, f"{variant}: the loss fell only to {r:.3f} of its start in 40 steps (seed {train_seed})"


def test_errors():
    with pytest.raises(ValueError, match="unknown SAR autoencoder variant 'unet'; choose one of baseline, resnet_lite, residual, attention"):
        sar_model('unet')
    for kw, name in [(dict(latent_channels=0), 'latent_channels'), (dict(base_channels=15), 'base_channels'),
                     (dict(in_channels=1.0), 'in_channels'), (dict(quant_bits=17), 'quant_bits'), (dict(quant_proxy='round'), 'quant_proxy')]:
        with pytest.raises(ValueError, match=f'`{name}`'): sar_model('baseline', **kw)
    m = sar_model('baseline')
    with pytest.raises(ValueError, match=r'multiples of 16 .* got \(40, 64\)'): m(torch.rand(1, 1, 40, 64))
    with pytest.raises(ValueError, match='1 input channel'): m(torch.rand(1, 3, 32, 32))
    with pytest.raises(ValueError, match='B x C x H x W'): m.encoder(torch.rand(1, 32, 32))
    with pytest.raises(ValueError, match='B x 16 x h x w'): m.decoder(torch.rand(1, 8, 2, 2))
    with pytest.raises(ValueError, match='input_shape'): compression_ratio(m, (32,))
    with pytest.raises(ValueError, match='multiples of 16'): compression_ratio(m, (1, 100, 100))
    if KernelCBAM is None:
        with pytest.raises(ImportError, match=r'medrecipes\.kernels\.CBAM.*cbam='): sar_model('attention')
    else:
        assert sum(isinstance(mod, KernelCBAM) for mod in sar_model('attention').modules()) == 8


@pytest.mark.parametrize('entropy', ['factorized', 'hyperprior'])
def test_entropy_model_option(entropy):
    "entropy='factorized' or 'hyperprior': an integer latent under a learned prior; eval forward = decompress(compress); config rebuilds it, tables included"
    from medrecipes.models.entropy import EntropyBottleneck, ScaleHyperprior
    torch.manual_seed(0)
    m = sar_model('residual', latent_channels=4, base_channels=8, entropy=entropy).eval()
    kind = EntropyBottleneck if entropy == 'factorized' else ScaleHyperprior
    assert isinstance(m.entropy_bottleneck, kind) and m.quant_bits is None and isinstance(m.quantizer, torch.nn.Identity)
    assert m.config['entropy'] == entropy and m.config['quant_bits'] is None and m.config['latent_scale'] == 16.
    x = torch.rand(2, 1, 32, 48)
    q = m.compress(x)
    assert q.dtype == torch.int32 and q.shape == (2, 4, 2, 3)
    with torch.no_grad(): torch.testing.assert_close(m(x), m.decompress(q))          # eval: rounding, as the file holds
    n = x.shape[0] * x.shape[-2] * x.shape[-1]
    # the likelihoods: one per latent value (and, for the hyperprior, one per hyper-latent value after them)
    n_hyper = 0 if entropy == 'factorized' else 2 * 4 * 1 * 1
    assert m.likelihoods.numel() == q.numel() + n_hyper and m.rate_bpp(n) > 0
    m.train(); y = m(x); m.rate_bpp(n).backward()                                     # training: the rate has gradients
    prior = m.entropy_bottleneck if entropy == 'factorized' else m.entropy_bottleneck.z_bottleneck
    assert m.encoder.head.weight.grad is not None and prior.matrices[0].grad is not None
    if entropy == 'hyperprior': assert m.entropy_bottleneck.h_a[0].weight.grad is not None and m.entropy_bottleneck.h_s[-1].weight.grad is not None
    m.eval().update()
    m2 = sar_model(**m.config); m2.load_state_dict(m.state_dict())                    # the coding tables travel in the state dict
    assert torch.equal(m2.entropy_bottleneck.cdf_freqs, m.entropy_bottleneck.cdf_freqs) and m2.entropy_bottleneck.updated
    with pytest.raises(ValueError, match="exclude each other"): sar_model(entropy='factorized', quant_bits=8)
    with pytest.raises(ValueError, match="unknown entropy model 'hyper'"): sar_model(entropy='hyper')
    with pytest.raises(ValueError, match="latent_scale"): sar_model(entropy='factorized', latent_scale=0)
    assert sar_model().quant_bits == 8 and 'entropy' not in sar_model().config                   # the default is unchanged
    with pytest.raises(RuntimeError, match='no likelihoods'): sar_model().rate_bpp(1)


@pytest.mark.parametrize('skip', [False, True, 'dct'], ids=['plain', 'linear_skip', 'dct_skip'])
@pytest.mark.parametrize('variant', SAR_VARIANTS)
def test_decoder_by_row_chunks_is_the_whole_decode(variant, skip):
    "`decompress(q, chunk_rows)` runs the full-resolution layers (and the skip path's upsampling) on row chunks (the codec's memory bound): the same image as one pass"
    torch.manual_seed(0)
    m = sar_model(variant, base_channels=8, entropy='factorized', linear_skip=skip).eval()
    if skip:
        with torch.no_grad(): m.decoder.out.weight.normal_(std=0.1)           # the learned part on, as after training
    q = torch.randint(-20, 20, (2, 16, 7, 5), dtype=torch.int32)
    with torch.no_grad():
        whole = m.decompress(q)
        for rows in (32, 18, 2, 224):          # chunks of several sizes, one not dividing the height, one the whole image
            torch.testing.assert_close(m.decompress(q, chunk_rows=rows), whole, rtol=0, atol=1e-6)
        with pytest.raises(ValueError, match='even'): m.decompress(q, chunk_rows=31)



@pytest.mark.parametrize('variant', SAR_VARIANTS)
def test_chunked_decoder_holds_chunks_not_whole_maps(variant):
    """With `chunk_rows`, the last two stages' maps (the largest) exist only chunk by chunk: their largest output is a
    fraction of the whole map's. Attention's CBAM pools the whole map, so there only the last stage's upsampling and convolution are chunked."""
    torch.manual_seed(0)
    m = sar_model(variant, base_channels=8, entropy='factorized').eval()
    q = torch.randint(-20, 20, (1, 16, 16, 4), dtype=torch.int32)            # a 256 x 64 image
    def largest(chunk_rows, mods):
        sizes = []; hooks = [mod.register_forward_hook(lambda mod, i, o: sizes.append(o.shape[-2])) for mod in mods]
        with torch.no_grad(): m.decompress(q, chunk_rows=chunk_rows)
        for h in hooks: h.remove()
        return max(sizes)
    mods = [mod for s in m.decoder.stages[-2:] for mod in s] if variant != 'attention' else list(m.decoder.stages[-1])[1:]
    assert largest(None, mods) == 256 and largest(32, mods) <= 32 + 2 * 8, largest(32, mods)   # a chunk and its rows of context

def _keys_bicubic_rows(a, p):
    "Upsample the rows of a 2-D array p-fold with Keys' cubic (a = -0.75), half-pixel centres, edge samples repeated: a numpy reference"
    n = a.shape[0]; out = np.empty((n * p, a.shape[1]))
    def w(t):
        t = abs(t)
        return (1.25 * t - 2.25) * t * t + 1 if t <= 1 else ((-0.75 * t + 3.75) * t - 6) * t + 3 if t < 2 else 0.
    for o in range(n * p):
        s = (o + 0.5) / p - 0.5; i = int(np.floor(s))
        out[o] = sum(w(s - k) * a[min(max(k, 0), n - 1)] for k in range(i - 1, i + 3))
    return out


@pytest.mark.parametrize('latent_channels,s', [(16, 4), (64, 8), (4, 2), (20, 4)])
def test_linear_skip_starts_as_the_pooled_bicubic_codec(latent_channels, s):
    "With `linear_skip`, an untrained codec is the linear one: the image averaged over p x p blocks (p = 16 / s), rounded to the latent's step, upsampled bicubically (a numpy reference)"
    from medrecipes.models.sar import skip_shape
    assert skip_shape(latent_channels) == (s, 16 // s)
    torch.manual_seed(0)
    x = torch.rand(1, 1, 32, 48)
    for v in SAR_VARIANTS:
        m = sar_model(v, latent_channels=latent_channels, base_channels=8, entropy='hyperprior', linear_skip=True).eval()
        with torch.no_grad(): y = m(x)[0, 0].double().numpy()
        p = 16 // s
        pooled = x[0, 0].double().numpy().reshape(32 // p, p, 48 // p, p).mean((1, 3))
        q = np.round((pooled - 0.5) * 16) / 16 + 0.5                          # the latent's integer step, latent_scale 16
        ref = np.clip(_keys_bicubic_rows(_keys_bicubic_rows(q, p).T, p).T, 0, 1)
        np.testing.assert_allclose(y, ref, atol=2e-6, err_msg=v)
        assert m.config['linear_skip'] is True and sar_model(**m.config).config == m.config
    with torch.no_grad(): m.encoder.skip_log_gain.fill_(np.log(0.5))          # one gain, shared: the average quantised twice as coarsely
    assert m.decoder.skip_log_gain is m.encoder.skip_log_gain
    with torch.no_grad(): y = m(x)[0, 0].double().numpy()
    q = np.round((pooled - 0.5) * 8) / 8 + 0.5
    np.testing.assert_allclose(y, np.clip(_keys_bicubic_rows(_keys_bicubic_rows(q, p).T, p).T, 0, 1), atol=2e-6)


def test_linear_skip_learns_and_refuses_what_it_cannot_do():
    "Both networks get gradients from the first step (their last layers start at zero); the skip needs an entropy model and a latent with room"
    from medrecipes.models.sar import skip_shape
    torch.manual_seed(0)
    m = sar_model('residual', base_channels=8, entropy='factorized', linear_skip=True)
    x = torch.rand(2, 1, 32, 32)
    (F.mse_loss(m(x), x) + m.rate_bpp(x.numel())).backward()
    assert m.encoder.head.weight.grad.abs().sum() > 0 and m.decoder.out.weight.grad.abs().sum() > 0
    with pytest.raises(ValueError, match='needs an entropy model'): sar_model('residual', linear_skip=True)
    with pytest.raises(ValueError, match='latent_channels >= in_channels'): skip_shape(1, in_channels=2)
    with pytest.raises(ValueError, match='linear_skip'): sar_model('residual', entropy='factorized', linear_skip=1)
    for bad in ('DCT', 'haar', 0.5):
        with pytest.raises(ValueError, match="linear_skip.*'dct'"): sar_model('residual', entropy='factorized', linear_skip=bad)
    assert 'linear_skip' not in sar_model('residual', entropy='factorized').config     # older models keep their config and digest


def _dct_ortho(s):
    "The orthonormal DCT-II matrix of size s, written out from its definition (rows: frequencies)"
    return np.array([[np.sqrt((1 if u == 0 else 2) / s) * np.cos(np.pi * (2 * i + 1) * u / (2 * s)) for i in range(s)] for u in range(s)])


@pytest.mark.parametrize('latent_channels,s', [(4, 2), (16, 4), (64, 8), (256, 16), (20, 4)])
def test_dct_skip_is_the_blocks_dct_with_a_step_per_coefficient(latent_channels, s):
    """`linear_skip='dct'`: each latent position's s x s block of p x p averages goes through the orthonormal 2-D DCT (scipy's
    `dctn(norm='ortho')` and the definition agree), every coefficient times its own gain; an untrained codec decodes the rounded
    coefficients transformed back, upsampled bicubically (p > 1) or as they are (p = 1)"""
    from scipy.fft import dctn
    from medrecipes.models.sar import skip_basis, SKIP_GAIN_SPEED
    p = 16 // s
    D = _dct_ortho(s)
    blk = np.random.default_rng(0).normal(size=(s, s))
    np.testing.assert_allclose(D @ blk @ D.T, dctn(blk, norm='ortho'), atol=1e-12)                       # the reference is the DCT
    np.testing.assert_allclose(skip_basis(s).numpy() @ blk.reshape(-1), (D @ blk @ D.T).reshape(-1), atol=1e-12)
    np.testing.assert_allclose(skip_basis(s, 2).numpy() @ skip_basis(s, 2).numpy().T, np.eye(2 * s * s), atol=1e-12)   # orthonormal, per channel
    torch.manual_seed(0)
    H, W = 32, 48
    x = torch.rand(1, 1, H, W)
    for v in ('residual', 'attention'):
        m = sar_model(v, latent_channels=latent_channels, base_channels=8, entropy='hyperprior', linear_skip='dct').eval()
        assert m.config['linear_skip'] == 'dct' and sar_model(**m.config).config == m.config
        assert m.encoder.skip_log_gain.shape == (s * s,) and m.decoder.skip_log_gain is m.encoder.skip_log_gain
        with torch.no_grad(): m.encoder.skip_log_gain.copy_(torch.linspace(-0.2, 0.1, s * s))   # a step of its own per coefficient
        gain = np.exp(SKIP_GAIN_SPEED * np.linspace(-0.2, 0.1, s * s))
        pooled = x[0, 0].double().numpy().reshape(H // p, p, W // p, p).mean((1, 3)) - 0.5
        blocks = pooled.reshape(H // p // s, s, W // p // s, s).transpose(0, 2, 1, 3)            # h x w x s x s
        coef = np.einsum('ui,hwij,vj->hwuv', D, blocks, D).reshape(H // 16, W // 16, s * s)
        q = np.round(coef * gain * 16)                                                             # latent_scale 16
        with torch.no_grad(): codes = m.compress(x)[0]
        np.testing.assert_array_equal(codes[:s * s].numpy().transpose(1, 2, 0), q, err_msg=v)
        assert not codes[s * s:].any()                                                             # the learned channels start at zero
        back = np.einsum('ui,hwuv,vj->hwij', D, (q / gain / 16).reshape(H // 16, W // 16, s, s), D)
        rec = back.transpose(0, 2, 1, 3).reshape(H // p, W // p) + 0.5
        ref = np.clip(_keys_bicubic_rows(_keys_bicubic_rows(rec, p).T, p).T if p > 1 else rec, 0, 1)
        with torch.no_grad(): y = m(x)[0, 0].double().numpy()
        np.testing.assert_allclose(y, ref, atol=2e-6, err_msg=v)


def test_dct_skip_learns_its_steps():
    "The rate term reaches every coefficient's gain, and the rate-distortion loss moves them apart; `linear_skip=True` stays the box average with one gain (and its config)"
    torch.manual_seed(0)
    m = sar_model('residual', latent_channels=16, base_channels=8, entropy='hyperprior', linear_skip='dct')
    x = torch.rand(2, 1, 64, 64)
    (F.mse_loss(m(x), x) + m.rate_bpp(x.numel()) / 100).backward()
    g = m.encoder.skip_log_gain.grad
    assert g.shape == (16,) and (g != 0).all() and g.std() > 0
    assert m.encoder.head.weight.grad.abs().sum() > 0 and m.decoder.out.weight.grad.abs().sum() > 0
    box = sar_model('residual', latent_channels=16, base_channels=8, entropy='hyperprior', linear_skip=True)
    assert box.encoder.skip_log_gain.shape == () and box.config['linear_skip'] is True and not hasattr(box.encoder, 'skip_basis')
    assert 'skip_basis' not in m.state_dict() and 'encoder.skip_basis' not in m.state_dict()      # a fixed buffer, not stored


@pytest.mark.parametrize('latent_channels,p', [(16, 4), (64, 2), (256, 1)])
def test_dct_skip_steps_start_where_lambda_puts_them(latent_channels, p):
    """`init_skip_steps(λ, mse_weight)` sets every coefficient's step to the high-rate optimum of λ·w·MSE + bits: numerically,
    the step minimising λ·w·Δ²/12 + (−log2 Δ)/p² over a fine grid (the formula's derivation, checked independently)"""
    from medrecipes.models.sar import SKIP_GAIN_SPEED
    for lam, w in ((128., 1.), (512., 0.7)):
        m = sar_model('residual', latent_channels=latent_channels, base_channels=8, entropy='hyperprior', linear_skip='dct').init_skip_steps(lam, w)
        step = (1 / (m.latent_scale * torch.exp(SKIP_GAIN_SPEED * m.encoder.skip_log_gain.detach()))).numpy()
        grid = np.linspace(0.01, 1, 200_000)
        best = grid[np.argmin(lam * w * grid ** 2 / 12 - np.log2(grid) / p ** 2)]
        np.testing.assert_allclose(step, best, rtol=1e-3)
    box = sar_model('residual', base_channels=8, entropy='hyperprior', linear_skip=True)
    before = box.encoder.skip_log_gain.detach().clone(); box.init_skip_steps(128.)
    assert torch.equal(box.encoder.skip_log_gain.detach(), before)               # a no-op for the box path
    m = sar_model('residual', base_channels=8, entropy='hyperprior', linear_skip='dct').init_skip_steps(128., 0.)
    assert not m.encoder.skip_log_gain.detach().any()                           # and without an MSE term
