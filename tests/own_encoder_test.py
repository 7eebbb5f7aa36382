"""Your own encoder, of any framework, through the probes.

Both routes the README shows, run as a user runs them: its PyTorch example
(features computed by torch, written with `feature_store.Writer`) and its
JAX example (a factory registered with `encoders.register`, loaded by
`--plugins`), each followed by the probe commands. The README's code blocks
are the code that runs here.
"""

import os
import pathlib
import re
import subprocess
import sys

import numpy as np
import pytest
import torch

from lary_jax import extract
from lary_jax import feature_store as fs
from lary_jax import workdir_layout
from tests.builders import fake_data_dir
from tests.probes.classify_command_test import SMALL as CLASSIFY
from tests.probes.regress_command_test import SMALL as REGRESS
from tfds_builders import metadata
from tfds_builders import prepare

pytestmark = pytest.mark.filterwarnings(
    "ignore::DeprecationWarning", "ignore::FutureWarning")

ROOT = pathlib.Path(__file__).resolve().parents[1]


def readme_block(marker: str) -> str:
  """The fenced code block after `<!-- marker -->` in README.md."""
  text = (ROOT / "README.md").read_text()
  found = re.search(rf"<!-- {marker} -->\n```\w*\n(.*?)```", text, re.S)
  assert found, f"README.md has no code block after <!-- {marker} -->"
  return found.group(1)


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
  """A folder whose lary_workdir/tfds holds CALVIN- and Human_1st-style
  datasets made from upstream rows (as the command tests make them)."""
  root = tmp_path_factory.mktemp("own")
  data_dir, tfds_dir = str(root / "data"), str(root / "lary_workdir" / "tfds")
  fake_data_dir.make_regression(data_dir, "calvin")
  fake_data_dir.make_classification(data_dir, "human_1st",
                                    clips_per_class=(4, 2))
  for name in ("calvin", "human_1st"):
    prepare.prepare(metadata.DATASETS[name], data_dir, tfds_dir,
                    options=prepare.PrepareOptions(num_workers=0))
  return root


def _run(cwd, *args):
  env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=str(ROOT))
  return subprocess.run([sys.executable, *args], cwd=cwd, env=env,
                        capture_output=True, text=True, timeout=600)


def _command(cwd, *args):
  return _run(cwd, "-m", "lary_jax.main", *args)


def test_torch_features_written_by_writer_are_probed(workdir):
  # The README's example: a torch model's features of CALVIN's pairs.
  script = _run(workdir, "-c", readme_block("own-encoder-torch"))
  assert script.returncode == 0, script.stderr[-3000:]
  builder = prepare.builder(metadata.DATASETS["calvin"],
                            str(workdir / "lary_workdir" / "tfds"))
  store = workdir_layout.features_dir(
      str(workdir / "lary_workdir" / "features"), "calvin", "validation",
      "my_torch_model")
  records = builder.as_data_source()["validation"]
  stored = fs.FeatureSource(store)
  assert stored.token_shape == (2, 16, 8) and len(stored) == len(records)
  # Row i is record i's pair through the same torch model, in float16 (to
  # float16's rounding: torch may sum a batch of 2 and of 16 differently).
  torch.manual_seed(0)
  net = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 56, stride=56),
                            torch.nn.Flatten(2))
  frames = extract.example_frames(records[7], "image")
  assert frames.shape == (2, 224, 224, 3) and frames.dtype == np.uint8
  x = torch.from_numpy(frames).permute(0, 3, 1, 2).float() / 255
  with torch.no_grad():
    want = net(x).transpose(1, 2).numpy()
  np.testing.assert_allclose(stored.features(7), want, rtol=2e-3, atol=1e-3)
  assert stored.identities[7] == records[7]["src_path"].decode()

  regress = _command(workdir, "regress", "--model=my_torch_model",
                     "--dataset=calvin", *REGRESS)
  assert regress.returncode == 0, regress.stderr[-3000:]
  out = workdir / "lary_workdir" / "regress" / "calvin" / "my_torch_model"
  assert (out / "mlp_absolute" / "results.json").exists()

  # Clips, for the classification probe: a torch model of 9-frame clips.
  builder = prepare.builder(metadata.DATASETS["human_1st"],
                            str(workdir / "lary_workdir" / "tfds"))
  clip_net = torch.nn.Conv3d(3, 6, (3, 56, 56), stride=(3, 56, 56))
  for split in builder.info.splits:
    records = builder.as_data_source()[split]
    with fs.Writer(workdir_layout.features_dir(
        str(workdir / "lary_workdir" / "features"), "human_1st", split,
        "torch_video"),
                   records, mode="video", model="torch_video",
                   dataset="human_1st", split=split, rows_per_shard=5) as w:
      for rows in w.todo:
        clips = np.stack([extract.example_frames(records[i], "video")
                          for i in rows])  # [B, 9, 224, 224, 3]
        x = torch.from_numpy(clips).permute(0, 4, 1, 2, 3).float() / 255
        with torch.no_grad():
          tokens = clip_net(x).flatten(3).permute(0, 2, 3, 1)  # [B, 3, 16, 6]
        w.write(rows.start, tokens.numpy(),
                identities=[records[i]["video_path"] for i in rows])
  classify = _command(workdir, "classify", "--model=torch_video",
                      "--dataset=human_1st", *CLASSIFY)
  assert classify.returncode == 0, classify.stderr[-3000:]
  assert (workdir / "lary_workdir" / "classify" / "human_1st" /
          "torch_video" / "results.json").exists()


def test_a_registered_jax_encoder_is_extracted_and_probed(workdir):
  (workdir / "my_encoder.py").write_text(readme_block("own-encoder-jax"))
  check = _run(workdir, "-c", """
import numpy as np
from lary_jax import encoders
import my_encoder
enc = encoders.load("tiny_cnn")
assert (enc.mode, enc.num_tokens, enc.dim) == ("image", 196, 64)
frames = np.zeros((2, 224, 224, 3), np.uint8)
assert enc(frames).shape == (2, 196, 64)
assert enc(np.zeros((2, 9, 224, 224, 3), np.uint8)).shape == (2, 9, 196, 64)
print("contract holds")
""")
  assert check.returncode == 0, check.stderr[-3000:]
  extract_run = _command(workdir, "extract", "--plugins=my_encoder",
                         "--model=tiny_cnn", "--dataset=calvin",
                         "--config.extract.global_batch=8",
                         "--config.extract.micro_batch=8")
  assert extract_run.returncode == 0, extract_run.stderr[-3000:]
  store = fs.FeatureSource(workdir_layout.features_dir(
      str(workdir / "lary_workdir" / "features"), "calvin", "validation",
      "tiny_cnn"))
  assert store.token_shape == (2, 196, 64)
  regress = _command(workdir, "regress", "--model=tiny_cnn",
                     "--dataset=calvin", *REGRESS)
  assert regress.returncode == 0, regress.stderr[-3000:]
  assert (workdir / "lary_workdir" / "regress" / "calvin" / "tiny_cnn" /
          "mlp_absolute" / "results.json").exists()
