"""colab/*.ipynb, executed cell by cell (nbclient) on the CPU in tiny mode.

The quickstart runs first and the encoder notebook then reuses its workdir,
as a user who opens both would: its `run` must redo none of the quickstart's
stages and add only the new encoder's.
"""

import json
import os
import pathlib
import subprocess
import sys
import time

import pytest

nbclient = pytest.importorskip("nbclient", reason="pip install -e '.[test]'")
import nbformat  # pylint: disable=g-import-not-at-top,wrong-import-position

ROOT = pathlib.Path(__file__).resolve().parents[1]
COLAB = ROOT / "colab"
NOTEBOOKS = ("quickstart", "evaluate_your_encoder")
# Seconds one cell may take: each notebook needs about 3 minutes on 2 idle
# cores; a machine shared with other work can ask for more.
TIMEOUT = int(os.environ.get("LARY_NOTEBOOK_TIMEOUT", "900"))


def _read(name):
  return nbformat.read(COLAB / f"{name}.ipynb", as_version=4)


def _text(nb, index):
  """Everything cell `index` printed or displayed, as one string."""
  out = []
  for o in nb.cells[index].get("outputs", []):
    out.append(o.get("text", ""))
    out.extend(str(v) for v in o.get("data", {}).values())
  return "".join(out)


def _cell(nb, snippet):
  (index,) = [i for i, c in enumerate(nb.cells)
              if c.cell_type == "code" and snippet in c.source]
  return index


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_notebooks_are_clean_and_parametrised(name):
  nb = _read(name)
  nbformat.validate(nb)
  assert nb.metadata["accelerator"] == "TPU"
  code = [c for c in nb.cells if c.cell_type == "code"]
  # Committed without outputs: what Colab opens is what CI executed.
  assert all(not c.outputs and c.execution_count is None for c in code)
  params = [c for c in code if "parameters" in c.metadata.get("tags", [])]
  assert len(params) == 1
  for knob in ("LARY_REPO", "LARY_TINY", "LARY_WORKDIR"):
    assert knob in params[0].source


@pytest.fixture(scope="module")
def executed(tmp_path_factory):
  """Runs both notebooks in one workdir; returns them, times and stamps."""
  root = tmp_path_factory.mktemp("colab")
  workdir = root / "lary_workdir"
  env = {"LARY_TINY": "1", "LARY_WORKDIR": str(workdir), "LARY_REPO": "",
         # The kernel and the commands it starts: CPU, whatever is installed.
         "JAX_PLATFORMS": "cpu"}
  saved = {k: os.environ.get(k) for k in env}
  os.environ.update(env)
  notebooks, seconds, stamps = {}, {}, {}
  try:
    for name in NOTEBOOKS:
      nb = _read(name)
      client = nbclient.NotebookClient(
          nb, timeout=TIMEOUT, kernel_name="python3",
          resources={"metadata": {"path": str(root)}})
      start = time.perf_counter()
      client.execute()
      seconds[name] = time.perf_counter() - start
      notebooks[name] = nb
      stamps[name] = {str(p.relative_to(workdir)): p.stat().st_mtime_ns
                      for p in workdir.rglob("results.json")}
  finally:
    for k, v in saved.items():
      if v is None:
        os.environ.pop(k, None)
      else:
        os.environ[k] = v
  print("notebook seconds:", {k: round(v, 1) for k, v in seconds.items()})
  return root, workdir, notebooks, seconds, stamps


def _rows(md_text, model):
  return [line for line in md_text.splitlines()
          if line.startswith("|") and f"| {model} |" in line]


def test_quickstart_runs_and_shows_the_report(executed):
  _, workdir, notebooks, _, _ = executed
  nb = notebooks["quickstart"]
  ran = _text(nb, _cell(nb, 'lary("run"'))
  assert "$ python -m lary_jax.main run --workdir=" in ran
  assert f"report: {workdir / 'report.html'}" in ran
  shown = _text(nb, _cell(nb, "srcdoc"))
  assert "<iframe srcdoc=" in shown and "LARY results" in shown
  md = (workdir / "report.md").read_text()
  pixels = _rows(md, "pixels")
  # Classification (seen, unseen) and regression (seen, unseen), numbers in.
  assert any("sim_classification" in r for r in pixels), md
  assert any("sim_regression" in r for r in pixels), md
  assert all("(1 seed)" in r for r in pixels)


def test_your_encoder_joins_the_leaderboard(executed):
  _, workdir, notebooks, _, stamps = executed
  nb = notebooks["evaluate_your_encoder"]
  check = _text(nb, _cell(nb, "encoders.load(\"tiny_cnn\")"))
  assert "tiny_cnn: image mode, 196 tokens of 64 per frame" in check
  assert "frames (2, 224, 224, 3) -> (2, 196, 64)" in check
  assert "clips  (2, 9, 224, 224, 3) -> (2, 9, 196, 64)" in check
  board = _text(nb, _cell(nb, "for selection in"))
  for selection in ("upstream_style", "honest"):
    assert f"classify/sim_classification/tiny_cnn  {selection}" in board
    assert f"regress/sim_regression/tiny_cnn/mlp_absolute  {selection}" in (
        board)
  assert "top-1" in board and "MSE" in board
  manifest = json.loads((workdir / "features" / "sim_classification" /
                         "validation" / "tiny_cnn" / "manifest.json"
                         ).read_text())
  assert manifest["token_shape"][-2:] == [196, 64]
  md = (workdir / "report.md").read_text()
  mine = _rows(md, "tiny_cnn")
  assert any("sim_classification" in r for r in mine), md
  assert any("sim_regression" in r for r in mine), md
  assert _rows(md, "pixels")  # still beside the baseline
  # The quickstart's results were kept, not recomputed.
  before = stamps["quickstart"]
  after = stamps["evaluate_your_encoder"]
  assert before and all(after[p] == t for p, t in before.items())
  assert set(after) - set(before)


def test_my_encoder_file_is_where_the_commands_look(executed):
  root, _, _, _, _ = executed
  # %%writefile wrote it into the notebook's folder, the commands' cwd.
  source = (root / "my_encoder.py").read_text()
  assert 'encoders.register("tiny_cnn", load)' in source


def test_plugins_flag_imports_from_the_current_folder(tmp_path):
  (tmp_path / "my_plugin.py").write_text("print('my_plugin imported')\n")
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  def main(*args):
    return subprocess.run(
        [sys.executable, "-m", "lary_jax.main", "report", *args],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300,
        check=False)
  done = main("--plugins=my_plugin", f"--workdir={tmp_path}")
  # Imported first, then the command ran (and found no results).
  assert done.stdout.startswith("my_plugin imported"), done.stderr
  assert "error: no results in" in done.stderr
  missing = main("--plugins=my_plugin,not_there", f"--workdir={tmp_path}")
  assert missing.returncode == 1
  assert missing.stderr.startswith(
      f"error: --plugins not_there: no such module in {tmp_path}")
