"""Training a LAM in JAX: loss falls, a killed run resumes to the same
parameters, 1 and 8 devices follow one loss curve, and the saved model loads
through the encoder registry.

Every run trains a tiny pixel LAQ on clips of a square moving on noise
(32 px frames, resized to the model's 28), each in its own process; they
share XLA's compilation cache, so the step is compiled once per device
count.
"""

import io
import json
import os
import pathlib
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

from lary_jax.encoders import convert
from lary_jax.lams import lapa
from lary_jax.lams import nsvq
from lary_jax.errors import LaryError
from lary_jax.lams import train_lam as tl

ROOT = pathlib.Path(__file__).resolve().parents[2]
CFG = lapa.Config.sim_small(image_size=28, patch_size=4, dim=32, quant_dim=8,
                            spatial_depth=1, temporal_depth=1, dim_head=16,
                            heads=2)
STEPS = 24
KILL_AT = 12
OPTIONS = tl.Options(steps=STEPS, global_batch=8, lr=3e-3, warmup_steps=2,
                     schedule="cosine", log_every=1, ckpt_every=6,
                     read_threads=2, prefetch=2)
CACHE_ENV = "LARY_TEST_JAX_CACHE"
# The last bias of the relative position bias adds one constant per head to
# every attention logit, which softmax ignores: its true gradient is 0, and
# Adam turns the rounding noise it gets instead (different for 1 and 8
# devices) into steps of ~lr.
NOISE_DRIVEN = ("spatial_rel_pos_bias.net.2.bias",)


def _png(image: np.ndarray) -> bytes:
  buf = io.BytesIO()
  Image.fromarray(image).save(buf, format="PNG")
  return buf.getvalue()


def clips(n: int = 8, size: int = 32, seed: int = 0) -> list[dict]:
  """Clip records (9 PNG frames): a bright square moving one of 4 ways."""
  rng = np.random.default_rng(seed)
  out = []
  for i in range(n):
    dy, dx = [(0, 2), (2, 0), (0, -2), (-2, 0)][i % 4]
    y, x = rng.integers(8, size - 8, 2)
    background = rng.integers(0, 60, (size, size, 3), dtype=np.uint8)
    frames = []
    for t in range(9):
      im = background.copy()
      yy, xx = (y + dy * t) % (size - 6), (x + dx * t) % (size - 6)
      im[yy:yy + 6, xx:xx + 6] = 255
      frames.append(_png(im))
    out.append({"frames": np.array(frames, dtype=object)})
  return out


def pairs():
  return tl.ConcatPairs([tl.PairSource(clips(), "clips")])


def run(workdir: str, progress: bool = False) -> dict:
  return tl.train(lapa, CFG, pairs(), workdir, name="lapa", options=OPTIONS,
                  progress=progress)


def losses(workdir) -> np.ndarray:
  with open(os.path.join(workdir, tl.METRICS)) as f:
    return np.array([json.loads(line)["loss"] for line in f])


def params(workdir) -> dict[str, np.ndarray]:
  return convert.load_converted(tl.checkpoint_dir(str(workdir)))[2]


def _train(workdir, *, cache: str, devices: int = 1, env=None):
  """Trains in a fresh process. All runs share the XLA flags and a
  compilation cache; LLVM optimisation is off, as it dominates the compile
  time of these tiny steps."""
  flags = (f"--xla_force_host_platform_device_count={devices} "
           "--xla_backend_optimization_level=0")
  env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=str(ROOT),
             XLA_FLAGS=flags, **{CACHE_ENV: cache}, **(env or {}))
  return subprocess.run(
      [sys.executable, "-m", "tests.lams.train_lam_test", str(workdir)],
      cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)


def _summary(result) -> dict:
  assert result.returncode == 0, result.stderr[-3000:]
  return json.loads(result.stdout.splitlines()[-1])


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
  """Uninterrupted (1 device), killed at step KILL_AT then resumed, and on
  8 devices."""
  root = tmp_path_factory.mktemp("train_lam")
  cache = str(root / "jax_cache")
  out = {"root": root}
  out["full"] = _summary(_train(root / "full", cache=cache))
  out["killed"] = _train(root / "resumed", cache=cache,
                         env={tl.KILL_AFTER_STEPS_ENV: str(KILL_AT)})
  out["killed_losses"] = len(losses(root / "resumed"))
  out["killed_model"] = os.path.exists(tl.checkpoint_dir(
      str(root / "resumed")))
  out["resumed"] = _summary(_train(root / "resumed", cache=cache))
  out["eight"] = _summary(_train(root / "eight", cache=cache, devices=8))
  return out


def test_pairs_of_clips_and_rows():
  records = clips(2)
  source = tl.PairSource(records, "clips")
  assert len(source) == 16
  assert source[9] == {"src_image": records[1]["frames"][1],
                       "tgt_image": records[1]["frames"][2]}
  rows = [{"src_image": b"a", "tgt_image": b"b", "action": 0}]
  both = tl.ConcatPairs([source, tl.PairSource(rows, "pairs")])
  assert len(both) == 17 and both[16] == {"src_image": b"a",
                                          "tgt_image": b"b"}
  with pytest.raises(IndexError):
    both[17]
  # Wider gaps: (t, t + 1) for t < 8, then (t, t + 3) for t < 6.
  wide = tl.PairSource(records, "clips", gaps=(1, 3))
  assert len(wide) == 2 * (8 + 6)
  assert wide[8 + 2] == {"src_image": records[0]["frames"][2],
                         "tgt_image": records[0]["frames"][5]}
  assert wide[14 + 8] == {"src_image": records[1]["frames"][0],
                          "tgt_image": records[1]["frames"][3]}
  with pytest.raises(LaryError, match="gaps"):
    tl.PairSource(records, "clips", gaps=(9,))


def test_replace_schedule_is_lapas():
  steps = jnp.arange(6000)
  ours = np.asarray(jax.vmap(
      lambda s: tl.replace_step(s, tl.LAPA_REPLACE_SCHEDULE))(steps))
  assert ours.tolist() == [nsvq.replacement_due(s) for s in range(6000)]
  assert ours.sum() == 9 + 9 + 8


def test_loss_falls_and_model_loads(runs):
  workdir, summary = runs["root"] / "full", runs["full"]
  assert summary["devices"] == 1
  curve = losses(workdir)
  assert len(curve) == STEPS
  assert curve[-4:].mean() < 0.6 * curve[:4].mean(), curve
  rows = [json.loads(line) for line in open(workdir / tl.METRICS)]
  # LAPA re-seeds after steps 10 and 20 (0-based) only.
  assert {r["step"] for r in rows if r["replaced_codes"]} <= {11, 21}
  assert all(1.0 <= r["perplexity"] <= CFG.codebook_size for r in rows)
  assert summary["final_loss"] == pytest.approx(curve[-1])

  from lary_jax.encoders import registry  # pylint: disable=g-import-not-at-top
  model = convert.build(lapa.Model, CFG, params(workdir))
  pair = jax.random.uniform(jax.random.key(3), (2, 2, 28, 28, 3))
  frames = np.asarray(pair * 255, np.uint8)
  expected = model.encode(jnp.asarray(frames, jnp.float32) / 255,
                          mode="quantized")
  assert expected.shape == (2, CFG.code_seq_len, CFG.dim)
  encoder = registry.load("lapa", tl.checkpoint_dir(str(workdir)),
                          latent="quantized")
  assert encoder.mode == "pairs" and encoder.dim == CFG.dim
  np.testing.assert_allclose(encoder(frames), expected, atol=1e-5)


def test_kill_and_resume_gives_the_same_parameters(runs):
  assert runs["killed"].returncode == -9, runs["killed"].stderr[-3000:]
  assert runs["killed_losses"] == KILL_AT and not runs["killed_model"]
  assert runs["resumed"]["resumed_from"] == KILL_AT
  full, resumed = runs["root"] / "full", runs["root"] / "resumed"
  np.testing.assert_array_equal(losses(resumed), losses(full))
  expected, got = params(full), params(resumed)
  assert sorted(got) == sorted(expected)
  for key, value in expected.items():
    np.testing.assert_array_equal(got[key], value, err_msg=key)


def test_eight_devices_follow_the_same_curve(runs):
  assert runs["eight"]["devices"] == 8
  full, eight = runs["root"] / "full", runs["root"] / "eight"
  np.testing.assert_allclose(losses(eight), losses(full), rtol=1e-4,
                             atol=1e-6)
  expected = params(full)
  for key, value in params(eight).items():
    if key in NOISE_DRIVEN:
      # Adam moves it at most lr per step whatever its rounding-noise
      # gradient says.
      bound = 2 * OPTIONS.lr * STEPS
      assert np.abs(value - expected[key]).max() <= bound, key
      continue
    np.testing.assert_allclose(value, expected[key], rtol=1e-3, atol=1e-4,
                               err_msg=key)


def test_metrics_also_go_to_tensorboard_events(runs):
  from tests.tensorboard_events import read_scalars  # pylint: disable=g-import-not-at-top
  full, resumed = runs["root"] / "full", runs["root"] / "resumed"
  rows = [json.loads(line) for line in open(full / tl.METRICS)]
  scalars = read_scalars(str(full))
  for key in ("loss", "recon_loss", "perplexity", "dead_codes", "lr"):
    got = scalars[f"train/{key}"]
    assert [s for s, _ in got] == [r["step"] for r in rows], key
    np.testing.assert_allclose([v for _, v in got], [r[key] for r in rows],
                               rtol=1e-6, err_msg=key)
  # Killed and resumed: the two runs' files hold every logged step once.
  steps = [s for s, _ in read_scalars(str(resumed))["train/loss"]]
  assert sorted(steps) == [r["step"] for r in rows]


def _main(workdir: str) -> None:
  if os.environ.get(CACHE_ENV):
    jax.config.update("jax_compilation_cache_dir", os.environ[CACHE_ENV])
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
  summary = run(workdir)
  print(json.dumps({"devices": jax.device_count(), **summary}))


if __name__ == "__main__":
  _main(sys.argv[1])
