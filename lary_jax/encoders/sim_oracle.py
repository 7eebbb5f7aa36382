"""`sim_oracle`: LARY-Sim's ground truth as tokens, a positive control.

A frame's token is the robot's end-effector state at that frame, read from
what the simulator recorded (not from the pixels), in the robot's base frame,
where LARY-Sim's motion classes and robot-frame actions are defined:

  robot state [15] (LARY-Sim's CALVIN robot_obs layout: TCP xyz, TCP rpy,
  gripper width, 7 joints, gripper action)
  -> xyz scaled to the workspace, sin and cos of each angle, gripper width
     and action on [-1, 1], and two constants (+1, -1)
  -> one token [1, 13] per frame

Joints are left out: they differ between the seen and the unseen arm for
the same end-effector motion. The two constants keep the token invertible
under a LayerNorm over its features (the regression MLP's first layer),
which would otherwise drop each token's mean and scale.

Clips give [T, 1, 13] (T = 9 frames), pairs [2, 1, 13]: the layout of a
frame encoder's tokens, so extraction and both probes take it unchanged. A
probe that cannot learn from these tokens is broken; that is the point.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from lary_jax.encoders import contract
from lary_jax.errors import LaryError

# LARY-Sim's state layout (lary_jax/sim/layout.py STATE_DIMS).
STATE_DIM = 15
_POSITION, _ANGLES, _WIDTH, _GRIP_ACTION = slice(0, 3), slice(3, 6), 6, 14
# The reachable box of LARY-Sim's TCP (lary_jax/sim/motions.py): its centre
# and half size, so that positions land on about [-1, 1].
_CENTRE = (0.485, 0.0, 0.235)
_HALF = (0.185, 0.36, 0.215)
_MAX_WIDTH = 0.08  # the Panda's fully open gripper, metres
TOKEN_DIM = 13


class Oracle(nnx.Module):
  """[B, 15] robot states -> [B, 1, TOKEN_DIM] tokens (no parameters)."""

  def __call__(self, states: jax.Array) -> jax.Array:
    if states.shape[-1] != STATE_DIM:
      raise LaryError(f"sim_oracle reads {STATE_DIM}-d LARY-Sim robot "
                      f"states, got shape {states.shape}")
    states = states.astype(jnp.float32)
    position = (states[:, _POSITION] - jnp.asarray(_CENTRE)) / jnp.asarray(
        _HALF)
    angles = states[:, _ANGLES]
    width = 2.0 * states[:, _WIDTH:_WIDTH + 1] / _MAX_WIDTH - 1.0
    action = states[:, _GRIP_ACTION:_GRIP_ACTION + 1]
    ones = jnp.ones_like(action)
    token = jnp.concatenate([position, jnp.sin(angles), jnp.cos(angles),
                             width, action, ones, -ones], axis=-1)
    return token[:, None, :]


def sim_oracle_encoder(path: str | None = None, *, dtype: Any = jnp.float32):
  """The `sim_oracle` control (reads `states`, not frames; no checkpoint)."""
  del dtype  # exact ground truth: always float32
  if path is not None:
    raise LaryError(f"encoder 'sim_oracle' takes no checkpoint (got {path!r})")
  return contract.make_encoder(
      "sim_oracle", Oracle(), preprocess=_as_float, inputs="states",
      example=jax.ShapeDtypeStruct((STATE_DIM,), jnp.float32))


def _as_float(states: jax.Array) -> jax.Array:
  return states.astype(jnp.float32)
