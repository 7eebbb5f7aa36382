"""The probes' train and eval steps, compiled at a size the device holds.

  global batch (fixed, e.g. 256) -> each device's share
  -> fits? one fused step (`multi_head.make_train_step`)
  -> else micro-batches of that share: gradients summed micro-batch by
     micro-batch (`make_grad_step`), then one AdamW update
     (`make_update_step`): the numbers of the big batch, to fp32 rounding

The micro-batch is the largest that `memory_fit` finds room for (or the
config's `micro_batch`). The micro-batches run one call each from Python,
so a caller can time the first ones (`on_micro`) long before a whole step
of a protocol-size probe on a CPU finishes.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from lary_jax.data import pipeline as pl
from lary_jax.probes import memory_fit
from lary_jax.probes import multi_head as mh

# On CPU a micro-batch of this many tokens already keeps the matmuls at
# full speed (M = 4096 rows); a larger one only takes memory from a host
# that others share, and makes the first timing come later.
CPU_MICRO_TOKENS = 4096
ADVICE = ("set a smaller probe (e.g. --config.classify.probe.pool_grid=4, "
          "not the protocol), or use more or larger devices")


def _share(mesh: Mesh, batch: int, micro_batch: int) -> int:
  """Rows of `batch` that each device gets, once they are known to split."""
  memory_fit.check_batches(mesh, "classify", batch, batch, micro_batch)
  return batch // mesh.devices.size


def _sizes(per_device: int, micro_batch: int, tokens: int,
           mesh: Mesh) -> list[int]:
  """Candidate micro-batches, largest first: `micro_batch` if set, else
  the divisors of a device's share (on CPU, none above CPU_MICRO_TOKENS
  tokens but the first that reaches it; `tokens` a example)."""
  if micro_batch > 0:
    return [micro_batch]
  sizes = memory_fit.divisors(per_device)
  if mesh.devices.flat[0].platform == "cpu":
    enough = [m for m in sizes if m * max(tokens, 1) >= CPU_MICRO_TOKENS]
    if enough:
      sizes = [m for m in sizes if m <= enough[-1]]
  return sizes


def _tokens(example: jax.ShapeDtypeStruct) -> int:
  return int(np.prod(example.shape[:-1]))


def _batch_spec(mesh: Mesh, rows: int, shape: tuple[int, ...],
                dtype: Any) -> jax.ShapeDtypeStruct:
  return jax.ShapeDtypeStruct((rows, *shape), dtype,
                              sharding=NamedSharding(mesh, P("data")))


class TrainStep:
  """One training step of every head on one global batch.

  step(params, opt_state, step, local_batch, on_micro=None) ->
      (params, opt_state, loss [H], correct [H], finite [H])

  `local_batch` is this process's rows ({"features", "label"} numpy);
  `on_micro(i, k, pending)` runs after micro-batch i of k has been
  dispatched; `pending` is its result, to block on for timing.

  Built with `micro_batch`: examples a device computes at once (0: the
  largest that fits); `host_reserve`: host bytes the rest of the run holds
  (the input pipelines' read-ahead, see `memory_fit.device_budget`);
  `tokens`: how many tokens an example is to the probe (default: the
  example's T x N).
  """

  def __init__(self, graphdef: nnx.GraphDef, options: mh.StepOptions,
               mesh: Mesh, params: Any, opt_state: Any, global_batch: int,
               example: jax.ShapeDtypeStruct, *, micro_batch: int = 0,
               host_reserve: int = 0, tokens: int = 0):
    self.mesh = mesh
    self.local_devices = len(mesh.local_devices)
    per_device = _share(mesh, global_batch, micro_batch)
    params_bytes = memory_fit.tree_bytes(params)
    state_bytes = memory_fit.tree_bytes(opt_state)
    step_spec = jax.ShapeDtypeStruct((), jnp.int32,
                                     sharding=NamedSharding(mesh, P()))

    def compile_at(micro):
      rows = micro * mesh.devices.size
      x = _batch_spec(mesh, rows, example.shape, example.dtype)
      y = _batch_spec(mesh, rows, (), jnp.int32)
      if micro == per_device:
        fused = mh.make_train_step(graphdef, options)
        return (fused.lower(params, opt_state, step_spec, x, y).compile(),
                params_bytes + state_bytes)
      sums = jax.eval_shape(mh.zero_sums, params)
      sums = jax.tree.map(lambda s: jax.ShapeDtypeStruct(
          s.shape, s.dtype, sharding=NamedSharding(mesh, P())), sums)
      grad = mh.make_grad_step(graphdef, options, global_batch)
      return grad.lower(params, sums, x, y).compile(), params_bytes

    self.micro, self._compiled, self.need = memory_fit.fit(
        compile_at, _sizes(per_device, micro_batch,
                           tokens or _tokens(example), mesh),
        memory_fit.device_budget(mesh.local_devices[0], host_reserve),
        "the classify train step", ADVICE)
    self.micro_steps = per_device // self.micro
    self._update = self._sums = None
    if self.micro_steps > 1:
      self._update = mh.make_update_step(options)
      self._sums = jax.jit(mh.zero_sums,
                           out_shardings=NamedSharding(mesh, P()))(params)

  def __call__(self, params: Any, opt_state: Any, step: int,
               local_batch: Mapping[str, np.ndarray],
               on_micro: Callable[[int, int, Any], None] | None = None
               ) -> tuple[Any, ...]:
    batch = {"features": local_batch["features"],
             "label": local_batch["label"]}
    step = jnp.int32(step)
    if self.micro_steps == 1:
      x = pl.to_device(batch, self.mesh)
      out = self._compiled(params, opt_state, step, x["features"],
                           x["label"])
      if on_micro:
        on_micro(0, 1, out)
      return out
    parts = memory_fit.micro_slices(batch, self.local_devices, self.micro)
    for i, part in enumerate(parts):
      x = pl.to_device(part, self.mesh)
      self._sums = self._compiled(params, self._sums, x["features"],
                                  x["label"])
      if on_micro:
        on_micro(i, len(parts), self._sums)
    *out, self._sums = self._update(params, opt_state, step, self._sums)
    return tuple(out)


class EvalStep:
  """Top-k class ids of every head, micro-batch by micro-batch.

  Cut a process's eval batch with `micro_batches`, then
  eval(params, part["features"]) -> [H, global micro-batch rows, k].
  """

  def __init__(self, graphdef: nnx.GraphDef, num_classes: int,
               head_batch: int, mesh: Mesh, params: Any, eval_batch: int,
               example: jax.ShapeDtypeStruct, *, micro_batch: int = 0,
               host_reserve: int = 0, tokens: int = 0):
    self.mesh = mesh
    self.local_devices = len(mesh.local_devices)
    per_device = _share(mesh, eval_batch, micro_batch)
    step = mh.make_eval_step(graphdef, num_classes, head_batch)
    params_bytes = memory_fit.tree_bytes(params)

    def compile_at(micro):
      x = _batch_spec(mesh, micro * mesh.devices.size, example.shape,
                      example.dtype)
      return step.lower(params, x).compile(), params_bytes

    self.micro, self._compiled, self.need = memory_fit.fit(
        compile_at, _sizes(per_device, micro_batch,
                           tokens or _tokens(example), mesh),
        memory_fit.device_budget(mesh.local_devices[0], host_reserve),
        "the classify eval step", ADVICE)

  def micro_batches(self, local_batch: Mapping[str, np.ndarray]
                    ) -> list[dict[str, np.ndarray]]:
    """`local_batch` cut into the micro-batches `__call__` takes."""
    return memory_fit.micro_slices(local_batch, self.local_devices,
                                   self.micro)

  def __call__(self, params: Any, features: np.ndarray | jax.Array
               ) -> jax.Array:
    """Top-k [H, global micro rows, k] of one micro-batch's features: this
    process's rows (numpy), or the global rows already on the devices,
    split over the `data` axis (`in_memory.predict`)."""
    if not isinstance(features, jax.Array):
      features = pl.to_device({"features": features}, self.mesh)["features"]
    return self._compiled(params, features)
