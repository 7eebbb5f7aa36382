"""The `flow` encoder against scikit-image's optical_flow_ilk (the oracle),
on known translations, through extraction's pair path, and its options.

Tolerances. Same conventions, so in float64 the flows agree to rounding
(1e-9 px). In float32 both sides round differently (scipy filters in
double and stores float32 per axis, numpy solves by LU, here matrix
products and a closed-form 2 x 2 solve), and the warps feed each rounding
back: on textured frames the flows stay within 1e-4 px; on flat-shaded
renders (LARY-Sim's look) a few pixels whose window barely sees an edge
have near-singular systems that amplify it to ~3e-3 px, so 1e-2 there.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import ndimage as ndi
from skimage import data as skdata
from skimage import draw
from skimage import transform
from skimage.color import rgb2gray
from skimage.registration import optical_flow_ilk

from lary_jax import encoders
from lary_jax import extract
from lary_jax.encoders import optical_flow
from lary_jax.errors import LaryError
from lary_jax.probes import attentive_probe

WINDOWS = [dict(radius=7, num_warp=10, gaussian=False),  # skimage's defaults
           dict(radius=4, num_warp=3, gaussian=True)]


def _photo_pair(shape=(70, 90)):
  """A photo and a smoothly warped copy (up to ~2.5 px), grey in [0, 1]."""
  photo = transform.resize(rgb2gray(skdata.astronaut()), (120, 140))
  rows, cols = np.mgrid[:shape[0], :shape[1]].astype(float)
  dy = 1.3 + 0.6 * np.sin(cols / 11)
  dx = -1.8 + 0.5 * np.cos(rows / 9)
  ref = ndi.map_coordinates(photo, [rows + 20, cols + 20], order=3)
  mov = ndi.map_coordinates(photo, [rows + 20 - dy, cols + 20 - dx], order=3)
  return ref, mov


def _flat_scene(dx, dy, n=96):
  """Flat-shaded shapes on a background and a table, moved by (dx, dy)."""
  image = np.full((n, n), 0.35)
  image[60:] = 0.55
  image[draw.disk((40 + dy, 30 + dx), 12, shape=image.shape)] = 0.8
  image[draw.polygon(np.array([20, 20, 50, 50]) + dy,
                     np.array([55, 75, 75, 55]) + dx, image.shape)] = 0.15
  return image


@functools.partial(jax.jit, static_argnames=("radius", "num_warp",
                                             "gaussian"))
def _ilk(ref, mov, **kw):
  return optical_flow.ilk_flow(ref, mov, **kw)


def _ours(ref, mov, dtype, **kw):
  with jax.enable_x64(dtype == np.float64):
    out = _ilk(jnp.asarray(ref[None], dtype), jnp.asarray(mov[None], dtype),
               **kw)
    return np.asarray(out)[0]


@pytest.mark.parametrize("kw", WINDOWS)
def test_matches_scikit_image_on_a_warped_photo(kw):
  # 70 x 90 -> pyramid 18 x 23, 35 x 45, 70 x 90: odd sides on the way.
  ref, mov = _photo_pair()
  assert optical_flow.pyramid_sizes(ref.shape) == [(18, 23), (35, 45),
                                                   (70, 90)]
  for dtype, tol in ((np.float64, 1e-9), (np.float32, 1e-4)):
    theirs = optical_flow_ilk(ref.astype(dtype), mov.astype(dtype),
                              dtype=dtype, **kw)
    ours = _ours(ref, mov, dtype, **kw)
    assert ours.dtype == dtype and ours.shape == (2, 70, 90)
    np.testing.assert_allclose(ours, theirs, rtol=0, atol=tol)
    assert np.abs(theirs).max() > 1.5  # the frames do move


def test_matches_scikit_image_on_a_flat_shaded_render():
  ref, mov = _flat_scene(0, 0), _flat_scene(2, -1)
  kw = dict(radius=7, num_warp=3, gaussian=True)  # the encoder's window
  for dtype, tol in ((np.float64, 1e-9), (np.float32, 1e-2)):
    theirs = optical_flow_ilk(ref.astype(dtype), mov.astype(dtype),
                              dtype=dtype, **kw)
    np.testing.assert_allclose(_ours(ref, mov, dtype, **kw), theirs,
                               rtol=0, atol=tol)
  assert (theirs == 0).mean() > 0.2  # flat windows: singular, flow 0


def test_recovers_a_subpixel_translation():
  texture = ndi.gaussian_filter(np.random.default_rng(0).random((96, 96)),
                                2.0, mode="wrap")
  texture = (texture - texture.min()) / np.ptp(texture)
  shift = (1.3, -0.7)  # (rows, columns): content moves down and left
  moved = np.fft.ifft2(ndi.fourier_shift(np.fft.fft2(texture), shift)).real
  flow = _ours(texture, moved, np.float32, radius=7, num_warp=3,
               gaussian=True)
  error = flow[:, 16:-16, 16:-16] - np.asarray(shift)[:, None, None]
  # Three warps: converged to a hundredth of a pixel on average.
  assert np.abs(error).mean() < 0.01 and np.abs(error).max() < 0.05


# ------------------------------------------------- the encoder


def _photo_clip(step=(4, -2), frames=9):
  """uint8 [1, frames, 224, 224, 3]: a photo panned (dx, dy) px a frame."""
  photo = (transform.resize(skdata.astronaut(), (300, 300)) * 255).round()
  dx, dy = step
  crops = [photo[40 - t * dy:264 - t * dy, 40 - t * dx:264 - t * dx]
           for t in range(frames)]
  return np.stack(crops).astype(np.uint8)[None]


def test_a_clip_gives_the_flow_of_its_eight_pairs_in_input_pixels():
  enc = encoders.load("flow")
  assert (enc.mode, enc.num_tokens, enc.dim) == ("pairs", 64, 5)
  clip = jnp.asarray(_photo_clip(step=(4, -2)))
  assert extract.token_shape(enc, "video") == (8, 64, 5)
  assert extract.token_shape(enc, "image") == (64, 5)
  tokens = np.asarray(jax.jit(
      lambda p, x: extract.encode_rows(enc, p, x))(enc.params, clip))
  assert tokens.shape == (1, 8, 64, 5)
  # Every pair pans 4 px right, 2 px up: away from the border (where the
  # window sees the image's edge) each cell reads that in FLOW_SCALE units.
  inner = tokens[0].reshape(8, 8, 8, 5)[:, 1:-1, 1:-1]
  dx, dy = 4 / optical_flow.FLOW_SCALE, -2 / optical_flow.FLOW_SCALE
  np.testing.assert_allclose(
      inner, np.broadcast_to([dx, dy, dx * dx, dy * dy, dx * dy],
                             inner.shape), atol=0.02)
  # The pair path of extraction is the encoder on that pair.
  np.testing.assert_allclose(tokens[0, 3], np.asarray(enc(clip[:, 3:5]))[0],
                             rtol=0, atol=1e-6)


def test_tokens_are_scikit_images_flow_moments():
  clip = _photo_clip(step=(3, 1), frames=2)[0]
  src, tgt = (rgb2gray(f).reshape(112, 2, 112, 2).mean(axis=(1, 3))
              for f in clip)
  flow = optical_flow_ilk(src, tgt, radius=7, num_warp=3, gaussian=True,
                          dtype=np.float64) * 2 / optical_flow.FLOW_SCALE
  dy, dx = flow
  moments = np.stack([dx, dy, dx * dx, dy * dy, dx * dy], -1)
  expected = moments.reshape(8, 14, 8, 14, 5).mean(axis=(1, 3))
  enc = encoders.load("flow", dtype=jnp.bfloat16)  # computes in float32
  tokens = np.asarray(enc(clip[None]))
  assert tokens.dtype == np.float32
  np.testing.assert_allclose(tokens[0], expected.reshape(64, 5), rtol=0,
                             atol=1e-4)
  # Frames given as floats in [0, 1] read the same.
  np.testing.assert_allclose(enc(clip[None] / np.float32(255)), tokens,
                             rtol=0, atol=1e-5)


def test_moments_average_exactly_when_a_probe_pools_cells():
  flow = jax.random.normal(jax.random.key(0), (2, 2, 16, 16)) * 5
  fine = optical_flow.flow_tokens(flow, grid=8)[:, None]
  coarse = optical_flow.flow_tokens(flow, grid=4)[:, None]
  np.testing.assert_allclose(attentive_probe.pool_tokens(fine, 4), coarse,
                             rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("options, message", [
    (dict(grid=5), "flow: grid=5 does not divide size=112"),
    (dict(size=96), "do not split into 96x96 blocks"),
    (dict(size=8), "flow: option size=8, expected an integer >= 16"),
    (dict(num_warp=0), "flow: option num_warp=0, expected an integer >= 1"),
    (dict(gaussian="yes"), "flow: option gaussian='yes', expected 0 or 1"),
    (dict(window=3), "flow: unknown option(s) ['window']"),
])
def test_bad_options_are_one_line_errors(options, message):
  with pytest.raises(LaryError) as e:
    encoders.load("flow", **options)
  assert message in str(e.value) and "\n" not in str(e.value)


def test_takes_no_checkpoint_and_other_sizes_change_the_grid():
  with pytest.raises(LaryError, match="takes no checkpoint"):
    encoders.load("flow", "some/path")
  enc = encoders.load("flow", size=56, grid=14, num_warp=1, gaussian=0)
  assert (enc.num_tokens, enc.dim) == (196, 5)
