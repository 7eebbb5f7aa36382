"""LARYBench metadata CSVs: schemas, path resolution and row-level checks.

One table (`DATASETS`) says, for every dataset, which CSVs exist, which columns
they hold, where their relative paths resolve inside DATA_DIR (exactly as
upstream's `lary/path_resolver.py` and `regression/main.py` resolve them) and
what an action chunk looks like. `check` and `prepare` both read CSVs through
`read_split`, so they report the same problems in the same words.
"""

from __future__ import annotations

import csv
import dataclasses
import os
import re
from typing import Iterator, Literal

from lary_jax.errors import LaryError

Kind = Literal["classification", "regression"]

# Our split names and the upstream CSV split names they are read from.
SPLITS: dict[str, tuple[str, ...]] = {
    "train": ("train", "seen_train"),
    "validation": ("val", "seen_val"),
    "unseen": ("unseen",),
}

_REGRESSION_PAIR = ("src_img", "tgt_img", "action")
# LARY-Sim's clips also name their per-frame robot states (not upstream's).
_STATE_PATH = ("state_path",)
_CALVIN_COLUMNS = (
    "dataset", "type", "perspective", "src_img", "src_state", "tgt_img",
    "tgt_state", "action",
)


@dataclasses.dataclass(frozen=True)
class DatasetSpec:
  """How one LARYBench dataset is laid out on disk.

  Attributes:
    name: our dataset name, as `--dataset` takes it.
    kind: "classification" (videos) or "regression" (image pairs).
    config: the config of `lary_classification` / `lary_regression` that
      holds it (equal to `name` except for LARY-Sim's two halves).
    csv_stem: CSVs are `{csv_stem}_metadata_{upstream_split}.csv`.
    columns: the CSV header, in upstream's order.
    optional_columns: columns that may also appear (e.g. `la_path`).
    root: path of the data root below DATA_DIR.
    split_dirs: upstream split -> extra directory below `root`.
    column_dirs: column -> directory that upstream inserts when the CSV path
      does not already contain it (upstream's `resolve_under_root`).
    stride: steps in an action chunk (regression).
    action_dim: size of one action step (regression).
    stats: where the action normalisation comes from: "fixed" (upstream's
      constants), "per_robot" (train stats per `robot_type`) or "train".
    stats_file: upstream's per-robot stats JSON, relative to `root`.
    extra_columns_ok: whether unknown columns are tolerated. Regression
      schemas are known exactly from upstream's CSVs; for classification
      upstream promises only "at least" its columns, so extras are ignored.
    label_action: the `action` column is a class name, not a `.npy` path.
    clip_source: how a clip's source video follows from its `video_path`
      (`source_video`): "path" (every clip is a video of its own) or
      "clip_index" (upstream's cut clips, `<source>_<index>[_rev].mp4`).
  """

  name: str
  kind: Kind
  config: str
  csv_stem: str
  columns: tuple[str, ...]
  root: tuple[str, ...]
  optional_columns: tuple[str, ...] = ("la_path",)
  split_dirs: dict[str, str] = dataclasses.field(default_factory=dict)
  column_dirs: dict[str, str] = dataclasses.field(default_factory=dict)
  stride: int | None = None
  action_dim: int | None = None
  stats: Literal["fixed", "per_robot", "train", "none"] = "none"
  stats_file: str | None = None
  extra_columns_ok: bool = False
  label_action: bool = False
  clip_source: Literal["path", "clip_index"] = "path"

  @property
  def required_columns(self) -> tuple[str, ...]:
    if self.kind == "classification":
      return ("video_path", "action") + _STATE_PATH[:self.has_states]
    return tuple(c for c in self.columns if c in _REGRESSION_PAIR + (
        "src_state", "tgt_state", "robot_type"))

  @property
  def nonempty_columns(self) -> tuple[str, ...]:
    """Columns every row must fill (an empty `robot_type` is allowed)."""
    return tuple(c for c in self.required_columns if c != "robot_type")

  @property
  def path_columns(self) -> tuple[str, ...]:
    if self.kind == "classification":
      return ("video_path",) + _STATE_PATH[:self.has_states]
    cols = ("src_img", "tgt_img", "src_state", "tgt_state")
    if not self.label_action:
      cols += ("action",)
    return tuple(c for c in cols if c in self.columns)

  @property
  def has_states(self) -> bool:
    """Rows name robot states: a pair's (regression, CALVIN schema), or a
    clip's per-frame ground truth (LARY-Sim classification)."""
    return "src_state" in self.columns or _STATE_PATH[0] in self.columns

  def csv_name(self, upstream_split: str) -> str:
    return f"{self.csv_stem}_metadata_{upstream_split}.csv"

  def data_root(self, data_dir: str, upstream_split: str) -> str:
    root = os.path.join(data_dir, *self.root)
    sub = self.split_dirs.get(upstream_split)
    return os.path.join(root, sub) if sub else root


def _regression(name, csv_stem, columns, root, stride, action_dim, stats,
                **kw) -> DatasetSpec:
  kw.setdefault("config", name)
  return DatasetSpec(name=name, kind="regression", csv_stem=csv_stem,
                     columns=columns, root=root, stride=stride,
                     action_dim=action_dim, stats=stats, **kw)


_IMAGES_ACTIONS = {"src_img": "images", "tgt_img": "images", "action": "actions"}

DATASETS: dict[str, DatasetSpec] = {
    spec.name: spec for spec in (
        _regression(
            "calvin", "calvin", _CALVIN_COLUMNS, ("regression", "calvin"),
            stride=5, action_dim=7, stats="fixed",
            split_dirs={"train": "train_stride5", "val": "val_stride5"},
            column_dirs=_IMAGES_ACTIONS),
        _regression("vlabench", "vlabench", _CALVIN_COLUMNS,
                    ("regression", "vlabench"), 5, 7, "fixed"),
        _regression("vlabench_15", "vlabench_15", _CALVIN_COLUMNS,
                    ("regression", "vlabench"), 15, 7, "fixed"),
        _regression("vlabench_30", "vlabench_30", _CALVIN_COLUMNS,
                    ("regression", "vlabench"), 30, 7, "fixed"),
        _regression(
            "agibotbeta", "agibotbeta",
            ("dataset", "task_id", "episode_id", "perspective", "robot_type",
             "src_img", "tgt_img", "action"),
            ("regression", "agibot_45"), 45, 16, "per_robot",
            stats_file="agibotbeta_stats.json", column_dirs=_IMAGES_ACTIONS),
        _regression(
            "robocoin", "robocoin",
            ("dataset", "robot_type", "perspective", "src_img", "tgt_img",
             "action"),
            ("regression", "robocoin_10"), 10, 12, "per_robot",
            stats_file="robocoin_stats.json", column_dirs=_IMAGES_ACTIONS),
        _regression("libero", "libero", ("src_img", "tgt_img", "action"),
                    ("classification", "LIBERO"), None, None, "none",
                    label_action=True),
        _regression("sim_regression", "sim_regression", _CALVIN_COLUMNS,
                    ("regression", "lary_sim"), 5, 7, "train", config="sim"),
        DatasetSpec(
            name="human_1st", kind="classification", config="human_1st",
            csv_stem="human_1st",
            columns=("dataset", "video_path", "action", "sample_indices"),
            root=("classification",), extra_columns_ok=True,
            clip_source="clip_index"),
        DatasetSpec(
            name="robot_1st", kind="classification", config="robot_1st",
            csv_stem="robot_1st",
            columns=("dataset", "video_path", "action", "sample_indices"),
            root=("classification",), extra_columns_ok=True,
            clip_source="clip_index"),
        DatasetSpec(
            name="sim_classification", kind="classification", config="sim",
            csv_stem="sim_classification",
            columns=("dataset", "video_path", "action") + _STATE_PATH,
            root=("classification",),
            optional_columns=("la_path", "sample_indices")),
    )
}

# Names that stand for several datasets on the command line.
ALIASES: dict[str, tuple[str, ...]] = {
    "sim": ("sim_classification", "sim_regression"),
}


_CLIP_SUFFIX = re.compile(r"(_\d+)?(_rev)?$")


def source_video(spec: DatasetSpec, video_path: str) -> str:
  """The source video a clip was cut from, for grouping clips.

  Upstream cuts Human_1st clips as `SSv2/<video>_<line>[_rev].mp4` and
  `EgoDex/<name>/<video>_<line>[_rev].mp4` (utils/prepare_ssv2_egodex.py),
  a reversed copy beside its clip: such clips share `<video>` and must not
  be split between a training set and a held-out slice. LARY-Sim's clips
  are videos of their own.
  """
  path = video_path.replace("\\", "/")
  if spec.clip_source == "path":
    return path
  stem, _ = os.path.splitext(path)
  folder, name = os.path.split(stem)
  return os.path.join(folder, _CLIP_SUFFIX.sub("", name) or name)


def is_sim(spec: DatasetSpec) -> bool:
  """Whether `spec` is one of LARY-Sim's datasets (rendered, not LARYBench)."""
  return spec.config == "sim"


def tfds_name(spec: DatasetSpec) -> str:
  """The registered TFDS name, e.g. `lary_regression/calvin`."""
  return f"lary_{spec.kind}/{spec.config}"


def specs_of_kind(kind: Kind) -> list[DatasetSpec]:
  return [s for s in DATASETS.values() if s.kind == kind]


def resolve_datasets(names: str, stride: int | None = None
                     ) -> list[DatasetSpec]:
  """Turns `--dataset` (comma-separated, aliases allowed) into specs.

  `--dataset vlabench --stride 15` means `vlabench_15`, as upstream's CLI.
  """
  specs = []
  for name in (n.strip() for n in names.split(",") if n.strip()):
    if stride is not None and f"{name}_{stride}" in DATASETS:
      name = f"{name}_{stride}"
    for full in ALIASES.get(name, (name,)):
      if full not in DATASETS:
        raise LaryError(f"unknown dataset {name!r}; expected one of "
                        f"{sorted(set(DATASETS) | set(ALIASES))}")
      spec = DATASETS[full]
      if stride is not None and spec.stride not in (None, stride):
        raise LaryError(f"dataset {full} has stride {spec.stride}, not "
                        f"--stride {stride}")
      specs.append(spec)
  if not specs:
    raise LaryError("--dataset is empty; name at least one dataset")
  return specs


@dataclasses.dataclass(frozen=True)
class BadRow:
  """One problem with one CSV line (line 1 is the header)."""

  csv: str
  line: int
  path: str
  reason: str

  def __str__(self) -> str:
    where = f" {self.path}:" if self.path else ""
    return f"{self.csv}:{self.line}:{where} {self.reason}"


@dataclasses.dataclass(frozen=True)
class Row:
  """A CSV row that passed the text-level checks, its paths resolved."""

  csv: str
  line: int
  fields: dict[str, str]
  paths: dict[str, str]  # column -> absolute path inside the data root

  def bad(self, reason: str, column: str | None = None) -> BadRow:
    path = self.fields.get(column, "") if column else ""
    return BadRow(self.csv, self.line, path, reason)


def resolve_path(root: str, value: str, column_dir: str | None = None, *,
                 allow_absolute: bool = False) -> str:
  """Resolves a CSV path against its data root, refusing to leave the root.

  Upstream joins `root/column_dir/value` unless `value` already contains
  `column_dir` as a component (then `root/value`).

  Raises:
    ValueError: the path is absolute (unless allowed) or contains `..`.
  """
  value = value.replace("\\", "/")
  if os.path.isabs(value):
    if not allow_absolute:
      raise ValueError("absolute path not allowed (it must be relative to "
                       f"{root})")
    return os.path.normpath(value)
  parts = value.split("/")
  if ".." in parts:
    raise ValueError(f"path escapes the data root {root} ('..')")
  if column_dir and column_dir not in parts:
    return os.path.join(root, column_dir, *parts)
  return os.path.join(root, *parts)


def find_csvs(spec: DatasetSpec, metadata_dir: str) -> dict[str, str]:
  """Returns {our split: CSV path} for the splits whose CSV exists."""
  found = {}
  for split, upstream_names in SPLITS.items():
    for upstream in upstream_names:
      path = os.path.join(metadata_dir, spec.csv_name(upstream))
      if os.path.exists(path):
        if split in found:
          raise LaryError(
              f"both {found[split]} and {path} give the {split} split of "
              f"{spec.name}; keep one")
        found[split] = path
  if not found:
    expected = [spec.csv_name(u) for names in SPLITS.values() for u in names]
    raise LaryError(f"no metadata CSV for {spec.name} in {metadata_dir}; "
                    f"expected one of {expected}")
  return found


def upstream_split(csv_path: str, spec: DatasetSpec) -> str:
  stem = os.path.basename(csv_path).removesuffix(".csv")
  return stem.removeprefix(f"{spec.csv_stem}_metadata_")


def read_split(spec: DatasetSpec, csv_path: str, data_dir: str, *,
               allow_absolute: bool = False
               ) -> tuple[list[Row], list[BadRow]]:
  """Reads one metadata CSV: text-level checks and path resolution.

  Files are not opened here (the loaders do that in worker processes); this
  catches what can be seen in the CSV itself: a wrong header, lines with the
  wrong number of fields, empty required fields, malformed `sample_indices`,
  and paths that leave the data root.

  Returns:
    The good rows and the problems, both in file order.
  """
  name = os.path.basename(csv_path)
  root = spec.data_root(data_dir, upstream_split(csv_path, spec))
  try:
    with open(csv_path, newline="", encoding="utf-8") as f:
      lines = list(csv.reader(f))
  except (OSError, UnicodeDecodeError, csv.Error) as e:
    raise LaryError(f"cannot read {csv_path}: {e}") from None
  if not lines:
    raise LaryError(f"{csv_path} is empty; expected a header line "
                    f"{','.join(spec.columns)}")
  header = [c.strip() for c in lines[0]]
  problems = _check_header(spec, name, header)
  if any(p.line == 1 and "missing" in p.reason for p in problems):
    return [], problems
  rows = []
  for line_no, values in enumerate(lines[1:], start=2):
    if not values or all(not v.strip() for v in values):
      continue  # blank line
    if len(values) != len(header):
      problems.append(BadRow(
          name, line_no, "", f"malformed CSV line: {len(values)} fields, "
          f"header has {len(header)}"))
      continue
    fields = dict(zip(header, (v.strip() for v in values)))
    row_or_problem = _resolve_row(spec, name, line_no, fields, root,
                                  allow_absolute)
    (problems if isinstance(row_or_problem, BadRow) else rows).append(
        row_or_problem)
  return rows, problems


def _check_header(spec: DatasetSpec, name: str,
                  header: list[str]) -> list[BadRow]:
  problems = []
  missing = [c for c in spec.required_columns if c not in header]
  if missing:
    problems.append(BadRow(name, 1, "", f"missing column(s) {missing}; "
                           f"expected header {','.join(spec.columns)}"))
  known = set(spec.columns) | set(spec.optional_columns)
  unknown = [c for c in header if c not in known]
  if unknown and not spec.extra_columns_ok:
    problems.append(BadRow(name, 1, "", f"unknown column(s) {unknown}; "
                           f"expected header {','.join(spec.columns)}"))
  if len(set(header)) != len(header):
    problems.append(BadRow(name, 1, "", "duplicate column names in header"))
  return problems


def _resolve_row(spec, name, line_no, fields, root,
                 allow_absolute) -> Row | BadRow:
  for column in spec.nonempty_columns:
    if not fields.get(column):
      path = fields.get(column, "")
      return BadRow(name, line_no, path, f"empty {column}")
  if spec.kind == "classification" and fields.get("sample_indices"):
    try:
      parse_indices(fields["sample_indices"])
    except ValueError as e:
      return BadRow(name, line_no, fields["video_path"], str(e))
  paths = {}
  for column in spec.path_columns:
    value = fields.get(column, "")
    if not value:
      continue
    try:
      paths[column] = resolve_path(root, value, spec.column_dirs.get(column),
                                   allow_absolute=allow_absolute)
    except ValueError as e:
      return BadRow(name, line_no, value, f"{column}: {e}")
  return Row(name, line_no, fields, paths)


def parse_indices(text: str, count: int = 9) -> list[int]:
  """Parses upstream's `sample_indices` ("3,7,12,...", `count` ids >= 0)."""
  try:
    ids = [int(t) for t in text.replace(" ", "").strip("[]").split(",")]
  except ValueError:
    raise ValueError(f"malformed sample_indices {text!r}: expected {count} "
                     "comma-separated frame ids") from None
  if len(ids) != count or min(ids) < 0:
    raise ValueError(f"malformed sample_indices {text!r}: expected {count} "
                     "comma-separated frame ids >= 0")
  return ids


def iter_splits(spec: DatasetSpec, metadata_dir: str, data_dir: str, *,
                allow_absolute: bool = False
                ) -> Iterator[tuple[str, list[Row], list[BadRow]]]:
  """Yields (split, rows, problems) for every split that has a CSV."""
  for split, csv_path in find_csvs(spec, metadata_dir).items():
    rows, problems = read_split(spec, csv_path, data_dir,
                                allow_absolute=allow_absolute)
    yield split, rows, problems
