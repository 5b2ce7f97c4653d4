"""What fixed linear codecs reach on the rate-distortion benchmark's scenes: the reference that motivated the SAR codec's
linear skip path (`model.linear_skip`).

Generates the scenes `benchmarks/sar_rd.py` uses (`make_sar(n_train=48, ..., size=256, seed=0, save_clean=True,
mode='realistic')`), fits the recipe's preprocessing on the training scenes (`SarDataLoaders.from_folder`, as training
does), and scores on the test scenes, against the speckled original and against the clean reflectivity (PSNR on the
[0, 1] dB scale, `medrecipes.codec.codec_metrics`): box filters, and the image averaged over p x p blocks and upsampled
again (bilinear, bicubic). Averaging over 4 x 4 blocks keeps 16 values per 16 x 16 block: the number the 16-channel latent
holds. No bits are counted here: the averages are unquantised.

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
    df = pd.DataFrame(rows).groupby('reconstruction', sort=False).mean(numeric_only=True).reset_index().round(2)
    text = ['# Fixed linear reconstructions of the rate-distortion scenes', '',
            f"{time.strftime('%Y-%m-%d')}; {machine()}; medrecipes {medrecipes.__version__}, torch {torch.__version__}; "
            "`python benchmarks/sar_linear.py`. Means over the 6 test scenes (256 x 256), PSNR on the [0, 1] dB scale:", '',
            _md_table(df), '']
    out = ROOT/'benchmarks'/'results'/'sar_linear.md'
    out.write_text('\n'.join(text)); print('\n'.join(text))


if __name__ == '__main__':
    main()
