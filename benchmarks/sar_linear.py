"""What fixed linear codecs reach on the rate-distortion benchmark's scenes: the reference that motivated the SAR codec's
linear skip path (`model.linear_skip`).

Generates the scenes `benchmarks/sar_rd.py` uses (`make_sar(n_train=48, ..., size=256, seed=0, save_clean=True,
mode='realistic')`), fits the recipe's preprocessing on the training scenes (`SarDataLoaders.from_folder`, as training
does), and scores on the test scenes, against the speckled original and against the clean reflectivity (PSNR on the
[0, 1] dB scale, `medrecipes.codec.codec_metrics`): box filters, and the image averaged over p x p blocks and upsampled
again (bilinear, bicubic). Averaging over 4 x 4 blocks keeps 16 values per 16 x 16 block: the number the 16-channel latent
holds. The first table counts no bits: the averages are unquantised.

The second table codes them: the skip path's coefficients (`linear_skip='box'`: the block averages; `'dct'`: their
orthonormal DCT per latent position, `skip_basis`) quantised with one step for all, by rounding or by a deadzone quantiser
(`deadzone_round`, offset 0.3), their bits counted as an adaptive per-channel coder would spend them (each channel's histogram
on the training scenes, add-half smoothed, as cross-entropy on the test scenes: a factorized prior fitted to the data, no
networks, no side information), against JPEG2000 at each test image's own bitrate.

    python benchmarks/sar_linear.py

Results: benchmarks/results/sar_linear.md (machine, versions, date).
"""
import sys, tempfile, time, warnings
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT/'benchmarks'))


def main():
    warnings.filterwarnings('ignore')
    import numpy as np, pandas as pd, torch, torch.nn.functional as F, medrecipes
    from medrecipes.synth import make_sar
    from medrecipes.data.sar import SarDataLoaders, sar_files, read_sar_image
    from medrecipes.codec import codec_metrics
    from medrecipes.sar_experiments import _md_table
    from _common import machine
    t = lambda a: torch.from_numpy(np.ascontiguousarray(a, np.float32))[None, None]
    with tempfile.TemporaryDirectory() as d:
        data = make_sar(Path(d)/'data', n_train=48, n_valid=12, n_test=6, size=256, seed=0, save_clean=True, mode='realistic')
        pre = SarDataLoaders.from_folder(data, patch=128, bs=8, seed=0, device='cpu').preprocess
        rows = []
        for f in sar_files(data/'test'):
            x = np.asarray(pre.encode(read_sar_image(f)), np.float32)
            c = np.asarray(pre.encode(np.load(data/'clean'/'test'/f.name)), np.float32)
            cands = {'the clean reflectivity itself': c}
            for k in (3, 5, 7):
                cands[f'box {k}x{k}'] = F.avg_pool2d(F.pad(t(x), (k // 2,) * 4, mode='reflect'), k, 1)[0, 0].numpy()
            for p in (2, 4, 8):
                for mode in ('bilinear', 'bicubic'):
                    cands[f'{p}x{p} average, {mode} ({256 // p ** 2} values per 256 pixels)'] = np.clip(
                        F.interpolate(F.avg_pool2d(t(x), p), scale_factor=p, mode=mode, align_corners=False)[0, 0].numpy(), 0, 1)
            for name, r in cands.items():
                rows.append(dict(reconstruction=name, image=f.name, psnr_db=codec_metrics(x, r, pre)['psnr_db'],
                                 psnr_clean_db=codec_metrics(c, r, pre)['psnr_db'] if name != 'the clean reflectivity itself' else np.nan))
        coded = _coded(data, pre, t)
    df = pd.DataFrame(rows).groupby('reconstruction', sort=False).mean(numeric_only=True).reset_index().round(2)
    text = ['# Fixed linear reconstructions of the rate-distortion scenes', '',
            f"{time.strftime('%Y-%m-%d')}; {machine()}; medrecipes {medrecipes.__version__}, torch {torch.__version__}; "
            "`python benchmarks/sar_linear.py`. Means over the 6 test scenes (256 x 256), PSNR on the [0, 1] dB scale:", '',
            _md_table(df), '',
            '## The linear codecs, coded', '',
            "The skip path's coefficients quantised with one step and coded under a per-channel histogram of the training scenes "
            "(bits per pixel of the test scenes; no networks, no hyperprior). `jpeg2000_psnr_db` is JPEG2000 at each test image's "
            "bitrate, `gain_db` the linear codec's PSNR less it:", '',
            _md_table(coded), '']
    out = ROOT/'benchmarks'/'results'/'sar_linear.md'
    out.write_text('\n'.join(text)); print('\n'.join(text))


def _coded(data, pre, t):
    "The box and DCT skip paths' coefficients, quantised (rounding and deadzone) and entropy-estimated, against JPEG2000 at the same bitrates"
    import numpy as np, pandas as pd, torch, torch.nn.functional as F
    from medrecipes.data.sar import sar_files, read_sar_image
    from medrecipes.codec import codec_metrics, jpeg2000_roundtrip
    from medrecipes.models.sar import skip_basis
    from medrecipes.models.entropy import deadzone_round
    enc = lambda f: np.asarray(pre.encode(read_sar_image(f)), np.float32)
    train, test = [enc(f) for f in sar_files(data/'train')], [enc(f) for f in sar_files(data/'test')]
    rows = []
    for p, s, steps in ((4, 4, (0.04, 0.08, 0.16)), (2, 8, (0.08, 0.16, 0.32)), (1, 16, (0.16, 0.24, 0.32))):
        B = skip_basis(s).float()[:, :, None, None]
        def coef(x, kind):
            v = F.pixel_unshuffle(F.avg_pool2d(t(x), p), s) - 0.5
            return F.conv2d(v, B) if kind == 'dct' else v
        def image(c, kind):
            v = F.conv2d(c, B.transpose(0, 1)) if kind == 'dct' else c
            a = F.pixel_shuffle(v, s) + 0.5
            return (a if p == 1 else F.interpolate(a, scale_factor=p, mode='bicubic', align_corners=False))[0, 0].clamp(0, 1).numpy()
        for kind in ('box', 'dct'):
            for offset in (0.5, 0.3):
                for step in steps:
                    q = lambda c: deadzone_round(c / step, offset).to(torch.int64)
                    tr = torch.cat([q(coef(x, kind)).flatten(2) for x in train], 2)[0]      # k x n
                    lo = int(tr.min()) - 64; hi = int(tr.max()) + 64
                    hist = torch.stack([torch.bincount(r - lo, minlength=hi - lo + 1) for r in tr]).double() + 0.5
                    logp = torch.log2(hist / hist.sum(1, keepdim=True))
                    for x in test:
                        qq = q(coef(x, kind)).clamp(lo, hi)[0]
                        bits = -float(sum(logp[k][qq[k].flatten() - lo].sum() for k in range(qq.shape[0])))
                        bpp = bits / x.size
                        r = image(qq[None].double().float() * step, kind)
                        jr, jb = jpeg2000_roundtrip(x, bpp)
                        rows.append(dict(path=f'{kind} {p}x{p} averages, {s * s} channels', offset=offset, step=step, bpp=bpp,
                                         psnr_db=codec_metrics(x, r, pre)['psnr_db'], jpeg2000_bpp=jb, jpeg2000_psnr_db=codec_metrics(x, jr, pre)['psnr_db']))
    df = pd.DataFrame(rows).groupby(['path', 'offset', 'step'], sort=False).mean().reset_index()
    df['gain_db'] = df.psnr_db - df.jpeg2000_psnr_db
    return df.round(3)


if __name__ == '__main__':
    main()
