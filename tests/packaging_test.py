"""pyproject.toml lists every package by hand (configs/ installs as
lary_jax.configs): a new package folder must be listed, or a non-editable
install leaves it out."""

import os
import pathlib
import tomllib

ROOT = pathlib.Path(__file__).resolve().parents[1]


def test_every_package_folder_is_listed_in_pyproject():
  listed = set(tomllib.loads((ROOT / "pyproject.toml").read_text())
               ["tool"]["setuptools"]["packages"])
  found = set()
  for top, name in (("lary_jax", "lary_jax"), ("configs", "lary_jax.configs"),
                    ("tfds_builders", "tfds_builders")):
    for init in (ROOT / top).rglob("__init__.py"):
      rel = init.parent.relative_to(ROOT / top)
      found.add(".".join([name, *rel.parts]))
  assert found - listed == set()
  assert all(os.path.isdir(ROOT / p.replace("lary_jax.configs", "configs")
                           .replace(".", "/")) for p in listed)
