"""Feature extraction: a prepared split -> an encoder on every device -> store.

  records (grain, each process its rows of every global batch; eval padding)
  -> global uint8 batch sharded over the `data` mesh axis
  -> encoder under jit, in fixed micro-batches on each device
  -> storage dtype on the device -> each process's rows -> its own shards

What a row's features are depends only on the global batch and the micro
batch, never on how many devices or processes computed them: the global order
is fixed before any split between processes, and every device runs the
encoder on chunks of exactly `micro_batch` examples, the same chunks however
the batch is spread. (XLA picks kernels by shape, so encoding 16 examples at
once and 2 x 8 can differ in the last bits; `micro_batch=0` encodes each
device's whole share at once, faster on some accelerators but then bitwise
results depend on the device count.)

Work is cut into shards of whole global batches. A run first checks what an
earlier run left (checksums), skips every finished shard, and redoes the
rest, so a killed run resumes to exactly the result of an uninterrupted one.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import hashlib
import logging
import math
import os
import signal
import time
import weakref
from collections.abc import Callable, Collection, Mapping, Sequence
from typing import Any

import grain
import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from lary_jax import atomic_io
from lary_jax import feature_store as fs
from lary_jax import mesh as mesh_lib
from lary_jax import progress as progress_lib
from lary_jax import xla_options
from lary_jax.data import pipeline as pl
from lary_jax.errors import LaryError

_log = logging.getLogger(__name__)

IMAGE_SIZE = 224
IDENTITY_WIDTH = 1024  # bytes of a record identity inside a numeric batch
# Test hook: a process SIGKILLs itself once it has written this many shards.
KILL_AFTER_SHARDS_ENV = "LARY_EXTRACT_KILL_AFTER_SHARDS"


@dataclasses.dataclass(frozen=True)
class Mode:
  """What one example is in a mode, and where it comes from."""

  kind: str  # the dataset kind it reads
  frames: int  # frames per example
  identity_key: str  # record key naming the example
  unit: str  # what the progress bar counts
  frame_keys: tuple[str, ...]  # record keys of the squashed 224 frames
  state_keys: tuple[str, ...]  # record keys of the robot states, if any

  def transforms(self, frame_keys: Sequence[str], cache_mb: float = 0.0
                 ) -> tuple[grain.transforms.Map, ...]:
    """Decodes `frame_keys` (this mode's, a view's, or the states) into
    `frames`, keeping up to `cache_mb` of decoded frames for the process."""
    if tuple(frame_keys) == self.state_keys:
      decode = pl.StackArrays(keys=self.state_keys, out_key="frames")
    elif self.kind == "classification":
      (key,) = frame_keys
      decode = pl.DecodeFrames(key=key, num_frames=self.frames,
                               image_size=IMAGE_SIZE, out_key="frames",
                               cache_mb=cache_mb)
    else:
      src, tgt = frame_keys
      decode = pl.DecodePair(src_key=src, tgt_key=tgt, out_key="frames",
                             image_size=IMAGE_SIZE, cache_mb=cache_mb)
    return (decode, IdentityBytes(self.identity_key))


MODES = {
    # The clip's 9 sampled frames.
    "video": Mode("classification", 9, fs.IDENTITY_KEYS["video"], "clip",
                  ("frames",), ("states",)),
    # The row's (source, target) image pair.
    "image": Mode("regression", 2, fs.IDENTITY_KEYS["image"], "pair",
                  ("src_image", "tgt_image"), ("src_state", "tgt_state")),
}
# config.extract.frames: "model" reads the encoder's own view where it has
# one (`Encoder.frames_view`), "squashed" the 224 x 224 frames for any model.
FRAMES = ("model", "squashed")


def frame_keys(encoder: Any, mode: str, frames: str = "model"
               ) -> tuple[str, ...]:
  """The record keys whose frames `encoder` reads in `mode`.

  Args:
    encoder: an `Encoder`; its `frames_view` (e.g. "vjepa2") picks the
      `<key>_<view>` keys of a dataset prepared with that view.
    mode: "video" or "image".
    frames: "model" (the encoder's view) or "squashed" (the plain keys).

  Returns:
    ("frames",) or ("src_image", "tgt_image"), with the view's suffix.
  """
  if frames not in FRAMES:
    raise LaryError(f"--config.extract.frames={frames!r}: expected one of "
                    f"{list(FRAMES)}")
  if getattr(encoder, "inputs", "frames") == "states":
    return MODES[mode].state_keys
  view = getattr(encoder, "frames_view", "") if frames == "model" else ""
  return tuple(f"{k}_{view}" if view else k for k in MODES[mode].frame_keys)


def example_frames(record: Mapping[str, Any], mode: str,
                   keys: Sequence[str] | None = None) -> np.ndarray:
  """The frames `extract` gives an encoder for one record, uint8.

  [9, 224, 224, 3] for a clip (mode "video"), [2, 224, 224, 3] for a
  (src, tgt) pair ("image"): what features for a `feature_store.Writer` are
  computed from. `keys` picks other stored frames (`frame_keys`).
  """
  if mode not in MODES:
    raise LaryError(f"mode {mode!r}: expected one of {list(MODES)}")
  example = MODES[mode]
  decode = example.transforms(keys or example.frame_keys)[0]
  return decode.map(dict(record))["frames"]


def check_frame_keys(keys: Sequence[str], available: Collection[str],
                     dataset: str) -> None:
  """Raises a LaryError naming both fixes if `dataset` lacks `keys`."""
  missing = [k for k in keys if k not in available]
  if not missing:
    return
  if tuple(keys) in [m.state_keys for m in MODES.values()]:
    raise LaryError(
        f"{dataset} has no {', '.join(missing)}: this model reads the robot "
        "states a simulator recorded with each frame (ground truth), which "
        "LARY-Sim's datasets hold and this one does not")
  view = missing[0].rpartition("_")[2]
  raise LaryError(
      f"{dataset} has no {', '.join(missing)} (the {view} view of the "
      "full-resolution frames this model reads); prepare it again with "
      f"them: `python -m lary_jax.main prepare --dataset {dataset} "
      f"--data_dir DATA_DIR --config.prepare.{view}_view=True "
      "--config.prepare.overwrite=True`, or read the 224 squashed frames: "
      "--config.extract.frames=squashed")


@dataclasses.dataclass(frozen=True)
class Options:
  """Options of `extract_split` (config section `extract`)."""

  global_batch: int = 128
  micro_batch: int = 8  # examples per encoder call per device; 0: all
  dtype: str = "float16"  # storage dtype
  shard_mb: float = 256.0  # about how many MiB one shard holds (all processes)
  worker_count: int = 0
  read_threads: int = 4
  prefetch: int = 4
  frames: str = "model"  # one of FRAMES
  # Decoded frames kept for the process (pl.DECODED_FRAMES), so the next
  # model of a run reads them without decoding; 0: none kept.
  decode_cache_mb: float = 0.0


@dataclasses.dataclass(frozen=True)
class IdentityBytes(grain.transforms.Map):
  """Copies a record's identity into `identity`, uint8 [IDENTITY_WIDTH].

  Batches hold numeric arrays only, so the path travels as zero-padded bytes
  and every shard learns the identity of its rows without a second read.
  """

  key: str

  def map(self, record: pl.Record) -> pl.Record:
    value = record[self.key]
    value = value.encode() if isinstance(value, str) else bytes(value)
    if len(value) > IDENTITY_WIDTH or b"\0" in value:
      raise LaryError(f"record {record.get(pl.INDEX_KEY)}: {self.key} is "
                      f"longer than {IDENTITY_WIDTH} bytes or holds NUL")
    out = np.zeros(IDENTITY_WIDTH, np.uint8)
    out[:len(value)] = np.frombuffer(value, np.uint8)
    return {**record, "identity": out}


def identity_text(row: np.ndarray) -> str:
  return bytes(row).rstrip(b"\0").decode()


# ------------------------------------------------------------ the encoder


def _input_kind(encoder: Any) -> str:
  # A latent action model reads the consecutive frame pairs of a clip (see
  # `encode_rows`); it marks itself with mode "pairs".
  return "pairs" if getattr(encoder, "mode", "") == "pairs" else "frames"


def encode_rows(encoder: Any, params: Any, frames: jax.Array) -> jax.Array:
  """Encodes examples of T frames each.

  Args:
    encoder: an `Encoder` (`apply(params, images)`).
    params: its parameters.
    frames: uint8 [b, T, H, W, 3].

  Returns:
    Image encoders: [b, T, N, D]; video encoders: [b, N, D]; pair encoders
    (mode "pairs"): [b, T - 1, ...] over the T - 1 consecutive pairs of a clip
    and the encoder's own output for a single pair (T = 2).
  """
  b, t = frames.shape[:2]
  if _input_kind(encoder) == "pairs" and t > 2:
    pairs = jnp.stack([frames[:, :-1], frames[:, 1:]], axis=2)
    out = encoder.apply(params, pairs.reshape(b * (t - 1), *pairs.shape[2:]))
    return out.reshape(b, t - 1, *out.shape[1:])  # [b, T - 1, ...]
  return encoder.apply(params, frames)


def input_struct(encoder: Any, mode: str, rows: int,
                 sharding: Any = None) -> jax.ShapeDtypeStruct:
  """The input of `rows` examples of `mode`: uint8 frames [rows, T, 224,
  224, 3], or what a state encoder reads per frame ([rows, T, S])."""
  example = getattr(encoder, "example", None)
  if getattr(encoder, "inputs", "frames") == "states":
    per_frame, dtype = tuple(example.shape), example.dtype
  else:
    per_frame, dtype = (IMAGE_SIZE, IMAGE_SIZE, 3), jnp.uint8
  return jax.ShapeDtypeStruct((rows, MODES[mode].frames, *per_frame), dtype,
                              sharding=sharding)


def token_shape(encoder: Any, mode: str) -> tuple[int, ...]:
  """The features' shape for one example of `mode`."""
  shape = jax.eval_shape(lambda p, x: encode_rows(encoder, p, x),
                         encoder.params, input_struct(encoder, mode, 1)).shape
  return tuple(shape[1:])


def make_step(encoder: Any, mesh: Mesh, *, micro_batch: int, dtype: Any,
              axis: str = "data"):
  """The jitted step: (params, uint8 frames) -> (features, peaks).

  Each device encodes its share of the batch in chunks of `micro_batch`
  examples (0: its whole share at once) and casts to the storage dtype
  before anything leaves the device. `peaks` [B] is each example's largest
  magnitude in float32, to catch non-finite values and float16 overflow.
  """

  def per_device(params, frames):  # [l, T, H, W, 3]
    l = frames.shape[0]
    if micro_batch and micro_batch < l:
      chunks = frames.reshape(l // micro_batch, micro_batch, *frames.shape[1:])
      out = jax.lax.map(lambda x: encode_rows(encoder, params, x), chunks)
      out = out.reshape(l, *out.shape[2:])
    else:
      out = encode_rows(encoder, params, frames)
    out = out.astype(jnp.float32)
    peaks = jnp.max(jnp.abs(out), axis=tuple(range(1, out.ndim)))
    return out.astype(dtype), peaks

  return jax.jit(jax.shard_map(per_device, mesh=mesh,
                               in_specs=(P(), P(axis)),
                               out_specs=(P(axis), P(axis))),
                 compiler_options=xla_options.encoder_forward(
                     mesh.devices.flat[0].platform, encoder.xla_profile))


def replicate(params: Any, mesh: Mesh) -> Any:
  """Puts a copy of `params` on every device of every process."""
  sharding = NamedSharding(mesh, P())
  host = jax.device_get(params)
  return jax.tree.map(
      lambda a: jax.make_array_from_callback(
          np.shape(a), sharding, lambda index: np.asarray(a)[index]), host)


def local_rows(x: jax.Array) -> np.ndarray:
  """This process's rows of an array sharded along axis 0, in order."""
  shards = sorted(x.addressable_shards, key=lambda s: s.index[0].start or 0)
  return np.concatenate(jax.device_get([s.data for s in shards]))


def weights_digest(params: Any) -> str:
  """SHA-256 over an encoder's parameters: each array's path, dtype, shape
  and bytes, in path order.

  A store records it as its `checkpoint_digest`. The same weights give the
  same digest whatever files held them: a Hugging Face folder and its
  converted orbax copy, or an orbax folder written twice (orbax's own
  metadata files differ between two saves of the same arrays).
  """
  leaves = jax.tree_util.tree_flatten_with_path(params)[0]
  h = hashlib.sha256()
  for path, leaf in sorted((jax.tree_util.keystr(p), leaf)
                           for p, leaf in leaves):
    array = np.ascontiguousarray(jax.device_get(leaf))
    h.update(f"{path}\0{array.dtype.str}\0{array.shape}\0".encode())
    h.update(memoryview(array.reshape(-1).view(np.uint8)))
  return h.hexdigest()


def files_digest(path: str | None) -> str | None:
  """SHA-256 over a checkpoint file or folder (names, sizes and bytes): the
  `checkpoint_digest` of stores begun before `weights_digest`."""
  if path is None:
    return None
  if not os.path.exists(path):
    raise LaryError(f"checkpoint {path!r} does not exist")
  files = [path] if os.path.isfile(path) else sorted(
      os.path.join(d, f) for d, _, names in os.walk(path) for f in names)
  h = hashlib.sha256()
  for f in files:
    h.update(f"{os.path.relpath(f, path)}\0{os.path.getsize(f)}\0".encode())
    h.update(atomic_io.sha256_file(f).encode())
  return h.hexdigest()


# -------------------------------------------------------------- the plan


@dataclasses.dataclass(frozen=True)
class Plan:
  """How a split is cut into steps and shards (the same in every process)."""

  num_rows: int
  global_batch: int
  steps_per_shard: int

  @property
  def num_steps(self) -> int:
    return pl.eval_steps(self.num_rows, self.global_batch)

  @property
  def num_shards(self) -> int:
    return math.ceil(self.num_steps / self.steps_per_shard)

  def steps(self, shard: int) -> range:
    return range(shard * self.steps_per_shard,
                 min((shard + 1) * self.steps_per_shard, self.num_steps))

  def real_rows(self, step: int) -> int:
    return min(self.global_batch, self.num_rows - step * self.global_batch)


def step_rows(plan: Plan, step: int, devices: int, micro_batch: int) -> int:
  """Rows the device computes at `step`: the last step of a split only up
  to the next whole micro-batch on every device, not the full batch.

  Only where that cannot change a feature: every device still encodes
  chunks of exactly `micro_batch`, and with one process, whose local batch
  is the global one (several processes keep the full batch).
  """
  real = plan.real_rows(step)
  unit = devices * micro_batch
  if not micro_batch or jax.process_count() > 1 or real >= plan.global_batch:
    return plan.global_batch
  return min(plan.global_batch, -(-real // unit) * unit)


def make_plan(num_rows: int, shape: Sequence[int], options: Options) -> Plan:
  row_bytes = int(np.prod(shape)) * fs.storage_dtype(options.dtype).itemsize
  steps = int(options.shard_mb * 2**20) // (options.global_batch * row_bytes)
  return Plan(num_rows, options.global_batch, max(1, steps))


class _Steps(grain.MapDataset):
  """The batches of chosen steps of an evaluation dataset, in order."""

  def __init__(self, parent: grain.MapDataset, steps: Sequence[int]):
    super().__init__(parent)
    self._steps = list(steps)

  def __len__(self) -> int:
    return len(self._steps)

  def __str__(self) -> str:
    return f"_Steps({len(self._steps)})"

  def __getitem__(self, index):
    if isinstance(index, slice):
      return self.slice(index)
    return self._parent[self._steps[index]]


def _check_batches(options: Options, mesh: Mesh) -> None:
  devices = mesh.devices.size
  mesh_lib.local_batch_size(options.global_batch)
  per_device = options.global_batch // devices
  if options.micro_batch < 0 or (
      options.micro_batch and per_device % options.micro_batch):
    raise LaryError(
        f"global batch {options.global_batch} gives {per_device} examples "
        f"per device ({devices} devices), not a multiple of micro_batch "
        f"{options.micro_batch}; use a global batch that is a multiple of "
        f"{devices * max(options.micro_batch, 1)}, or a micro batch that "
        f"divides {per_device}")


# --------------------------------------------------------------- the run


@dataclasses.dataclass
class Summary:
  """What one `extract_split` call did, and where its time went."""

  store_dir: str
  num_rows: int
  shards: int
  shards_reused: int
  rows_computed: int = 0
  seconds: float = 0.0
  compile_s: float = 0.0
  input_s: float = 0.0
  device_s: float = 0.0
  write_s: float = 0.0

  def __str__(self) -> str:
    if not self.rows_computed:
      return (f"{self.num_rows} rows, all {self.shards} shards already done "
              f"-> {self.store_dir}")
    t = max(self.seconds, 1e-9)
    return (
        f"{self.rows_computed} of {self.num_rows} rows in {self.seconds:.1f} s "
        f"({self.rows_computed / t:.1f}/s; {self.shards - self.shards_reused}"
        f" of {self.shards} shards written, {self.shards_reused} reused) -> "
        f"{self.store_dir}\n  waiting for input {self.input_s:.1f} s "
        f"({100 * self.input_s / t:.0f}%), for the devices "
        f"{self.device_s:.1f} s ({100 * self.device_s / t:.0f}%), for writes "
        f"{self.write_s:.1f} s; compile {self.compile_s:.1f} s (not counted)")


class _ShardWriter:
  """Writes finished shards on one background thread, one at a time."""

  def __init__(self, store_dir: str, process: int):
    self._store_dir = store_dir
    self._process = process
    self._pool = concurrent.futures.ThreadPoolExecutor(1)
    self._pending: concurrent.futures.Future | None = None
    self._written = 0
    kill = os.environ.get(KILL_AFTER_SHARDS_ENV)
    self._kill_after = int(kill) if kill else None

  def _write(self, shard, features, index, identity):
    fs.write_shard(self._store_dir, shard, self._process, features, index,
                   identity)
    self._written += 1
    if self._written == self._kill_after:
      os.kill(os.getpid(), signal.SIGKILL)

  def submit(self, *args) -> float:
    """Queues a shard; returns seconds spent waiting for the previous one."""
    waited = self.wait()
    self._pending = self._pool.submit(self._write, *args)
    return waited

  def wait(self) -> float:
    start = time.perf_counter()
    if self._pending is not None:
      self._pending.result()
      self._pending = None
    return time.perf_counter() - start

  def close(self) -> float:
    waited = self.wait()
    self._pool.shutdown()
    return waited


def _layout(fields: dict[str, Any], shape: Sequence[int], mode: str,
            keys: Sequence[str], plan: Plan, options: Options
            ) -> dict[str, Any]:
  return {
      **fields, "format": fs.FORMAT, "mode": mode,
      "identity_key": MODES[mode].identity_key, "token_shape": list(shape),
      # Features of other stored frames are another run, never resumed.
      "frame_keys": list(keys),
      "dtype": fs.storage_dtype(options.dtype).name,
      "num_rows": plan.num_rows, "global_batch": plan.global_batch,
      "micro_batch": options.micro_batch,
      "steps_per_shard": plan.steps_per_shard,
      "process_count": jax.process_count(),
  }


def _start_store(store_dir: str, layout: dict[str, Any]) -> None:
  """Checks or records what the store holds, identically in every process."""
  os.makedirs(store_dir, exist_ok=True)
  found = atomic_io.read_json(os.path.join(store_dir, fs.RUN))
  # The checkpoint's digest says whether it is the same; its path may move.
  before = found or {}
  diff = sorted(k for k in set(before) | set(layout)
                if k != "checkpoint" and before.get(k) != layout.get(k))
  if found is not None and diff:
    raise LaryError(
        f"{store_dir} was started with other settings ({', '.join(diff)}: "
        f"{[before.get(k) for k in diff]} then, "
        f"{[layout.get(k) for k in diff]}"
        " now); rerun with those, or remove the folder / pick another --out")
  multihost_utils.sync_global_devices("lary_extract_checked")
  if found is None and jax.process_index() == 0:
    atomic_io.write_json(os.path.join(store_dir, fs.RUN), layout)
  multihost_utils.sync_global_devices("lary_extract_started")


def _pending_shards(store_dir: str, plan: Plan) -> tuple[np.ndarray, int]:
  """Which shards some process must redo, and how many of ours are whole."""
  me = jax.process_index()
  fs.remove_temporaries(store_dir, me)
  done = np.zeros(plan.num_shards, bool)
  for shard in range(plan.num_shards):
    stem = fs.shard_stem(shard, me)
    sidecar, why = fs.verify_shard(store_dir, stem)
    if sidecar is None:
      if os.path.exists(os.path.join(store_dir, stem + ".npy")) or (
          os.path.exists(os.path.join(store_dir, stem + ".json"))):
        _log.warning("%s/%s: %s; redoing it", store_dir, stem, why)
      fs.remove_shard(store_dir, stem)
    done[shard] = sidecar is not None
  everyone = np.asarray(multihost_utils.process_allgather(done))
  everyone = everyone.reshape(-1, plan.num_shards)
  return ~everyone.all(axis=0), int(done.sum())


def extract_split(encoder: Any, source: Any, *, mode: str, store_dir: str,
                  fields: dict[str, Any], options: Options = Options(),
                  mesh: Mesh | None = None,
                  progress: bool | None = None) -> Summary:
  """Extracts the features of every record of a split into a store.

  Resumes what an earlier run of the same settings left: whole shards are
  kept, anything else is redone. Every process must call this with the same
  arguments; each reads only its rows and writes only its own shards, and
  process 0 writes the manifest once every shard is in.

  Args:
    encoder: an `Encoder` from `lary_jax.encoders.load`.
    source: the split's random-access records (TFDS ArrayRecord source).
    mode: "video" (9 frames per clip) or "image" ((src, tgt) pair).
    store_dir: the store directory (shared by all processes).
    fields: what the manifest says about the features (model, checkpoint,
      checkpoint_digest, dataset, tfds_name, split, ...).
    options: batch sizes, storage dtype, shard size, input workers, and
      which stored frames the encoder reads (`frame_keys`).
    mesh: the device mesh (default `mesh.make_mesh()` over every device).
    progress: show a tqdm bar (default: on a terminal, in process 0).

  Returns:
    The summary (rows, shards, and the wall time split).
  """
  if mode not in MODES:
    raise LaryError(f"mode {mode!r}: expected one of {list(MODES)}")
  example = MODES[mode]
  mesh = mesh or mesh_lib.make_mesh()
  _check_batches(options, mesh)
  dtype = fs.storage_dtype(options.dtype)
  num_rows = len(source)
  if not num_rows:
    raise LaryError(f"{fields.get('dataset')} {fields.get('split')}: the "
                    "split has no records")
  keys = frame_keys(encoder, mode, options.frames)
  check_frame_keys(keys, source[0].keys(), fields.get("dataset", "the split"))
  shape = token_shape(encoder, mode)
  plan = make_plan(num_rows, shape, options)
  layout = _layout(fields, shape, mode, keys, plan, options)
  _start_store(store_dir, layout)

  pending, reused = _pending_shards(store_dir, plan)
  summary = Summary(store_dir, num_rows, plan.num_shards, reused)
  manifest = os.path.join(store_dir, fs.MANIFEST)
  if not pending.any() and os.path.exists(manifest):
    return summary
  if jax.process_index() == 0 and pending.any() and os.path.exists(manifest):
    os.remove(manifest)  # no longer complete until the redone shards are in
  if pending.any():
    _run(encoder, source, example, keys, store_dir, plan, pending, options,
         dtype, mesh, summary, progress, mode)
  multihost_utils.sync_global_devices("lary_extract_shards_written")
  if jax.process_index() == 0:
    stems = [fs.shard_stem(s, p) for s in range(plan.num_shards)
             for p in range(jax.process_count())]
    fs.write_manifest(store_dir, layout, num_rows, stems)
  multihost_utils.sync_global_devices("lary_extract_manifest_written")
  return summary


# The last encoder's compiled steps, so that its other splits (same shapes)
# are not compiled again; a weak reference, not to keep its parameters alive.
_LAST_COMPILED: list[Any] = [None, {}]


def _compiled_steps(encoder: Any) -> dict[tuple, Any]:
  """The cache of compiled steps for `encoder` (emptied for a new one)."""
  ref, _ = _LAST_COMPILED
  if ref is None or ref() is not encoder:
    _LAST_COMPILED[:] = [weakref.ref(encoder), {}]
  return _LAST_COMPILED[1]


def _step_compiler(encoder: Any, params: Any, data: NamedSharding,
                   example: Mode, options: Options, dtype: np.dtype,
                   mesh: Mesh, summary: Summary, mode: str
                   ) -> Callable[[int], Any]:
  """rows -> the encoder step compiled for that many rows (cached)."""
  compiled = _compiled_steps(encoder)
  step_fn = None

  def compiled_for(rows: int):
    nonlocal step_fn
    key = (mesh, options.micro_batch, np.dtype(dtype).str, example.frames,
           rows)
    if key not in compiled:
      start = time.perf_counter()
      step_fn = step_fn or make_step(encoder, mesh,
                                     micro_batch=options.micro_batch,
                                     dtype=dtype)
      compiled[key] = step_fn.lower(params, input_struct(
          encoder, mode, rows, data)).compile()
      summary.compile_s += time.perf_counter() - start
    return compiled[key]

  return compiled_for


def _shard_collector(plan: Plan, dtype: np.dtype, mine: dict[int, bool],
                     writer: _ShardWriter, bar: Any, summary: Summary
                     ) -> Callable[[int, Any, Any], None]:
  """(step, device output, batch meta) -> checked rows; a shard when whole."""
  parts: list[tuple[np.ndarray, ...]] = []

  def collect(step: int, out, meta) -> None:
    t0 = time.perf_counter()
    features, peaks = local_rows(out[0]), local_rows(out[1])
    summary.device_s += time.perf_counter() - t0
    index, mask, identity = meta
    keep = mask.astype(bool)
    bad = keep & ~((peaks <= (fs.FLOAT16_MAX if dtype == np.float16
                              else np.inf)) & np.isfinite(peaks))
    if bad.any():
      i = int(np.flatnonzero(bad)[0])
      raise LaryError(
          f"record {index[i]} ({identity_text(identity[i])}): features reach "
          f"{peaks[i]:.4g}; float16 holds up to {fs.FLOAT16_MAX:g} and "
          "nothing may be NaN/inf (try --config.extract.dtype=float32)")
    parts.append((features[keep], index[keep], identity[keep]))
    bar.update(plan.real_rows(step))
    shard = step // plan.steps_per_shard
    if step == plan.steps(shard)[-1]:
      if mine[shard]:
        feats, idx, ident = (np.concatenate(p) for p in zip(*parts))
        summary.write_s += writer.submit(
            shard, feats, idx, [identity_text(r) for r in ident])
      parts.clear()

  return collect


def _encode_steps(steps: Sequence[int], iterator: Any, params: Any,
                  data: NamedSharding, compiled_for: Callable[[int], Any],
                  collect: Callable[[int, Any, Any], None], plan: Plan,
                  mesh: Mesh, options: Options, summary: Summary) -> None:
  """Feeds every step to the devices, collecting each one a step later."""
  previous = None
  # Host <-> device copies happen only where this loop means them to.
  with jax.transfer_guard("disallow"):
    for step in steps:
      t0 = time.perf_counter()
      batch = next(iterator)
      rows = step_rows(plan, step, mesh.size, options.micro_batch)
      if rows < plan.global_batch:
        batch = {k: v[:rows] for k, v in batch.items()}
      with jax.transfer_guard("allow"):  # multi-process puts count as implicit
        frames = jax.make_array_from_process_local_data(data,
                                                        batch["frames"])
      summary.input_s += time.perf_counter() - t0
      # Asynchronous: overlaps the next read.
      out = compiled_for(rows)(params, frames)
      if previous is not None:
        collect(*previous)
      previous = (step, out, (batch["index"], batch["_mask"],
                              batch["identity"]))
    if previous is not None:
      collect(*previous)


def _run(encoder, source, example: Mode, keys: Sequence[str], store_dir: str,
         plan: Plan, pending: np.ndarray, options: Options, dtype: np.dtype,
         mesh: Mesh, summary: Summary, progress: bool | None,
         mode: str) -> None:
  """Computes the pending shards; writes those this process lacks."""
  me = jax.process_index()
  data = NamedSharding(mesh, P("data"))
  params = replicate(encoder.params, mesh)
  compiled_for = _step_compiler(encoder, params, data, example, options,
                                dtype, mesh, summary, mode)
  shards = [int(s) for s in np.flatnonzero(pending)]
  steps = [step for s in shards for step in plan.steps(s)]
  # Before the clock starts, the shapes these steps take: a split smaller
  # than the global batch never runs a whole one.
  for rows in sorted({step_rows(plan, s, mesh.size, options.micro_batch)
                      for s in steps}):
    compiled_for(rows)
  ds = pl.eval_dataset(source,
                       example.transforms(keys, options.decode_cache_mb),
                       ("frames", "identity"), global_batch=plan.global_batch)
  iterator = pl.make_iterator(_Steps(ds, steps),
                              worker_count=options.worker_count,
                              read_threads=options.read_threads,
                              prefetch=options.prefetch)
  mine = {s: not os.path.exists(os.path.join(
      store_dir, fs.shard_stem(s, me) + ".json")) for s in shards}
  writer = _ShardWriter(store_dir, me)
  if me != 0:
    progress = False
  bar = progress_lib.bar(sum(plan.real_rows(s) for s in steps),
                         unit=example.unit, desc=f"extract -> {store_dir}",
                         show=progress)
  collect = _shard_collector(plan, dtype, mine, writer, bar, summary)
  run_start = time.perf_counter()
  _encode_steps(steps, iterator, params, data, compiled_for, collect, plan,
                mesh, options, summary)
  if hasattr(iterator, "close"):  # stops grain's worker processes
    iterator.close()
  summary.write_s += writer.close()
  bar.close()
  summary.seconds = time.perf_counter() - run_start
  summary.rows_computed = sum(plan.real_rows(s) for s in steps)
