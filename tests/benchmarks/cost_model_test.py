"""benchmarks/cost_model.py: row counts, FLOP counts against the analytic
ones, and the projection's arithmetic."""

import csv

import pytest

from benchmarks import chips
from benchmarks import classification_probe
from benchmarks import cost_model
from benchmarks import encoder_forward


def test_estimated_rows_match_upstreams_totals():
  splits = cost_model._estimated_rows()  # pylint: disable=protected-access
  by_task = {t: sum(s.rows for s in splits if s.task == t)
             for t in ("classification", "regression")}
  assert by_task == {"classification": 1_200_000, "regression": 620_000}
  counted = {(s.dataset, s.split): s.rows for s in splits
             if s.source.startswith("counted")}
  assert counted[("calvin", "validation")] == 11969
  assert counted[("vlabench_30", "train")] == 12546
  assert len(counted) == 7
  assert all(s.rows > 0 for s in splits)


def test_counted_rows_read_a_metadata_folder(tmp_path):
  for name, rows in (("calvin_metadata_train.csv", 5),
                     ("calvin_metadata_val.csv", 3),
                     ("robot_1st_metadata_val.csv", 2)):
    with open(tmp_path / name, "w", newline="") as f:
      writer = csv.writer(f)
      writer.writerow(["a", "b"])
      writer.writerows([["x", "y,z"]] * rows)
  got = {(s.task, s.dataset, s.split): s.rows
         for s in cost_model.counted_rows(str(tmp_path))}
  assert got == {("regression", "calvin", "train"): 5,
                 ("regression", "calvin", "validation"): 3,
                 ("classification", "robot_1st", "validation"): 2}


def test_encode_flops_are_the_vits():
  encoder = cost_model.abstract_vit("Ti/16")
  per_row, shape = cost_model.encode_cost(encoder, "regression")
  assert shape == (2, 196, 192)
  # The matmuls counted by hand; XLA also counts the elementwise work.
  matmuls = encoder_forward.dinov2_flops(2, 192, 12, 197, 16 * 16 * 3)
  assert matmuls < per_row < 1.15 * matmuls


def test_probe_flops_are_three_forwards_and_an_optimizer_step():
  cost = cost_model.classify_cost((2, 16, 32), classes=7, model_dim=32,
                                  num_heads=2, depth=2)
  matmuls = classification_probe.probe_flops(1, 2, 16, 32, model_dim=32,
                                             depth=2, classes=7)
  assert cost.heads == 5
  assert matmuls < cost.train_example < 1.6 * matmuls
  # Evaluation is a forward: about a third of a training example.
  assert 0.25 < cost.eval_example / cost.train_example < 0.45
  # AdamW touches every parameter a few times a step.
  assert cost.train_step > 5 * 5 * 32 * 32


def test_projection_arithmetic():
  totals = {"regression": cost_model.Totals(
      rows=10, frames=20, encode_flops=1e18, feature_bytes=5e9,
      probe_flops=2e18)}
  host = cost_model.HostRates(prepare_s=0.1, decode_s=0.01, png_bytes=1000)
  chip = chips.Chip("test", bf16_tflops=1000, fp32_tflops=None, hbm_gib=1,
                    hbm_tb_s=1, host_cores=2)
  p = cost_model.project(totals, host, chip, n=4, mfu=0.5)
  assert p["encode"] == pytest.approx(1e18 / (4 * 0.5 * 1e15))
  assert p["probe"] == pytest.approx(2 * p["encode"])
  assert p["prepare"] == pytest.approx(20 * 0.1 / 8)
  assert p["wall"] == pytest.approx(p["prepare"] + p["encode"] + p["probe"])
  assert p["chip_hours"] == pytest.approx(4 * p["wall"] / 3600)
  assert p["frames_bytes"] == 20_000 and p["features_bytes"] == 5e9


def test_probe_flops_count_epochs_steps_and_evaluation():
  cost = cost_model.ProbeCost(train_step=10.0, train_example=1.0,
                              eval_example=0.5, heads=1)
  # 100 train rows, 10 held out: 90 trained in ceil(90 / 32) = 3 steps.
  got = cost_model.probe_flops(cost, 100, 20, epochs=2, global_batch=32,
                               holdout=0.1)
  assert got == 2 * (3 * (10 + 32 * 1.0) + 30 * 0.5)
