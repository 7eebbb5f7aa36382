"""Extraction end to end: what is stored, device and process independence,
resuming after kill -9, damaged shards, and the upstream .npz round trip.

Multi-device and multi-process runs go through the real command line in
subprocesses (CPU devices faked with XLA_FLAGS; two processes joined by
jax.distributed on 127.0.0.1).
"""

import csv
import os
import pathlib
import signal
import socket
import subprocess
import sys
import types

import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from lary_jax import commands
from lary_jax import extract
from lary_jax import feature_store as fs
from lary_jax.configs import default
from lary_jax.data import images
from lary_jax.encoders import registry
from lary_jax.errors import LaryError
from tests.builders import fake_data_dir
from tfds_builders import metadata
from tfds_builders import prepare

pytestmark = pytest.mark.filterwarnings(
    "ignore::DeprecationWarning", "ignore::FutureWarning")

ROOT = pathlib.Path(__file__).resolve().parents[1]
# 30 validation rows: two global batches of 16 (2 padding rows); each device
# encodes chunks of 2 whatever the device count (1, 2, 4 or 8).
BATCH = dict(global_batch=16, micro_batch=2)
SETTINGS = ["--config.extract.global_batch=16",
            "--config.extract.micro_batch=2"]
VIT = ["--model=random_vit", "--config.extract.encoder_options=variant=Ti/16"]


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
  root = tmp_path_factory.mktemp("extract")
  data_dir, tfds_dir = str(root / "data"), str(root / "tfds")
  fake_data_dir.make_regression(data_dir, "calvin")
  fake_data_dir.make_classification(data_dir, "human_1st")
  options = prepare.PrepareOptions(num_workers=0)
  builders = {name: prepare.prepare(metadata.DATASETS[name], data_dir,
                                    tfds_dir, options=options)
              for name in ("calvin", "human_1st")}
  return types.SimpleNamespace(root=root, data_dir=data_dir,
                               tfds_dir=tfds_dir, builders=builders)


def _source(prepared, name, split):
  return prepared.builders[name].as_data_source()[split]


def _extract(prepared, store_dir, *, name="calvin", split="validation",
             mode="image", encoder=None, **options):
  encoder = encoder or registry.load("pixels")
  return extract.extract_split(
      encoder, _source(prepared, name, split), mode=mode,
      store_dir=str(store_dir), fields={"model": encoder.name},
      options=extract.Options(**(BATCH | options)))


def _main(*args, cwd, env=None, devices=1):
  env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=str(ROOT),
             XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}",
             **(env or {}))
  return subprocess.Popen([sys.executable, "-m", "lary_jax.main", *args],
                          cwd=cwd, env=env, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True)


def _finish(*procs):
  outputs = []
  for proc in procs:
    try:
      outputs.append(proc.communicate(timeout=180)[0])
    except subprocess.TimeoutExpired:
      for p in procs:
        p.kill()
      raise
  return outputs


def _cli_extract(prepared, out, *extra, split="validation"):
  return ["extract", "--dataset=calvin", f"--split={split}",
          f"--tfds_dir={prepared.tfds_dir}", f"--out={out}", *SETTINGS,
          *extra]


def _read(store_dir):
  source = fs.FeatureSource(str(store_dir))
  return source.read_all(), source.manifest


def _patches(image, patch=14):  # uint8 [H, W, 3] -> [N, patch * patch * 3]
  h, w = image.shape[0] // patch, image.shape[1] // patch
  x = image[:h * patch, :w * patch].reshape(h, patch, w, patch, 3)
  return x.transpose(0, 2, 1, 3, 4).reshape(h * w, -1) / np.float32(255)


def test_image_mode_stores_each_pair_as_float16(prepared, tmp_path):
  summary = _extract(prepared, tmp_path, shard_mb=1)
  assert (summary.num_rows, summary.rows_computed) == (30, 30)
  records = _source(prepared, "calvin", "validation")
  features, manifest = _read(tmp_path)
  assert features.shape == (30, 2, 256, 588) and features.dtype == np.float16
  for i in (0, 17, 29):  # first, middle, last real row (after it: padding)
    pair = np.stack([_patches(images.decode_image(records[i][k]))
                     for k in ("src_image", "tgt_image")])
    np.testing.assert_array_equal(features[i], pair.astype(np.float16))
  assert manifest["identities"] == [r["src_path"].decode() for r in records]
  assert {k: manifest[k] for k in (
      "model", "mode", "token_shape", "dtype", "identity_key", "num_rows",
      "global_batch", "micro_batch")} == {
          "model": "pixels", "mode": "image", "token_shape": [2, 256, 588],
          "dtype": "float16", "identity_key": "src_path", "num_rows": 30,
          "global_batch": 16, "micro_batch": 2}
  # Probes read the store joined with the records' targets.
  row = fs.dataset(str(tmp_path), records, keys=("action",))[29]
  np.testing.assert_array_equal(row["action"], records[29]["action"])
  np.testing.assert_array_equal(row["features"], features[29])


def test_an_encoders_other_splits_reuse_its_compiled_steps(prepared,
                                                          tmp_path):
  encoder = registry.load("pixels")
  first = _extract(prepared, tmp_path / "a", encoder=encoder)
  again = _extract(prepared, tmp_path / "b", encoder=encoder)
  assert first.compile_s > 0 and again.compile_s == 0
  np.testing.assert_array_equal(_read(tmp_path / "a")[0],
                                _read(tmp_path / "b")[0])
  other = _extract(prepared, tmp_path / "c", encoder=registry.load("pixels"))
  assert other.compile_s > 0  # a new encoder compiles its own


def test_video_mode_stores_nine_frames_per_clip(prepared, tmp_path):
  records = _source(prepared, "human_1st", "train")
  _extract(prepared, tmp_path, name="human_1st", split="train", mode="video")
  features, manifest = _read(tmp_path)
  assert features.shape == (9, 9, 256, 588)
  frames = [images.decode_image(f) for f in records[8]["frames"]]
  np.testing.assert_array_equal(
      features[8], np.stack([_patches(f) for f in frames]).astype(np.float16))
  assert manifest["identities"][8] == records[8]["video_path"].decode()


def test_a_pair_encoder_gets_the_eight_consecutive_pairs():
  # A latent action model (mode "pairs") sees frames (t, t + 1) together.
  lam = types.SimpleNamespace(
      mode="pairs", apply=lambda p, x: x[:, 1, :1, :1, 0] - x[:, 0, :1, :1, 0])
  clip = jnp.arange(9, dtype=jnp.uint8)[None, :, None, None, None] ** 2
  clip = jnp.broadcast_to(clip, (1, 9, 4, 4, 3))
  out = extract.encode_rows(lam, None, clip)  # [1, 8, 1, 1]
  np.testing.assert_array_equal(out[0, :, 0, 0], 2 * np.arange(8) + 1)
  pair = extract.encode_rows(lam, None, clip[:, 1:3])
  assert pair.shape == (1, 1, 1) and pair[0, 0, 0] == 3


@pytest.fixture(scope="module")
def vit_on_one_device(prepared):
  out = prepared.root / "vit1"
  log, = _finish(_main(*_cli_extract(prepared, out, *VIT), cwd=prepared.root))
  assert "30 of 30 rows" in log, log[-3000:]
  return _read(out / "calvin" / "validation" / "random_vit")


def test_the_last_step_computes_whole_micro_batches_not_the_whole_batch():
  plan = extract.Plan(num_rows=60, global_batch=128, steps_per_shard=4)
  assert extract.step_rows(plan, 0, devices=1, micro_batch=8) == 64
  assert extract.step_rows(plan, 0, devices=8, micro_batch=8) == 64
  assert extract.step_rows(plan, 0, devices=8, micro_batch=2) == 64
  assert extract.step_rows(plan, 0, devices=4, micro_batch=2) == 64
  assert extract.step_rows(plan, 0, devices=1, micro_batch=0) == 128
  plan = extract.Plan(num_rows=300, global_batch=128, steps_per_shard=4)
  assert [extract.step_rows(plan, s, devices=2, micro_batch=8)
          for s in range(3)] == [128, 128, 48]


def test_eight_devices_give_the_bits_of_one(prepared, vit_on_one_device):
  out = prepared.root / "vit8"
  log, = _finish(_main(*_cli_extract(prepared, out, *VIT), devices=8,
                       cwd=prepared.root))
  assert "30 of 30 rows" in log, log[-3000:]
  features, manifest = _read(out / "calvin" / "validation" / "random_vit")
  assert features.shape == (30, 2, 196, 192)
  np.testing.assert_array_equal(features, vit_on_one_device[0])
  assert manifest["identities"] == vit_on_one_device[1]["identities"]


def test_flow_on_eight_devices_gives_the_bits_of_one(prepared):
  # A pair encoder on clips: each device takes micro-batches of 2 clips,
  # 16 frame pairs, whatever the device count, so not even rounding moves.
  outs = [prepared.root / f"flow{d}" for d in (1, 8)]
  logs = _finish(*[
      _main("extract", "--dataset=human_1st", "--split=train",
            f"--tfds_dir={prepared.tfds_dir}", f"--out={out}", *SETTINGS,
            "--model=flow", devices=d, cwd=prepared.root)
      for d, out in zip((1, 8), outs)])
  for log in logs:
    assert "9 of 9 rows" in log, log[-3000:]
  (one, manifest), (eight, _) = (
      _read(out / "human_1st" / "train" / "flow") for out in outs)
  assert one.shape == (9, 8, 64, 5) and manifest["mode"] == "video"
  assert np.abs(one).max() > 0.1  # the fake clips' frames do differ
  np.testing.assert_array_equal(eight, one)


def _free_port():
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def test_two_processes_give_the_bits_of_one(prepared, vit_on_one_device):
  out = prepared.root / "vit_2p"
  address = f"127.0.0.1:{_free_port()}"
  logs = _finish(*[
      _main(*_cli_extract(prepared, out, *VIT), "--num_processes=2",
            f"--coordinator_address={address}", f"--process_id={p}",
            devices=2, cwd=prepared.root) for p in range(2)])
  assert "30 of 30 rows" in logs[0], logs[0][-3000:]
  store = out / "calvin" / "validation" / "random_vit"
  features, manifest = _read(store)
  np.testing.assert_array_equal(features, vit_on_one_device[0])
  assert manifest["identities"] == vit_on_one_device[1]["identities"]
  # Each process wrote its own shard: rows [8p, 8p + 8) of both batches.
  assert [s["process"] for s in manifest["shards"]] == [0, 1]
  for p, shard in enumerate(manifest["shards"]):
    assert shard["index"] == [i for step in (0, 16)
                              for i in range(step + 8 * p, step + 8 * p + 8)
                              if i < 30]


def _mtimes(store):
  return {p.name: p.stat().st_mtime_ns for p in store.glob("shard-*")}


def test_killed_run_resumes_to_the_uninterrupted_result(prepared, tmp_path):
  reference = tmp_path / "reference"
  _extract(prepared, reference, global_batch=8, shard_mb=0.5)  # 4 shards
  args = _cli_extract(prepared, tmp_path, "--model=pixels",
                      "--config.extract.global_batch=8",
                      "--config.extract.shard_mb=0.5")
  proc = _main(*args, cwd=tmp_path,
               env={extract.KILL_AFTER_SHARDS_ENV: "2"})
  _finish(proc)
  assert proc.returncode == -signal.SIGKILL
  store = tmp_path / "calvin" / "validation" / "pixels"
  assert not (store / fs.MANIFEST).exists()
  done = _mtimes(store)
  assert sorted(done) == [f"shard-0000{i}-p000.{e}" for i in (0, 1)
                          for e in ("json", "npy")]

  log, = _finish(_main(*args, cwd=tmp_path))
  assert "14 of 30 rows" in log and "2 reused" in log, log[-3000:]
  assert {k: v for k, v in _mtimes(store).items() if k in done} == done
  features, manifest = _read(store)
  want, want_manifest = _read(reference)
  np.testing.assert_array_equal(features, want)
  assert manifest["identities"] == want_manifest["identities"]


def test_damaged_or_half_written_shards_are_redone(prepared, tmp_path):
  _extract(prepared, tmp_path, global_batch=8, shard_mb=0.5)
  want, _ = _read(tmp_path)
  corrupt = tmp_path / "shard-00000-p000.npy"
  blob = bytearray(corrupt.read_bytes())
  blob[len(blob) // 2] ^= 1
  corrupt.write_bytes(bytes(blob))
  with pytest.raises(LaryError, match="checksum differs"):
    fs.FeatureSource(str(tmp_path)).read_all()
  truncated = tmp_path / "shard-00001-p000.npy"
  truncated.write_bytes(truncated.read_bytes()[:4096])
  (tmp_path / "shard-00002-p000.json").unlink()  # killed between the renames
  (tmp_path / "shard-00003-p000.npy.tmp").write_bytes(b"half")
  kept = _mtimes(tmp_path)["shard-00003-p000.npy"]

  summary = _extract(prepared, tmp_path, global_batch=8, shard_mb=0.5)
  assert (summary.shards, summary.shards_reused) == (4, 1)
  assert summary.rows_computed == 24
  assert _mtimes(tmp_path)["shard-00003-p000.npy"] == kept
  assert not list(tmp_path.glob("*.tmp"))
  np.testing.assert_array_equal(_read(tmp_path)[0], want)
  again = _extract(prepared, tmp_path, global_batch=8, shard_mb=0.5)
  assert (again.shards_reused, again.rows_computed) == (4, 0)


def test_other_settings_never_mix_into_a_store(prepared, tmp_path):
  _extract(prepared, tmp_path, global_batch=8, shard_mb=0.5)
  with pytest.raises(LaryError, match=r"other settings \(dtype"):
    _extract(prepared, tmp_path, global_batch=8, shard_mb=0.5,
             dtype="float32")
  with pytest.raises(LaryError, match="not a multiple of micro_batch 3"):
    _extract(prepared, tmp_path / "x", micro_batch=3)


class _Loud(nnx.Module):

  def __call__(self, x):  # [B, H, W, 3] -> [B, 1, 1]
    return x[:, :1, :1, 0] * 1e6


def test_values_float16_cannot_hold_are_an_error(prepared, tmp_path):
  loud = registry.make_encoder("loud", _Loud())
  with pytest.raises(LaryError, match=r"record \d+ \(images/.*\): features "
                     "reach .* float16 holds up to 65504"):
    _extract(prepared, tmp_path, encoder=loud)
  summary = _extract(prepared, tmp_path / "f32", encoder=loud,
                     dtype="float32")
  assert summary.rows_computed == 30


def test_cli_export_npz_and_import_round_trip(prepared, tmp_path):
  log, = _finish(_main(
      *_cli_extract(prepared, tmp_path / "features", "--model=pixels"),
      "--export_npz", f"--la_dir={tmp_path / 'la'}",
      f"--data_dir={prepared.data_dir}", cwd=tmp_path))
  csv_path = tmp_path / "la" / "val_la_calvin_5_pixels.csv"
  assert f"CSV {csv_path}" in log, log[-3000:]
  with open(csv_path, newline="") as f:
    rows = list(csv.DictReader(f))
  assert len(rows) == 30 and rows[7]["la_path"] == (
      "calvin/stride_5/val/pixels/latent_action_00000007.npz")
  log, = _finish(_main(
      "import", "--model=pixels", "--dataset=calvin", "--split=validation",
      f"--tfds_dir={prepared.tfds_dir}", f"--csv={csv_path}",
      f"--la_dir={tmp_path / 'la'}", f"--out={tmp_path / 'imported'}",
      cwd=tmp_path))
  assert "imported 30 rows of [2, 256, 588]" in log, log[-3000:]
  got, manifest = _read(tmp_path / "imported" / "calvin" / "validation" /
                        "pixels")
  want, want_manifest = _read(tmp_path / "features" / "calvin" /
                              "validation" / "pixels")
  np.testing.assert_array_equal(got, want)
  assert manifest["identities"] == want_manifest["identities"]


def test_wrong_mode_for_the_dataset_is_refused(prepared):
  flags = types.SimpleNamespace(
      model="pixels", dataset="calvin", mode="video", split=None, stride=None,
      tfds_dir=prepared.tfds_dir, workdir="unused", out=None, checkpoint=None,
      csv=None, coordinator_address=None, num_processes=None, process_id=None,
      export_npz=False, data_dir=None, metadata_dir=None, la_dir=None)
  config = default.get_config()
  with pytest.raises(LaryError, match="calvin is a regression dataset, which "
                     "is extracted in image mode"):
    commands.extract(flags, config)
