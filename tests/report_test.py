"""`report`: result folders -> report.md and a self-contained report.html,
with both selections, spread over seeds, floors, config notes and published
numbers."""

import base64
import html.parser
import json
import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest

from lary_jax import report
from lary_jax.errors import LaryError
from lary_jax.probes import classification_report as cr
from lary_jax.probes import multi_head
from lary_jax.probes import regression_report as rr

ROOT = pathlib.Path(__file__).resolve().parents[1]
HEADS = [{"lr": lr, "weight_decay": wd} for lr, wd in multi_head.HEADS]
PROTOCOL_PROBE = {"model_dim": 768, "num_heads": 16, "depth": 4,
                  "pool_grid": 0}
PROTOCOL_TRAINING = {"epochs": 20, "global_batch": 256,
                     "label_smoothing": 0.1, "balanced": True,
                     "heads": [list(h) for h in multi_head.HEADS]}
PUBLISHED = """task,dataset,model,metric,value,split,decoder
classification,human_1st,m1,top1,71.3,,
regression,calvin,m1,mse,0.1234,validation,mlp_absolute
regression,calvin,m1,mse,0.5555,unseen,
classification,robot_1st,other,top1,40.0,,
"""


def _topk(labels, correct):
  """[N, 4] ranked classes whose first `correct` rows are right at top-1."""
  n = len(labels)
  first = np.where(np.arange(n) < correct, labels, (labels + 1) % 4)
  return np.stack([(first + j) % 4 for j in range(4)], -1)


def _history(labels, counts):
  """counts [E, H] of correct top-1 rows -> [E, H, N, 4] predictions."""
  return np.stack([np.stack([_topk(labels, c) for c in row])
                   for row in counts])


def _classification_run(out_dir, model, picks, probe, training):
  """picks: seed -> ((epoch, head) best on validation with its count,
  (epoch, head) best on the held-out slice with its validation count)."""
  val = np.arange(10) % 4
  held = np.arange(4) % 4
  per_seed = {}
  for seed, ((up, up_count), (hon, hon_count)) in picks.items():
    val_counts = np.full((2, 5), 2)
    val_counts[up] = up_count
    val_counts[hon] = hon_count
    held_counts = np.ones((2, 5), int)
    held_counts[hon] = 4
    seed_dir = os.path.join(out_dir, f"seed_{seed}")
    os.makedirs(seed_dir)
    per_seed[seed] = cr.write_seed(
        seed_dir, {"validation": _history(val, val_counts),
                   "train_holdout": _history(held, held_counts)},
        {"validation": val, "train_holdout": held}, HEADS,
        ["a", "b", "c", "d"],
        {"model": model, "dataset": "human_1st", "seed": seed,
         "holdout_fraction": 0.25, "probe": probe, "training": training},
        sources=["EgoDex"] * 5 + ["SSv2"] * 5)
  cr.write_summary(out_dir, per_seed, {
      "model": model, "dataset": "human_1st", "holdout_fraction": 0.25,
      "num_classes": 4})


def _targets(n):
  return rr.Targets(np.zeros((n, 2, 3), np.float32),
                    np.zeros((n, 3), np.float32),
                    np.full((n, 3), 2.0, np.float32))


def _predictions(n, scales):
  """[E, N, 2 * 3]: dimension d predicted as scale * (1, 2, 0)[d]."""
  pattern = np.tile(np.array([1.0, 2.0, 0.0]), 2)
  return np.stack([np.tile(s * pattern, (n, 1)) for s in scales])


def _regression_run(out_dir, model_type, training):
  seed_dir = os.path.join(out_dir, "seed_42")
  os.makedirs(seed_dir)
  # MSE of scale s: s^2 (1 + 4 + 0) / 3 over the chunk.
  history = {"validation": _predictions(6, [0.5, 0.3, 0.4]),
             "unseen": _predictions(5, [0.6, 0.6, 0.6]),
             "train_holdout": _predictions(4, [0.5, 0.4, 0.1]),
             "train_loss": np.array([3.0, 2.0, 1.0])}
  targets = {"validation": _targets(6), "unseen": _targets(5),
             "train_holdout": _targets(4)}
  fields = {"model": "m1", "dataset": "calvin", "holdout_fraction": 0.1,
            "model_type": model_type, "action_mode": "absolute",
            "floor": {"validation": 1.0, "unseen": 1.25}}
  shape = ({"hidden": 4096, "blocks": 2} if model_type == "mlp" else
           {"hidden": 512, "depth": 6, "num_heads": 8, "clip_sample": True})
  seed = rr.write_seed(seed_dir, history, targets, ["x", "y", "grip"],
                       {"position": [0, 1], "gripper": [2]},
                       {**fields, "seed": 42, "training": training,
                        "decoder_shape": shape})
  rr.write_summary(out_dir, {42: seed}, fields)


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
  root = tmp_path_factory.mktemp("report")
  work = root / "work"
  _classification_run(str(work / "classify" / "human_1st" / "m1"), "m1",
                      {0: (((1, 3), 8), ((0, 1), 3)),
                       1: (((0, 0), 6), ((1, 2), 4))},
                      PROTOCOL_PROBE, PROTOCOL_TRAINING)
  _classification_run(str(work / "classify" / "human_1st" / "m2"), "m2",
                      {0: (((0, 0), 5), ((1, 1), 3))},
                      {**PROTOCOL_PROBE, "model_dim": 192, "num_heads": 4,
                       "pool_grid": 4},
                      {**PROTOCOL_TRAINING, "global_batch": 32})
  protocol = {"epochs": 20, "global_batch": 256, "lr": 1e-4,
              "weight_decay": 1e-4, "warmup": 0.1,
              "compute_dtype": "float32", "pool_grid": 0}
  _regression_run(str(work / "regress" / "calvin" / "m1" / "mlp_absolute"),
                  "mlp", protocol)
  _regression_run(str(work / "regress" / "calvin" / "m1" / "dit_absolute"),
                  "dit", {**protocol, "pool_grid": 2})
  # A killed run: a seed folder, no summary.
  os.makedirs(work / "regress" / "calvin" / "m2" / "mlp_relative" / "seed_3")
  published = root / "published.csv"
  published.write_text(PUBLISHED)
  md_path, html_path = report.write(str(work), published=str(published))
  return work, published, pathlib.Path(md_path), pathlib.Path(html_path)


def _md_tables(text):
  """Every Markdown table -> list of {column: cell} rows."""
  tables, lines = [], text.splitlines()
  for i, line in enumerate(lines):
    if line.startswith("|") and i + 1 < len(lines) and (
        lines[i + 1].startswith("|---")) and not (
            i and lines[i - 1].startswith("|")):
      header = [c.strip() for c in line.strip("|").split(" | ")]
      rows = []
      for row in lines[i + 2:]:
        if not row.startswith("|"):
          break
        rows.append(dict(zip(header,
                             (c.strip() for c in row.strip("|").split(" | ")))))
      tables.append(rows)
  return tables


def _find(tables, **match):
  hits = [row for table in tables for row in table
          if all(row.get(k) == v for k, v in match.items())]
  assert len(hits) == 1, (match, hits)
  return hits[0]


def test_markdown_classification_rows(workdir):
  _, _, md_path, _ = workdir
  tables = _md_tables(md_path.read_text())
  m1 = _find(tables, dataset="human_1st", model="m1", split="seen")
  # Seeds: upstream-style 8/10 and 6/10; honest picks score 3/10 and 4/10.
  assert m1["top-1 upstream-style"] == "70.0 ± 14.1 (2 seeds)"
  # The honest 3/10 and 4/10 with a bootstrap interval over examples and
  # seeds; a guess on 10 examples of 4 classes lands in 0-50% (95%).
  honest = m1["top-1 honest (95% interval)"]
  assert honest.startswith("35.0 ± 7.1 (2 seeds) [")
  low, high = (float(v) for v in honest.split("[")[1].split("]")[0].split(
      ", "))
  assert low < 35.0 < high and low <= 25.0  # reaches chance
  assert honest.endswith("≈ chance")
  assert m1["top-5 upstream-style / honest"] == (
      "100.0 ± 0.0 (2 seeds) / 100.0 ± 0.0 (2 seeds)")
  assert m1["chance (95% band)"] == "25.0 (0.0-50.0)"
  assert m1["role"] == "model"
  assert m1["published top-1"] == "71.3"
  assert m1["seeds"] == "2"  # how many seeds; their ids: the per-seed table
  assert m1["config"] == "protocol"
  m2 = _find(tables, dataset="human_1st", model="m2", split="seen")
  assert m2["top-1 upstream-style"] == "50.0 (1 seed)"
  assert m2["top-1 honest (95% interval)"].startswith("30.0 (1 seed) [")
  assert m2["seeds"] == "1"
  assert m2["published top-1"] == "-"
  assert m2["config"] == "laptop config, not the protocol [1]"


def test_markdown_regression_rows_and_floor(workdir):
  _, _, md_path, _ = workdir
  tables = _md_tables(md_path.read_text())
  seen = _find(tables, dataset="calvin", decoder="mlp_absolute",
               split="seen")
  # Validation epoch 2 (scale 0.3): 0.09 * 5 / 3; honest epoch 3 (0.4).
  assert seen["MSE upstream-style"] == "0.1500 (1 seed)"
  # Every example's error is the same: the interval has no width.
  assert seen["MSE honest (95% interval)"] == (
      "0.2667 (1 seed) [0.2667, 0.2667]")
  assert seen["predict-the-mean MSE"] == "1.0000"
  # Robot units: std 2 -> 4x the normalised MSE.
  assert seen["robot-units MSE upstream-style / honest"] == (
      "0.6000 (1 seed) / 1.0667 (1 seed)")
  assert seen["published MSE"] == "0.1234"
  assert seen["config"] == "protocol"
  unseen = _find(tables, dataset="calvin", decoder="mlp_absolute",
                 split="unseen")
  assert unseen["MSE upstream-style"] == "0.6000 (1 seed)"
  assert unseen["predict-the-mean MSE"] == "1.2500"
  assert unseen["published MSE"] == "0.5555"  # no decoder: any decoder
  dit = _find(tables, dataset="calvin", decoder="dit_absolute", split="seen")
  assert dit["published MSE"] == "-"  # the mlp_absolute row only
  assert dit["config"] == "laptop config, not the protocol [2]"


def test_markdown_details_notes_and_per_dimension(workdir):
  work, _, md_path, _ = workdir
  text = md_path.read_text()
  notes = text.split("## Config notes")[1].split("##")[0]
  assert ("1. classification human_1st m2: classify.probe.model_dim=192 "
          "(protocol: 768); classify.probe.num_heads=4 (protocol: 16); "
          "classify.probe.pool_grid=4 (protocol: 0); "
          "classify.global_batch=32 (protocol: 256)") in notes
  assert ("2. regression calvin m1 dit_absolute: regress.pool_grid=2 "
          "(protocol: 0)") in notes
  tables = _md_tables(text)
  # Both decoders' runs hold the same predictions: two equal tables.
  per_dim = [row for table in tables for row in table
             if (row.get("selection"), row.get("split")) == (
                 "upstream-style", "seen")][0]
  assert (per_dim["x"], per_dim["y"], per_dim["grip"]) == (
      "0.0900", "0.3600", "0.0000")
  assert (per_dim["position"], per_dim["gripper"]) == ("0.2250", "0.0000")
  # SSv2 clips are rows 5-9; the upstream-style picks get the first 8 and
  # 6 rows right: SSv2 3/5 and 1/5.
  ssv2 = [row for table in tables for row in table
          if row.get("source dataset") == "SSv2"]
  assert ssv2[0]["top-1 upstream-style"] == "40.0"
  assert ssv2[0]["clips"] == "5"
  seed_rows = [row for table in tables for row in table
               if row.get("upstream-style: chosen") == (
                   "epoch 2, head 3 (lr 0.0003, wd 0.8)")]
  assert seed_rows[0]["upstream-style: seen top-1 %"] == "80.0"
  assert "regress/calvin/m2/mlp_relative" in text.split(
      "## Unfinished runs")[1]
  published = _find(tables, task="classification", dataset="robot_1st")
  assert (published["model"], published["value"]) == ("other", "40")
  link = "classify/human_1st/m1/seed_0/confusion_honest.png"
  assert f"]({link})" in text and (work / link).exists()


class _Page(html.parser.HTMLParser):
  """Tables as rows of cell texts, and every img src."""

  def __init__(self):
    super().__init__()
    self.tables, self.images, self.other_sources = [], [], []
    self._cell = None

  def handle_starttag(self, tag, attrs):
    attrs = dict(attrs)
    if tag == "table":
      self.tables.append([])
    elif tag == "tr":
      self.tables[-1].append([])
    elif tag in ("td", "th"):
      self._cell = []
    elif tag == "img":
      self.images.append(attrs["src"])
    if tag in ("link", "script") or (
        "href" in attrs and tag != "a"):
      self.other_sources.append((tag, attrs))

  def handle_endtag(self, tag):
    if tag in ("td", "th"):
      self.tables[-1][-1].append("".join(self._cell))
      self._cell = None

  def handle_data(self, data):
    if self._cell is not None:
      self._cell.append(data)


def test_html_is_self_contained_with_tables_and_images(workdir):
  _, _, _, html_path = workdir
  page = _Page()
  page.feed(html_path.read_text())
  assert not page.other_sources
  classification = page.tables[0]
  assert classification[0][:4] == ["dataset", "model", "role", "split"]
  assert len(classification) == 3  # header + m1 + m2
  assert classification[1][5] == "70.0 ± 14.1 (2 seeds)"
  assert classification[1][9] == "71.3"
  regression = page.tables[1]
  assert len(regression) == 5  # header + 2 decoders x seen, unseen
  assert ["calvin", "m1", "model", "mlp_absolute", "seen",
          "0.2667 (1 seed) [0.2667, 0.2667]", "0.1500 (1 seed)",
          "1.0000"] == regression[3][:8]
  assert any(row[:3] == ["classification", "robot_1st", "other"]
             for table in page.tables for row in table)
  # 3 bar charts (human_1st seen, calvin seen and unseen), 2 confusion
  # matrices per classification run, 2 trajectory plots per decoder.
  assert len(page.images) == 3 + 2 * 2 + 2 * 2
  for src in page.images:
    prefix = "data:image/png;base64,"
    assert src.startswith(prefix)
    png = base64.b64decode(src[len(prefix):], validate=True)
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 1000
  assert "laptop config, not the protocol [1]" in html_path.read_text()


def test_missing_and_empty_workdirs(tmp_path):
  with pytest.raises(LaryError, match="no such folder"):
    report.collect(str(tmp_path / "absent"))
  with pytest.raises(LaryError, match="no results in"):
    report.write(str(tmp_path))
  os.makedirs(tmp_path / "classify" / "human_1st" / "m1" / "seed_0")
  with pytest.raises(LaryError, match="no results in .*unfinished runs"):
    report.collect(str(tmp_path))
  assert not (tmp_path / "report.md").exists()


def test_run_without_recorded_settings_is_flagged(tmp_path):
  run = tmp_path / "regress" / "calvin" / "m1" / "mlp_absolute"
  os.makedirs(run)
  # A summary whose seed folder is gone: nothing says how it was run.
  (run / "results.json").write_text(json.dumps({
      "model": "m1", "dataset": "calvin", "seeds": [0],
      "upstream_style": {"validation": {
          "mse": {"mean": 0.5, "std": 0.0, "n": 1}}}}))
  board = report.collect(str(tmp_path))
  assert board.runs[0].deviations == (
      "config not recorded in the seeds' results.json",)
  report.write_markdown(board, str(tmp_path / "report.md"))
  text = (tmp_path / "report.md").read_text()
  assert ("| calvin | m1 | model | mlp_absolute | seen | - | 0.5000 (1 seed) "
          "| - |" in text)
  assert "| 1 | config not recorded [1] |" in text  # 1 seed (seed 0)


def test_unreadable_summary_names_the_file(tmp_path):
  run = tmp_path / "regress" / "calvin" / "m1" / "mlp_absolute"
  os.makedirs(run)
  (run / "results.json").write_text("{not json")
  with pytest.raises(LaryError, match="mlp_absolute/results.json: cannot "
                     "read it as JSON"):
    report.collect(str(tmp_path))


@pytest.mark.parametrize("row, message", [
    ("classification,human_1st,m1,mse,1.0", "line 2: metric 'mse'"),
    ("detection,human_1st,m1,top1,1.0", "line 2: task 'detection'"),
    ("classification,human_1st,m1,top1,0.5x", "value '0.5x' is not"),
    ("classification,human_1st,m1,top1,150", "outside 0..100"),
])
def test_published_rows_are_checked(tmp_path, row, message):
  path = tmp_path / "published.csv"
  path.write_text("task,dataset,model,metric,value\n" + row + "\n")
  with pytest.raises(LaryError, match=message):
    report.read_published(str(path))


def test_published_file_checks(tmp_path):
  path = tmp_path / "published.csv"
  path.write_text("task,dataset,model,value\n")
  with pytest.raises(LaryError, match=r"no column\(s\) \['metric'\]"):
    report.read_published(str(path))
  path.write_text("task,dataset,model,metric,value,split\n"
                  "regression,calvin,m1,mse,0.1,seen\n"
                  "regression,calvin,m1,mse,0.2,validation\n")
  with pytest.raises(LaryError, match="line 3: the same number as line 2"):
    report.read_published(str(path))
  path.write_text("task,dataset,model,metric,value,split\n"
                  "regression,calvin,m1,mse,0.1,unseen\n")
  assert report.read_published(str(path)) == {
      ("regression", "calvin", "m1", "", "unseen"): 0.1}


def test_command_line(workdir, tmp_path):
  work, published, md_path, _ = workdir
  md_path.unlink()
  env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=str(ROOT))
  done = subprocess.run(
      [sys.executable, "-m", "lary_jax.main", "report", f"--workdir={work}",
       f"--published={published}"], env=env, capture_output=True, text=True,
      timeout=120, check=False)
  assert done.returncode == 0, done.stderr[-2000:]
  assert str(md_path) in done.stdout
  assert "71.3" in md_path.read_text()
  empty = subprocess.run(
      [sys.executable, "-m", "lary_jax.main", "report",
       f"--workdir={tmp_path}"], env=env, capture_output=True, text=True,
      timeout=120, check=False)
  assert empty.returncode == 1
  assert empty.stderr.startswith(f"error: no results in {tmp_path}")


def _sim_classification_run(work, model, val_correct, unseen_correct,
                            n=48):
  """One seed on LARY-Sim whose every candidate gets `*_correct` of n."""
  labels = np.arange(n) % 4
  out = os.path.join(work, "classify", "sim_classification", model)
  seed_dir = os.path.join(out, "seed_0")
  os.makedirs(seed_dir)
  counts = lambda c: np.full((2, 5), c)  # pylint: disable=unnecessary-lambda-assignment
  seed = cr.write_seed(
      seed_dir, {"validation": _history(labels, counts(val_correct)),
                 "unseen": _history(labels, counts(unseen_correct)),
                 "train_holdout": _history(labels[:8], counts(4))},
      {"validation": labels, "unseen": labels, "train_holdout": labels[:8]},
      HEADS, ["a", "b", "c", "d"],
      {"model": model, "dataset": "sim_classification", "seed": 0,
       "holdout_fraction": 0.1, "probe": PROTOCOL_PROBE,
       "training": PROTOCOL_TRAINING,
       "schedule": {"train_examples": 96, "epochs": 2, "steps_per_epoch": 5,
                    "updates": 10, "global_batch": 16}})
  cr.write_summary(out, {0: seed}, {"model": model,
                                    "dataset": "sim_classification",
                                    "holdout_fraction": 0.1,
                                    "num_classes": 4})


def test_controls_have_their_section_and_a_banner_when_they_miss(tmp_path):
  work = str(tmp_path)
  _sim_classification_run(work, "sim_oracle", 47, 30)  # unseen 62% < 80%
  _sim_classification_run(work, "flow", 40, 36)
  _sim_classification_run(work, "pixels", 13, 12)  # about chance (25%)
  _sim_classification_run(work, "my_lam", 30, 20)
  md_path, html_path = report.write(work)
  text = pathlib.Path(md_path).read_text()
  assert text.index("A positive control missed its threshold") < text.index(
      "How to read")
  assert ("sim_classification sim_oracle (unseen): honest top-1 62.5%, "
          "needs >= 80.0%") in text
  assert "flow (seen)" not in text.split("How to read")[0]  # flow passes
  sections = text.split("## ")
  controls = next(s for s in sections if s.startswith("Positive controls: "
                                                      "Classification"))
  ranked = next(s for s in sections if s.startswith("Classification"))
  assert "| sim_oracle |" in controls and "| flow |" in controls
  assert "| pixels |" not in controls and "| sim_oracle |" not in ranked
  tables = _md_tables(text)
  pixels = _find(tables, model="pixels", split="seen")
  assert pixels["role"] == "floor" and pixels["vs best floor"] == ""
  assert pixels["top-1 honest (95% interval)"].endswith("≈ chance")
  lam = _find(tables, model="my_lam", split="seen")
  # 62.5% vs 27.1% on 48 examples: binomial standard errors 7.0 and 6.4
  # points, 9.5 for the difference: 3.7 of them.
  gap, rest = lam["vs best floor"].split(" (")
  assert gap == "+35.4" and rest == "3.7 SE vs pixels) ✓"
  # A control is measured against the floors too.
  flow = _find(tables, model="flow", split="seen")
  assert flow["role"] == "control" and flow["vs best floor"].endswith("✓")
  settings = _find(tables, task="classification")
  assert settings["updates"] == "10 (2 epochs x 5 steps of 16)"
  assert settings["training examples"] == "96"
  page = pathlib.Path(html_path).read_text()
  assert '<div class="banner">' in page


def test_flow_must_beat_the_floors_by_three_standard_errors(tmp_path):
  work = str(tmp_path)
  _sim_classification_run(work, "sim_oracle", 47, 45)
  _sim_classification_run(work, "flow", 20, 20)  # 41.7%: above chance only
  _sim_classification_run(work, "pixels", 13, 12)
  text = pathlib.Path(report.write(work)[0]).read_text()
  # 41.7% vs 27.1%: 14.6 points over a 9.8-point standard error.
  assert ("sim_classification flow (seen): honest top-1 1.5 standard errors "
          "above pixels, needs > 3") in text


def test_no_banner_when_the_controls_pass(tmp_path):
  work = str(tmp_path)
  _sim_classification_run(work, "sim_oracle", 47, 45)
  report.write(work)
  assert "missed its threshold" not in (tmp_path / "report.md").read_text()
