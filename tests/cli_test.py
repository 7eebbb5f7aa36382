"""The command line as a user from upstream meets it: `lary`, help, configs
by name from any folder, config mistakes as one line, upstream's names."""

import os
import pathlib
import re
import subprocess
import sys

import pytest

from lary_jax import names

ROOT = pathlib.Path(__file__).resolve().parents[1]
# The console script pip installs beside the interpreter.
LARY = os.path.join(os.path.dirname(sys.executable), "lary")


def _lary(*args, cwd, module=True):
  argv = ([sys.executable, "-m", "lary_jax"] if module else [LARY])
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  return subprocess.run([*argv, *args], capture_output=True, text=True,
                        cwd=cwd, env=env, timeout=300)


def _one_error_line(result) -> str:
  """The only stderr line of a failed command (no traceback)."""
  assert result.returncode == 1, (result.stdout, result.stderr)
  lines = result.stderr.strip().splitlines()
  assert "Traceback" not in result.stderr, result.stderr
  assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
  return lines[0]


def test_console_script_and_module_help_exit_zero(tmp_path):
  for module in (True, False):
    result = _lary("--help", cwd=tmp_path, module=module)
    assert result.returncode == 0, result.stderr
    for command in ("simulate", "prepare", "extract", "classify", "regress",
                    "train_lam", "report"):
      assert re.search(rf"^  {command} ", result.stdout, re.M), command


def test_command_help_lists_that_commands_flags_only(tmp_path):
  result = _lary("classify", "--help", cwd=tmp_path, module=False)
  assert result.returncode == 0, result.stderr
  assert result.stdout.startswith("usage: lary classify --model M")
  for flag in ("--model", "--dataset", "--seeds", "--dim", "--classes",
               "--workdir", "--config"):
    assert f"  {flag}" in result.stdout, flag
  for other in ("--src", "--skip_bad_rows", "--export_npz", "--model_type",
                "--published", "--tiny"):
    assert f"  {other}:" not in result.stdout, other
  regress = _lary("regress", "-h", cwd=tmp_path).stdout
  assert "  --model_type:" in regress and "  --classes:" not in regress


@pytest.mark.parametrize("override, expected", [
    ("--config.classify.epocs=3",
     "--config.classify.epocs: unknown field 'epocs'; did you mean "
     "--config.classify.epochs?"),
    ("--config.clasify.epochs=3",
     "unknown field 'clasify'; did you mean --config.classify?"),
    ("--config.classify.epochs=many",
     "--config.classify.epochs=many: expected an integer (the config has "
     "20)"),
    ("--config.regress.lr=fast", "--config.regress.lr=fast: expected a number"),
    ("--config.regress.dit_clip_sample=perhaps", "expected True or False"),
    ("--config.classify.probe=3", "--config.classify.probe is a section"),
    ("--config=no_such_config.py",
     "--config=no_such_config.py: no such file, and no config of that name; "
     "configs: default, lam/lapa, lam/lapa_sim, laptop"),
])
def test_config_mistakes_are_one_line(tmp_path, override, expected):
  result = _lary("classify", "--model=pixels", "--dataset=sim", override,
                 cwd=tmp_path)
  assert expected in _one_error_line(result)


def test_configs_resolve_by_name_from_any_folder(tmp_path):
  # train_lam reads the config before the data: a LAM config by name (or
  # by its repository path) gets as far as the missing dataset; the laptop
  # config, which has no `lam` section, is refused for what it is.
  for name in ("lam/lapa_sim", "configs/lam/lapa_sim.py"):
    result = _lary("train_lam", f"--config={name}",
                   f"--workdir={tmp_path / 'wd'}", cwd=tmp_path)
    assert "is not prepared in" in _one_error_line(result), name
  laptop = _lary("train_lam", "--config=laptop", cwd=tmp_path)
  assert "train_lam needs a LAM config" in _one_error_line(laptop)
  # A config file of the user's own, with an override applied on top.
  (tmp_path / "mine.py").write_text(
      "from lary_jax.configs import lam\n"
      "from lary_jax.configs.lam import lapa_sim\n"
      "def get_config():\n"
      "  c = lapa_sim.get_config()\n"
      "  c.lam.dataset = 'calvin'\n"
      "  return c\n")
  mine = _lary("train_lam", "--config=mine.py", "--config.lam.split=train",
               f"--workdir={tmp_path / 'wd'}", cwd=tmp_path)
  assert "calvin is not prepared in" in _one_error_line(mine)


def test_upstream_model_and_split_names(tmp_path):
  workdir = f"--workdir={tmp_path / 'wd'}"
  result = _lary("extract", "--model=villa-x", "--dataset=calvin",
                 "--split=seen_val", workdir, cwd=tmp_path)
  assert result.stderr.splitlines()[0] == (
      "note: upstream's --model villa-x is villa_x here; features and "
      "results are filed under villa_x")
  assert result.stdout.startswith("lary extract: 1 process, ")
  assert "error: calvin is not prepared" in result.stderr
  # A name that means another model upstream keeps ours, with a note.
  ours = _lary("extract", "--model=dinov2", "--dataset=calvin", workdir,
               cwd=tmp_path)
  assert "upstream's dinov2 (LAPA-DINOv2" in ours.stderr
  assert "is lapa_dinov2 here, or pass --upstream_names" in ours.stderr
  bad_split = _lary("check", "--dataset=calvin", f"--data_dir={tmp_path}",
                    "--split=testing", cwd=tmp_path)
  assert "--split testing: expected train, validation or unseen" in (
      _one_error_line(bad_split))


def test_gpus_flag_says_how_devices_are_chosen(tmp_path):
  result = _lary("classify", "--model=pixels", "--dataset=sim",
                 "--gpus=0,1", cwd=tmp_path)
  line = _one_error_line(result)
  assert "CUDA_VISIBLE_DEVICES=0,1" in line and "every device" in line


def test_name_resolution():
  assert names.model("villa-x") == "villa_x"
  assert names.model("wan2-2") == "wan2_2"
  assert names.model("dinov2-origin") == "dinov2"
  assert names.model("dinov2") == "dinov2"
  assert names.model("dinov2", upstream=True) == "lapa_dinov2"
  assert names.model("siglip2", upstream=True) == "lapa_siglip2"
  assert names.model("magvit2", upstream=True) == "magvit2"
  assert names.model("pixels", upstream=True) == "pixels"
  assert names.AMBIGUOUS == {"dinov2", "dinov3", "siglip2"}
  assert [names.split(s) for s in ("val", "seen_val", "seen_train", "all",
                                   "unseen", None)] == [
                                       "validation", "validation", "train",
                                       None, "unseen", None]


def test_every_upstream_name_maps_to_a_registered_model_and_the_readme():
  from lary_jax.encoders import registry  # pylint: disable=g-import-not-at-top
  readme = (ROOT / "README.md").read_text()
  for upstream, (ours, _) in names.UPSTREAM_MODELS.items():
    assert ours in registry.available(), ours
    assert f"| `{upstream}` | `{ours}` |" in readme, upstream


def test_every_command_has_its_help():
  from lary_jax import commands  # pylint: disable=g-import-not-at-top
  from lary_jax import main  # pylint: disable=g-import-not-at-top
  assert list(main.COMMAND_HELP) == list(commands.COMMANDS)
  for command in commands.COMMANDS:
    assert main.help_text(command).startswith(f"usage: lary {command}")


@pytest.mark.parametrize("flag", ["--workdir", "--data_dir", "--tfds_dir"])
def test_bucket_urls_are_refused_with_how_to_mount(tmp_path, flag):
  result = _lary("run", f"{flag}=gs://my-bucket/lary", cwd=tmp_path)
  line = _one_error_line(result)
  assert line.startswith(f"error: {flag} gs://my-bucket/lary: not a local "
                         "path; mount the bucket")
  assert "gcsfuse --implicit-dirs" in line and "my-bucket /mnt/my-bucket" in (
      line)
  assert not (tmp_path / "gs:").exists()


def test_a_broken_config_file_is_one_line_naming_it(tmp_path):
  (tmp_path / "broken.py").write_text("def get_config(:\n  pass\n")
  result = _lary("report", "--config=broken.py", cwd=tmp_path)
  assert _one_error_line(result).startswith(
      "error: --config=broken.py: broken.py, line 1: SyntaxError")


_DISK_FULL_PLUGIN = '''
import errno
from lary_jax import commands

def _full(flags, config):
  if {orbax!r}:
    try:
      raise OSError(errno.ENOSPC, "No space left on device")
    except OSError as e:
      raise ValueError(
          'RESOURCE_EXHAUSTED: Error writing "params" in OCDBT database at '
          'local file "/wd/classify/seed_0/checkpoints/2.orbax-checkpoint-tmp/"'
          ': Failed to write 1058700 bytes: No space left on device') from e
  raise OSError(errno.ENOSPC, "No space left on device",
                "/wd/features/shard-00001.npy")

commands.COMMANDS["report"] = _full
'''


@pytest.mark.parametrize("orbax, where", [
    (False, "/wd/features/shard-00001.npy"),
    (True, "/wd/classify/seed_0/checkpoints/2.orbax-checkpoint-tmp/")])
def test_a_full_disk_is_one_line_naming_the_file(tmp_path, orbax, where):
  (tmp_path / "disk_full.py").write_text(_DISK_FULL_PLUGIN.format(orbax=orbax))
  result = _lary("report", "--plugins=disk_full", cwd=tmp_path)
  line = _one_error_line(result)
  assert line.startswith(
      f"error: no space left on the device writing {where}: "), line
  assert "run the same command again" in line


def test_other_os_errors_keep_their_traceback(tmp_path):
  (tmp_path / "denied.py").write_text(
      "from lary_jax import commands\n"
      "def _denied(flags, config):\n"
      "  raise PermissionError(13, 'Permission denied', '/wd/x')\n"
      "commands.COMMANDS['report'] = _denied\n")
  result = _lary("report", "--plugins=denied", cwd=tmp_path)
  assert result.returncode != 0
  assert "Traceback" in result.stderr and "PermissionError" in result.stderr
