"""Image resizing, grey conversion and PNG/JPEG codecs that match OpenCV.

Upstream LARY prepares every frame with OpenCV (`cv2.resize(...,
INTER_CUBIC)` to 224x224, `cv2.cvtColor(..., BGR2GRAY)` and a default
`cv2.resize` before SSIM). lary-jax does not depend on OpenCV at run time, so
this module re-derives those operations in numpy, pixel for pixel where the
arithmetic is known:

* `rgb_to_grey` is OpenCV's 15-bit fixed-point formula, bit-exact.
* `resize_linear` is OpenCV's 8-bit `INTER_LINEAR` path (11-bit weights, the
  `>> 4`, `>> 16`, `+ 2 >> 2` vertical pass, and the 2x2 box average that
  OpenCV substitutes for an exact 2x down-scale), bit-exact.
* `resize_short_side_center_crop` is V-JEPA 2's evaluation view (bilinear
  resize of the full-resolution frame to short side 256, centred 224 crop)
  on top of `resize_linear`, bit-exact.
* `resize_bicubic` matches what `cv2.resize(..., INTER_CUBIC)` returns for
  uint8 in the x86 wheels, which route 8-bit cubic resizing through Intel IPP
  rather than OpenCV's own fixed-point code (the two disagree by one level on
  about 4% of pixels). IPP is closed source; we use its kernel (Keys,
  a = -0.75, half-pixel centres, replicated border) with double-precision
  taps rounded to float32 and float32 sums in a fixed order. We differ from
  cv2 only where the exact result is a .5 tie, which IPP breaks by its own
  float rounding, always by one level: ~1e-5 of pixels on photographs and
  noise, up to ~3e-3 on synthetic smooth gradients, where ties are common.
"""

import io
import os

import numpy as np
from PIL import Image
from PIL import ImageOps

from lary_jax.errors import LaryError

_PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
_JPEG_MAGIC = b"\xff\xd8\xff"

# OpenCV's RGB -> grey weights (0.299, 0.587, 0.114) in 15-bit fixed point.
_GREY_WEIGHTS = np.array([9798, 19235, 3735], np.float32)
_GREY_SHIFT = 15

# OpenCV's fixed-point scale for 8-bit interpolation weights.
_COEF_SCALE = 2048

_KEYS_A = -0.75  # OpenCV's (and IPP's) bicubic parameter.


def _as_hwc(x: np.ndarray) -> tuple[np.ndarray, bool]:
  """Returns `x` as [..., H, W, C] and whether a channel axis was added."""
  x = np.asarray(x)
  if x.dtype != np.uint8:
    raise TypeError(f"expected a uint8 image, got dtype {x.dtype}")
  if x.ndim == 2:
    return x[..., None], True
  if x.ndim in (3, 4):
    return x, False
  raise ValueError(
      f"expected an image [H, W], [H, W, C] or [T, H, W, C], got {x.shape}")


def _check_size(size: tuple[int, int]) -> tuple[int, int]:
  height, width = (int(s) for s in size)
  if height <= 0 or width <= 0:
    raise ValueError(f"target size must be positive, got {size}")
  return height, width


def _cubic_taps(n_in: int, n_out: int) -> tuple[np.ndarray, np.ndarray]:
  """Source indices [n_out, 4] and float32 weights [n_out, 4] of one axis."""
  centre = (np.arange(n_out) + 0.5) * (n_in / n_out) - 0.5  # [n_out]
  left = np.floor(centre)
  frac = centre - left
  # Distances from the four taps at left-1 .. left+2.
  dist = np.abs(frac[:, None] - np.arange(-1, 3)[None, :])  # [n_out, 4]
  a = _KEYS_A
  near = ((a + 2) * dist - (a + 3)) * dist * dist + 1
  far = ((a * dist - 5 * a) * dist + 8 * a) * dist - 4 * a
  weights = np.where(dist <= 1, near, far).astype(np.float32)
  index = left.astype(np.int64)[:, None] + np.arange(-1, 3)[None, :]
  return np.clip(index, 0, n_in - 1), weights


def _cubic_pass(x: np.ndarray, n_out: int, axis: int) -> np.ndarray:
  """Resamples one axis of `x` with the 4-tap kernel, in float32."""
  index, weights = _cubic_taps(x.shape[axis], n_out)
  shape = [1] * x.ndim
  shape[axis] = n_out
  terms = [
      np.take(x, index[:, k], axis=axis) * weights[:, k].reshape(shape)
      for k in range(4)
  ]
  # One fixed order, so results are the same on every machine.
  return (terms[0] + terms[1]) + (terms[2] + terms[3])


def resize_bicubic(
    x: np.ndarray, size: tuple[int, int] = (224, 224)
) -> np.ndarray:
  """Resizes like `cv2.resize(x, (w, h), interpolation=cv2.INTER_CUBIC)`.

  Equal to cv2 but for exact .5 ties, which are off by one level (see the
  module docstring). cv2 skips IPP for 2-channel images and for sources
  under 4 pixels on a side; there it uses OpenCV's fixed-point code, which
  we do not copy, so ~4% of pixels differ by one level in those cases.

  Args:
    x: uint8 image [H, W], [H, W, C] or a batch [T, H, W, C].
    size: target (height, width). Note the order: OpenCV takes (width,
      height).

  Returns:
    uint8 array of the same rank with the spatial axes resized.
  """
  height, width = _check_size(size)
  img, squeeze = _as_hwc(x)
  if img.shape[-3:-1] == (height, width):
    out = img.copy()
  else:
    # Horizontal first: the gathers read uint8, and the usual down-scale
    # leaves the vertical pass less to do.
    rows = _cubic_pass(img, width, axis=img.ndim - 2)
    out = _cubic_pass(rows, height, axis=img.ndim - 3)
    out = np.clip(np.rint(out), 0, 255).astype(np.uint8)
  return out[..., 0] if squeeze else out


def _linear_taps(
    n_in: int, n_out: int, clamp: bool
) -> tuple[np.ndarray, np.ndarray]:
  """OpenCV's 2-tap source indices and 11-bit weights of one axis.

  `clamp` reproduces OpenCV's horizontal pass, which pins out-of-range
  positions to the border pixel with weights (1, 0); its vertical pass keeps
  the raw fraction and only clamps the row indices.
  """
  # OpenCV: scale = 1 / (n_out / n_in) in double, the position cast to float.
  scale = 1.0 / (n_out / n_in)
  centre = ((np.arange(n_out) + 0.5) * scale - 0.5).astype(np.float32)
  left = np.floor(centre)
  frac = (centre - left).astype(np.float32)
  left = left.astype(np.int64)
  if clamp:
    low = left < 0
    high = left >= n_in - 1
    frac[low | high] = 0
    left = np.where(low, 0, np.where(high, n_in - 1, left))
  weights = np.stack([np.float32(1) - frac, frac], axis=-1)  # [n_out, 2]
  weights = np.rint(weights * np.float32(_COEF_SCALE)).astype(np.int64)
  index = np.clip(left[:, None] + np.arange(2)[None, :], 0, n_in - 1)
  return index, weights


def _area_half(img: np.ndarray) -> np.ndarray:
  """OpenCV's fast INTER_AREA for an exact 2x down-scale: rounded 2x2 mean."""
  i = img.astype(np.uint16)
  total = (i[..., 0::2, 0::2, :] + i[..., 0::2, 1::2, :] +
           i[..., 1::2, 0::2, :] + i[..., 1::2, 1::2, :])
  if img.shape[-1] in (1, 3, 4):
    return ((total + 2) >> 2).astype(np.uint8)
  # Other channel counts take OpenCV's generic loop: round half to even.
  return np.rint(total * np.float32(0.25)).astype(np.uint8)


def resize_linear(
    x: np.ndarray, size: tuple[int, int] = (224, 224)
) -> np.ndarray:
  """Resizes like `cv2.resize(x, (w, h))` (INTER_LINEAR) on uint8, bit-exact.

  Args:
    x: uint8 image [H, W], [H, W, C] or a batch [T, H, W, C].
    size: target (height, width).

  Returns:
    uint8 array of the same rank with the spatial axes resized.
  """
  height, width = _check_size(size)
  img, squeeze = _as_hwc(x)
  src_h, src_w = img.shape[-3:-1]
  if (src_h, src_w) == (height, width):
    out = img.copy()
  elif (src_h, src_w) == (2 * height, 2 * width):
    out = _area_half(img)
  else:
    w_axis, h_axis = img.ndim - 2, img.ndim - 3
    x_index, x_weights = _linear_taps(src_w, width, clamp=True)
    y_index, y_weights = _linear_taps(src_h, height, clamp=False)
    x_shape = [1] * img.ndim
    x_shape[w_axis] = width
    # Horizontal pass: exact integer sums, at most 255 * 2048.
    rows = sum(
        np.take(img, x_index[:, k], axis=w_axis).astype(np.int32) *
        x_weights[:, k].astype(np.int32).reshape(x_shape) for k in range(2))
    rows >>= 4  # OpenCV drops 4 bits to multiply in 16 bits.
    y_shape = [1] * img.ndim
    y_shape[h_axis] = height
    acc = sum((np.take(rows, y_index[:, k], axis=h_axis) *
               y_weights[:, k].astype(np.int32).reshape(y_shape)) >> 16
              for k in range(2))
    out = ((acc + 2) >> 2).clip(0, 255).astype(np.uint8)
  return out[..., 0] if squeeze else out


def resize_short_side_center_crop(
    frames: np.ndarray, short_side: int = 256, crop: int = 224
) -> np.ndarray:
  """V-JEPA 2's evaluation view: bilinear resize, then a centred square crop.

  The resize keeps the aspect ratio and makes the short side `short_side`
  (long side truncated, `int(short_side * long / short)`), with
  `resize_linear`'s OpenCV arithmetic; it is skipped when the short side
  already has that length. The crop starts at `round((side - crop) / 2)`
  (Python rounding, half to even) on each axis. Bit-exact with upstream's
  OpenCV transform.

  Args:
    frames: uint8 image [H, W, C] or batch [T, H, W, C], any size.
    short_side: length of the short side after the resize.
    crop: side of the square crop; at most `short_side`.

  Returns:
    uint8 [crop, crop, C] or [T, crop, crop, C].
  """
  if not 0 < crop <= short_side:
    raise ValueError(f"crop {crop} must be in (0, short_side={short_side}]")
  img = np.asarray(frames)
  if img.dtype != np.uint8 or img.ndim not in (3, 4):
    raise TypeError("expected uint8 [H, W, C] or [T, H, W, C], got "
                    f"{img.dtype} {img.shape}")
  h, w = img.shape[-3:-1]
  if min(h, w) != short_side:
    if w < h:
      h, w = int(short_side * h / w), short_side
    else:
      h, w = short_side, int(short_side * w / h)
    img = resize_linear(img, (h, w))
  top, left = round((h - crop) / 2), round((w - crop) / 2)
  return img[..., top:top + crop, left:left + crop, :]


def rgb_to_grey(x: np.ndarray) -> np.ndarray:
  """Converts RGB to grey like `cv2.cvtColor(x, cv2.COLOR_RGB2GRAY)`, exactly.

  (Equally `COLOR_BGR2GRAY` on the BGR frames upstream reads.)

  Args:
    x: uint8 array [..., 3] in RGB order.

  Returns:
    uint8 array [...].
  """
  x = np.asarray(x)
  if x.dtype != np.uint8 or x.shape[-1:] != (3,):
    raise TypeError(f"expected uint8 RGB [..., 3], got {x.dtype} {x.shape}")
  out = np.empty(x.shape[:-1], np.uint8)
  flat_in = x.reshape(-1, 3)
  flat_out = out.reshape(-1)
  # float32 is exact here (every partial sum < 2**24) and lets BLAS do the
  # dot products; chunks bound the float32 copy.
  step = 1 << 20
  for start in range(0, len(flat_in), step):
    v = flat_in[start:start + step].astype(np.float32) @ _GREY_WEIGHTS
    v += np.float32(1 << (_GREY_SHIFT - 1))
    v *= np.float32(1.0 / (1 << _GREY_SHIFT))
    flat_out[start:start + step] = np.floor(v, out=v)
  return out


def _check_rgb(img: np.ndarray) -> np.ndarray:
  img = np.asarray(img)
  if img.dtype != np.uint8 or img.ndim != 3 or img.shape[-1] != 3:
    raise TypeError(
        f"expected a uint8 RGB image [H, W, 3], got {img.dtype} {img.shape}")
  return img


def encode_png(img: np.ndarray, compress_level: int = 6) -> bytes:
  """Encodes a uint8 RGB image [H, W, 3] as PNG (lossless, deterministic).

  `compress_level` (zlib, 0-9) trades bytes for time and nothing else: every
  level decodes to the same pixels.
  """
  buf = io.BytesIO()
  Image.fromarray(_check_rgb(img)).save(buf, format="PNG",
                                        compress_level=compress_level)
  return buf.getvalue()


def encode_jpeg(img: np.ndarray, quality: int = 95) -> bytes:
  """Encodes a uint8 RGB image [H, W, 3] as baseline JPEG (deterministic)."""
  buf = io.BytesIO()
  Image.fromarray(_check_rgb(img)).save(
      buf, format="JPEG", quality=int(quality), optimize=False)
  return buf.getvalue()


def _to_rgb(image: Image.Image) -> np.ndarray:
  # Like cv2.imread: honour EXIF orientation, drop alpha, 16 -> 8 bits.
  image = ImageOps.exif_transpose(image)
  if image.mode in ("I;16", "I;16B", "I;16L", "I"):
    grey = (np.asarray(image, np.uint32) >> 8).astype(np.uint8)
    return np.repeat(grey[..., None], 3, axis=-1)
  return np.asarray(image.convert("RGB"), np.uint8)


def _decode(data: bytes, what: str) -> np.ndarray:
  if data.startswith(_PNG_MAGIC):
    fmt = "PNG"
  elif data.startswith(_JPEG_MAGIC):
    fmt = "JPEG"
  else:
    raise LaryError(
        f"{what}: not a PNG or JPEG image (starts with {data[:8]!r})")
  try:
    with Image.open(io.BytesIO(data), formats=[fmt]) as image:
      image.load()
      return _to_rgb(image)
  except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
    raise LaryError(f"{what}: cannot decode {fmt} image ({e})") from e


def decode_image(data: bytes) -> np.ndarray:
  """Decodes PNG or JPEG bytes (format sniffed) to uint8 RGB [H, W, 3]."""
  return _decode(bytes(data), "image bytes")


def load_image(path: str | os.PathLike[str]) -> np.ndarray:
  """Reads a PNG or JPEG file as uint8 RGB [H, W, 3], like `cv2.imread`.

  Args:
    path: image file.

  Returns:
    uint8 array [H, W, 3] in RGB order.

  Raises:
    LaryError: the file is missing, unreadable, not PNG/JPEG or truncated.
  """
  path = os.fspath(path)
  try:
    with open(path, "rb") as f:
      data = f.read()
  except OSError as e:
    raise LaryError(f"{path}: cannot read image ({e.strerror})") from e
  return _decode(data, path)
