"""`flow`: dense optical flow between two frames, pooled to a token grid.

A weight-free classical motion baseline: does a latent action model beat
optical flow? It reads a frame pair like the LAMs do (mode "pairs"), so a
9-frame clip gives the flow of its 8 consecutive pairs, [8, N, D], and a
regression pair [N, D].

Method: iterative Lucas-Kanade (iLK; Le Besnerais & Champagnat, "Dense
optical flow by iterative local window registration", ICIP 2005), with the
conventions of scikit-image's `registration.optical_flow_ilk` (its parity
oracle in the tests):

- a pyramid of factor 2: Gaussian smoothing (sigma 2/3, half-sample
  symmetric borders) then linear resampling to ceil(n / 2) (pixel-centre
  aligned, whole-sample symmetric borders), levels added while the smallest
  side exceeds 32, at most 10 levels;
- on each level, coarse to fine, `num_warp` times: warp the moving frame by
  the current flow (bilinear, coordinates clamped to the image), take its
  gradient (central differences, one-sided on the border rows), sum the
  2 x 2 normal equations of the linearised brightness constancy over a
  window of `radius` (uniform (2r+1)^2, or a Gaussian of sigma (2r+1)/4
  cut at 4 sigma; whole-sample symmetric borders) and solve them per pixel
  (a system with |det| < 1e-14 gives zero flow);
- between levels the flow is upsampled by nearest neighbour (corner
  aligned) and multiplied by the size ratio.

The flow f of (src, tgt) satisfies tgt(x + f(x)) ~ src(x): where each src
pixel went. Every resampling and window sum with a static shape is a
linear map along each axis, so it runs here as a small matrix product
(built once in numpy from the filter taps and border rules); on TPU these
use the MXU at full float32 precision.

Encoder: frames -> grey (scikit-image's `rgb2gray` weights) -> area
downsampled to `size` (an integer factor of the input side) -> iLK ->
flow in input pixels per frame (x right, y down) -> per cell of a
`grid x grid` grid the means of (dx, dy, dx^2, dy^2, dx dy) with the flow
divided by the fixed `FLOW_SCALE` pixels. Means of moments average
exactly: a probe's `pool_grid` that merges cells gives the moments of the
merged cell, and the second moments keep a cell with opposing motions
(rotation, a gripper closing) from reading as still.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from lary_jax.encoders import contract
from lary_jax.errors import LaryError

# scikit-image's rgb2gray (ITU-R BT.709 luma) weights.
GREY_WEIGHTS = (0.2125, 0.7154, 0.0721)
# Flow in input pixels per frame is divided by this before the moments: a
# fixed scale (not per example), so that tokens are of order 1. On LARY-Sim
# at 224 the tokens' largest values are ~2 (clips' consecutive frames) and
# ~4 (regression pairs, 5 frames apart), far inside float16's range.
FLOW_SCALE = 8.0
# scikit-image's pyramid: factor 2, at most 10 levels, none below 16 px.
_DOWNSCALE = 2
_MAX_LEVELS = 10
_MIN_SIZE = 16
# scipy.ndimage's Gaussian support: truncate at 4 sigma.
_TRUNCATE = 4.0
# Below this |det| a pixel's 2 x 2 system counts as singular (flow 0).
_SINGULAR_DET = 1e-14


@dataclasses.dataclass(frozen=True)
class FlowConfig:
  """iLK settings (scikit-image's names) and the token layout.

  size: working resolution (frames area-downsampled to size x size).
  grid: tokens per side; each covers (size / grid)^2 working pixels.
  radius: the window's half-width at working resolution.
  num_warp: warps (linearisations) per pyramid level.
  gaussian: a Gaussian window instead of a uniform one.
  """

  size: int = 112
  grid: int = 8
  radius: int = 7
  num_warp: int = 3
  gaussian: bool = True


# ------------------------------------------------- linear maps (numpy)


def _fold(index: np.ndarray, n: int, mode: str) -> np.ndarray:
  """Indices outside [0, n) mapped inside by scipy.ndimage's border rule.

  "reflect": half-sample symmetric (d c b a | a b c d | d c b a);
  "mirror": whole-sample symmetric (d c b | a b c d | c b a);
  "nearest": the edge value repeats.
  """
  if mode == "nearest" or n == 1:
    return np.clip(index, 0, n - 1)
  if mode == "reflect":
    i = np.mod(index, 2 * n)
    return np.where(i < n, i, 2 * n - 1 - i)
  if mode == "mirror":
    i = np.mod(index, 2 * n - 2)
    return np.where(i < n, i, 2 * n - 2 - i)
  raise ValueError(mode)


def _correlation_matrix(n: int, taps: np.ndarray, mode: str) -> np.ndarray:
  """[n, n] matrix of a centred 1-D correlation with `taps`."""
  r = len(taps) // 2
  out = np.zeros((n, n))
  rows = np.arange(n)
  for k, w in enumerate(taps):
    np.add.at(out, (rows, _fold(rows + k - r, n, mode)), w)
  return out


def gaussian_taps(sigma: float) -> np.ndarray:
  """scipy.ndimage's normalised Gaussian taps (radius int(4 sigma + 0.5))."""
  r = int(_TRUNCATE * sigma + 0.5)
  x = np.arange(-r, r + 1)
  w = np.exp(-0.5 * (x / sigma)**2)
  return w / w.sum()


def _linear_resize_matrix(n_in: int, n_out: int) -> np.ndarray:
  """[n_out, n_in]: linear interpolation with pixel centres aligned.

  Output pixel o samples input coordinate (o + 0.5) n_in / n_out - 0.5,
  whole-sample symmetric beyond the border (scikit-image's `resize` with
  order 1 and mode "reflect").
  """
  x = (np.arange(n_out) + 0.5) * (n_in / n_out) - 0.5
  lo = np.floor(x)
  t = x - lo
  lo = lo.astype(np.int64)
  out = np.zeros((n_out, n_in))
  rows = np.arange(n_out)
  np.add.at(out, (rows, _fold(lo, n_in, "mirror")), 1 - t)
  np.add.at(out, (rows, _fold(lo + 1, n_in, "mirror")), t)
  return out


@functools.lru_cache(maxsize=None)
def _reduce_matrix(n: int) -> np.ndarray:
  """[ceil(n / 2), n]: one pyramid step along an axis (smooth, resample)."""
  smooth = _correlation_matrix(n, gaussian_taps(2 * _DOWNSCALE / 6),
                               "reflect")
  return _linear_resize_matrix(n, math.ceil(n / _DOWNSCALE)) @ smooth


@functools.lru_cache(maxsize=None)
def _window_matrix(n: int, radius: int, gaussian: bool) -> np.ndarray:
  """[n, n]: the local window sum (a mean) along an axis."""
  width = 2 * radius + 1
  taps = (gaussian_taps(width / 4) if gaussian
          else np.full(width, 1.0 / width))
  return _correlation_matrix(n, taps, "mirror")


def _upsample_index(n_in: int, n_out: int) -> np.ndarray:
  """Nearest input index per output index, corners aligned (the flow's
  upsampling between levels; scipy.ndimage.zoom with order 0)."""
  if n_out == 1:
    return np.zeros(1, np.int64)
  x = np.arange(n_out) * ((n_in - 1) / (n_out - 1))
  return np.clip(np.floor(x + 0.5).astype(np.int64), 0, n_in - 1)


def pyramid_sizes(shape: tuple[int, int]) -> list[tuple[int, int]]:
  """Level shapes, coarsest first, as scikit-image builds its pyramid."""
  sizes = [tuple(shape)]
  while (len(sizes) < _MAX_LEVELS
         and min(sizes[-1]) > _DOWNSCALE * _MIN_SIZE):
    sizes.append(tuple(math.ceil(d / _DOWNSCALE) for d in sizes[-1]))
  return sizes[::-1]


# ------------------------------------------------- the solver (JAX)


def _separable(x: jax.Array, rows: np.ndarray, cols: np.ndarray
               ) -> jax.Array:
  """rows @ x @ cols.T over the last two axes of x, at full precision."""
  r = jnp.asarray(rows, x.dtype)
  c = jnp.asarray(cols, x.dtype)
  hi = jax.lax.Precision.HIGHEST
  x = jnp.einsum("...hw,vw->...hv", x, c, precision=hi)
  return jnp.einsum("uh,...hv->...uv", r, x, precision=hi)


def _gradient(x: jax.Array, axis: int) -> jax.Array:
  """numpy.gradient along `axis`: central inside, one-sided at the ends."""
  n = x.shape[axis]
  take = functools.partial(jax.lax.slice_in_dim, x, axis=axis)
  inner = (take(2, n) - take(0, n - 2)) / 2
  first = take(1, 2) - take(0, 1)
  last = take(n - 1, n) - take(n - 2, n - 1)
  return jnp.concatenate([first, inner, last], axis=axis)


def _warp(image: jax.Array, rows: jax.Array, cols: jax.Array) -> jax.Array:
  """Bilinear samples of image [B, H, W] at (rows, cols) [B, H, W], the
  coordinates clamped to the image (scipy's order 1, mode "nearest")."""
  b, h, w = image.shape
  r = jnp.clip(rows, 0, h - 1)
  c = jnp.clip(cols, 0, w - 1)
  r0 = jnp.floor(r)
  c0 = jnp.floor(c)
  tr = r - r0
  tc = c - c0
  r0 = r0.astype(jnp.int32)
  c0 = c0.astype(jnp.int32)
  r1 = jnp.minimum(r0 + 1, h - 1)
  c1 = jnp.minimum(c0 + 1, w - 1)
  flat = image.reshape(b, h * w)

  def at(ri, ci):
    index = (ri * w + ci).reshape(b, h * w)
    return jnp.take_along_axis(flat, index, axis=1).reshape(b, h, w)

  top = (1 - tc) * at(r0, c0) + tc * at(r0, c1)
  bottom = (1 - tc) * at(r1, c0) + tc * at(r1, c1)
  return (1 - tr) * top + tr * bottom


def _ilk_level(reference: jax.Array, moving: jax.Array, flow: jax.Array, *,
               radius: int, num_warp: int, gaussian: bool) -> jax.Array:
  """`num_warp` iLK updates of flow [B, 2, H, W] (row, column) on a level."""
  h, w = reference.shape[-2:]
  rows = jnp.arange(h, dtype=reference.dtype)[:, None]
  cols = jnp.arange(w, dtype=reference.dtype)[None, :]
  window_h = _window_matrix(h, radius, gaussian)
  window_w = _window_matrix(w, radius, gaussian)

  def update(_, flow):
    warped = _warp(moving, rows + flow[:, 0], cols + flow[:, 1])
    gr = _gradient(warped, 1)
    gc = _gradient(warped, 2)
    error = (gr * flow[:, 0] + gc * flow[:, 1]) + reference - warped
    a00, a01, a11, b0, b1 = jnp.unstack(
        _separable(jnp.stack([gr * gr, gr * gc, gc * gc, gr * error,
                              gc * error], 1), window_h, window_w), axis=1)
    det = a00 * a11 - a01 * a01
    singular = jnp.abs(det) < _SINGULAR_DET
    det = jnp.where(singular, 1, det)
    u = jnp.where(singular, 0, (a11 * b0 - a01 * b1) / det)
    v = jnp.where(singular, 0, (a00 * b1 - a01 * b0) / det)
    return jnp.stack([u, v], 1)

  return jax.lax.fori_loop(0, num_warp, update, flow)


def ilk_flow(reference: jax.Array, moving: jax.Array, *, radius: int = 7,
             num_warp: int = 10, gaussian: bool = False) -> jax.Array:
  """Coarse-to-fine iterative Lucas-Kanade flow of grey images.

  Args:
    reference: [B, H, W] float grey frames (the first of each pair).
    moving: [B, H, W], the second frames.
    radius: window half-width in pixels.
    num_warp: warps per pyramid level.
    gaussian: Gaussian window (sigma (2 radius + 1) / 4) instead of uniform.

  Returns:
    [B, 2, H, W] flow (rows, columns) in pixels, in the dtype of the
    frames: moving(x + flow(x)) ~ reference(x). scikit-image's
    `optical_flow_ilk(reference, moving, ...)` per image.
  """
  if reference.shape != moving.shape or reference.ndim != 3:
    raise LaryError(f"ilk_flow: frames of shapes {reference.shape} and "
                    f"{moving.shape}; expected two equal [B, H, W]")
  sizes = pyramid_sizes(reference.shape[1:])
  levels = [jnp.stack([reference, moving], 1)]
  for _ in sizes[1:]:
    prev = levels[-1]
    levels.append(_separable(prev, _reduce_matrix(prev.shape[-2]),
                             _reduce_matrix(prev.shape[-1])))
  levels = levels[::-1]
  solve = functools.partial(_ilk_level, radius=radius, num_warp=num_warp,
                            gaussian=gaussian)
  # zeros_like: under shard_map the carry must vary over devices as the
  # frames do.
  flow = solve(levels[0][:, 0], levels[0][:, 1], jnp.zeros_like(levels[0]))
  for prev_size, frames in zip(sizes, levels[1:]):
    (h0, w0), (h, w) = prev_size, frames.shape[-2:]
    flow = flow[:, :, _upsample_index(h0, h)][:, :, :, _upsample_index(w0, w)]
    flow = flow * jnp.asarray([h / h0, w / w0], flow.dtype)[:, None, None]
    flow = solve(frames[:, 0], frames[:, 1], flow)
  return flow


# ------------------------------------------------- the encoder


def grey_blocks(frames: jax.Array, size: int) -> jax.Array:
  """[..., H, W, 3] RGB -> [..., size, size] grey in [0, 1]: each block of
  (H / size) x (W / size) pixels averaged, with scikit-image's `rgb2gray`
  weights (both linear, so their order only moves rounding).

  uint8 frames are summed as integers first (exact, and on CPU ~10x faster
  than converting every pixel to float); float frames are taken in [0, 1].
  """
  *lead, h, w, _ = frames.shape
  if h % size or w % size:
    raise LaryError(f"flow: frames of {h}x{w} pixels do not split into "
                    f"{size}x{size} blocks (size={size} must divide both)")
  fh, fw = h // size, w // size
  integer = jnp.issubdtype(frames.dtype, jnp.integer)
  acc = jnp.int32 if integer else jnp.float32
  # Rows of a block first, then its columns (kept beside the channels).
  x = frames.reshape(*lead, size, fh, size, fw * 3).astype(acc).sum(-3)
  x = x.reshape(*lead, size, size, fw, 3).sum(-2).astype(jnp.float32)
  r, g, b = GREY_WEIGHTS
  grey = r * x[..., 0] + g * x[..., 1] + b * x[..., 2]
  return grey * (1 / (fh * fw * (255 if integer else 1)))


def flow_tokens(flow: jax.Array, grid: int) -> jax.Array:
  """[B, 2, S, S] (dy, dx) flow -> [B, grid^2, 5] cell moments.

  Per cell, row major: the means of (dx, dy, dx^2, dy^2, dx dy), with the
  flow in units of FLOW_SCALE pixels.
  """
  b, _, h, w = flow.shape
  dy, dx = flow[:, 0] / FLOW_SCALE, flow[:, 1] / FLOW_SCALE
  moments = jnp.stack([dx, dy, dx * dx, dy * dy, dx * dy], -1)
  cells = moments.reshape(b, grid, h // grid, grid, w // grid, 5)
  return cells.mean(axis=(2, 4)).reshape(b, grid * grid, 5)


class OpticalFlow(nnx.Module):
  """Frame pairs [B, 2, H, W, 3] (uint8, or float in [0, 1]) -> flow tokens
  [B, grid^2, 5]."""

  def __init__(self, config: FlowConfig):
    self.config = config

  def __call__(self, pairs: jax.Array) -> jax.Array:
    c = self.config
    if pairs.ndim != 5 or pairs.shape[1] != 2 or pairs.shape[-1] != 3:
      raise LaryError(f"flow: input of shape {pairs.shape}; expected frame "
                      "pairs [B, 2, H, W, 3]")
    grey = grey_blocks(pairs, c.size)
    flow = ilk_flow(grey[:, 0], grey[:, 1], radius=c.radius,
                    num_warp=c.num_warp, gaussian=c.gaussian)
    # Flow in pixels of the input frames, whatever the working size.
    h, w = pairs.shape[-3:-1]
    flow = flow * jnp.asarray([h / c.size, w / c.size])[:, None, None]
    return flow_tokens(flow, c.grid)


def _option(name: str, value: Any, minimum: int) -> int:
  if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
    raise LaryError(f"flow: option {name}={value!r}, expected an integer "
                    f">= {minimum}")
  return value


def make_config(**options: Any) -> FlowConfig:
  """FlowConfig from `encoder_options` (size=112,grid=8,radius=7,
  num_warp=3,gaussian=1), each checked; one LaryError names the bad one."""
  fields = {f.name for f in dataclasses.fields(FlowConfig)}
  unknown = sorted(set(options) - fields)
  if unknown:
    raise LaryError(f"flow: unknown option(s) {unknown}; options: "
                    f"{sorted(fields)}")
  c = FlowConfig()
  size = _option("size", options.get("size", c.size), _MIN_SIZE)
  grid = _option("grid", options.get("grid", c.grid), 1)
  radius = _option("radius", options.get("radius", c.radius), 1)
  num_warp = _option("num_warp", options.get("num_warp", c.num_warp), 1)
  gaussian = options.get("gaussian", c.gaussian)
  if gaussian not in (0, 1, True, False):
    raise LaryError(f"flow: option gaussian={gaussian!r}, expected 0 or 1")
  if size % grid:
    raise LaryError(f"flow: grid={grid} does not divide size={size} (each "
                    "token is a square block of working pixels)")
  return FlowConfig(size=size, grid=grid, radius=radius, num_warp=num_warp,
                    gaussian=bool(gaussian))


def flow_encoder(path: str | None = None, *, dtype: Any = jnp.float32,
                 **options: Any):
  """The `flow` encoder (mode "pairs"); options as `make_config`."""
  if path is not None:
    raise LaryError(f"encoder 'flow' takes no checkpoint (got {path!r})")
  del dtype  # the flow is computed in float32 whatever the compute dtype
  return contract.make_encoder("flow", OpticalFlow(make_config(**options)),
                               preprocess=_as_given, mode="pairs")


def _as_given(images: jax.Array) -> jax.Array:
  # The model reads uint8 itself (see `grey_blocks`).
  return jnp.asarray(images)
