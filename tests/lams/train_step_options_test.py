"""The LAM training step compiles with `xla_options.training_step`: the
options reach the compiler (they change the compiled program) and leave the
numbers alone (bitwise the parameters of XLA's defaults)."""

import jax
import jax.numpy as jnp
import numpy as np

from lary_jax import mesh as mesh_lib
from lary_jax import xla_options
from lary_jax.lams import lapa
from lary_jax.lams import train_lam

# The values XLA takes when these options are not given.
_XLA_DEFAULTS = {"xla_cpu_copy_insertion_use_region_analysis": False,
                 "xla_cpu_scheduler_type": "CPU_SCHEDULER_TYPE_DEFAULT"}


def test_options_by_platform():
  cpu = xla_options.training_step("cpu")
  assert set(cpu) == set(_XLA_DEFAULTS)
  assert xla_options.training_step("gpu") is None
  assert xla_options.training_step("tpu") is None


def test_lam_step_compiles_with_them_and_keeps_the_numbers():
  cfg = lapa.Config.sim_small(dim=32, image_size=28, patch_size=4,
                              spatial_depth=1, temporal_depth=1, dim_head=16,
                              heads=2)
  options = train_lam.Options(global_batch=8, lr=1e-3, schedule="constant",
                              compute_dtype="float32")
  mesh = mesh_lib.make_mesh()
  graphdef, state = train_lam.init_state(lapa, cfg, options, jnp.float32,
                                         mesh)
  step = train_lam.make_train_step(lapa, cfg, graphdef, state, options, mesh)
  images = np.random.default_rng(0).integers(0, 256, (8, 2, 28, 28, 3),
                                             dtype=np.uint8)
  lowered = step.lower(state, images, jnp.int32(0))
  built = lowered.compile()
  defaults = lowered.compile(compiler_options=_XLA_DEFAULTS)
  assert built.as_text() != defaults.as_text()

  def train(compiled):
    s = jax.tree.map(jnp.copy, state)  # the step donates its state
    for i in range(3):
      s, out = compiled(s, images, jnp.int32(i))
    return jax.tree.leaves(s) + [out["loss"]]

  for a, b in zip(train(built), train(defaults)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
