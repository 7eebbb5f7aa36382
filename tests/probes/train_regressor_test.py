"""Training a regression decoder: learning, warm-up, FSDP-style sharding."""

import re

import jax.numpy as jnp
import numpy as np
import pytest

from lary_jax.probes import regress
from lary_jax.probes import regression_report as report
from lary_jax.probes import train_regressor as tr
from tests.probes import eight_devices

TOKENS = (2, 4, 8)  # a pair of 4 tokens of width 8 -> 64 inputs
STEPS, DIM = 3, 2


def synthetic(n: int, seed: int):
  """Rows whose target is a fixed linear map of the flattened tokens."""
  rng = np.random.default_rng(seed)
  w = np.random.default_rng(7).standard_normal((64, STEPS * DIM)) / 8
  x = rng.standard_normal((n, 64))
  # Rows already standardised: the decoder's input LayerNorm keeps them.
  x = ((x - x.mean(1, keepdims=True)) / x.std(1, keepdims=True)).astype(
      np.float32)
  y = (x @ w).astype(np.float32)
  x = x.reshape(n, *TOKENS)
  return [{"features": f.astype(np.float16), "target": t}
          for f, t in zip(x, y)], y


def test_mlp_learns_a_linear_map(tmp_path):
  train_rows, _ = synthetic(256, 0)
  val_rows, val_y = synthetic(64, 1)
  decoder = regress.mlp(hidden=256)(STEPS, DIM)
  options = tr.Options(epochs=8, global_batch=32, eval_batch=32, lr=3e-3,
                       warmup=0.1)
  history = tr.train(decoder, TOKENS, tr.Split(train_rows),
                     {"validation": tr.Split(val_rows)}, str(tmp_path),
                     seed=0, options=options, progress=False)
  pred = history["validation"]
  assert pred.shape == (8, 64, STEPS * DIM)
  floor = ((val_y - val_y.mean(0)) ** 2).mean()
  mse = ((pred[-1] - val_y) ** 2).mean()
  assert mse < 0.3 * floor, (mse, floor)  # measured 0.19
  assert history["train_loss"][-1] < history["train_loss"][0]


def test_split_metrics_and_units():
  targets = report.Targets(
      normalised=np.zeros((2, 1, 3), np.float32),
      mean=np.zeros((2, 3)), std=np.array([[1.0, 2.0, 10.0]] * 2))
  pred = np.array([[1.0, 0.0, 2.0], [1.0, 0.0, 0.0]])
  m = report.split_metrics(pred, targets, ("x", "y", "g"),
                           {"pos": (0, 1), "grip": (2,)})
  assert m["mse"] == (1 + 4 + 1) / 6
  assert m["mse_per_dim"] == {"x": 1.0, "y": 0.0, "g": 2.0}
  assert m["mse_groups"] == {"pos": 0.5, "grip": 2.0}
  assert m["mse_units_per_dim"] == {"x": 1.0, "y": 0.0, "g": 200.0}
  assert m["huber"] == (0.5 + 0.5 + 1.5) / 6


def test_param_shardings_split_only_big_leaves():
  import jax  # pylint: disable=g-import-not-at-top
  from lary_jax import mesh as mesh_lib  # pylint: disable=g-import-not-at-top
  mesh = mesh_lib.make_mesh()
  tree = {"big": jnp.zeros((1024, 64)), "small": jnp.zeros((8,))}
  out = tr.param_shardings(tree, mesh, min_mb=0.1)
  expect_big = ("data", None) if jax.device_count() > 1 else ()
  assert tuple(out["big"].spec) == expect_big
  assert tuple(out["small"].spec) == ()


def test_sharded_and_replicated_training_agree_on_eight_devices(tmp_path):
  info = eight_devices.run_worker("tests.probes.sharded_regressor_worker",
                                  tmp_path, timeout=300)
  assert info["devices"] == 8
  assert info["fc1_spec"] == ["data", None]  # first layer split 8 ways
  assert info["fc1_shard_rows"] == 64 // 8
  sharded = np.load(tmp_path / "sharded.npy")
  replicated = np.load(tmp_path / "replicated.npy")
  # A sharded first layer sums its products in other pieces than a
  # replicated one, so the 8 steps agree to rounding, not to the bit: on the
  # machine that wrote this, 6e-7 at most (~4 ulps of predictions up to
  # 1.5). 1e-5 leaves room for other machines' kernels and still catches a
  # shard that is lost or counted twice (an error of its share, 1/8).
  np.testing.assert_allclose(sharded, replicated, atol=1e-5, rtol=0)
  assert np.abs(sharded).max() > 0.1


def test_a_decoder_too_big_for_the_device_is_refused_before_it_exists(
    tmp_path, monkeypatch):
  # 1 MiB to give: upstream's MLP (hidden 4096) on these 64 inputs needs
  # ~0.7 GB with AdamW. The step is compiled, measured and refused before
  # a parameter is drawn, and the error names what would make it fit.
  from lary_jax.errors import LaryError  # pylint: disable=g-import-not-at-top
  from lary_jax.probes import memory_fit  # pylint: disable=g-import-not-at-top
  monkeypatch.setattr(memory_fit, "device_budget",
                      lambda device, reserve=0, host_share=1: 2**20)
  made = []
  mlp = regress.mlp()(STEPS, DIM)
  decoder = tr.Decoder(mlp.name, lambda *a: made.append(a) or mlp.make(*a),
                       mlp.loss, mlp.predict)
  rows, _ = synthetic(32, 0)
  with pytest.raises(LaryError) as error:
    tr.train(decoder, TOKENS, tr.Split(rows), {}, str(tmp_path), seed=0,
             options=tr.Options(epochs=1, global_batch=32,
                                shard_min_mb=0.0), progress=False)
  message = str(error.value)
  assert re.fullmatch(
      r"regress: a training step of the mlp decoder needs 0\.\d GiB on each "
      r"of 1 device\(s\) \(0\.03 B parameters, with their AdamW moments and "
      r"gradients\), and this cpu device has 0\.0 GiB to give\. It fits on "
      r"about \d+ devices of this size \(parameters of at least "
      r"regress\.shard_min_mb=0 MiB are split over the devices with their "
      r"moments\), or with a smaller input: --config\.regress\.pool_grid=4 "
      r"\(not the protocol\)", message), message
  assert len(made) == 1  # its shapes were traced, nothing was drawn
