"""Training metrics in TensorBoard event files, read back: the ScalarLog
itself, and what the probes write beside their results each epoch."""

import numpy as np
import pytest

from lary_jax import tensorboard_log
from lary_jax.probes import attentive_probe
from lary_jax.probes import regress
from lary_jax.probes import train_classifier as tc
from lary_jax.probes import train_regressor as tr
from tests.tensorboard_events import read_scalars


def test_scalars_round_trip(tmp_path):
  log = tensorboard_log.ScalarLog(str(tmp_path))
  log.close()
  assert not list(tmp_path.iterdir())  # nothing logged, no file
  with tensorboard_log.ScalarLog(str(tmp_path)) as log:
    log.write(1, {"train/loss": 0.5, "validation/mse": np.float32(0.25)})
    log.write(2, {"train/loss": 0.375})
  assert read_scalars(str(tmp_path)) == {
      "train/loss": [(1, 0.5), (2, 0.375)], "validation/mse": [(1, 0.25)]}


def test_classifier_writes_each_epoch_per_head(tmp_path):
  rng = np.random.default_rng(0)
  labels = np.arange(24) % 3
  rows = [{"features": rng.standard_normal((2, 4, 8)).astype(np.float16),
           "label": np.int32(y)} for y in labels]
  split = tc.Split(rows, labels)
  probe = attentive_probe.Config(dim=8, num_classes=3, model_dim=16,
                                 num_heads=2, depth=2)
  history = tc.train(probe, split, {"validation": split}, str(tmp_path),
                     seed=0, options=tc.Options(epochs=2, global_batch=8,
                                                eval_batch=8,
                                                compute_dtype="float32"),
                     progress=False)
  scalars = read_scalars(str(tmp_path))
  assert len(scalars) == 3 * 5  # train loss, train top-1, validation top-1
  for h in range(5):
    loss = scalars[f"train/loss/head{h}"]
    assert [s for s, _ in loss] == [1, 2]
    np.testing.assert_allclose([v for _, v in loss],
                               history["train_loss"][:, h], rtol=1e-6)
    top1 = [(history["validation"][e, h, :, 0] == labels).mean()
            for e in range(2)]
    got = scalars[f"validation/top1/head{h}"]
    assert [s for s, _ in got] == [1, 2]
    assert [v for _, v in got] == pytest.approx(top1)


def test_regressor_writes_and_prints_each_epoch(tmp_path, capsys):
  rng = np.random.default_rng(0)
  targets = rng.standard_normal((16, 4)).astype(np.float32)
  rows = [{"features": rng.standard_normal((2, 2, 4)).astype(np.float16),
           "target": t} for t in targets]
  history = tr.train(regress.mlp(hidden=16)(2, 2), (2, 2, 4),
                     tr.Split(rows), {"validation": tr.Split(rows, targets)},
                     str(tmp_path), seed=0,
                     options=tr.Options(epochs=2, global_batch=8,
                                        eval_batch=8))
  mse = [float(np.mean((history["validation"][e] - targets) ** 2))
         for e in range(2)]
  scalars = read_scalars(str(tmp_path))
  assert [s for s, _ in scalars["validation/mse"]] == [1, 2]
  assert [v for _, v in scalars["validation/mse"]] == pytest.approx(mse)
  assert [v for _, v in scalars["train/loss"]] == pytest.approx(
      history["train_loss"].tolist())
  # Off a terminal, at the default verbosity: one line per epoch.
  out = capsys.readouterr().out
  assert f"epoch 2/2: train loss {history['train_loss'][1]:.4f}  " \
      f"validation mse {mse[1]:.4f}" in out
