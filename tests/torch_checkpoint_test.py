"""lary_jax.torch_checkpoint: files written by the real torch, read without it.

Every object is saved with torch 2.13 in both of its formats (zip, and the
legacy stream of `_use_new_zipfile_serialization=False`), read back by our
reader and compared exactly with what torch itself holds.
"""

import argparse
import collections
import functools
import io
import os
import pathlib
import pickle
import subprocess
import sys
import zipfile

import numpy as np
import pytest
import torch

from lary_jax import torch_checkpoint
from lary_jax.errors import LaryError

pytestmark = pytest.mark.filterwarnings(
    "ignore::DeprecationWarning", "ignore::FutureWarning",
    "ignore::UserWarning")

ROOT = pathlib.Path(__file__).resolve().parents[1]
FORMATS = {"zip": True, "legacy": False}


def _save(obj, path, fmt="zip"):
  torch.save(obj, path, _use_new_zipfile_serialization=FORMATS[fmt])
  return str(path)


def _expected(value):
  """What the reader should return for a value torch holds."""
  if isinstance(value, torch.Tensor):
    t = value.detach().resolve_conj().resolve_neg()
    if t.dtype in (torch.bfloat16, torch.float8_e4m3fn, torch.float8_e5m2):
      # numpy has no such dtypes: compare their bits.
      return ("bits", str(t.dtype).split(".")[1],
              t.view(torch.uint8 if t.element_size() == 1 else torch.int16)
              .numpy())
    if t.dtype in (torch.uint16, torch.uint32, torch.uint64):
      return t.to(torch.int64).numpy().astype(str(t.dtype).split(".")[1])
    return t.numpy()
  if isinstance(value, dict):
    return type(value)({k: _expected(v) for k, v in value.items()})
  if isinstance(value, (list, tuple)):
    return type(value)(_expected(v) for v in value)
  return value


def _assert_same(got, want, where="obj"):
  if isinstance(want, tuple) and len(want) == 3 and want[0] == "bits":
    assert isinstance(got, np.ndarray) and got.dtype.name == want[1], where
    np.testing.assert_array_equal(got.view(want[2].dtype), want[2],
                                  err_msg=where)
  elif isinstance(want, np.ndarray):
    assert isinstance(got, np.ndarray), where
    assert got.dtype == want.dtype and got.shape == want.shape, (
        where, got.dtype, got.shape, want.dtype, want.shape)
    np.testing.assert_array_equal(got, want, err_msg=where)
  elif isinstance(want, dict):
    assert type(got) is type(want) and list(got) == list(want), where
    for k in want:
      _assert_same(got[k], want[k], f"{where}[{k!r}]")
  elif isinstance(want, (list, tuple)):
    assert type(got) is type(want) and len(got) == len(want), where
    for i, (g, w) in enumerate(zip(got, want)):
      _assert_same(g, w, f"{where}[{i}]")
  else:
    assert got == want and type(got) is type(want), (where, got, want)


def _every_dtype():
  g = torch.Generator().manual_seed(0)
  x = torch.randn(3, 5, generator=g)
  return {
      "float32": x, "float64": x.double(), "float16": x.half(),
      "bfloat16": x.bfloat16(), "float8_e4m3fn": x.to(torch.float8_e4m3fn),
      "float8_e5m2": x.to(torch.float8_e5m2),
      "int64": torch.arange(-5, 5), "int32": torch.arange(4).int(),
      "int16": torch.arange(4).short(), "int8": torch.tensor([-128, 127],
                                                            dtype=torch.int8),
      "uint8": torch.tensor([0, 255], dtype=torch.uint8),
      "bool": torch.tensor([True, False]),
      "uint16": torch.tensor([1, 65535]).to(torch.uint16),
      "uint32": torch.tensor([1, 2**32 - 1]).to(torch.uint32),
      "complex64": torch.randn(4, dtype=torch.complex64, generator=g),
      "scalar": torch.tensor(3.5), "empty": torch.zeros(0, 3),
  }


def _layouts():
  base = torch.arange(60, dtype=torch.float32).reshape(5, 12)
  return {
      "base": base, "transposed": base.T, "strided": base[::2, 1::3],
      "row": base[3], "narrowed": base.narrow(1, 4, 5),
      "expanded": torch.ones(3, 1).expand(3, 4),  # stride 0
      "permuted": torch.arange(24.0).reshape(2, 3, 4).permute(2, 0, 1),
      "conj": torch.randn(3, dtype=torch.complex64).conj(),
      "neg": torch._neg_view(torch.randn(3, dtype=torch.complex64)),  # pylint: disable=protected-access
  }


def _state_dict():
  torch.manual_seed(0)
  model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.LayerNorm(4),
                              torch.nn.BatchNorm1d(4))
  return model.state_dict()  # an OrderedDict carrying `_metadata`


@pytest.mark.parametrize("fmt", sorted(FORMATS))
def test_every_dtype_reads_back_exactly(tmp_path, fmt):
  obj = _every_dtype()
  _assert_same(torch_checkpoint.load(_save(obj, tmp_path / "a.pt", fmt)),
               _expected(obj))


@pytest.mark.parametrize("fmt", sorted(FORMATS))
def test_views_keep_their_layout_and_share_storage(tmp_path, fmt):
  obj = _layouts()
  got = torch_checkpoint.load(_save(obj, tmp_path / "a.pt", fmt))
  _assert_same(got, _expected(obj))
  # As in torch, views of one storage share it (the storage is stored once).
  for name in ("transposed", "strided", "row", "narrowed"):
    assert np.shares_memory(got[name], got["base"]), name
  assert got["expanded"].strides[1] == 0


@pytest.mark.parametrize("fmt", sorted(FORMATS))
def test_state_dicts_and_training_checkpoints(tmp_path, fmt):
  sd = _state_dict()
  lightning = {
      "epoch": 3, "global_step": 120, "pytorch-lightning_version": "2.4.0",
      "state_dict": collections.OrderedDict(
          (f"lam.{k}", v) for k, v in sd.items()),
      "optimizer_states": [{"state": {0: {"step": torch.tensor(5.0),
                                          "exp_avg": torch.randn(4, 3)}},
                            "param_groups": [{"lr": 1e-4, "betas": (0.9, 0.99),
                                              "params": [0]}]}],
      "loops": {"fit": {"done": False, "ratio": 0.5}},
  }
  obj = {"sd": sd, "lightning": lightning, "size": torch.Size([2, 3]),
         "nested": [(1, "a", None, True, 2.5, b"\x00\xff", 1 + 2j)],
         "parameter": torch.nn.Parameter(torch.ones(2, 2)),
         "counter": collections.Counter("aab"), "set": {1, 2},
         "frozenset": frozenset({3}), "bytearray": bytearray(b"xy")}
  got = torch_checkpoint.load(_save(obj, tmp_path / "a.ckpt", fmt))
  want = _expected(obj)
  want["size"] = (2, 3)  # torch.Size is a tuple
  want["parameter"] = obj["parameter"].detach().numpy()
  _assert_same(got, want)
  assert got["sd"]._metadata == sd._metadata  # pylint: disable=protected-access
  assert got["sd"]["2.num_batches_tracked"].dtype == np.int64


@pytest.mark.parametrize("fmt", sorted(FORMATS))
def test_dtypes_devices_and_tensor_attributes(tmp_path, fmt):
  tagged = torch.arange(3.0)
  tagged.note = "a Python attribute"  # pickled through _rebuild_from_type_v2
  obj = {"dtype": torch.bfloat16, "device": torch.device("cuda", 1),
         "cpu": torch.device("cpu"), "tagged": tagged}
  got = torch_checkpoint.load(_save(obj, tmp_path / "a.pt", fmt))
  assert got["dtype"] == np.dtype("bfloat16")
  assert (got["device"], got["cpu"]) == ("cuda:1", "cpu")
  np.testing.assert_array_equal(got["tagged"], [0.0, 1.0, 2.0])


def test_big_endian_zip_is_swapped(tmp_path):
  obj = {"f": torch.randn(6), "h": torch.randn(2, 3).half(),
         "c": torch.randn(2, dtype=torch.complex64),
         "i": torch.arange(4), "b": torch.tensor([1, 2], dtype=torch.uint8)}
  little = _save(obj, tmp_path / "little.pt")
  big = str(tmp_path / "big.pt")
  # The file a big-endian machine writes: the same records, each storage's
  # elements (each half of a complex number) byte-swapped, and a
  # `byteorder` record saying "big".
  with zipfile.ZipFile(little) as src, zipfile.ZipFile(big, "w") as dst:
    prefix = next(n for n in src.namelist() if n.endswith("/data.pkl"))[
        :-len("data.pkl")]
    keys = _storage_keys(src.read(f"{prefix}data.pkl"))
    for info in src.infolist():
      data = src.read(info)
      if info.filename == f"{prefix}byteorder":
        data = b"big"
      elif info.filename.startswith(f"{prefix}data/"):
        t = obj[keys[info.filename[len(f"{prefix}data/"):]]]
        width = t.element_size() // (2 if t.is_complex() else 1)
        data = np.frombuffer(data, f"u{width}").byteswap().tobytes()
      dst.writestr(info, data)
  _assert_same(torch_checkpoint.load(big), _expected(obj))


def _storage_keys(data_pkl):
  """storage key -> the top-level name whose tensor uses it."""
  keys, name = {}, []

  class Reader(pickle.Unpickler):

    def find_class(self, module, attr):
      if (module, attr) == ("torch._utils", "_rebuild_tensor_v2"):
        return lambda storage, *_: storage
      if (module, attr) == ("collections", "OrderedDict"):
        return collections.OrderedDict
      return (module, attr)

    def persistent_load(self, pid):
      return pid[2]

  for name, key in Reader(io.BytesIO(data_pkl)).load().items():
    keys[key] = name
  return keys


class _RunsACommand:
  """The classic malicious pickle: unpickling it runs a shell command."""

  def __init__(self, marker):
    self.marker = marker

  def __reduce__(self):
    return (os.system, (f"touch {self.marker}",))


@pytest.mark.parametrize("fmt", sorted(FORMATS))
def test_code_in_a_pickle_is_refused_not_run(tmp_path, fmt):
  marker = tmp_path / "ran"
  path = _save({"w": torch.ones(2), "x": _RunsACommand(marker)},
               tmp_path / "evil.pt", fmt)
  with pytest.raises(LaryError,
                     match=r"evil\.pt: refused the global 'posix\.system'"):
    torch_checkpoint.load(path)
  assert not marker.exists()
  # torch refuses the same file.
  with pytest.raises(pickle.UnpicklingError):
    torch.load(path, weights_only=True)
  assert not marker.exists()
  # As placeholders the objects load, inert: the command still never runs.
  got = torch_checkpoint.load(path, opaque=True)
  assert not marker.exists()
  assert isinstance(got["x"], torch_checkpoint.Opaque)
  assert got["x"].global_name == "posix.system"
  assert got["x"].args == (f"touch {marker}",)
  np.testing.assert_array_equal(got["w"], [1.0, 1.0])


def test_objects_beside_the_weights_are_refused_or_opaque(tmp_path):
  hparams = argparse.Namespace(lr=1e-4, stage="stage-2")
  path = _save({"state_dict": {"w": torch.ones(2)},
                "hyper_parameters": {"ns": hparams, "optimizer":
                                     functools.partial(torch.optim.AdamW,
                                                       lr=1e-4)}},
               tmp_path / "lam.ckpt")
  with pytest.raises(LaryError, match="refused the global 'argparse."
                     "Namespace'"):
    torch_checkpoint.load(path)
  got = torch_checkpoint.load(path, opaque=True)
  ns = got["hyper_parameters"]["ns"]
  assert ns.global_name == "argparse.Namespace"
  assert ns.state == {"lr": 1e-4, "stage": "stage-2"}
  partial = got["hyper_parameters"]["optimizer"]
  assert partial.global_name == "functools.partial"
  assert partial.state[0].global_name == "torch.optim.adamw.AdamW"


def _zip_with_pickle(tmp_path, name, data_pkl, storages=None):
  """A torch-style zip whose data.pkl is `data_pkl`."""
  path = tmp_path / name
  with zipfile.ZipFile(path, "w") as z:
    z.writestr("archive/data.pkl", data_pkl)
    z.writestr("archive/byteorder", "little")
    for key, data in (storages or {}).items():
      z.writestr(f"archive/data/{key}", data)
  return str(path)


class _FloatStorage:
  """Pickles as the persistent id of a 4-element float storage '0'."""


class _Pickler(pickle.Pickler):

  def persistent_id(self, obj):
    if isinstance(obj, _FloatStorage):
      return ("storage", torch.FloatStorage, "0", "cpu", 4)
    return None


def _pickle(obj):
  buf = io.BytesIO()
  _Pickler(buf, protocol=2).dump(obj)
  return buf.getvalue()


class _Tensor:
  """Pickles as torch._utils._rebuild_tensor_v2 with the given layout."""

  def __init__(self, offset, size, stride):
    self.layout = (offset, size, stride)

  def __reduce__(self):
    return (torch._utils._rebuild_tensor_v2,  # pylint: disable=protected-access
            (_FloatStorage(), *self.layout, False, collections.OrderedDict()))


def test_a_tensor_cannot_reach_past_its_storage(tmp_path):
  four = np.arange(4, dtype=np.float32).tobytes()
  ok = _zip_with_pickle(tmp_path, "ok.pt", _pickle(
      {"t": _Tensor(1, (3,), (1,))}), {"0": four})
  np.testing.assert_array_equal(torch_checkpoint.load(ok)["t"], [1, 2, 3])
  for name, layout in {"long": (0, (5,), (1,)), "offset": (2, (2, 2), (1, 1)),
                       "stride": (0, (2,), (4,)),
                       "negative": (0, (2,), (-1,))}.items():
    path = _zip_with_pickle(tmp_path, f"{name}.pt", _pickle(
        {"t": _Tensor(*layout)}), {"0": four})
    with pytest.raises(LaryError, match="reaches element|bad tensor layout"):
      torch_checkpoint.load(path)
  short = _zip_with_pickle(tmp_path, "short.pt", _pickle(
      {"t": _Tensor(0, (4,), (1,))}), {"0": four[:8]})
  with pytest.raises(LaryError, match="storage 0 holds 8 bytes, expected 4"):
    torch_checkpoint.load(short)


def test_state_only_on_ordered_dicts(tmp_path):

  class SetWithState:

    def __reduce__(self):
      return (set, ([1],), {"evil": 1})

  path = _zip_with_pickle(tmp_path, "build.pt", _pickle([SetWithState()]))
  with pytest.raises(LaryError, match="refused to set the state of a set"):
    torch_checkpoint.load(path)


def test_files_that_are_not_checkpoints(tmp_path):
  text = tmp_path / "notes.pt"
  text.write_text("hello")
  with pytest.raises(LaryError, match="notes.pt: neither a zip nor a legacy"):
    torch_checkpoint.load(str(text))
  with pytest.raises(LaryError, match="no such checkpoint file"):
    torch_checkpoint.load(str(tmp_path / "missing.pt"))
  other_zip = tmp_path / "other.pt"
  with zipfile.ZipFile(other_zip, "w") as z:
    z.writestr("readme.txt", "x")
  with pytest.raises(LaryError, match="not one written by torch.save"):
    torch_checkpoint.load(str(other_zip))
  whole = pathlib.Path(_save({"w": torch.randn(1000)}, tmp_path / "w.pt",
                             "legacy")).read_bytes()
  cut = tmp_path / "cut.pt"
  cut.write_bytes(whole[:len(whole) - 100])
  with pytest.raises(LaryError, match=r"cut.pt: storage \d+ is cut short"):
    torch_checkpoint.load(str(cut))
  scripted = str(tmp_path / "scripted.pt")
  torch.jit.save(torch.jit.script(torch.nn.Linear(2, 2)), scripted)
  with pytest.raises(LaryError, match="scripted.pt: refused the global"):
    torch_checkpoint.load(scripted)


def test_package_reads_checkpoints_with_torch_hidden(tmp_path):
  """What a user without torch runs: `convert.read_pt`, UniVLA's `.ckpt`."""
  pt = _save({"target_encoder": {"module.w": torch.ones(2, 3).bfloat16()}},
             tmp_path / "enc.pt")
  ckpt = _save({"state_dict": {"lam.w": torch.arange(3.0)},
                "hyper_parameters": {"optimizer": functools.partial(
                    torch.optim.AdamW, lr=1e-4)}}, tmp_path / "lam.ckpt")
  script = f"""
import sys
sys.modules["torch"] = None  # any `import torch` now fails
from lary_jax.encoders import convert
from lary_jax.lams import univla
w = convert.read_pt({pt!r})
assert list(w) == ["w"] and w["w"].dtype.name == "float32", w
assert w["w"].tolist() == [[1.0] * 3] * 2
lam = univla.read_ckpt({ckpt!r})
assert lam["w"].tolist() == [0.0, 1.0, 2.0], lam
print("read without torch")
"""
  result = subprocess.run([sys.executable, "-c", script], cwd=ROOT,
                          env=dict(os.environ, PYTHONPATH=str(ROOT)),
                          capture_output=True, text=True, timeout=300)
  assert result.returncode == 0, result.stderr[-3000:]
  assert "read without torch" in result.stdout
