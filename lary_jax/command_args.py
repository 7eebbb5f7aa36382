"""What the commands that `run` chains are given, as typed arguments.

  absl flags (main.py) -> `from_flags(ExtractArgs, flags)` -> a command of
  commands.py; `run` (benchmark_run.py) builds the same dataclasses with its
  own values and calls those commands as functions.
  config section (configs/) -> `from_config(extract.Options, config.extract)`
  -> the options a stage takes.

Each field has the name and meaning of the flag it comes from; a field
`<flag>_given` says whether --<flag> was on the command line.
"""

from __future__ import annotations

import dataclasses
from typing import Any, TypeVar

_GIVEN = "_given"

Args = TypeVar("Args")


@dataclasses.dataclass(frozen=True)
class SimulateArgs:
  """`simulate`: render LARY-Sim into `out`."""

  out: str | None
  tiny: bool
  seed: int


@dataclasses.dataclass(frozen=True)
class PrepareArgs:
  """`prepare`: every `dataset` of `data_dir` into `tfds_dir`."""

  dataset: str | None
  data_dir: str | None
  tfds_dir: str | None
  workdir: str
  stride: int | None
  metadata_dir: str | None
  skip_bad_rows: bool


@dataclasses.dataclass(frozen=True)
class ProcessArgs:
  """The multi-host run a device command joins (all None: one process)."""

  coordinator_address: str | None
  num_processes: int | None
  process_id: int | None


@dataclasses.dataclass(frozen=True)
class ExtractArgs(ProcessArgs):
  """`extract`: `model`'s features of `dataset` (every split, or `split`).

  `label`: the name the features are filed under (features/, the store's
  manifest), where it is not `model` (a --models_dir folder, the run's LAM).
  """

  model: str | None
  checkpoint: str | None
  dataset: str | None
  split: str | None
  mode: str | None
  out: str | None
  workdir: str
  tfds_dir: str | None
  data_dir: str | None
  metadata_dir: str | None
  stride: int | None
  export_npz: bool
  la_dir: str | None
  csv: str | None
  label: str | None = None

  @property
  def store_name(self) -> str | None:
    return self.label or self.model


@dataclasses.dataclass(frozen=True)
class ProbeArgs(ProcessArgs):
  """What `classify` and `regress` share: whose features, where, seeds."""

  model: str | None
  dataset: str | None
  seeds: str | None
  seed: int
  seed_given: bool
  out: str | None  # where the features are (default <workdir>/features)
  workdir: str
  tfds_dir: str | None
  stride: int | None


@dataclasses.dataclass(frozen=True)
class ClassifyArgs(ProbeArgs):
  """`classify`: the attentive probes (`dim`, `classes`: checks or None)."""

  dim: int | None
  classes: int | None


@dataclasses.dataclass(frozen=True)
class RegressArgs(ProbeArgs):
  """`regress`: one decoder (`model_type`) on one `action_mode`."""

  model_type: str
  action_mode: str


@dataclasses.dataclass(frozen=True)
class ReportArgs:
  """`report`: every result of `workdir`, `published` numbers beside."""

  workdir: str
  published: str | None


def from_flags(cls: type[Args], flags: Any) -> Args:
  """`cls` with every field read from the flag of its name.

  Args:
    cls: one of the dataclasses above.
    flags: absl's parsed flags (`flags.FLAGS`), or any object with the
      flags as attributes.

  Returns:
    The arguments; a field `<flag>_given` is whether --<flag> was given, a
    field with a default and no flag of its name keeps the default.
  """
  values = {}
  for field in dataclasses.fields(cls):
    if field.name.endswith(_GIVEN):
      values[field.name] = flags[field.name[:-len(_GIVEN)]].present
    elif hasattr(flags, field.name) or field.default is dataclasses.MISSING:
      values[field.name] = getattr(flags, field.name)
  return cls(**values)


Options = TypeVar("Options")


def from_config(cls: type[Options], section: Any, **given: Any) -> Options:
  """A stage's options: each field of the dataclass `cls` that the config
  `section` holds, then `given` over them (values the command computes or
  converts); a field the section lacks keeps its default."""
  values = {f.name: section[f.name] for f in dataclasses.fields(cls)
            if f.name in section}
  values.update(given)
  return cls(**values)
