"""`check` and `prepare` on a DATA_DIR with broken files and CSV lines."""

import csv
import glob
import os
import subprocess
import sys

import numpy as np
import pytest

from lary_jax.errors import LaryError
from tests.builders import fake_data_dir
from tfds_builders import metadata
from tfds_builders import prepare

SPEC = metadata.DATASETS["calvin"]


def _broken_calvin(tmp_path) -> tuple[str, dict[int, str]]:
  """A CALVIN DATA_DIR whose val CSV has one problem per kind.

  Returns:
    (data_dir, {CSV line: expected words of the reason}).
  """
  data_dir = str(tmp_path / "data")
  meta = fake_data_dir.make_regression(data_dir, "calvin")
  root = SPEC.data_root(data_dir, "val")
  csv_path = os.path.join(meta, SPEC.csv_name("val"))
  with open(csv_path, newline="") as f:
    lines = list(csv.reader(f))
  header, rows = lines[0], lines[1:]
  field = lambda line, col: rows[line - 2][header.index(col)]
  path = lambda line, col: metadata.resolve_path(
      root, field(line, col), SPEC.column_dirs.get(col))
  # Consecutive rows share frames (tgt of one is src of the next), so each
  # broken frame sits next to a row that is already bad for another reason.
  os.remove(path(3, "action"))
  with open(path(4, "src_img"), "r+b") as f:
    f.truncate(40)
  np.save(path(5, "action"), np.zeros((4, 7), np.float32))
  nan = np.zeros((5, 7), np.float32)
  nan[2, 3] = np.nan
  np.save(path(6, "action"), nan)
  np.save(path(7, "action"), np.array([{"evil": 1}] * 35, dtype=object),
          allow_pickle=True)
  rows[6] = rows[6][:5]                                  # line 8
  rows[7][header.index("src_img")] = "../../../etc/x.png"  # line 9
  with open(path(10, "src_state"), "wb") as f:
    f.write(b"not a numpy file")
  fake_data_dir.write_csv(csv_path, header, rows)
  return data_dir, {
      3: "missing file (action", 4: "unreadable image (src_img)",
      5: "wrong action shape (4, 7): expected (5, 7)",
      6: "action contains NaN", 7: "unreadable action .npy",
      8: "malformed CSV line", 9: "escapes the data root",
      10: "unreadable src_state .npy"}


def test_check_lists_every_bad_row(tmp_path):
  data_dir, expected = _broken_calvin(tmp_path)
  total, bad = prepare.check(SPEC, data_dir, num_workers=0)
  assert total == 70
  assert [b.line for b in bad] == sorted(expected)
  for b in bad:
    assert b.csv == "calvin_metadata_val.csv"
    assert expected[b.line] in b.reason, (b, expected[b.line])
  by_line = {b.line: b for b in bad}
  assert by_line[9].path == "../../../etc/x.png"
  assert by_line[4].path == "images/ep_1/frame_000075.png"


def test_prepare_refuses_and_leaves_nothing(tmp_path):
  data_dir, expected = _broken_calvin(tmp_path)
  tfds_dir = str(tmp_path / "tfds")
  with pytest.raises(LaryError) as e:
    prepare.prepare(SPEC, data_dir, tfds_dir,
                    options=prepare.PrepareOptions(num_workers=0))
  message = str(e.value)
  assert "--skip_bad_rows" in message
  assert "calvin_metadata_val.csv:3:" in message
  assert glob.glob(os.path.join(tfds_dir, "lary_regression", "calvin", "*",
                                "*")) == []


def test_prepare_refuses_decode_errors_found_late(tmp_path):
  data_dir, _ = _broken_calvin(tmp_path)
  # Only the errors that need decoding remain: the CSV and files exist.
  meta = os.path.join(data_dir, "metadata", SPEC.csv_name("val"))
  with open(meta, newline="") as f:
    lines = list(csv.reader(f))
  keep = [lines[0]] + [l for i, l in enumerate(lines[1:], 2)
                       if i in (2, 4, 5, 6, 7)]
  fake_data_dir.write_csv(meta, keep[0], keep[1:])
  tfds_dir = str(tmp_path / "tfds")
  with pytest.raises(LaryError, match="4 bad row.*while decoding"):
    prepare.prepare(SPEC, data_dir, tfds_dir,
                    options=prepare.PrepareOptions(num_workers=0))
  builder = prepare.builder(SPEC, tfds_dir)
  assert not builder.is_prepared()
  assert glob.glob(os.path.join(tfds_dir, "lary_regression", "calvin", "*",
                                "*")) == []


def test_skip_bad_rows_writes_the_list(tmp_path):
  data_dir, expected = _broken_calvin(tmp_path)
  b = prepare.prepare(SPEC, data_dir, str(tmp_path / "tfds"),
                      options=prepare.PrepareOptions(num_workers=0,
                                                     skip_bad_rows=True))
  assert b.info.splits["validation"].num_examples == 30 - len(expected)
  assert b.info.splits["train"].num_examples == 40
  assert b.info.metadata["bad_rows"] == len(expected)
  with open(os.path.join(b.data_dir, "bad_rows.csv"), newline="") as f:
    listed = list(csv.DictReader(f))
  assert sorted(int(r["line"]) for r in listed) == sorted(expected)
  lines = {int(r["line"]) for r in listed}
  source = b.as_data_source()["validation"]
  kept_paths = {source[i]["src_path"].decode() for i in range(len(source))}
  assert len(kept_paths) == 30 - len(lines)


def _cli(*args, cwd):
  return subprocess.run(
      [sys.executable, "-m", "lary_jax.main", *args], capture_output=True,
      text=True, cwd=cwd, timeout=300)


def test_cli_check_and_prepare_print_one_clear_error(tmp_path):
  data_dir, expected = _broken_calvin(tmp_path)
  result = _cli("check", "--dataset=calvin", f"--data_dir={data_dir}",
                "--config.check.num_workers=1", cwd=tmp_path)
  assert result.returncode == 1, result.stderr
  assert f"calvin: {len(expected)} bad row(s) of 70" in result.stdout
  assert "calvin_metadata_val.csv:6: " in result.stdout
  result = _cli("prepare", "--dataset=calvin", f"--data_dir={data_dir}",
                f"--tfds_dir={tmp_path / 'tfds'}", cwd=tmp_path)
  assert result.returncode == 1
  # Progress bars may come first; the error is one line, with no traceback.
  errors = [l for l in result.stderr.splitlines() if l.startswith("error:")]
  assert len(errors) == 1 and errors[0].startswith("error: calvin: 8 bad row")
  assert "Traceback" not in result.stderr
  result = _cli("prepare", "--dataset=calvn", f"--data_dir={data_dir}",
                cwd=tmp_path)
  assert result.returncode == 1
  assert result.stderr.strip().startswith("error: unknown dataset 'calvn'")
  result = _cli("frobnicate", cwd=tmp_path)
  assert result.returncode == 2 and "expected one command of" in result.stderr


def test_check_one_split(tmp_path):
  data_dir, expected = _broken_calvin(tmp_path)
  total, bad = prepare.check(SPEC, data_dir, num_workers=0, split="train")
  assert (total, bad) == (40, [])
  total, bad = prepare.check(SPEC, data_dir, num_workers=0,
                             split="validation")
  assert total == 30 and len(bad) == len(expected)
  with pytest.raises(LaryError, match="calvin has no unseen split"):
    prepare.check(SPEC, data_dir, split="unseen")


def test_interrupted_prepare_is_never_taken_for_finished(tmp_path):
  data_dir = str(tmp_path / "data")
  fake_data_dir.make_regression(data_dir, "libero")
  tfds_dir = str(tmp_path / "tfds")
  spec = metadata.DATASETS["libero"]
  # What `kill -9` during a prepare leaves: TFDS's incomplete directory.
  stale = os.path.join(tfds_dir, "lary_regression", "libero",
                       "incomplete.ABC123_1.0.0")
  os.makedirs(stale)
  with open(os.path.join(stale, "lary_regression-validation.array_record-"
                         "00000-of-00001"), "wb") as f:
    f.write(b"half")
  assert not prepare.builder(spec, tfds_dir).is_prepared()
  b = prepare.prepare(spec, data_dir, tfds_dir,
                      options=prepare.PrepareOptions(num_workers=0))
  assert b.info.splits["validation"].num_examples == 30
  assert not os.path.exists(stale)
