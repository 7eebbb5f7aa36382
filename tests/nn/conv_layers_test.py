"""conv_layers.conv3d_by_frames: a 3-D convolution as summed 2-D ones."""

import jax
import numpy as np
import pytest
from flax import nnx

from lary_jax.errors import LaryError
from lary_jax.nn import conv_layers as cl


@pytest.mark.parametrize("padding, strides", [
    (((2, 0), (1, 1), (1, 1)), (1, 1, 1)),  # Wan2.2's causal conv
    (((1, 1), (0, 1), (2, 0)), (1, 2, 1)),  # uneven, strided in space
    (((0, 0), (0, 0), (0, 0)), (1, 1, 1)),  # one tap: a per-frame conv
])
def test_equals_xla_3d_convolution(padding, strides):
  rng = np.random.default_rng(0)
  taps = 1 if padding[0] == (0, 0) else 3
  x = rng.standard_normal((2, 5, 9, 8, 6), np.float32)
  k = rng.standard_normal((taps, 3, 3, 6, 7), np.float32)
  ref = jax.lax.conv_general_dilated(
      x, k, strides, padding, dimension_numbers=("NDHWC", "DHWIO", "NDHWC"))
  ours = cl.conv3d_by_frames(x, k, strides, padding)
  assert ours.shape == ref.shape
  np.testing.assert_allclose(ours, ref, rtol=1e-5, atol=1e-5)


def test_as_an_nnx_conv_the_layer_keeps_its_parameters():
  pad = ((2, 0), (1, 1), (1, 1))
  plain = cl.conv(4, 5, (3, 3, 3), padding=pad, rngs=nnx.Rngs(0))
  framed = cl.conv(4, 5, (3, 3, 3), padding=pad, rngs=nnx.Rngs(0),
                   conv_general_dilated=cl.conv3d_by_frames)
  x = np.random.default_rng(1).standard_normal((1, 4, 6, 6, 4), np.float32)
  np.testing.assert_allclose(framed(x), plain(x), rtol=1e-5, atol=1e-5)
  paths = lambda m: [p for p, _ in jax.tree_util.tree_flatten_with_path(
      nnx.state(m))[0]]
  assert paths(framed) == paths(plain)


def test_strided_time_or_dilation_is_refused():
  x = np.zeros((1, 5, 4, 4, 2), np.float32)
  k = np.zeros((3, 1, 1, 2, 2), np.float32)
  pad = ((0, 0),) * 3
  with pytest.raises(LaryError, match="time stride 1"):
    cl.conv3d_by_frames(x, k, (2, 1, 1), pad)
  with pytest.raises(LaryError, match="time stride 1"):
    cl.conv3d_by_frames(x, k, (1, 1, 1), pad, rhs_dilation=(2, 1, 1))
