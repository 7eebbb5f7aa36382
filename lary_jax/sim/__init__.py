"""LARY-Sim: a small LARY-format dataset rendered with PyBullet."""

from lary_jax.sim.render import simulate

__all__ = ["simulate"]
