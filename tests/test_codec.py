"""The SAR codec file: the command line in-process (a real round trip, clear errors for damaged and foreign files), the
entropy-coded format decoding bitwise identically in a fresh process, under other thread counts and another CPU float path,
and the file's bits per pixel equal to its size."""
import json, os, subprocess, sys, textwrap, zlib
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
    cases = {'cut.mrsar': (b[:-30], 'truncated'), 'half.mrsar': (b[:len(b) // 2], 'truncated'), 'tiny.mrsar': (b[:12], 'truncated'),
             'flip.mrsar': (b[:-20] + bytes([b[-20] ^ 0x40]) + b[-19:], 'checksum'),
             'v4.mrsar': (b[:4] + b'\x04' + b[5:], 'version 4'), 'png.mrsar': (b'\x89PNG\r\n\x1a\n' + b[8:], 'magic'),
             'v1.mrsar': (b'MRSARC\r\n' + b[8:], 'magic')}   # the retired JSON-header format
    for name, (data, words) in cases.items():
        (tmp_path / name).write_bytes(data); capsys.readouterr()
        assert main(['codec', 'decompress', str(p), str(tmp_path / name), str(tmp_path / 'x.npy')]) == 2
        err = capsys.readouterr().err
        assert str(tmp_path / name) in err and words in err, (name, err)
    assert not (tmp_path / 'x.npy').exists()


@pytest.fixture(scope='module', params=['factorized', 'hyperprior', 'hyperprior+skip', 'hyperprior+dct', 'hyperprior+dct-deadzone'])
def rd_ckpt(tmp_path_factory, request):
    "A checkpoint of a model with an entropy model (factorized prior, or scale hyperprior, also with the linear skip path, box and DCT, and with a deadzone quantiser and 4 hyper-latent channels) and its coding tables (encoder spread like a trained one's)"
    torch.manual_seed(1)
    entropy, _, skip = request.param.partition('+')
    m = sar_model('residual', latent_channels=8, base_channels=8, entropy=entropy, linear_skip={'': False, 'skip': True, 'dct': 'dct', 'dct-deadzone': 'dct'}[skip],
                  round_offset=0.3 if 'deadzone' in skip else 0.5, hyper_channels=4 if 'deadzone' in skip else None).eval()
    torch.nn.init.normal_(m.encoder.head.weight, std=3.)
    if skip: torch.nn.init.normal_(m.decoder.out.weight, std=0.1)
    m.update()
    pre = SarPreprocess('linear', clip=(-25., 5.))
    p = tmp_path_factory.mktemp('rd') / 'best.pt'
    save_checkpoint(p, model_state_dict=m.state_dict(), model_config=m.config, preprocessing_params=pre.checkpoint_params(), patch=32, rd_lambda=64.)
    return p


_OTHER = textwrap.dedent("""
    import sys, json, numpy as np, torch
    torch.set_num_threads(int(sys.argv[5]))
    from medrecipes.codec import compress, decompress, read_codec_file, decode_latent
    from medrecipes.models.sar import load_sar_model
    ck, img, out, theirs = sys.argv[1:5]
    info = compress(ck, np.load(img), out)                               # encoded here
    np.save(out + '.rec.npy', decompress(theirs, ck, out='scaled'))      # and the other process's file decoded here
    model, _, _ = load_sar_model(ck); head, payload = read_codec_file(theirs)
    np.save(out + '.codes.npy', decode_latent(model, head, payload))
    print(json.dumps({'threads': torch.get_num_threads(), 'capability': torch.backends.cpu.get_cpu_capability()}))
""")


@pytest.mark.parametrize('env', [{}, {'ATEN_CPU_CAPABILITY': 'default'}], ids=['fresh-process', 'default-float-path'])
def test_entropy_coded_file_decodes_bitwise_identically_elsewhere(rd_ckpt, tmp_path, env):
    """A file written here decodes to the same symbols and the same image in a fresh interpreter with 3 threads (and with
    ATen's portable kernels instead of this CPU's vector ones: another float path, as another device would be), and a file
    written there is byte for byte the one written here."""
    from medrecipes.codec import compress, decompress, read_codec_file, decode_latent
    from medrecipes.models.sar import load_sar_model
    img = make_sar_scene((96, 80), rng=3, mode='realistic'); np.save(tmp_path / 'img.npy', img)
    mine = tmp_path / 'mine.mrsar'; compress(rd_ckpt, img, mine)
    r = subprocess.run([sys.executable, '-c', _OTHER, str(rd_ckpt), str(tmp_path / 'img.npy'), str(tmp_path / 'theirs.mrsar'), str(mine), '3'],
                       capture_output=True, text=True, env={**os.environ, **env}, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    info = json.loads(r.stdout.strip().splitlines()[-1])
    assert info['threads'] == 3 and (info['capability'] == 'DEFAULT') == bool(env), info
    model, _, _ = load_sar_model(rd_ckpt); head, payload = read_codec_file(mine)
    assert np.array_equal(np.load(tmp_path / 'theirs.mrsar.codes.npy'), decode_latent(model, head, payload))   # the symbols: always
    rec_here = decompress(mine, rd_ckpt, out='scaled')
    if not env:   # the same float path: the whole round trip is bitwise the same
        assert (tmp_path / 'theirs.mrsar').read_bytes() == mine.read_bytes()
        assert np.array_equal(np.load(tmp_path / 'theirs.mrsar.rec.npy'), rec_here)
    else:         # another float path: the decoder's convolutions may differ in the last bits, never in the symbols
        np.testing.assert_allclose(np.load(tmp_path / 'theirs.mrsar.rec.npy'), rec_here, rtol=0, atol=1e-5)


def test_thread_count_changes_nothing(rd_ckpt, tmp_path):
    "compress and decompress under torch.set_num_threads(1) and (2): the same bytes and the same image"
    from medrecipes.codec import compress, decompress
    img = make_sar_scene((64, 112), rng=4, mode='realistic')
    old, out = torch.get_num_threads(), {}
    try:
        for n in (1, 2):
            torch.set_num_threads(n)
            compress(rd_ckpt, img, tmp_path / f't{n}.mrsar'); out[n] = decompress(tmp_path / f't{n}.mrsar', rd_ckpt, out='scaled')
    finally: torch.set_num_threads(old)
    assert (tmp_path / 't1.mrsar').read_bytes() == (tmp_path / 't2.mrsar').read_bytes() and np.array_equal(out[1], out[2])


def test_entropy_coded_cli_reports_the_files_bits(rd_ckpt, tmp_path, capsys):
    "The command prints the file's bits per pixel (its size) and the estimate beside it; the header records lambda"
    from medrecipes.codec import read_codec_file
    img = make_sar_scene((80, 80), rng=5, mode='realistic'); np.save(tmp_path / 'img.npy', img)
    assert main(['codec', 'compress', str(rd_ckpt), str(tmp_path / 'img.npy'), str(tmp_path / 'img.mrsar')]) == 0
    out = capsys.readouterr().out
    size = (tmp_path / 'img.mrsar').stat().st_size
    assert f"{size} bytes, {8 * size / img.size:.4f} bits per pixel" in out and 'estimated' in out, out
    head, _ = read_codec_file(tmp_path / 'img.mrsar')
    assert head['coding'] == torch.load(rd_ckpt, weights_only=True)['model_config']['entropy'] and head['lmbda'] == 64.


def test_strips_code_as_the_whole_image_does(rd_ckpt, tmp_path):
    """Tall images are coded in strips with image context around each (bounded memory): for a model whose receptive field
    fits in the context (no CBAM's global pooling), the strip codes are the whole image's, and the decode matches"""
    from medrecipes.codec import compress, decompress, read_codec_file, decode_latent, encode_strips, _Rows, decode_strips
    from medrecipes.models.sar import load_sar_model
    model, pre, _ = load_sar_model(rd_ckpt)
    img = make_sar_scene((400, 96), rng=6, mode='realistic')
    whole = encode_strips(model, _Rows(img, pre), strip_rows=1024)
    strips = encode_strips(model, _Rows(img, pre), strip_rows=64)
    assert whole.shape == (8, 25, 6) and (strips == whole).mean() > 0.999, (strips != whole).sum()
    wide = make_sar_scene((96, 400), rng=7, mode='realistic')                                 # tiles across the width as well
    whole_w = encode_strips(model, _Rows(wide, pre), strip_rows=1024)
    tiles = encode_strips(model, _Rows(wide, pre), strip_rows=32, tile_cols=64)               # 7 columns of tiles, each seeing 128 px around it
    assert (tiles == whole_w).mean() > 0.999, (tiles != whole_w).sum()
    np.testing.assert_allclose(decode_strips(model, whole_w, wide.shape, strip_rows=32, tile_cols=64),
                               decode_strips(model, whole_w, wide.shape, strip_rows=1024), atol=1e-5)
    r_whole, r_strips = decode_strips(model, whole, img.shape, strip_rows=1024), decode_strips(model, whole, img.shape, strip_rows=48)
    np.testing.assert_allclose(r_strips, r_whole, atol=1e-5)
    with pytest.raises(ValueError, match='multiples of 16'): encode_strips(model, _Rows(img, pre), strip_rows=64, tile_cols=40)
    # the file: the same whichever way it was made, and the strip decode written straight to .npy equals the array decode
    compress(rd_ckpt, img, tmp_path / 'a.mrsar'); compress(rd_ckpt, img, tmp_path / 'b.mrsar', strip_rows=64)
    ha, pa = read_codec_file(tmp_path / 'a.mrsar'); hb, pb = read_codec_file(tmp_path / 'b.mrsar')
    assert (decode_latent(model, ha, pa) == decode_latent(model, hb, pb)).mean() > 0.999
    out = decompress(tmp_path / 'a.mrsar', rd_ckpt, out='db', out_path=tmp_path / 'rec.npy')
    np.testing.assert_array_equal(np.load(out), decompress(tmp_path / 'a.mrsar', rd_ckpt, out='db'))


def test_geotiff_in_geotiff_out(rd_ckpt, tmp_path):
    "A GeoTIFF's georeferencing travels in the codec file and comes back on the decoded GeoTIFF; the pixels equal the array decode"
    import tifffile
    from medrecipes.codec import compress, decompress, read_codec_file
    img = (np.clip(make_sar_scene((64, 80), rng=7, mode='realistic'), 1e-4, None) * 1000).astype(np.float32)
    geo = [(33550, 'd', 3, (10.0, 10.0, 0.0), True), (33922, 'd', 6, (0.0, 0.0, 0.0, 500000.0, 4649776.0, 0.0), True),
           (34735, 'H', 16, (1, 1, 0, 3, 1024, 0, 1, 1, 1025, 0, 1, 1, 3072, 0, 1, 32633), True), (42113, 's', 0, '0', True)]
    tifffile.imwrite(tmp_path / 'scene.tif', img, extratags=geo)
    compress(rd_ckpt, tmp_path / 'scene.tif', tmp_path / 'scene.mrsar')
    head, _ = read_codec_file(tmp_path / 'scene.mrsar')
    assert head['geo'] and set(head['geo']) == {'33550', '33922', '34735', '42113'}
    decompress(tmp_path / 'scene.mrsar', rd_ckpt, out='linear', out_path=tmp_path / 'rec.tif')
    with tifffile.TiffFile(tmp_path / 'rec.tif') as tf:
        tags = {t.code: t.value for t in tf.pages[0].tags.values()}
        rec = tf.asarray()
    assert tuple(tags[33550]) == (10.0, 10.0, 0.0) and tuple(tags[33922])[3:5] == (500000.0, 4649776.0) and tags[34735][-1] == 32633
    assert tags[42113] == '0'
    np.testing.assert_array_equal(rec, decompress(tmp_path / 'scene.mrsar', rd_ckpt, out='linear'))
    np.save(tmp_path / 'plain.npy', img); compress(rd_ckpt, tmp_path / 'plain.npy', tmp_path / 'plain.mrsar')
    assert read_codec_file(tmp_path / 'plain.mrsar')[0]['geo'] is None                        # a .npy has none: no block
    assert (tmp_path / 'plain.mrsar').stat().st_size < (tmp_path / 'scene.mrsar').stat().st_size


def test_estimate_bits_in_chunks_matches_the_whole_latent():
    "`estimate_bits` takes a factorized latent a few rows at a time (a full scene's density activations took 0.8 GB): the same bits as the whole latent at once"
    from medrecipes.codec import estimate_bits
    from medrecipes.models.sar import sar_model
    torch.manual_seed(0)
    codes = np.random.default_rng(0).integers(-4, 5, (8, 37, 29)).astype(np.int32)
    for entropy in ('factorized', 'hyperprior'):
        m = sar_model('residual', 8, base_channels=8, entropy=entropy, round_offset=0.3).eval().update()
        with torch.no_grad(): whole = float(-torch.log2(m.entropy_bottleneck.likelihood(torch.from_numpy(codes[None]).float())).double().sum())
        for chunk in (1, 100, 1 << 20):
            assert estimate_bits(m, codes, chunk=chunk) == pytest.approx(whole, rel=1e-6)


def _read_blocks_by_hand(model, payload, shape, block_rows):
    "The documented factorized stream, read with constriction directly: blocks of `block_rows` latent rows, each channel by channel"
    import constriction
    eb = model.entropy_bottleneck
    dec = constriction.stream.queue.RangeDecoder(np.frombuffer(bytes(payload), '<u4').astype(np.uint32))
    C, h, w = shape; out = np.empty(shape, np.int64)
    for r0 in range(0, h, block_rows):
        r1 = min(h, r0 + block_rows)
        for c in range(C):
            n = int(eb.cdf_length[c]); f = eb.cdf_freqs[c, :n].numpy().astype(np.float64)
            out[c, r0:r1] = (dec.decode(constriction.stream.model.Categorical(f, perfect=False), (r1 - r0) * w) + int(eb.cdf_offset[c])).reshape(r1 - r0, w)
    return out


def test_factorized_scene_is_coded_and_decoded_block_by_block(rd_ckpt, tmp_path):
    """A latent taller than one block (75 rows: blocks of 32, 32, 11) is coded as its strips come and decoded as the
    strips need it: the symbols are the whole latent's (read back by hand from the documented layout), the image is the
    whole-latent decode's, bitwise, and a version-2 file (the latent coded whole) still decodes to the same image"""
    from medrecipes.codec import (compress, decompress, read_codec_file, decode_latent, encode_strips, decode_strips, _Rows,
                                  codec_bytes, LATENT_BLOCK_ROWS, CODEC_VERSION)
    from medrecipes.models.sar import load_sar_model
    model, pre, _ = load_sar_model(rd_ckpt)
    img = make_sar_scene((1200, 96), rng=8, mode='realistic')
    whole = encode_strips(model, _Rows(img, pre))
    assert whole.shape[1] == 75 and LATENT_BLOCK_ROWS == 32 and CODEC_VERSION == 3
    compress(rd_ckpt, img, tmp_path / 'a.mrsar')
    head, payload = read_codec_file(tmp_path / 'a.mrsar')
    assert head['version'] == 3 and np.array_equal(decode_latent(model, head, payload), whole)
    if head['coding'] == 'factorized':
        assert np.array_equal(_read_blocks_by_hand(model, payload, whole.shape, 32), whole)
        compress(rd_ckpt, img, tmp_path / 'b.mrsar', strip_rows=64)       # strips of 4 latent rows: gathered into the same blocks
        hb, pb = read_codec_file(tmp_path / 'b.mrsar')
        assert np.array_equal(_read_blocks_by_hand(model, pb, whole.shape, 32), encode_strips(model, _Rows(img, pre), strip_rows=64))
    rec = decompress(tmp_path / 'a.mrsar', rd_ckpt, out='scaled')
    assert np.array_equal(rec, decode_strips(model, whole, img.shape))
    if head['coding'] == 'factorized':   # version 2: the same symbols coded whole, channel by channel
        v2 = bytearray(codec_bytes(head, model.entropy_bottleneck.encode(whole)))
        v2[4] = 2; v2[-4:] = zlib.crc32(bytes(v2[:-4])).to_bytes(4, 'little')
        (tmp_path / 'v2.mrsar').write_bytes(bytes(v2))
        assert read_codec_file(tmp_path / 'v2.mrsar')[0]['version'] == 2
        assert np.array_equal(decompress(tmp_path / 'v2.mrsar', rd_ckpt, out='scaled'), rec)


def test_factorized_compress_never_holds_the_whole_latent(tmp_path):
    """numpy's allocations (traced by tracemalloc) while coding a tall 8192 x 64 image at 256 latent channels: the whole
    int32 latent is 2 MiB, and encoding it whole holds it; coded strip by strip, compress and the strip decode to a file
    hold a strip's latent (128 KiB) and the coded stream (the file's bytes), and the header's looks a 1024² corner, never the whole latent"""
    import tracemalloc
    from medrecipes.codec import compress, decompress, encode_strips, estimate_looks, _Rows
    torch.manual_seed(0)
    m = sar_model('baseline', latent_channels=256, base_channels=4, entropy='factorized').eval()
    torch.nn.init.normal_(m.encoder.head.weight, std=0.5); m.update()
    pre = SarPreprocess('linear', clip=(-25., 5.))
    img = make_sar_scene((8192, 64), rng=9, mode='realistic')
    whole = 256 * 512 * 4 * 4
    peaks = {}
    for step in ('whole', 'looks', 'compress', 'decode'):
        tracemalloc.start()
        if step == 'whole': encode_strips(m, _Rows(img, pre))
        elif step == 'looks': estimate_looks(_Rows(img, pre).scaled(0, 1024, cols=1024), pre)   # the header's looks: a 1024² corner, whatever the latent
        elif step == 'compress': info = compress((m, pre), img, tmp_path / 'a.mrsar')
        else: decompress(tmp_path / 'a.mrsar', (m, pre), out='scaled', out_path=tmp_path / 'rec.npy')
        peaks[step] = tracemalloc.get_traced_memory()[1]; tracemalloc.stop()
    stream = info['bytes']
    assert peaks['whole'] >= whole, peaks                     # the check can see a whole latent
    # beyond the stream (twice: the coder's words and their bytes) and the looks' corner, less than half the whole latent
    assert peaks['compress'] < whole / 2 + 2 * stream + peaks['looks'] and peaks['decode'] < whole / 2 + 2 * stream, (peaks, stream)
    assert stream < whole / 4, stream                         # (an untrained prior: about 5 bits a value)
