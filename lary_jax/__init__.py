"""lary-jax: the LARY benchmark in JAX/Flax."""

__version__ = "0.1.0"
