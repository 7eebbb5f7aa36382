"""PyTorch checkpoints (`torch.save` files) read as numpy, without torch.

`load(path)` reads what `torch.save` wrote: the zip format (torch >= 1.6: a
`data.pkl` pickle whose tensors point at raw storages under `data/`) and
the legacy format (one stream: pickles, then the storages). Tensors come back
as numpy arrays (bfloat16 and float8 through ml_dtypes), views of one
storage share its memory as in torch, and everything else as what it is:
dicts, `OrderedDict`s, lists, tuples, sets, numbers, strings.

The pickle is read by a restricted unpickler that refuses what
`torch.load(weights_only=True)` refuses: a global other than the tensor and
storage rebuilders, torch dtypes, `torch.Size`, `torch.device`,
`collections.OrderedDict`/`Counter` and the plain builtins is a LaryError
naming the file and the global, raised before anything calls it; so is
setting the state (pickle's BUILD) of anything but an `OrderedDict`, and a
tensor that reaches past its storage. `load(path, opaque=True)` instead turns
every other global into an inert `Opaque` placeholder that records its
arguments and never runs code: Lightning checkpoints pickle hyper-parameters
and callbacks beside the weights.
"""

from __future__ import annotations

import collections
import io
import os
import pickle
import struct
import sys
import zipfile
from typing import Any, BinaryIO

import ml_dtypes
import numpy as np

from lary_jax.errors import LaryError

# torch dtype name (as pickled: `torch.<name>`) -> numpy dtype.
_DTYPES = {
    "float64": np.float64, "float32": np.float32, "float16": np.float16,
    "bfloat16": ml_dtypes.bfloat16, "float8_e4m3fn": ml_dtypes.float8_e4m3fn,
    "float8_e5m2": ml_dtypes.float8_e5m2, "complex128": np.complex128,
    "complex64": np.complex64, "int64": np.int64, "int32": np.int32,
    "int16": np.int16, "int8": np.int8, "uint64": np.uint64,
    "uint32": np.uint32, "uint16": np.uint16, "uint8": np.uint8,
    "bool": np.bool_,
}
# Storage classes (`torch.<Name>Storage`) -> the dtype of their elements.
_STORAGES = {
    "DoubleStorage": "float64", "FloatStorage": "float32",
    "HalfStorage": "float16", "BFloat16Storage": "bfloat16",
    "ComplexDoubleStorage": "complex128", "ComplexFloatStorage": "complex64",
    "LongStorage": "int64", "IntStorage": "int32", "ShortStorage": "int16",
    "CharStorage": "int8", "ByteStorage": "uint8", "BoolStorage": "bool",
    "UntypedStorage": "uint8",
}
_LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
_LEGACY_PROTOCOL = 1001


class Opaque:
  """A pickled object of a class that `load(..., opaque=True)` does not know.

  Holds what the pickle gave it (constructor arguments, state, items) and
  nothing else: its class's code is never imported or run.
  """

  global_name = "?"
  args: tuple[Any, ...]
  kwargs: dict[str, Any]
  state: Any
  items: list[Any]

  # __new__, not __init__: pickle's NEWOBJ calls only __new__.
  def __new__(cls, *args: Any, **kwargs: Any) -> Opaque:
    self = super().__new__(cls)
    self.args, self.kwargs, self.state, self.items = args, kwargs, None, []
    return self

  def __setstate__(self, state: Any) -> None:
    self.state = state

  def __setitem__(self, key: Any, value: Any) -> None:
    self.items.append((key, value))

  def append(self, value: Any) -> None:
    self.items.append(value)

  def extend(self, values: Any) -> None:
    self.items.extend(values)

  def __repr__(self) -> str:
    return f"Opaque({self.global_name})"


class _Marker:
  """A torch name that a checkpoint may mention but not call."""

  def __init__(self, name: str):
    self.name = name

  def __repr__(self) -> str:
    return self.name


class _StorageType(_Marker):
  """`torch.FloatStorage` and its kin: the dtype of a storage's elements."""

  def __init__(self, name: str, dtype: np.dtype):
    super().__init__(name)
    self.dtype = dtype


_TENSOR_TYPES = (_Marker("torch.Tensor"), _Marker("torch.nn.Parameter"))


class _Storage:
  """One storage's bytes (filled when read: legacy files store them after
  the pickle), as a flat array of its dtype."""

  def __init__(self, key: str, dtype: np.dtype, numel: int,
               order: str = "little"):
    self.key, self.dtype, self.numel = key, np.dtype(dtype), numel
    self.order = order  # of the bytes in the file
    self.buffer = bytearray(numel * self.dtype.itemsize)

  def elements(self, dtype: np.dtype) -> np.ndarray:
    return np.frombuffer(self.buffer, dtype=dtype)


def _codecs_encode(text: str, encoding: str = "utf-8") -> bytes:
  # Protocol-2 pickles spell bytes as _codecs.encode(str, "latin1").
  if not isinstance(text, str) or not isinstance(encoding, str):
    raise LaryError("_codecs.encode takes a string")
  return text.encode(encoding)


def _device(kind: str, index: int | None = None) -> str:
  return kind if index is None else f"{kind}:{index}"


class _Unpickler(pickle._Unpickler):  # pylint: disable=protected-access
  """A weights-only unpickler.

  Python's own (pure) unpickler, so that BUILD, which would call any
  object's `__setstate__`, can be limited as torch limits it; the C
  unpickler offers no hook for it. Checkpoint pickles hold only metadata,
  so its speed does not matter.
  """

  dispatch = dict(pickle._Unpickler.dispatch)  # pylint: disable=protected-access

  def __init__(self, file: BinaryIO, path: str, opaque: bool,
               storage: Any = None):
    super().__init__(file, encoding="utf-8")
    self._path, self._opaque, self._storage = path, opaque, storage
    self._globals = {
        ("collections", "OrderedDict"): collections.OrderedDict,
        ("collections", "Counter"): collections.Counter,
        ("builtins", "set"): set, ("builtins", "frozenset"): frozenset,
        ("builtins", "bytearray"): bytearray,
        ("builtins", "complex"): complex,
        ("_codecs", "encode"): _codecs_encode,
        ("torch", "Size"): tuple, ("torch", "device"): _device,
        ("torch", "Tensor"): _TENSOR_TYPES[0],
        ("torch.nn.parameter", "Parameter"): _TENSOR_TYPES[1],
        ("torch._utils", "_rebuild_tensor"): self._rebuild_tensor,
        ("torch._utils", "_rebuild_tensor_v2"): self._rebuild_tensor_v2,
        ("torch._utils", "_rebuild_tensor_v3"): self._rebuild_tensor_v3,
        ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
        ("torch._utils", "_rebuild_parameter_with_state"):
            _rebuild_parameter,
        ("torch._tensor", "_rebuild_from_type_v2"): _rebuild_from_type_v2,
    }
    for name, dtype in _DTYPES.items():
      self._globals[("torch", name)] = np.dtype(dtype)
    for name, dtype in _STORAGES.items():
      for module in ("torch", "torch.storage", "torch.cuda"):
        self._globals[(module, name)] = _StorageType(
            f"{module}.{name}", np.dtype(_DTYPES[dtype]))
    self._opaque_types: dict[str, type] = {}
    # Work that needs the storages' bytes, which a legacy file stores after
    # the pickle: run by `finish`.
    self._deferred: list[Any] = []

  def finish(self) -> None:
    """Runs what waited for the storages' bytes; call once they are read."""
    for fn in self._deferred:
      fn()
    self._deferred.clear()

  def find_class(self, module: str, name: str) -> Any:
    if module == "__builtin__":  # Python 2 pickles
      module = "builtins"
    found = self._globals.get((module, name))
    if found is not None:
      return found
    if self._opaque:
      full = f"{module}.{name}"
      if full not in self._opaque_types:
        self._opaque_types[full] = type(name, (Opaque,),
                                        {"global_name": full})
      return self._opaque_types[full]
    raise LaryError(
        f"{self._path}: refused the global '{module}.{name}': a weights-only "
        "checkpoint holds tensors, OrderedDicts and plain containers "
        "(torch.load(weights_only=True) refuses it too)")

  def persistent_load(self, pid: Any) -> Any:
    if self._storage is None:
      raise LaryError(f"{self._path}: unexpected storage reference {pid!r}")
    return self._storage(pid)

  def load_build(self) -> None:
    state = self.stack.pop()
    inst = self.stack[-1]
    if isinstance(inst, Opaque):
      inst.__setstate__(state)
    elif (type(inst) in (collections.OrderedDict, collections.Counter)
          and isinstance(state, dict)
          and all(isinstance(k, str) for k in state)):
      inst.__dict__.update(state)  # a state dict's `_metadata`
    else:
      raise LaryError(
          f"{self._path}: refused to set the state of a "
          f"{type(inst).__name__}: only OrderedDicts carry state in a "
          "weights-only checkpoint")

  dispatch[pickle.BUILD[0]] = load_build

  # Tensors.

  def _rebuild_tensor(self, storage: Any, offset: Any, size: Any,
                      stride: Any) -> np.ndarray:
    return self._view(storage, offset, size, stride, None)

  def _rebuild_tensor_v2(self, storage: Any, offset: Any, size: Any,
                         stride: Any, requires_grad: Any = False,
                         backward_hooks: Any = None,
                         metadata: Any = None) -> np.ndarray:
    del requires_grad, backward_hooks  # no autograd here
    return self._apply_metadata(
        self._view(storage, offset, size, stride, None), metadata)

  def _rebuild_tensor_v3(self, storage: Any, offset: Any, size: Any,
                         stride: Any, requires_grad: Any,
                         backward_hooks: Any, dtype: Any,
                         metadata: Any = None) -> np.ndarray:
    del requires_grad, backward_hooks
    if not isinstance(dtype, np.dtype):
      raise LaryError(f"{self._path}: tensor dtype {dtype!r} is not a torch "
                      "dtype")
    return self._apply_metadata(
        self._view(storage, offset, size, stride, dtype), metadata)

  def _apply_metadata(self, view: np.ndarray, metadata: Any) -> np.ndarray:
    """torch's lazy conjugate/negative bits, applied into a new array."""
    if not metadata:
      return view
    if not isinstance(metadata, dict) or set(metadata) - {"conj", "neg"}:
      raise LaryError(f"{self._path}: unknown tensor metadata {metadata!r}")
    out = np.empty(view.shape, view.dtype)

    def fill():
      out[...] = np.conj(view) if metadata.get("conj") else view
      if metadata.get("neg"):
        np.negative(out, out=out)

    self._deferred.append(fill)
    return out

  def _view(self, storage: Any, offset: Any, size: Any, stride: Any,
            dtype: np.dtype | None) -> np.ndarray:
    """The tensor as a numpy view of its storage, every index checked."""
    if not isinstance(storage, _Storage):
      raise LaryError(f"{self._path}: a tensor without a storage")
    dtype = storage.dtype if dtype is None else dtype
    if not (_natural(offset) and _naturals(size) and _naturals(stride)
            and len(size) == len(stride)):
      raise LaryError(f"{self._path}: bad tensor layout (offset {offset!r}, "
                      f"size {size!r}, stride {stride!r})")
    if len(storage.buffer) % dtype.itemsize:
      raise LaryError(f"{self._path}: storage {storage.key} of "
                      f"{len(storage.buffer)} bytes does not hold "
                      f"{dtype.name} elements")
    if (dtype.itemsize > storage.dtype.itemsize
        and storage.order != sys.byteorder):
      raise LaryError(f"{self._path}: {dtype.name} tensors on untyped "
                      f"storages of a {storage.order}-endian checkpoint are "
                      "not supported")
    elements = storage.elements(dtype)
    if 0 in size:
      return np.zeros(size, dtype)
    last = offset + sum((n - 1) * s for n, s in zip(size, stride))
    if last >= len(elements):
      raise LaryError(
          f"{self._path}: a tensor of size {tuple(size)}, stride "
          f"{tuple(stride)} at offset {offset} reaches element {last} of "
          f"storage {storage.key}, which holds {len(elements)}")
    # as_strided goes through __array_interface__, which loses ml_dtypes'
    # types (float8 comes back as '<f1'): stride raw bytes, then view them.
    raw = elements[offset:].view(np.dtype(f"V{dtype.itemsize}"))
    return np.lib.stride_tricks.as_strided(
        raw, shape=tuple(size),
        strides=tuple(s * dtype.itemsize for s in stride)).view(dtype)


def _natural(x: Any) -> bool:
  return type(x) is int and x >= 0  # not a bool, not a float


def _naturals(xs: Any) -> bool:
  return isinstance(xs, tuple | list) and all(_natural(x) for x in xs)


def _rebuild_parameter(data: Any, requires_grad: Any = False,
                       backward_hooks: Any = None, state: Any = None) -> Any:
  del requires_grad, backward_hooks, state  # a Parameter is its data
  return data


def _rebuild_from_type_v2(func: Any, new_type: Any, args: Any,
                          state: Any) -> Any:
  # A plain tensor or Parameter with Python attributes (dropped here);
  # tensor subclasses are not in the allowlist.
  del state
  if not any(new_type is t for t in _TENSOR_TYPES) or not isinstance(
      args, tuple):
    raise LaryError(f"refused tensor type {new_type!r}")
  return func(*args)


def load(path: str, *, opaque: bool = False) -> Any:
  """Reads a `torch.save` file without torch; tensors as numpy arrays.

  Args:
    path: a `.pt`/`.pth`/`.ckpt` file (zip or legacy format).
    opaque: turn unknown globals into inert `Opaque` placeholders instead of
      refusing them (for Lightning's pickled hyper-parameters).

  Returns:
    The saved object.

  Raises:
    LaryError: naming `path` and what is wrong or refused.
  """
  if not os.path.isfile(path):
    raise LaryError(f"{path}: no such checkpoint file")
  try:
    if zipfile.is_zipfile(path):
      return _load_zip(path, opaque)
    return _load_legacy(path, opaque)
  except LaryError as e:
    message = str(e)
    raise LaryError(message if message.startswith(path)
                    else f"{path}: {message}") from None
  except Exception as e:  # pylint: disable=broad-except
    # A damaged or foreign file fails in many ways inside the unpickler.
    raise LaryError(f"{path}: not a readable torch checkpoint "
                    f"({type(e).__name__}: {e})") from None


def _load_zip(path: str, opaque: bool) -> Any:
  with zipfile.ZipFile(path) as zf:
    names = set(zf.namelist())
    pickles = [n for n in names if n.count("/") == 1
               and n.endswith("/data.pkl")]
    if len(pickles) != 1:
      raise LaryError(f"{path}: a zip file, but not one written by "
                      "torch.save (no single ARCHIVE/data.pkl)")
    prefix = pickles[0][:-len("data.pkl")]
    order = "little"
    if f"{prefix}byteorder" in names:
      order = zf.read(f"{prefix}byteorder").decode().strip()
    storages: dict[str, _Storage] = {}

    def storage(pid: Any) -> _Storage:
      key, dtype, numel = _storage_pid(pid, path)
      if key not in storages:
        member = f"{prefix}data/{key}"
        if member not in names:
          raise LaryError(f"{path}: storage {key} is missing ({member})")
        nbytes = numel * dtype.itemsize
        if zf.getinfo(member).file_size != nbytes:
          raise LaryError(
              f"{path}: storage {key} holds {zf.getinfo(member).file_size} "
              f"bytes, expected {numel} x {dtype.name}")
        storages[key] = _Storage(key, dtype, numel, order)
        with zf.open(member) as f:
          _read_into(f, storages[key].buffer, path, key)
        _to_native(storages[key], path)
      return _same_storage(storages[key], dtype, numel, path)

    with zf.open(pickles[0]) as f:
      unpickler = _Unpickler(io.BytesIO(f.read()), path, opaque, storage)
    result = unpickler.load()
    unpickler.finish()
    return result


def _load_legacy(path: str, opaque: bool) -> Any:
  """torch.save(..., _use_new_zipfile_serialization=False)."""
  size = os.path.getsize(path)
  with open(path, "rb") as f:

    def plain() -> Any:  # the small pickles around the data: no globals
      return _Unpickler(f, path, opaque=False).load()

    try:
      magic = plain()
    except LaryError:
      raise
    except Exception:  # pylint: disable=broad-except
      raise LaryError(f"{path}: neither a zip nor a legacy torch.save file "
                      "(is it a torch checkpoint?)") from None
    if magic != _LEGACY_MAGIC:
      raise LaryError(f"{path}: not a torch.save file (no torch magic number)")
    if plain() != _LEGACY_PROTOCOL:
      raise LaryError(f"{path}: unknown legacy torch.save protocol")
    sys_info = plain()
    if not (isinstance(sys_info, dict) and sys_info.get("little_endian")):
      raise LaryError(f"{path}: a big-endian legacy checkpoint")
    storages: dict[str, _Storage] = {}

    def storage(pid: Any) -> _Storage:
      if isinstance(pid, tuple) and len(pid) == 6:
        if pid[5] is not None:
          raise LaryError(f"{path}: storage views of torch < 0.4 are not "
                          "supported; re-save the checkpoint with torch")
        pid = pid[:5]
      key, dtype, numel = _storage_pid(pid, path)
      if key not in storages:
        if numel * dtype.itemsize > size:
          raise LaryError(f"{path}: storage {key} claims {numel} elements, "
                          "more than the file holds")
        storages[key] = _Storage(key, dtype, numel)
      return _same_storage(storages[key], dtype, numel, path)

    unpickler = _Unpickler(f, path, opaque, storage)
    result = unpickler.load()
    keys = plain()
    if not (isinstance(keys, list) and set(keys) == set(storages)):
      raise LaryError(f"{path}: the storage list does not match the tensors")
    for key in keys:
      numel, = struct.unpack("<q", f.read(8))
      if numel != storages[key].numel:
        raise LaryError(f"{path}: storage {key} holds {numel} elements, "
                        f"expected {storages[key].numel}")
      _read_into(f, storages[key].buffer, path, key)
  unpickler.finish()
  return result


def _storage_pid(pid: Any, path: str) -> tuple[str, np.dtype, int]:
  """(key, dtype, numel) of ('storage', type, key, location, numel)."""
  if not (isinstance(pid, tuple) and len(pid) == 5 and pid[0] == "storage"
          and isinstance(pid[1], _StorageType) and isinstance(pid[2], str)
          and type(pid[4]) is int and pid[4] >= 0):
    raise LaryError(f"{path}: unexpected storage reference {pid!r}")
  return pid[2], pid[1].dtype, pid[4]


def _same_storage(storage: _Storage, dtype: np.dtype, numel: int,
                  path: str) -> _Storage:
  if (storage.dtype, storage.numel) != (dtype, numel):
    raise LaryError(f"{path}: storage {storage.key} is referenced as "
                    f"{numel} x {dtype.name} and as {storage.numel} x "
                    f"{storage.dtype.name}")
  return storage


def _read_into(f: BinaryIO, buffer: bytearray, path: str, key: str) -> None:
  view, done = memoryview(buffer), 0
  while done < len(buffer):
    n = f.readinto(view[done:])
    if not n:
      raise LaryError(f"{path}: storage {key} is cut short")
    done += n


def _to_native(storage: _Storage, path: str) -> None:
  """Swaps a storage written on a machine of the other byte order."""
  if storage.order not in ("little", "big"):
    raise LaryError(f"{path}: unknown byte order {storage.order!r}")
  if storage.order == sys.byteorder or storage.dtype.itemsize == 1:
    return
  # By the element width (a complex number: each half on its own).
  width = storage.dtype.itemsize // (2 if storage.dtype.kind == "c" else 1)
  words = np.frombuffer(storage.buffer, f"u{width}")
  words[...] = words.byteswap()
  storage.order = sys.byteorder
