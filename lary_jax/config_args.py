"""`--config=NAME` and `--config.SECTION.FIELD=VALUE` on the command line.

    --config=laptop                  a config of the installed package
    --config=lam/lapa_sim            (lary_jax.configs, the repository's
    --config=configs/laptop.py        configs/ folder), from any directory
    --config=my_config.py            or any Python file with get_config()
    --config.classify.epochs=5       one field, parsed as the field's type

`split_argv` takes these arguments out of argv before the flags library sees
the rest; `load` builds the locked ConfigDict. Every mistake (no such config,
an unknown field, a value of the wrong type) is a `LaryError` naming it, with
the closest valid name where there is one.
"""

from __future__ import annotations

import ast
import difflib
import importlib
import importlib.util
import os
from collections.abc import Sequence
from typing import Any

import ml_collections

from lary_jax import configs
from lary_jax.errors import LaryError

DEFAULT = "default"
_PREFIX = "--config"


def split_argv(argv: Sequence[str]
               ) -> tuple[list[str], str | None, list[tuple[str, str]]]:
  """argv -> (argv without config arguments, --config, [(field, value)]).

  Accepts `--config=X`, `--config X`, `--config.a.b=V` and `--config.a.b V`.
  """
  rest, name, overrides = [], None, []
  args = list(argv)
  i = 0
  while i < len(args):
    arg = args[i]
    key, eq, value = arg.partition("=")
    if key == _PREFIX or key.startswith(_PREFIX + "."):
      if not eq:
        if i + 1 >= len(args):
          raise LaryError(f"{arg}: expected a value ({arg}=VALUE)")
        value = args[i + 1]
        i += 1
      if key == _PREFIX:
        name = value
      else:
        overrides.append((key[len(_PREFIX) + 1:], value))
    else:
      rest.append(arg)
    i += 1
  return rest, name, overrides


def available() -> list[str]:
  """The configs installed with the package, by name (`lam/lapa_sim`)."""
  root = os.path.dirname(configs.__file__)
  names = []
  for folder, _, files in os.walk(root):
    rel = os.path.relpath(folder, root)
    for f in files:
      if f.endswith(".py") and f != "__init__.py":
        names.append(os.path.normpath(os.path.join(rel, f[:-3])).replace(
            os.sep, "/"))
  return sorted(names)


def _module_name(name: str) -> str | None:
  """`laptop`, `lam/lapa_sim`, `configs/laptop.py` -> the package module."""
  stem = name[:-len(".py")] if name.endswith(".py") else name
  stem = stem.replace(os.sep, "/")
  if stem.startswith("configs/"):
    stem = stem[len("configs/"):]
  if stem in available():
    return "lary_jax.configs." + stem.replace("/", ".")
  return None


def _from_file(path: str) -> Any:
  spec = importlib.util.spec_from_file_location("lary_user_config", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def read(name: str, what: str = "--config") -> ml_collections.ConfigDict:
  """The config `name` (a file, or a name of `available()`), unlocked."""
  if os.path.isfile(name):
    try:
      module = _from_file(name)
    except Exception as e:  # pylint: disable=broad-exception-caught
      # The user's own file: its mistake in one line, where it is.
      line = getattr(e, "lineno", None)
      where = f"{name}, line {line}" if line else name
      raise LaryError(f"{what}={name}: {where}: {type(e).__name__}: "
                      f"{e}") from None
  else:
    module_name = _module_name(name)
    if module_name is None:
      raise LaryError(f"{what}={name}: no such file, and no config of that "
                      f"name; configs: {', '.join(available())} (or a .py "
                      "file with get_config())")
    module = importlib.import_module(module_name)
  if not callable(getattr(module, "get_config", None)):
    raise LaryError(f"{what}={name}: {module.__file__} has no get_config()")
  config = module.get_config()
  if not isinstance(config, ml_collections.ConfigDict):
    raise LaryError(f"{what}={name}: get_config() returned "
                    f"{type(config).__name__}, not a ConfigDict")
  return config


def load(name: str | None, overrides: Sequence[tuple[str, str]] = ()
         ) -> ml_collections.ConfigDict:
  """The config `name` (default: `default`) with `overrides`, locked."""
  config = read(name or DEFAULT)
  for field, value in overrides:
    override(config, field, value)
  config.lock()
  return config


def override(config: ml_collections.ConfigDict, field: str,
             text: str) -> None:
  """Sets `config.<field>` from command-line text, as the field's type."""
  node = config
  parts = field.split(".")
  for depth, part in enumerate(parts):
    keys = list(node.keys()) if isinstance(node, ml_collections.ConfigDict) \
        else []
    if part not in keys:
      where = ".".join(parts[:depth]) or "the config"
      close = difflib.get_close_matches(part, keys, n=1)
      hint = (f"; did you mean --config.{'.'.join(parts[:depth] + close)}?"
              if close else f"; {where} has {', '.join(sorted(keys))}"
              if keys else f"; {where} is a value, not a section")
      raise LaryError(f"--config.{field}: unknown field {part!r}{hint}")
    if depth < len(parts) - 1:
      node = node[part]
  old = node[parts[-1]]
  if isinstance(old, ml_collections.ConfigDict):
    raise LaryError(f"--config.{field} is a section; set one of its fields "
                    f"({', '.join(sorted(old.keys()))})")
  node[parts[-1]] = _parse(field, text, old)


def _parse(field: str, text: str, old: Any) -> Any:
  """`text` as a value of `old`'s type."""
  def bad(expected: str) -> LaryError:
    return LaryError(f"--config.{field}={text}: expected {expected} (the "
                     f"config has {old!r})")

  if isinstance(old, bool):
    lowered = text.strip().lower()
    if lowered in ("true", "1", "yes"):
      return True
    if lowered in ("false", "0", "no"):
      return False
    raise bad("True or False")
  if isinstance(old, int):
    try:
      return int(text)
    except ValueError:
      raise bad("an integer") from None
  if isinstance(old, float):
    try:
      return float(text)
    except ValueError:
      raise bad("a number") from None
  if isinstance(old, str):
    return text
  if isinstance(old, (tuple, list)):
    try:
      value = ast.literal_eval(text)
    except (ValueError, SyntaxError):
      raise bad(f"a Python {type(old).__name__}") from None
    if not isinstance(value, (tuple, list)):
      raise bad(f"a Python {type(old).__name__}")
    return type(old)(value)
  # A field without a typed default (None): a Python literal, else text.
  try:
    return ast.literal_eval(text)
  except (ValueError, SyntaxError):
    return text
