"""What several test files share: the kernel tests' one tolerance table and relative-error helper, and the image files
that the image-reading tests of both classifier recipes write.

`TOL[op][dtype]` is `(value, grad)`: the largest absolute error of a value (SSIM per image, the CBAM output) and the
largest relative RMS error (`rel_err`) of a gradient, for inputs of `dtype` compared with the reference evaluated in
float64 (float32 for the half types) on the same rounded inputs. `cbam_pass` is one fused pass's x-sized output
(relative RMS, the value and gradient alike).
"""
import contextlib, os
from collections import namedtuple
import torch

Tol = namedtuple('Tol', 'value grad')
TOL = {
    'ssim': {torch.float32: Tol(1e-5, 1e-4), torch.float64: Tol(1e-10, 1e-10),
             torch.float16: Tol(2e-3, 5e-3), torch.bfloat16: Tol(1e-2, 2e-2)},
    'cbam': {torch.float32: Tol(1e-5, 1e-5), torch.float64: Tol(1e-10, 1e-10),
             torch.float16: Tol(2e-3, 5e-3), torch.bfloat16: Tol(1.6e-2, 4e-2)},
    'cbam_pass': {torch.float32: Tol(1e-5, 1e-5), torch.float16: Tol(1e-3, 1e-3), torch.bfloat16: Tol(8e-3, 8e-3)},
}


@contextlib.contextmanager
def env_vars(**kw):
    "Set environment variables for the duration of a `with` block, then restore (or remove) them."
    old = {k: os.environ.get(k) for k in kw}
    os.environ.update(kw)
    try: yield
    finally:
        for k, v in old.items():
            if v is None: os.environ.pop(k)
            else: os.environ[k] = v


def rel_err(a:torch.Tensor, b:torch.Tensor) -> float:
    "Relative RMS error of `a` against the reference `b`, in float64 (on the CPU)."
    a, b = a.detach().double().cpu(), b.detach().double().cpu()
    return ((a - b).norm() / b.norm().clamp_min(1e-30)).item()


def ramp16_png(fn, w=64, h=48):
    "A 16-bit grayscale PNG (mode I;16) holding a horizontal ramp over 0..65535."
    import numpy as np
    from PIL import Image
    a = np.tile(np.linspace(0, 65535, w).round().astype(np.uint16), (h, 1))
    Image.fromarray(a).save(fn)
    with Image.open(fn) as im: assert im.mode == 'I;16'
    return fn


def exif6_jpeg(fn, w=40, h=24):
    "A landscape JPEG with a white block in its stored top-left corner and EXIF Orientation 6 (display rotated 90° clockwise)."
    from PIL import Image
    im = Image.new('L', (w, h), 0); im.paste(255, (0, 0, 8, 8))
    ex = Image.Exif(); ex[0x0112] = 6
    im.save(fn, exif=ex.tobytes(), quality=95)
    return fn
