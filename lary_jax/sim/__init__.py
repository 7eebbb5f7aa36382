"""LARY-Sim: a small LARY-format dataset rendered with PyBullet.

A domain package: it imports `data` (image and video writers) and the
bottom layer only; PyBullet is imported where a render starts.
"""

from lary_jax.sim.render import simulate

__all__ = ["simulate"]
