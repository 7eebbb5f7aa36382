"""Configs: Python files whose `get_config()` returns an ml_collections ConfigDict.

Installed as the package `lary_jax.configs`; pass one with `--config=PATH`.
"""
