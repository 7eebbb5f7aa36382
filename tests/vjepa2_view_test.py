"""V-JEPA 2's own view: stored by `prepare`, read by `extract`.

A small LARY-Sim (224 x 224 renders) and a fake Human_1st (40 x 48 clips,
where squashing and V-JEPA 2's crop differ) are prepared with and without
`vjepa2_view`; a tiny random V-JEPA 2 encoder is extracted from both.
"""

import shutil
import types

import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from lary_jax import commands
from lary_jax import extract
from lary_jax import feature_store as fs
from lary_jax.configs import default
from lary_jax.data import images
from lary_jax.data import sampler
from lary_jax.data import video
from lary_jax.encoders import registry
from lary_jax.encoders import vjepa2
from lary_jax.errors import LaryError
from lary_jax.sim import layout
from lary_jax.sim import render
from tests.builders import fake_data_dir
from tfds_builders import metadata
from tfds_builders import prepare

pytestmark = pytest.mark.filterwarnings(
    "ignore::DeprecationWarning", "ignore::FutureWarning")

NAMES = ("sim_classification", "sim_regression", "human_1st")
SMALL = layout.Sizes(classes=("lift_up",), clips_per_class=(1, 1, 1),
                     episodes=(1, 0, 1))


@pytest.fixture(scope="module")
def data(tmp_path_factory):
  root = tmp_path_factory.mktemp("vjepa2_view")
  data_dir = str(root / "data")
  render._simulate(data_dir, SMALL, tiny=False, seed=0, num_workers=1,
                   progress=False)
  fake_data_dir.make_classification(data_dir, "human_1st")
  dirs = {"view": str(root / "tfds_view"), "plain": str(root / "tfds_plain")}
  for name in NAMES:
    for kind, tfds_dir in dirs.items():
      prepare.prepare(metadata.DATASETS[name], data_dir, tfds_dir,
                      options=prepare.PrepareOptions(
                          num_workers=0, vjepa2_view=kind == "view"))
  return types.SimpleNamespace(root=root, data_dir=data_dir, **dirs)


def _reader(tfds_dir, name):
  """A builder made as `extract` makes it: without frame options."""
  return prepare.builder(metadata.DATASETS[name], tfds_dir)


def _decode(encoded):
  return np.stack([images.decode_image(e) for e in encoded])


def _frames(record, keys):
  """uint8 [T, 224, 224, 3]: a clip's frames, or a (src, tgt) pair."""
  return np.concatenate([
      _decode([record[k]] if isinstance(record[k], bytes) else record[k])
      for k in keys])


def _paths(data, name, split, column, value):
  """The full-resolution files of the CSV row whose `column` is `value`."""
  spec = metadata.DATASETS[name]
  csv_path = metadata.find_csvs(spec, f"{data.data_dir}/metadata")[split]
  rows, _ = metadata.read_split(spec, csv_path, data.data_dir)
  return next(r.paths for r in rows if r.fields[column] == value)


@pytest.mark.parametrize("name", ["sim_classification", "human_1st"])
def test_stored_clip_view_is_upstream_view_of_full_frames(data, name):
  view = _reader(data.view, name).as_data_source()["train"][0]
  plain = _reader(data.plain, name).as_data_source()["train"][0]
  clip = video.read_video(_paths(data, name, "train", "video_path",
                                 view["video_path"].decode())["video_path"])
  ids = (list(range(0, 18, 2)) if name == "human_1st"
         else sampler.sample_frame_ids(clip))
  got = _decode(view["frames_vjepa2"])  # [9, 224, 224, 3]
  np.testing.assert_array_equal(got, vjepa2.upstream_view(clip[ids]))
  # The squashed frames are stored as before, beside the view.
  assert list(view["frames"]) == list(plain["frames"])
  if name == "human_1st":  # 40 x 48 clips: the crop is not the squash
    assert np.abs(got.astype(int) - _decode(view["frames"])).max() > 100


def test_stored_pair_view_is_upstream_view_of_full_images(data):
  records = _reader(data.view, "sim_regression").as_data_source()["unseen"]
  for i in (0, len(records) - 1):
    record = records[i]
    paths = _paths(data, "sim_regression", "unseen", "src_img",
                   record["src_path"].decode())
    for key, column in (("src_image", "src_img"), ("tgt_image", "tgt_img")):
      full = images.load_image(paths[column])[None]
      np.testing.assert_array_equal(
          images.decode_image(record[key + "_vjepa2"]),
          vjepa2.upstream_view(full)[0])


def test_reader_without_the_option_sees_the_view(data):
  for name, key in (("sim_classification", "frames_vjepa2"),
                    ("sim_regression", "tgt_image_vjepa2")):
    view, plain = _reader(data.view, name), _reader(data.plain, name)
    assert key in view.info.features and key not in plain.info.features
    assert view.info.metadata["vjepa2_view"] is True
    assert plain.info.metadata["vjepa2_view"] is False
    split = list(view.info.splits)[0]
    assert key in view.as_data_source()[split][0]
    assert key not in plain.as_data_source()[split][0]


def test_prepare_with_another_view_setting_is_refused(data, tmp_path):
  spec = metadata.DATASETS["sim_regression"]
  for tfds_dir, found, wanted in ((data.view, True, False),
                                  (data.plain, False, True)):
    with pytest.raises(LaryError, match=(
        f"prepared with vjepa2_view={found}, not {wanted}; pass "
        f"--config.prepare.vjepa2_view={found} to use it as it is, or "
        r"--config.prepare.overwrite=True")):
      prepare.prepare(spec, data.data_dir, tfds_dir,
                      options=prepare.PrepareOptions(num_workers=0,
                                                     vjepa2_view=wanted))
  # The fix the message names: overwrite prepares it again with the view.
  copy = str(tmp_path / "tfds")
  shutil.copytree(data.plain, copy)
  b = prepare.prepare(spec, data.data_dir, copy, options=prepare.PrepareOptions(
      num_workers=0, vjepa2_view=True, overwrite=True))
  assert "src_image_vjepa2" in b.info.features
  assert b.info.metadata["vjepa2_view"] is True


# ------------------------------------------------------------ extraction


@pytest.fixture(scope="module")
def encoder():
  """A random 1-layer V-JEPA 2 that reads the stored crop, as the real one."""
  cfg = vjepa2.Config(hidden_size=48, num_attention_heads=2,
                      num_hidden_layers=1)
  return registry.make_encoder(
      "tiny_vjepa2", vjepa2.Model(cfg, rngs=nnx.Rngs(0)),
      preprocess=vjepa2.preprocess, select_tokens=vjepa2.select_tokens,
      mode="video", frames_view=vjepa2.FRAMES_VIEW)


def _extract(data, encoder, store_dir, *, tfds_dir, name, split, mode,
             frames="model"):
  return extract.extract_split(
      encoder, _reader(tfds_dir, name).as_data_source()[split], mode=mode,
      store_dir=str(store_dir), fields={"dataset": name},
      options=extract.Options(global_batch=2, micro_batch=1, dtype="float32",
                              frames=frames))


@pytest.mark.parametrize("name,split,mode,keys", [
    ("human_1st", "validation", "video", ("frames",)),
    ("sim_regression", "unseen", "image", ("src_image", "tgt_image"))])
def test_extraction_reads_the_view_or_the_squashed_frames(
    data, encoder, tmp_path, name, split, mode, keys):
  records = _reader(data.view, name).as_data_source()[split]
  for frames, suffix in (("model", "_vjepa2"), ("squashed", "")):
    store = tmp_path / frames
    _extract(data, encoder, store, tfds_dir=data.view, name=name, split=split,
             mode=mode, frames=frames)
    source = fs.FeatureSource(str(store))
    assert source.manifest["frame_keys"] == [k + suffix for k in keys]
    got = source.read_all()
    for i in (0, len(records) - 1):
      clip = _frames(records[i], [k + suffix for k in keys])
      want = np.asarray(encoder(jnp.asarray(clip[None])))[0]
      np.testing.assert_allclose(got[i], want, atol=2e-5)
  # The two stores hold different features of the same rows.
  assert np.abs(fs.FeatureSource(str(tmp_path / "model")).read_all() -
                got).max() > 1e-2
  # A store started from one view is never resumed from the other.
  with pytest.raises(LaryError, match=r"other settings \(frame_keys"):
    _extract(data, encoder, tmp_path / "model", tfds_dir=data.view,
             name=name, split=split, mode=mode, frames="squashed")


def test_a_dataset_without_the_view_is_refused_with_both_fixes(
    data, encoder, tmp_path):
  fixes = (r"human_1st has no frames_vjepa2 \(the vjepa2 view .*"
           r"prepare --dataset human_1st --data_dir DATA_DIR "
           r"--config.prepare.vjepa2_view=True "
           r"--config.prepare.overwrite=True`, or .*"
           r"--config.extract.frames=squashed")
  with pytest.raises(LaryError, match=fixes):
    _extract(data, encoder, tmp_path / "a", tfds_dir=data.plain,
             name="human_1st", split="train", mode="video")
  assert not (tmp_path / "a").exists()  # refused before the store starts
  summary = _extract(data, encoder, tmp_path / "b", tfds_dir=data.plain,
                     name="human_1st", split="train", mode="video",
                     frames="squashed")
  assert summary.rows_computed == 9
  with pytest.raises(LaryError, match="frames='crop': expected one of"):
    _extract(data, encoder, tmp_path / "c", tfds_dir=data.view,
             name="human_1st", split="train", mode="video", frames="crop")


def test_cli_extract_checks_every_dataset_first(data, encoder, monkeypatch,
                                                tmp_path):
  monkeypatch.setattr(registry, "_FACTORIES", dict(registry._FACTORIES))
  registry.register("tiny_vjepa2", lambda path, **kw: encoder)
  # Human_1st has the view, LARY-Sim's regression split does not.
  tfds_dir = tmp_path / "tfds"
  shutil.copytree(f"{data.view}/lary_classification",
                  tfds_dir / "lary_classification")
  shutil.copytree(f"{data.plain}/lary_regression",
                  tfds_dir / "lary_regression")
  flags = types.SimpleNamespace(
      model="tiny_vjepa2", dataset="human_1st,sim_regression", mode=None,
      split=None, stride=None, tfds_dir=str(tfds_dir), workdir=str(tmp_path),
      out=str(tmp_path / "features"), checkpoint=None, csv=None,
      coordinator_address=None, num_processes=None, process_id=None,
      export_npz=False, data_dir=None, metadata_dir=None, la_dir=None)
  config = default.get_config()
  with pytest.raises(LaryError, match="sim_regression has no src_image_vjepa2"
                     ", tgt_image_vjepa2"):
    commands.extract(flags, config)
  assert not (tmp_path / "features").exists()
