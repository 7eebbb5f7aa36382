"""The pixel tokenizers end to end on LARY-Sim, as a user runs them:

  convert (FLUX.2 diffusers folder, Wan2.2 diffusers folder, Open-MAGVIT2
  .ckpt) -> one models dir -> `run --models_dir` -> extract (video mode on
  clips, image mode on pairs) -> classify + regress (MLP, absolute) -> report

The checkpoints are the small random ones of the parity tests (FLUX.2 with
four levels, so that 224-pixel frames give the released model's 14 x 14 grid
at a few channels); LARY-Sim is rendered at 2 classes and 4 episodes; the
probes are a few units wide and train 2 epochs. The released models' token
shapes are checked on abstract (shape-only) instances: upstream README's `--dim`
table, flux2 128, wan2-2 48, magvit2 18.
"""

import json
import math
import types

import jax
import numpy as np
import pytest
from flax import nnx

from lary_jax import benchmark_run
from lary_jax import commands
from lary_jax import extract
from lary_jax import feature_store as fs
from lary_jax.configs import default
from lary_jax.data import images
from lary_jax.encoders import flux2_vae
from lary_jax.encoders import magvit2
from lary_jax.encoders import registry
from lary_jax.encoders import wan_vae
from lary_jax.errors import LaryError
from lary_jax.sim import layout
from lary_jax.sim import render
from tests.encoders import flux2_vae_test
from tests.encoders import magvit2_test
from tests.encoders import wan_vae_test
from tfds_builders import metadata
from tfds_builders import prepare

pytestmark = pytest.mark.filterwarnings(
    "ignore::DeprecationWarning", "ignore::FutureWarning")

SMALL = layout.Sizes(classes=("lift_up", "push_forward"),
                     clips_per_class=(2, 1, 1), episodes=(2, 1, 1))
SEED = 1  # of seeds 0-11, the shortest episodes: 14 / 10 / 13 pairs
# FLUX.2's layout (3 halvings, then 2 x 2 patches: 16 pixels a token side)
# at 8 channels a level.
FLUX2_SMALL = dict(block_out_channels=(8,) * 4, norm_num_groups=4,
                   down_block_types=("DownEncoderBlock2D",) * 4,
                   up_block_types=("UpDecoderBlock2D",) * 4)
# Per models-dir folder (the name in features, results and the report):
# (clip, pair) feature shapes of the small models. The MAGVIT2 folder is not
# named as its model, as a user may name it.
SHAPES = {
    "flux2": ((9, 196, 32), (2, 196, 32)),  # 8 latent channels x 2 x 2
    "wan2_2": ((3, 196, 8), (2, 196, 8)),  # latent frames 0, 1-4, 5-8
    "open_magvit2": ((9, 56 * 56, 18), (2, 56 * 56, 18)),  # 4x fewer a side
}
DATASETS = {"sim_classification": 0, "sim_regression": 1}


class _Flags(types.SimpleNamespace):
  """The command-line flags as `commands` reads them; none given."""

  def __getitem__(self, name):
    return types.SimpleNamespace(present=False)


def _flags(root, models_dir):
  return _Flags(
      dataset=None, models_dir=str(models_dir), split=None, stride=None,
      model=None, data_dir=str(root / "data"), metadata_dir=None,
      tfds_dir=str(root / "tfds"), workdir=str(root / "wd"), plugins=[],
      out=None, src=None, tiny=False, seed=0, skip_bad_rows=False,
      checkpoint=None, mode=None, export_npz=False, la_dir=None, csv=None,
      coordinator_address=None, num_processes=None, process_id=None, dim=None,
      classes=None, model_type="mlp", action_mode="absolute", seeds=None,
      published=None)


def _config():
  """The default config with a run of only --models_dir and tiny probes."""
  config = default.get_config()
  config.run.models = ""
  config.run.seeds = "0"
  config.run.decoders = "mlp:absolute"
  config.prepare.num_workers = 1  # in this process: no interpreters to start
  n = jax.device_count()  # global batches split evenly over the devices
  # One micro batch a device a step: one compilation a mode, little padding.
  config.extract.update(global_batch=2 * n, micro_batch=2)
  config.run.overrides.classify.update(epochs=2, min_updates=0,
                                       global_batch=4 * n, eval_batch=8 * n)
  config.run.overrides.classify.probe.update(model_dim=16, num_heads=2)
  config.run.overrides.regress.update(epochs=2, min_updates=0,
                                      global_batch=8 * n, eval_batch=16 * n,
                                      mlp_hidden=32)
  config.lock()
  return config


def _magvit2_ckpt(path):
  """The parity fixture's small Open-MAGVIT2 encoder as a Lightning .ckpt."""
  with np.load(magvit2_test._FIXTURE, allow_pickle=False) as f:
    weights = {k[2:]: f[k] for k in f.files if k.startswith("w/")}
  magvit2_test._save_ckpt(str(path), weights)
  return str(path)


def _checkpoints(root):
  """The three small checkpoints in their released formats, converted."""
  models = root / "models"
  flux2_vae_test._vae(root / "flux2_hf", **FLUX2_SMALL)
  registry.convert("flux2", str(root / "flux2_hf"), str(models / "flux2"))
  wan_vae_test._vae(root / "wan_hf")
  registry.convert("wan2_2", str(root / "wan_hf"), str(models / "wan2_2"))
  registry.convert("magvit2_encoder", _magvit2_ckpt(root / "tokenizer.ckpt"),
                   str(models / "open_magvit2"))
  return models


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
  root = tmp_path_factory.mktemp("pixtok")
  render._simulate(str(root / "data"), SMALL, tiny=False, seed=SEED,
                   num_workers=1, progress=False)
  models = _checkpoints(root)
  before = registry.available()
  assert commands.run(_flags(root, models), _config()) == 0
  # A folder extracted under its own name (open_magvit2) leaves no alias.
  assert registry.available() == before
  return root / "wd"


def _source(workdir, name, split):
  builder = prepare.builder(metadata.DATASETS[name], str(workdir.parent /
                                                         "tfds"))
  return builder.as_data_source()[split]


@pytest.mark.parametrize("model", sorted(SHAPES))
def test_every_split_is_extracted_in_upstream_token_layout(workdir, model):
  for name, kind in DATASETS.items():
    for split in ("train", "validation", "unseen"):
      store = workdir / "features" / name / split / model
      source = fs.FeatureSource(str(store))
      features = source.read_all()
      assert source.manifest["token_shape"] == list(SHAPES[model][kind])
      assert features.shape == (len(_source(workdir, name, split)),
                                *SHAPES[model][kind])
      features = features.astype(np.float32)
      assert np.isfinite(features).all() and features.std() > 0.01


def test_a_stored_clip_is_the_encoder_on_its_frames(workdir):
  # Wan2.2 reads the whole clip as one video: the store's row is the
  # encoder's [latent frames, tokens, channels] of the record's 9 frames.
  record = _source(workdir, "sim_classification", "validation")[1]
  frames = np.stack([images.decode_image(f) for f in record["frames"]])
  enc = registry.load("wan2_2", str(workdir.parent / "models" / "wan2_2"))
  want = np.asarray(enc(frames[None]))[0]
  store = workdir / "features" / "sim_classification" / "validation" / "wan2_2"
  got = fs.FeatureSource(str(store)).read_all()[1].astype(np.float32)
  np.testing.assert_allclose(got, want, rtol=2e-3, atol=2e-3)


def _numbers(tree):
  """Every float in a results.json tree."""
  if isinstance(tree, dict):
    return [x for v in tree.values() for x in _numbers(v)]
  if isinstance(tree, list):
    return [x for v in tree for x in _numbers(v)]
  return [tree] if isinstance(tree, float) else []


@pytest.mark.parametrize("model", sorted(SHAPES))
def test_both_probes_give_finite_numbers(workdir, model):
  classify = json.loads((workdir / "classify" / "sim_classification" / model /
                         "results.json").read_text())
  regress = json.loads((workdir / "regress" / "sim_regression" / model /
                        "mlp_absolute" / "results.json").read_text())
  for results in (classify, regress):
    assert results["model"] == model
    assert all(math.isfinite(x) for x in _numbers(results))
  assert classify["num_classes"] == 2
  for selection in ("upstream_style", "honest"):
    for split in ("validation", "unseen"):
      assert 0 <= classify[selection][split]["top1"]["mean"] <= 1
      assert regress[selection][split]["mse"]["mean"] > 0


def test_the_report_lists_the_three_models(workdir):
  report = (workdir / "report.md").read_text()
  for model in SHAPES:
    assert f"| sim_classification | {model} | model | seen |" in report
    assert (f"| sim_regression | {model} | model | mlp_absolute | seen |"
            in report)
  assert (workdir / "report.html").exists()


def _abstract_encoder(name, module):
  """The released model as shapes only (no weights, no compute)."""
  cfg = next(iter(module.VARIANTS.values()))
  model = nnx.eval_shape(lambda: module.Model(cfg, rngs=nnx.Rngs(0)))
  return registry.make_encoder(name, model, preprocess=module.preprocess,
                               select_tokens=module.select_tokens,
                               mode=registry._MODEL_MODULES[name][1])


@pytest.mark.parametrize("name, module, dim", [
    ("flux2", flux2_vae, 128), ("wan2_2", wan_vae, 48),
    ("magvit2_encoder", magvit2, 18)])
def test_released_models_give_upstream_feature_shapes(name, module, dim):
  enc = _abstract_encoder(name, module)
  frames = 3 if name == "wan2_2" else 9  # Wan2.2 halves time twice
  assert (enc.dim, enc.num_tokens) == (dim, 196)
  assert extract.token_shape(enc, "video") == (frames, 196, dim)
  assert extract.token_shape(enc, "image") == (2, 196, dim)
  assert isinstance(jax.tree.leaves(enc.params)[0], jax.ShapeDtypeStruct)


def test_a_folder_named_as_another_built_in_model_is_refused(tmp_path):
  # `magvit2` is LARY's LAQ on MAGVIT2 latents, not the tokenizer: a folder
  # of that name would be extracted as the LAQ.
  registry.convert("magvit2_encoder", _magvit2_ckpt(tmp_path / "tok.ckpt"),
                   str(tmp_path / "models" / "magvit2"))
  with pytest.raises(LaryError, match="folder 'magvit2' holds a "
                     "'magvit2_encoder' checkpoint, but 'magvit2' is another "
                     "built-in model; rename the folder"):
    benchmark_run.models_in(str(tmp_path / "models"))
  (tmp_path / "models" / "magvit2").rename(tmp_path / "models" / "tokenizer")
  assert benchmark_run.models_in(str(tmp_path / "models")) == [
      benchmark_run.Model("magvit2_encoder",
                          str(tmp_path / "models" / "tokenizer"), "tokenizer")]
