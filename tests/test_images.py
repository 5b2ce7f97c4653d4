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


_ADAM7 = [(0, 0, 8, 8), (4, 0, 8, 8), (0, 4, 4, 8), (2, 0, 4, 4), (0, 2, 2, 4), (1, 0, 2, 2), (0, 1, 1, 2)]   # x0, y0, dx, dy


def _png16(fn, a, interlace=False, exif=None):
    """Write `a` (H x W x 2/3/4 uint16) as a 16-bit PNG of colour type 4 (gray + alpha), 2 (RGB) or 6 (RGBA), by hand (PIL
    writes no 16-bit colour PNG): row after row filtered with each of PNG's five filters in turn, Adam7-interlaced on request."""
    import struct, zlib
    h, w, c = a.shape
    bpp = 2 * c

    def rows(img):
        raw = img.astype('>u2').reshape(img.shape[0], -1).view(np.uint8).astype(np.int16)
        out, prev = [], np.zeros(raw.shape[1], np.int16)
        for i, r in enumerate(raw):
            left = np.concatenate([np.zeros(bpp, np.int16), r[:-bpp]])
            upleft = np.concatenate([np.zeros(bpp, np.int16), prev[:-bpp]])
            p = left + prev - upleft
            pa, pb, pc = abs(p - left), abs(p - prev), abs(p - upleft)
            paeth = np.where((pa <= pb) & (pa <= pc), left, np.where(pb <= pc, prev, upleft))
            k = i % 5
            pred = [0 * r, left, prev, (left + prev) // 2, paeth][k]
            out.append(bytes([k]) + ((r - pred) % 256).astype(np.uint8).tobytes())
            prev = r
        return b''.join(out)

    if interlace: data = b''.join(rows(a[y0::dy, x0::dx]) for x0, y0, dx, dy in _ADAM7 if a[y0::dy, x0::dx].size)
    else: data = rows(a)
    chunk = lambda t, d: struct.pack('>I', len(d)) + t + d + struct.pack('>I', zlib.crc32(t + d) & 0xffffffff)
    ihdr = struct.pack('>IIBBBBB', w, h, 16, {2: 4, 3: 2, 4: 6}[c], 0, 0, int(interlace))
    fn.write_bytes(b'\x89PNG\r\n\x1a\n' + chunk(b'IHDR', ihdr) + (chunk(b'eXIf', exif) if exif else b'')
                   + chunk(b'IDAT', zlib.compress(data)) + chunk(b'IEND', b''))
    return fn


def _colour12(h=21, w=37, channels=3):
    "12-bit data (0..4095) in 16-bit words: a ramp, its mirror and noise, then an opaque alpha (65535) or a gray + alpha pair."
    rng = np.random.default_rng(0)
    ramp = np.tile(np.linspace(0, 4095, w).round(), (h, 1))
    chans = [ramp, 4095 - ramp, rng.integers(0, 4096, (h, w))]
    if channels == 2: chans = [ramp]
    a = np.stack(chans[:min(channels, 3)] + [np.full((h, w), 65535)] * (channels in (2, 4)), -1)
    return a.astype(np.uint16)


@pytest.mark.parametrize('channels', [3, 4, 2])
@pytest.mark.parametrize('interlace', [False, True])
def test_16bit_colour_pngs_are_read_at_full_depth(tmp_path, channels, interlace):
    "12-bit data in 16-bit RGB, RGBA and gray + alpha PNGs: windowed as the 16-bit gray path windows them, as the same TIFF."
    import tifffile
    a = _colour12(channels=channels)
    fn = _png16(tmp_path/'c16.png', a, interlace)
    with Image.open(fn) as im: assert im.mode in ('RGB', 'RGBA')                  # what PIL makes of it: 8 of the 16 bits
    colour = a[..., :3] if channels >= 3 else a[..., 0]                            # the alpha channel is dropped, as for 8 bits
    want = to_uint8(colour)
    if want.ndim == 2: want = np.stack([want] * 3, -1)
    assert image_problem(fn) is None
    got = np.asarray(read_image(fn))
    assert got.max() == 255 and len(np.unique(got[..., 0])) > 30                   # not 0..15: nearly black
    np.testing.assert_array_equal(got, want)
    np.testing.assert_array_equal(np.asarray(read_image(fn.read_bytes())), want)  # its bytes read the same
    np.testing.assert_array_equal(np.asarray(read_image(fn, mode='L')), np.asarray(Image.fromarray(want).convert('L')))
    w = to_uint8(colour, (1, 99))
    np.testing.assert_array_equal(np.asarray(read_image(fn, window=(1, 99)))[..., 0], w if w.ndim == 2 else w[..., 0])
    if channels >= 3:                                                             # the same data as a 16-bit TIFF
        tifffile.imwrite(tmp_path/'c16.tif', a, photometric='rgb', extrasamples=[2] if channels == 4 else None)
        np.testing.assert_array_equal(np.asarray(read_image(tmp_path/'c16.tif')), want)
    from medrecipes.data.images import read_stored
    np.testing.assert_array_equal(np.asarray(read_stored(fn, 64)), want)          # what the loaders and the cache store


def test_16bit_colour_png_exif_orientation(tmp_path):
    a = np.zeros((24, 40, 3), np.uint16); a[:8, :8] = 4095                         # marked stored top-left corner
    ex = Image.Exif(); ex[0x0112] = 6
    x = np.asarray(read_image(_png16(tmp_path/'o.png', a, exif=ex.tobytes()[6:])))[..., 0]   # the TIFF header, no "Exif\0\0"
    assert x.shape == (40, 24) and x[:8, 16:].mean() > 200 and x[:8, :8].mean() < 50   # portrait, mark top-right


def _ramp12_dicom(fn, **kw):
    "A 12-bit ramp (0..4095) in a DICOM file, and the dataset pydicom reads back from it."
    import pydicom
    from medrecipes.synth import write_dicom
    a = np.tile(np.linspace(0, 4095, 64).round().astype(np.uint16), (8, 1))
    write_dicom(fn, a, bits_stored=12, **kw)
    return pydicom.dcmread(fn)


def test_dicom_voi_lut_output_is_scaled_over_the_range_its_descriptor_defines(tmp_path):
    "A VOI LUT whose output spans 1000..3047 of 0..4095: 62..190 on the 8-bit scale, as pydicom's LUT output over 0..4095."
    from pydicom.dataset import Dataset
    from pydicom.sequence import Sequence
    from pydicom.pixels import apply_modality_lut, apply_voi_lut
    from medrecipes.data.images import read_dicom
    ds = _ramp12_dicom(tmp_path/'lut.dcm')
    lut = Dataset(); lut.add_new('LUTDescriptor', 'US', [4096, 0, 12])
    lut.add_new('LUTData', 'US', [1000 + v // 2 for v in range(4096)])          # 0..4095 -> 1000..3047
    ds.VOILUTSequence = Sequence([lut]); ds.save_as(tmp_path/'lut.dcm')
    import pydicom
    ds = pydicom.dcmread(tmp_path/'lut.dcm')
    out = apply_voi_lut(apply_modality_lut(ds.pixel_array, ds), ds, prefer_lut=True).astype(np.float64)   # the reference
    assert (out.min(), out.max()) == (1000, 3047)
    want = (out * 255 / (2**12 - 1) + .5).astype(np.uint8)
    got = read_dicom(tmp_path/'lut.dcm')
    assert (got.min(), got.max()) == (62, 190)
    np.testing.assert_array_equal(got, want)
    np.testing.assert_array_equal(np.asarray(read_image(tmp_path/'lut.dcm'))[..., 0], want)


@pytest.mark.filterwarnings('ignore:Invalid value for VR CS')                       # lower case is not valid DICOM, and yet
@pytest.mark.parametrize('function', ['sigmoid', 'Sigmoid', 'linear_exact', 'SIGMOID', 'LINEAR'])
def test_dicom_voi_lut_function_is_read_whatever_its_case(tmp_path, function):
    "VOILUTFunction compared case-insensitively, as pydicom does: 'sigmoid' is a sigmoid, not the linear default."
    from pydicom.pixels import apply_modality_lut, apply_windowing
    from medrecipes.data.images import read_dicom
    ds = _ramp12_dicom(tmp_path/'w.dcm', window=(2048, 1024))
    ds.VOILUTFunction = function; ds.save_as(tmp_path/'w.dcm')
    import pydicom
    ds = pydicom.dcmread(tmp_path/'w.dcm')
    ref = apply_windowing(apply_modality_lut(ds.pixel_array, ds), ds)              # over 0..4095 (12 bits stored, unsigned)
    want = (ref / 4095 * 255 + .5).astype(np.uint8)
    np.testing.assert_array_equal(read_dicom(tmp_path/'w.dcm'), want)
