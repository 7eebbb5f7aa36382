"""Dict round trip of the frozen `Config` dataclasses of the model files."""

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
