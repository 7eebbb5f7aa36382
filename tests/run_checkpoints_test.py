"""A run's orbax checkpoint: state alone or with a grain iterator, threads."""

import os
from concurrent import futures

import grain
import jax.numpy as jnp
import numpy as np

from lary_jax import run_checkpoints

KILL_ENV = "LARY_TEST_KILL_NEVER"


def _stream(seed: int = 0):
  """An endless shuffled stream of 0..9, checkpointable as train_lam's."""
  ds = grain.MapDataset.range(10).shuffle(seed=seed).repeat(None)
  return iter(ds.to_iter_dataset())


def test_state_alone_resumes_from_the_latest(tmp_path):
  ckpt = run_checkpoints.Checkpoints(str(tmp_path), kill_env=KILL_ENV)
  assert ckpt.restore({"w": jnp.zeros((3,))})[0] == 0
  for done in (1, 2):
    ckpt.save(done, {"w": jnp.full((3,), float(done))})
  ckpt.close()
  # The probes' layout: one item, the latest kept.
  assert sorted(os.listdir(tmp_path / "checkpoints")) == ["2"]
  again = run_checkpoints.Checkpoints(str(tmp_path), kill_env=KILL_ENV)
  done, state = again.restore({"w": jnp.zeros((3,))})
  again.close()
  assert done == 2 and state["w"].tolist() == [2.0, 2.0, 2.0]


def test_iterator_reads_on_from_its_saved_position(tmp_path):
  stream = _stream()
  ckpt = run_checkpoints.Checkpoints(str(tmp_path), kill_env=KILL_ENV,
                                     iterator=stream)
  head = [int(next(stream)) for _ in range(13)]
  ckpt.save(13, {"w": jnp.arange(4.0)})
  rest = [int(next(stream)) for _ in range(9)]
  ckpt.close()
  # train_lam's layout: items "state" and "data" of each checkpoint.
  assert {"state", "data"} <= set(os.listdir(tmp_path / "checkpoints" / "13"))

  fresh = _stream()
  again = run_checkpoints.Checkpoints(str(tmp_path), kill_env=KILL_ENV,
                                      iterator=fresh)
  done, state = again.restore({"w": jnp.zeros((4,))})
  again.close()
  assert done == 13
  np.testing.assert_array_equal(state["w"], np.arange(4.0))
  assert [int(next(fresh)) for _ in range(9)] == rest
  assert rest != head[:9]  # the stream moved on; not its start again


def test_checkpoints_of_two_threads_at_once(tmp_path):
  """`run` trains two probe stages in threads; orbax's per-operation signals
  of two managers saving at once once hung until a 300 s timeout (within
  ~25 saves each, without the module's lock)."""
  def train(name):
    ckpt = run_checkpoints.Checkpoints(str(tmp_path / name),
                                       kill_env=KILL_ENV)
    for epoch in range(1, 26):
      ckpt.save(epoch, {"w": jnp.full((8,), float(epoch))})
    epochs, state = ckpt.restore({"w": jnp.zeros((8,))})
    ckpt.close()
    return epochs, float(state["w"][0])

  with futures.ThreadPoolExecutor(2) as pool:
    done = [pool.submit(train, n) for n in ("a", "b")]
    assert [f.result(timeout=120) for f in done] == [(25, 25.0)] * 2
