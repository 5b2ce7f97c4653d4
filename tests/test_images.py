"The shared image reader: every source kind, EXIF orientation, 16-bit/32-bit/float windowing, errors, the header check."
import numpy as np, pytest, torch
from PIL import Image
from fastai.vision.core import TensorImage
from medrecipes.data.images import read_image, to_uint8, image_problem, ClassifierImage, IMAGE_MODES


def _gray(h=24, w=40):
    return (np.arange(h * w).reshape(h, w) * 7 % 256).astype(np.uint8)


@pytest.mark.parametrize('kind', ['L', 'HW1', 'RGB', 'RGBA', 'pil', 'tensor', 'TensorImage', 'bytes', 'str'])
def test_every_source_kind_reads_the_same_pixels(tmp_path, kind):
    g = _gray(); rgb = np.stack([g] * 3, -1)
    Image.fromarray(g).save(tmp_path/'g.png')
    src = {'L': g, 'HW1': g[..., None], 'RGB': rgb, 'RGBA': np.concatenate([rgb, np.full_like(g, 9)[..., None]], -1),
           'pil': Image.open(tmp_path/'g.png'), 'tensor': torch.from_numpy(g),
           'TensorImage': TensorImage(torch.from_numpy(rgb).permute(2, 0, 1)),
           'bytes': (tmp_path/'g.png').read_bytes(), 'str': str(tmp_path/'g.png')}[kind]
    im = read_image(src)
    assert im.mode == 'RGB' and im.size == (40, 24)
    np.testing.assert_array_equal(np.asarray(im), rgb)
    assert np.array_equal(np.asarray(read_image(tmp_path/'g.png')), rgb)         # a Path, the reference
    assert read_image(src, mode='L').mode == 'L'


@pytest.mark.parametrize('dtype,lo,hi', [(np.uint16, 100, 60000), (np.int16, -3000, 5000), (np.int32, -3000, 5000),
                                         (np.int64, 0, 2**40), (np.float32, -3, 5), (np.float64, 1e6, 1e6 + 1), (np.float16, 0, 1)])
def test_wide_arrays_are_windowed_min_to_max(dtype, lo, hi):
    a = np.tile(np.linspace(lo, hi, 256), (3, 1)).astype(dtype)                   # any range, negative values too
    x = np.asarray(read_image(a, mode='L'))
    assert x.dtype == np.uint8 and x.min() == 0 and x.max() == 255
    assert len(np.unique(x)) > 240 and (np.diff(x[0].astype(int)) >= 0).all()   # the ramp survives, in order
    z = (a - a.min()).astype(np.float64)
    col = np.stack([z, z / 2, z / 4], -1)                                          # colour: one window for all channels
    c = np.asarray(read_image(col)).astype(int)
    assert c[..., 0].max() == 255 and 126 <= c[..., 1].max() <= 129 and 62 <= c[..., 2].max() <= 65


def test_to_uint8_constant_nan_and_window():
    for v in (0, 7, 65535):
        out = to_uint8(np.full((5, 6), v, np.uint16))
        assert out.dtype == np.uint8 and (out == out.flat[0]).all()               # a constant, not NaN or garbage
    assert not np.isnan(np.asarray(read_image(np.full((4, 4), 3.5, np.float32)), float)).any()
    with pytest.raises(ValueError, match='2 of 4 pixels are NaN or infinite'):
        read_image(np.array([[0., np.nan], [np.inf, 1.]], np.float32))
    a = np.arange(1000, dtype=np.uint16)
    w = to_uint8(a, window=(1, 99))
    assert (w[:10] == 0).all() and (w[-10:] == 255).all()                          # 1% at each end clipped, on request
    assert len(np.unique(w[10:-10])) > 250 and (np.diff(w.astype(int)) >= 0).all()
    np.testing.assert_array_equal(to_uint8(np.array([0, 1, 2], np.uint16)), [0, 128, 255])
    u8 = np.arange(10, dtype=np.uint8)
    assert to_uint8(u8) is u8                                                      # 8-bit data are left as they are


@pytest.mark.parametrize('mode', ['I;16', 'I;16B', 'I', 'F'])
def test_wide_files_keep_their_ramp(tmp_path, mode):
    a = np.tile(np.linspace(100, 3000, 64), (8, 1))
    if mode == 'I;16': Image.fromarray(a.astype(np.uint16)).save(fn := tmp_path/'a.png')
    elif mode == 'I;16B': Image.fromarray(a.astype('>u2')).save(fn := tmp_path/'a.tif')
    elif mode == 'I': Image.fromarray(a.astype(np.int32)).save(fn := tmp_path/'a.tif')
    else: Image.fromarray(a.astype(np.float32)).save(fn := tmp_path/'a.tif')
    with Image.open(fn) as im: assert im.mode == mode
    assert image_problem(fn) is None                                               # passes the check ...
    row = np.asarray(ClassifierImage.create(fn))[0, :, 0].astype(int)
    assert row[0] == 0 and row[-1] == 255 and len(np.unique(row)) == 64           # ... and is read correctly


def test_exif_orientations(tmp_path):
    "Every EXIF orientation brings the stored top-left mark to where a viewer shows it."
    where = {1: 'tl', 2: 'tr', 3: 'br', 4: 'bl', 5: 'tl', 6: 'tr', 7: 'br', 8: 'bl'}
    for o, corner in where.items():
        im = Image.new('L', (40, 24), 0); im.paste(255, (0, 0, 8, 8))
        ex = Image.Exif(); ex[0x0112] = o
        im.save(fn := tmp_path/f'o{o}.jpg', exif=ex.tobytes(), quality=95)
        x = np.asarray(read_image(fn))[..., 0]
        assert x.shape == ((24, 40) if o <= 4 else (40, 24)), o
        h, w = x.shape
        got = {'tl': x[:8, :8], 'tr': x[:8, w-8:], 'bl': x[h-8:, :8], 'br': x[h-8:, w-8:]}
        assert got[corner].mean() > 200 and sum(v.mean() for v in got.values()) < 255 + 50, o
        np.testing.assert_array_equal(np.asarray(read_image(Image.open(fn))), np.asarray(read_image(fn)))


def test_files_that_pil_maps_from_disk_survive_closing(tmp_path):
    "Uncompressed files may be memory-mapped by PIL; the image must outlive the closed file."
    a = _gray(30, 50)
    for ext in ('bmp', 'tif', 'ppm'):
        Image.fromarray(a).save(fn := tmp_path/f'a.{ext}')
        im = read_image(fn)
        fn.unlink()
        np.testing.assert_array_equal(np.asarray(im)[..., 0], a)


def test_the_callers_image_is_never_modified(tmp_path):
    rgb = Image.fromarray(np.stack([_gray()] * 3, -1))
    out = ClassifierImage.create(rgb)
    assert type(rgb) is Image.Image and out is not rgb and type(out) is ClassifierImage
    arr = _gray(); before = arr.copy()
    read_image(arr.astype(np.uint16))
    np.testing.assert_array_equal(arr, before)


def test_errors_name_the_source_and_what_was_expected(tmp_path):
    with pytest.raises(FileNotFoundError, match=f"image file {tmp_path/'no.png'} does not exist"): read_image(tmp_path/'no.png')
    (tmp_path/'bad.jpg').write_bytes(b'\xff\xd8 not really a jpeg')
    with pytest.raises(ValueError, match=f"cannot decode image {tmp_path/'bad.jpg'}"): read_image(str(tmp_path/'bad.jpg'))
    Image.fromarray(_gray()).save(tmp_path/'t.png')
    (tmp_path/'t.png').write_bytes((tmp_path/'t.png').read_bytes()[:100])          # header intact, pixels truncated
    assert image_problem(tmp_path/'t.png') is None
    with pytest.raises(ValueError, match=f"cannot decode image {tmp_path/'t.png'}"): ClassifierImage.create(tmp_path/'t.png')
    with pytest.raises(ValueError, match=r'ndarray of shape \(4, 5, 2\) and dtype uint8: expected an H x W or H x W x 1/3/4'):
        read_image(np.zeros((4, 5, 2), np.uint8))
    with pytest.raises(ValueError, match=r'has no pixels'): read_image(np.zeros((0, 5), np.uint16))
    with pytest.raises(TypeError, match='expected integer or float pixel values, got dtype complex'): read_image(np.zeros((3, 3), complex))
    with pytest.raises(TypeError, match='cannot read a dict as an image: expected a file path'): read_image({'image_id': 'x'})
    with pytest.raises(ValueError, match="mode must be 'RGB' or 'L'"): read_image(_gray(), mode='CMYK')


def test_the_header_check_refuses_modes_the_reader_cannot_read(tmp_path):
    Image.new('LAB', (8, 8)).save(tmp_path/'lab.tif')
    assert 'LAB' not in IMAGE_MODES
    assert image_problem(tmp_path/'lab.tif').startswith("mode 'LAB' not supported: expected an 8-bit image")
    with pytest.raises(ValueError, match=f"{tmp_path/'lab.tif'}: image mode 'LAB' is not supported"): read_image(tmp_path/'lab.tif')
    from medrecipes.data.folder import check_image_files
    with pytest.raises(ValueError, match="1 unreadable test file\\(s\\): .*lab.tif \\(mode 'LAB' not supported"):
        check_image_files([tmp_path/'lab.tif'], 'test')
    (tmp_path/'x.png').write_bytes(b'junk')
    assert image_problem(tmp_path/'x.png') == 'UnidentifiedImageError'
