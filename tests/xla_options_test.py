"""xla_options: a convolutional encoder's forward compiles its convolutions
to XLA's own CPU kernels (not YNNPACK's); other encoders keep XLA's
defaults."""

import re

import jax
import numpy as np
import pytest
from flax import nnx

from lary_jax import extract
from lary_jax import mesh as mesh_lib
from lary_jax import xla_options
from lary_jax.encoders import contract
from lary_jax.encoders import registry
from lary_jax.nn import conv_layers as cl


class _ConvNet(nnx.Module):
  """Two 3x3 convolutions and a dense layer: [B, 16, 16, 3] -> [B, 64, 32]."""

  def __init__(self):
    rngs = nnx.Rngs(0)
    self.a = cl.conv(3, 32, 3, padding=1, rngs=rngs)
    self.b = cl.conv(32, 32, 3, padding=1, stride=2, rngs=rngs)
    self.dense = nnx.Linear(32, 32, rngs=rngs)

  def __call__(self, x):
    y = self.dense(self.b(jax.nn.relu(self.a(x))))
    return y.reshape(y.shape[0], -1, y.shape[-1])


def _library_ops(hlo: str) -> dict[str, int]:
  """Convolutions and dots in a compiled program's text, by where they run:
  "ynn_..." inside a YNNPACK fusion, "xla_..." anywhere else."""
  bodies, name = {}, None
  for line in hlo.splitlines():
    start = re.match(r"(?:ENTRY )?(%[\w.\-]+) \(.*\{$", line)
    if start:
      name, bodies[start.group(1)] = start.group(1), []
    elif name and line != "}":
      bodies[name].append(line)
  ynn = {callee for lines in bodies.values() for line in lines
         if "__ynn_fusion" in line
         for callee in re.findall(r"calls=(%[\w.\-]+)", line)}
  counts = {}
  for comp, lines in bodies.items():
    for line in lines:
      op = re.search(r" (convolution|dot)\(", line)
      if op:
        key = ("ynn" if comp in ynn else "xla") + "_" + op.group(1)
        counts[key] = counts.get(key, 0) + 1
  return counts


def test_options_by_platform_and_profile():
  assert xla_options.encoder_forward("cpu", xla_options.CONVOLUTIONAL)
  assert xla_options.encoder_forward("cpu", xla_options.DEFAULT) is None
  assert xla_options.encoder_forward("gpu", xla_options.CONVOLUTIONAL) is None
  with pytest.raises(ValueError, match="expected one of"):
    xla_options.encoder_forward("cpu", "fast")


@pytest.mark.parametrize("profile, where", [
    (xla_options.CONVOLUTIONAL, "xla_convolution"),
    (xla_options.DEFAULT, "ynn_convolution")])
def test_extraction_compiles_an_encoder_with_its_profile(profile, where):
  enc = contract.make_encoder(
      "convnet", _ConvNet(), xla_profile=profile,
      example=jax.ShapeDtypeStruct((16, 16, 3), np.uint8))
  images = np.random.default_rng(0).integers(0, 256, (8, 16, 16, 3),
                                             np.uint8)
  step = extract.make_step(enc, mesh_lib.make_mesh(), micro_batch=0,
                           dtype=np.float32)
  ops = _library_ops(step.lower(enc.params, images).compile().as_text())
  assert ops == {where: 2, "ynn_dot": 1}
  features, _ = step(enc.params, images)
  np.testing.assert_allclose(features, enc(images), rtol=1e-5, atol=1e-5)


def test_an_unknown_profile_is_refused():
  with pytest.raises(Exception, match="xla_profile='fast'"):
    contract.make_encoder("convnet", _ConvNet(), xla_profile="fast")


@pytest.mark.parametrize("name, profile", [
    ("flux2", xla_options.CONVOLUTIONAL),
    ("magvit2_encoder", xla_options.CONVOLUTIONAL),
    ("wan2_2", xla_options.CONVOLUTIONAL), ("dinov2", xla_options.DEFAULT),
    ("vjepa2", xla_options.DEFAULT), ("univla", xla_options.DEFAULT)])
def test_the_pixel_tokenizers_compile_as_convolutional(name, profile):
  assert registry.model_module(name).XLA_PROFILE == profile
