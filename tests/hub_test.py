"""Checkpoints by Hugging Face hub id, offline from a local HF cache.

A small random `transformers` DINOv2 is laid out by hand in the cache's own
layout (`models--ORG--NAME/snapshots/REV/...` + `refs/main`) under a
temporary `HF_HUB_CACHE`; with `HF_HUB_OFFLINE=1` every route must load it
by id, without a network, exactly as it loads the folder itself:
`encoders.load`, `convert --src` and `extract --checkpoint` (each in its own
process, so that huggingface_hub reads the environment afresh).
"""

import json
import os
import pathlib
import subprocess
import sys
import types

import numpy as np
import pytest
import torch
import transformers

from lary_jax import feature_store as fs
from lary_jax import hub
from lary_jax.errors import LaryError
from tests.builders import fake_data_dir
from tfds_builders import metadata
from tfds_builders import prepare

pytestmark = pytest.mark.filterwarnings(
    "ignore::DeprecationWarning", "ignore::FutureWarning")

ROOT = pathlib.Path(__file__).resolve().parents[1]
REPO = "lary-test/dinov2-tiny"
REVISION = "0123456789abcdef0123456789abcdef01234567"


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
  root = tmp_path_factory.mktemp("hf")
  repo_dir = root / "hub" / ("models--" + REPO.replace("/", "--"))
  snapshot = repo_dir / "snapshots" / REVISION
  torch.manual_seed(0)
  transformers.Dinov2Model(transformers.Dinov2Config(
      hidden_size=32, intermediate_size=64, num_hidden_layers=2,
      num_attention_heads=2, patch_size=14, image_size=224)
  ).save_pretrained(snapshot)
  (snapshot / "notes").mkdir()
  (snapshot / "notes" / "card.txt").write_text("a file inside the repo")
  (repo_dir / "refs").mkdir()
  (repo_dir / "refs" / "main").write_text(REVISION)
  return types.SimpleNamespace(root=root, hub=str(root / "hub"),
                               snapshot=str(snapshot))


def _run(cache, args, cwd=ROOT, **env):
  env = dict(os.environ, PYTHONPATH=str(ROOT), JAX_PLATFORMS="cpu",
             HF_HUB_CACHE=cache.hub, HF_HUB_OFFLINE="1", **env)
  return subprocess.run([sys.executable, *args], cwd=cwd, env=env,
                        capture_output=True, text=True, timeout=600)


def test_ids_and_paths_are_told_apart():
  assert hub.parse("facebook/dinov2-large") == (
      "facebook/dinov2-large", "", None)
  assert hub.parse("Wan-AI/Wan2.2-TI2V-5B/Wan2.2_VAE.pth@main") == (
      "Wan-AI/Wan2.2-TI2V-5B", "Wan2.2_VAE.pth", "main")
  assert hub.parse("microsoft/villa-x/lam") == ("microsoft/villa-x", "lam",
                                                 None)
  for not_an_id in ("dinov2", "./models/x", "/abs/x", "a/b/../c", "a--b/c",
                    "-a/b", "a/b@two words", "a/b//c", "~/x/y"):
    assert hub.parse(not_an_id) is None, not_an_id
  with pytest.raises(LaryError, match="no such file or folder, and not a "
                     "Hugging Face hub id"):
    hub.resolve("./no/such/dir")


def test_encoders_load_by_id_as_by_folder(cache):
  script = f"""
import numpy as np
from lary_jax import encoders
images = np.random.default_rng(0).integers(0, 256, (2, 224, 224, 3), np.uint8)
by_id = encoders.load("dinov2", {REPO!r})(images)
by_folder = encoders.load("dinov2", {cache.snapshot!r})(images)
assert by_id.shape == (2, 256, 32), by_id.shape
np.testing.assert_array_equal(by_id, by_folder)
print("same tokens")
"""
  result = _run(cache, ["-c", script])
  assert result.returncode == 0, result.stderr[-3000:]
  assert "same tokens" in result.stdout


def test_convert_by_id_and_its_errors(cache, tmp_path):
  out = tmp_path / "converted"
  result = _run(cache, ["-m", "lary_jax.main", "convert", "--model=dinov2",
                        f"--src={REPO}", f"--out={out}"])
  assert result.returncode == 0, result.stderr[-3000:]
  assert f"dinov2: converted {REPO} -> {out}" in result.stdout
  script = f"""
import numpy as np
from lary_jax import encoders
images = np.random.default_rng(1).integers(0, 256, (1, 224, 224, 3), np.uint8)
np.testing.assert_array_equal(encoders.load("dinov2", {str(out)!r})(images),
                              encoders.load("dinov2", {REPO!r})(images))
print("same tokens")
"""
  same = _run(cache, ["-c", script])
  assert same.returncode == 0, same.stderr[-3000:]

  def error(src, **env):
    run = _run(cache, ["-m", "lary_jax.main", "convert", "--model=dinov2",
                       f"--src={src}", f"--out={tmp_path / 'x'}"], **env)
    assert run.returncode == 1, run.stderr[-3000:]
    # `--model dinov2` also prints its one-line naming note (upstream's
    # dinov2 is our lapa_dinov2); the error is one line of its own.
    lines = [line for line in run.stderr.strip().splitlines()
             if not line.startswith("note: --model dinov2 ")]
    assert len(lines) == 1 and lines[0].startswith("error: "), run.stderr
    return lines[0]

  assert "not a Hugging Face hub id" in error("not an id!")
  assert "not in the cache, and the hub cannot be asked" in error(
      "lary-test/not-cached")
  assert "has no 'missing.pt'" in error(f"{REPO}/missing.pt")
  # A file inside a cached repository, by id.
  assert hub.parse(f"{REPO}/notes/card.txt")[1] == "notes/card.txt"
  card = _run(cache, ["-c", "from lary_jax import hub; print(hub.resolve("
                      f"{REPO + '/notes/card.txt'!r}))"])
  assert card.stdout.strip() == os.path.join(cache.snapshot, "notes",
                                             "card.txt"), card.stderr
  # Without huggingface_hub a hub id names the extra to install.
  hidden = _run(cache, ["-c", f"""
import sys
sys.modules["huggingface_hub"] = None
from lary_jax import hub
from lary_jax.errors import LaryError
try:
  hub.resolve({REPO!r})
except LaryError as e:
  print(e)
"""])
  assert "install huggingface_hub (pip install 'lary-jax[hub]')" in \
      hidden.stdout, hidden.stderr[-3000:]


def test_extract_by_id_as_by_folder(cache, tmp_path):
  data_dir, tfds_dir = str(tmp_path / "data"), str(tmp_path / "tfds")
  fake_data_dir.make_regression(data_dir, "calvin")
  prepare.prepare(metadata.DATASETS["calvin"], data_dir, tfds_dir,
                  options=prepare.PrepareOptions(num_workers=0))
  stores = {}
  for name, checkpoint in (("id", REPO), ("folder", cache.snapshot)):
    out = tmp_path / name
    result = _run(cache, ["-m", "lary_jax.main", "extract", "--model=dinov2",
                          f"--checkpoint={checkpoint}", "--dataset=calvin",
                          "--split=validation", f"--tfds_dir={tfds_dir}",
                          f"--out={out}",
                          "--config.extract.global_batch=16",
                          "--config.extract.micro_batch=2"])
    assert result.returncode == 0, result.stderr[-3000:]
    stores[name] = str(out / "calvin" / "validation" / "dinov2")
  by_id = fs.FeatureSource(stores["id"])
  by_folder = fs.FeatureSource(stores["folder"])
  assert by_id.read_all().shape == (30, 2, 256, 32)
  np.testing.assert_array_equal(by_id.read_all(), by_folder.read_all())
  # The store records the id as given and the digest of the weights it named.
  run_id = json.loads(pathlib.Path(stores["id"], fs.RUN).read_text())
  run_folder = json.loads(pathlib.Path(stores["folder"], fs.RUN).read_text())
  assert run_id["checkpoint"] == REPO
  assert run_id["checkpoint_digest"] == run_folder["checkpoint_digest"]
