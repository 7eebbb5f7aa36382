"""Config helpers of the model files: dict round trip, HF size fields."""

from __future__ import annotations

import dataclasses
from typing import Any

from lary_jax.errors import LaryError


class DictConfig:
  """Mixin: `to_dict()` and a `from_dict()` that refuses unknown fields.

  Converted checkpoints store `Config.to_dict()` as JSON; a field this
  version does not know means the checkpoint is from something else.
  """

  def to_dict(self) -> dict[str, Any]:
    return dataclasses.asdict(self)

  @classmethod
  def from_dict(cls, d: dict[str, Any]):
    unknown = set(d) - {f.name for f in dataclasses.fields(cls)}
    if unknown:
      model = cls.__module__.rsplit(".", 1)[-1]
      raise LaryError(f"{model} config: unknown field(s) {sorted(unknown)}")
    return cls(**d)


def square(value: Any, field: str) -> int:
  """An HF config size that may be `n` or `[n, n]`; non-square is refused."""
  if isinstance(value, (list, tuple)):
    if len(value) != 2 or value[0] != value[1]:
      raise LaryError(f"config.json: {field}={value} is not square")
    value = value[0]
  return int(value)
