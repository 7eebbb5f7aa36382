"""Small splits held in memory train to the numbers of the streaming
pipeline: same batches (order), same steps, same evaluation."""

import numpy as np
import pytest

from lary_jax.probes import attentive_probe
from lary_jax.probes import in_memory
from lary_jax.probes import mlp_decoder
from lary_jax.probes import train_classifier as tc
from lary_jax.probes import train_regressor as tr
from lary_jax.data import pipeline as pl

CLASSES, T, N, D = 4, 2, 16, 8


def _rows(n, seed, target=False):
  rng = np.random.default_rng(seed)
  centres = np.random.default_rng(99).standard_normal((CLASSES, 1, 1, D))
  labels = np.arange(n) % CLASSES
  feats = (centres[labels] + rng.standard_normal((n, T, N, D))).astype(
      np.float16)
  if target:
    return [{"features": f, "target": np.float32([y, -y])}
            for f, y in zip(feats, labels)]
  return [{"features": f, "label": np.int32(y)} for f, y in zip(feats, labels)]


def test_epoch_indices_are_the_streams_order():
  order = pl.train_order(10, seed=3, labels=np.arange(10) % 2)
  ids = in_memory.epoch_indices(order, first_step=2, steps=3, global_batch=4)
  assert ids.shape == (3, 4)
  np.testing.assert_array_equal(ids.ravel(),
                                [order[p] for p in range(8, 20)])


def test_load_prepares_once_and_respects_the_budget():
  rows = _rows(5, 0)
  held = in_memory.load(rows, ("features", "label"), budget_mb=1,
                        prepare=lambda x: attentive_probe.pool_features(x, 2))
  assert held["features"].shape == (5, T, 4, D)
  np.testing.assert_array_equal(held["label"], np.arange(5) % CLASSES)
  assert in_memory.load(rows, ("features",), budget_mb=1e-4) is None
  assert in_memory.load(rows, ("features",), budget_mb=0) is None


@pytest.mark.parametrize("pool_grid", [0, 2])
def test_classifier_in_memory_equals_streaming(tmp_path, pool_grid):
  probe = attentive_probe.Config(dim=D, num_classes=CLASSES, model_dim=16,
                                 num_heads=2, depth=2, pool_grid=pool_grid)
  train = tc.Split(_rows(24, 0), np.arange(24) % CLASSES)
  evals = {"validation": tc.Split(_rows(10, 1), np.arange(10) % CLASSES)}
  runs = {}
  for name, budget in (("streaming", 0.0), ("held", 64.0)):
    options = tc.Options(epochs=2, min_updates=6, global_batch=8,
                         eval_batch=4, compute_dtype="float32",
                         heads=((1e-2, 0.01), (1e-3, 0.1)),
                         in_memory_mb=budget)
    runs[name] = tc.train(probe, train, evals, str(tmp_path / name), seed=1,
                          options=options, progress=False)
  assert runs["held"]["validation"].shape == (2, 2, 10, 4)
  np.testing.assert_array_equal(runs["held"]["validation"],
                                runs["streaming"]["validation"])
  np.testing.assert_allclose(runs["held"]["train_loss"],
                             runs["streaming"]["train_loss"], rtol=1e-5)


def test_regressor_in_memory_equals_streaming(tmp_path):
  decoder = tr.decoder_from_module(
      "mlp", mlp_decoder, lambda dim, seed, dtype: mlp_decoder.make(
          mlp_decoder.Config(dim, 2, hidden=16, blocks=1), seed=seed,
          dtype=dtype))
  train = tr.Split(_rows(24, 0, target=True))
  evals = {"validation": tr.Split(_rows(10, 1, target=True))}
  runs = {}
  for name, budget in (("streaming", 0.0), ("held", 64.0)):
    options = tr.Options(epochs=2, min_updates=6, global_batch=8,
                         eval_batch=4, pool_grid=2, in_memory_mb=budget)
    runs[name] = tr.train(decoder, (T, N, D), train, evals,
                          str(tmp_path / name), seed=1, options=options,
                          progress=False)
  np.testing.assert_allclose(runs["held"]["validation"],
                             runs["streaming"]["validation"], rtol=1e-5,
                             atol=1e-6)


def test_classifier_held_data_whose_step_does_not_fit_is_micro_batched(
    tmp_path, monkeypatch, caplog):
  # The protocol's case in small: the features fit `in_memory_mb`, but a
  # step over the whole batch does not fit the device. The device is given
  # what one example at a time needs (measured the way `classify` does): the
  # held epoch is refused and the stream runs micro-batches of one, to the
  # numbers of the held run (fp32 rounding apart).
  import jax  # pylint: disable=g-import-not-at-top
  from lary_jax.probes import fitted_steps  # pylint: disable=g-import-not-at-top
  from lary_jax.probes import memory_fit  # pylint: disable=g-import-not-at-top
  from lary_jax.probes import multi_head as mh  # pylint: disable=g-import-not-at-top
  probe = attentive_probe.Config(dim=D, num_classes=CLASSES, model_dim=16,
                                 num_heads=2, depth=1)
  rng = np.random.default_rng(0)
  labels = np.arange(16) % CLASSES
  centres = rng.standard_normal((CLASSES, 1, 1, D))
  feats = (centres[labels] + rng.standard_normal((16, T, N, D))).astype(
      np.float32)
  train = tc.Split([{"features": f, "label": np.int32(y)}
                    for f, y in zip(feats, labels)], labels)
  evals = {"validation": train}
  options = tc.Options(epochs=2, global_batch=8, eval_batch=8,
                       compute_dtype="float32",
                       heads=((1e-2, 0.01), (1e-3, 0.1)))
  held = tc.train(probe, train, evals, str(tmp_path / "held"), seed=1,
                  options=options, progress=False)

  graphdef, params = mh.init_heads(probe, 2, 1)
  step_options = mh.StepOptions(heads=options.heads, total_steps=4,
                                compute_dtype="float32")
  one = fitted_steps.TrainStep(
      graphdef, step_options, tc.mesh_lib.make_mesh(), params,
      mh.init_optimizer(params, step_options), 8,
      jax.ShapeDtypeStruct((T, N, D), np.float32), micro_batch=1).need
  monkeypatch.setattr(memory_fit, "device_budget",
                      lambda device, host_reserve=0, host_share=0.5: one)
  with caplog.at_level("INFO"):
    tight = tc.train(probe, train, evals, str(tmp_path / "tight"), seed=1,
                     options=options, progress=False)
  devices = jax.device_count()
  assert ("micro-batches of 1 (train, %d a step" % (8 // devices)
          in caplog.text), caplog.text
  np.testing.assert_allclose(tight["train_loss"], held["train_loss"],
                             rtol=1e-5)
  np.testing.assert_array_equal(tight["validation"][..., 0],
                                held["validation"][..., 0])


class _Counted(list):
  """Rows that count how often they are read."""

  reads = 0

  def __getitem__(self, i):
    self.reads += 1
    return super().__getitem__(i)


def test_store_reads_each_source_once_for_every_seed():
  train, val = _Counted(_rows(12, 0)), _Counted(_rows(5, 1))
  store = in_memory.Store(64.0)
  mesh = tc.mesh_lib.make_mesh()
  seen = []
  for ids, rest in (([0, 3, 5, 7, 9], [1, 2, 4, 6, 8, 10, 11]),
                    ([1, 2, 3], [0, 4, 5, 6, 7, 8, 9, 10, 11])):
    held = store.hold({
        "train": (in_memory.Rows(train, ids), tc.KEYS),
        "train_holdout": (in_memory.Rows(train, rest), tc.KEYS),
        "validation": (val, tc.KEYS)}, mesh)
    seen.append(held)
    np.testing.assert_array_equal(
        np.asarray(held["train"].arrays["label"])[
            held["train"].rows(np.arange(len(ids)))], np.asarray(ids) % 4)
    assert held["validation"].ids is None
  assert (train.reads, val.reads) == (12, 5)
  # One copy of the store's arrays, shared by the splits and the seeds.
  assert (seen[0]["train"].arrays["features"] is
          seen[1]["train_holdout"].arrays["features"])
  store.drop()
  assert store.hold({"validation": (val, tc.KEYS)}, mesh) is None


def test_store_refuses_what_does_not_fit_together():
  rows = _rows(8, 0)
  one = in_memory.load(rows, tc.KEYS, budget_mb=64.0)
  size = sum(a.nbytes for a in one.values()) / 2**20
  store = in_memory.Store(1.5 * size)
  mesh = tc.mesh_lib.make_mesh()
  assert store.hold({"train": (rows, tc.KEYS)}, mesh) is not None
  assert store.hold({"train": (rows, tc.KEYS),
                     "validation": (_rows(8, 1), tc.KEYS)}, mesh) is None


def test_seeds_sharing_a_store_train_as_on_their_own_rows(tmp_path):
  # Held as row ids of the whole store (one read for every seed), a seed's
  # training rows and held-out slice give the numbers, bit for bit, of the
  # same rows held on their own.
  probe = attentive_probe.Config(dim=D, num_classes=CLASSES, model_dim=16,
                                 num_heads=2, depth=1, pool_grid=2)
  rows, val = _rows(20, 0), _rows(6, 1)
  options = tc.Options(epochs=2, min_updates=4, global_batch=8, eval_batch=4,
                       compute_dtype="float32",
                       heads=((1e-2, 0.01), (1e-3, 0.1)))
  store = tc.held_store(probe, options)
  labels = np.arange(20) % CLASSES
  for seed, ids in ((0, np.arange(3, 20)), (1, np.arange(0, 20, 2))):
    rest = np.setdiff1d(np.arange(20), ids)
    runs = {}
    for name, (train, held_out) in {
        "shared": (in_memory.Rows(rows, ids), in_memory.Rows(rows, rest)),
        "own": ([rows[i] for i in ids], [rows[i] for i in rest])}.items():
      runs[name] = tc.train(
          probe, tc.Split(train, labels[ids]),
          {"validation": tc.Split(val, np.arange(6) % CLASSES),
           "train_holdout": tc.Split(held_out, labels[rest])},
          str(tmp_path / f"{name}{seed}"), seed=seed, options=options,
          progress=False, store=store if name == "shared" else None)
    for key in runs["own"]:
      np.testing.assert_array_equal(runs["shared"][key], runs["own"][key])
