"The SAR codec file through the command line, in-process: a real file round trip and clear errors for damaged files"
import numpy as np, pytest, torch
from medrecipes.cli import main
from medrecipes.core import save_checkpoint
from medrecipes.data.sar import SarPreprocess
from medrecipes.models.sar import sar_model
from medrecipes.synth import make_sar_scene


@pytest.fixture(scope='module')
def ckpt(tmp_path_factory):
    torch.manual_seed(0)
    m = sar_model('residual', latent_channels=8, base_channels=8).eval()
    torch.nn.init.normal_(m.encoder.head.weight, std=3.)                  # codes spread like a trained encoder's
    pre = SarPreprocess('linear', clip=(-25., 5.))
    p = tmp_path_factory.mktemp('codec') / 'best.pt'
    save_checkpoint(p, model_state_dict=m.state_dict(), model_config=m.config, preprocessing_params=pre.checkpoint_params(), patch=32)
    return p, m, pre


def test_cli_compress_decompress_round_trip(ckpt, tmp_path, capsys):
    p, m, pre = ckpt
    img = make_sar_scene((80, 112), rng=0, mode='realistic'); np.save(tmp_path / 'img.npy', img)
    assert main(['codec', 'compress', str(p), str(tmp_path / 'img.npy'), str(tmp_path / 'img.mrsar')]) == 0
    assert 'bits per pixel' in capsys.readouterr().out
    size = (tmp_path / 'img.mrsar').stat().st_size
    assert 8 * 5 * 7 / 2 < size < 8 * 5 * 7 + 1000                          # 280 8-bit codes, zlib-coded, plus a header
    assert main(['codec', 'decompress', str(p), str(tmp_path / 'img.mrsar'), str(tmp_path / 'rec.npy'), '--out', 'scaled']) == 0
    rec = np.load(tmp_path / 'rec.npy')
    x = torch.from_numpy(pre.encode(img))[None, None]
    with torch.no_grad(): want = m(x)[0, 0].numpy()                          # 80 x 112: multiples of 16, no padding
    np.testing.assert_allclose(rec, want, atol=1e-5)


def test_cli_refuses_damaged_files(ckpt, tmp_path, capsys):
    p, _, _ = ckpt
    np.save(tmp_path / 'img.npy', make_sar_scene(64, rng=1, mode='realistic'))
    main(['codec', 'compress', str(p), str(tmp_path / 'img.npy'), str(tmp_path / 'a.mrsar')])
    b = (tmp_path / 'a.mrsar').read_bytes()
    cases = {'cut.mrsar': (b[:-30], 'checksum'), 'half.mrsar': (b[:len(b) // 2], 'truncated'), 'tiny.mrsar': (b[:12], 'truncated'),
             'flip.mrsar': (b[:-20] + bytes([b[-20] ^ 0x40]) + b[-19:], 'checksum'),
             'v2.mrsar': (b[:8] + b'\x02\x00' + b[10:], 'version 2'), 'png.mrsar': (b'\x89PNG\r\n\x1a\n' + b[8:], 'magic')}
    for name, (data, words) in cases.items():
        (tmp_path / name).write_bytes(data); capsys.readouterr()
        assert main(['codec', 'decompress', str(p), str(tmp_path / name), str(tmp_path / 'x.npy')]) == 2
        err = capsys.readouterr().err
        assert str(tmp_path / name) in err and words in err, (name, err)
    assert not (tmp_path / 'x.npy').exists()
