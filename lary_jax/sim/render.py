"""`simulate`: renders LARY-Sim into a LARYBench-format DATA_DIR.

Clips and episodes are independent jobs on a process pool, each worker with
its own PyBullet client. Every file is written atomically and skipped when
it already exists, so an interrupted run resumes where it stopped; the
summary file LARY_SIM.json is written last and marks the folder complete.
"""

import concurrent.futures
import csv
import io
import json
import multiprocessing
import os
import time
from typing import Any

import numpy as np

from lary_jax import progress as progress_lib
from lary_jax.data import images
from lary_jax.data import video
from lary_jax.errors import LaryError
from lary_jax.sim import arms
from lary_jax.sim import camera as camera_lib
from lary_jax.sim import layout
from lary_jax.sim import motions
from lary_jax.sim import scene as scene_lib
from lary_jax.sim.client import import_pybullet
from lary_jax.sim.client import process_client
from lary_jax.sim.rollout import rollout


def _atomic_write(path: str, data: bytes) -> None:
  head, tail = os.path.split(path)
  tmp = os.path.join(head, f".{tail}.tmp{os.getpid()}")
  with open(tmp, "wb") as f:
    f.write(data)
  os.replace(tmp, path)


def _npy_bytes(array: np.ndarray) -> bytes:
  buf = io.BytesIO()
  np.save(buf, array, allow_pickle=False)
  return buf.getvalue()


def _render_clip(plan: layout.ClipPlan, root: str) -> None:
  base = os.path.join(root, layout.CLASSIFICATION_DIR)
  scene, camera, trajectory = plan.spec()
  frames, states = rollout(process_client(), plan.arm, scene, camera,
                           trajectory)
  _write_missing(base, {plan.state_path: lambda: _npy_bytes(states)})
  path = os.path.join(base, plan.video_path)
  if not os.path.exists(path):
    video.write_video(path, frames, fps=layout.FPS)  # atomic itself


def _render_episode(plan: layout.EpisodePlan, root: str) -> None:
  base = os.path.join(root, layout.REGRESSION_DIR)
  scene, camera, trajectory = plan.spec()
  frames, states = rollout(process_client(), plan.arm, scene, camera,
                           trajectory, render_every=layout.STRIDE)
  # The command of step t is trajectory row t + 1 (motions.py).
  commands = trajectory[1:].astype(np.float32)  # [steps, 7]
  files = {}
  for k, t in enumerate(plan.frame_steps()):
    files[plan.image_path(t)] = lambda k=k: images.encode_png(frames[k])
    files[plan.state_path(t)] = lambda t=t: _npy_bytes(states[t])
    if t < plan.steps:
      files[plan.action_path(t)] = lambda t=t: _npy_bytes(
          commands[t:t + layout.STRIDE])
  _write_missing(base, files)


def _write_missing(base: str, files: dict[str, Any]) -> None:
  """Writes each `relative path: encode()` that `base` lacks, atomically."""
  for rel, encode in files.items():
    path = os.path.join(base, rel)
    if not os.path.exists(path):
      os.makedirs(os.path.dirname(path), exist_ok=True)
      _atomic_write(path, encode())


def _run_job(job: tuple[str, Any, str]) -> str:
  kind, plan, root = job
  if kind == "clip":
    _render_clip(plan, root)
  else:
    _render_episode(plan, root)
  return kind


def _csv_bytes(columns: tuple[str, ...], rows: list[tuple]) -> bytes:
  buf = io.StringIO()
  writer = csv.writer(buf, lineterminator="\n")
  writer.writerow(columns)
  writer.writerows(rows)
  return buf.getvalue().encode("utf-8")


def _write_if_changed(path: str, data: bytes) -> None:
  if os.path.exists(path):
    with open(path, "rb") as f:
      if f.read() == data:
        return
  os.makedirs(os.path.dirname(path), exist_ok=True)
  _atomic_write(path, data)


def _json_bytes(obj: dict) -> bytes:
  return (json.dumps(obj, indent=1, sort_keys=False) + "\n").encode("utf-8")


def _describe(config: dict) -> str:
  sizes = config.get("sizes") or {}
  return (f"seed {config.get('seed')}, version {config.get('version')}, "
          f"{len(sizes.get('classes', []))} classes, clips per class "
          f"{sizes.get('clips_per_class')}, episodes {sizes.get('episodes')}")


def _check_same_dataset(out_dir: str, config: dict) -> None:
  """Refuses to mix two different renderings in one folder."""
  for name in (layout.SUMMARY_FILE, layout.PARTIAL_FILE):
    path = os.path.join(out_dir, name)
    if not os.path.exists(path):
      continue
    try:
      with open(path) as f:
        found = json.load(f)
    except (OSError, ValueError) as e:
      raise LaryError(
          f"{path}: unreadable ({e}); delete it to re-render") from e
    theirs = {k: found.get(k) for k in config}
    if theirs != config:
      raise LaryError(
          f"{path}: this folder holds LARY-Sim with {_describe(theirs)}, "
          f"not {_describe(config)}; use another --out or delete it")


def _run_jobs(jobs: list, num_workers: int, progress: bool) -> None:
  bar = progress_lib.bar(len(jobs), desc=layout.NAME, unit="job",
                         show=progress)
  with bar:
    if num_workers <= 1:
      for job in jobs:
        _run_job(job)
        bar.update()
      return
    # spawn, not fork: the caller may have started JAX's threads.
    context = multiprocessing.get_context("spawn")
    with concurrent.futures.ProcessPoolExecutor(
        num_workers, mp_context=context) as pool:
      futures = [pool.submit(_run_job, job) for job in jobs]
      try:
        for future in concurrent.futures.as_completed(futures):
          future.result()
          bar.update()
      except BaseException:
        pool.shutdown(wait=True, cancel_futures=True)
        raise


def _check_request(sizes: layout.Sizes, seed: Any) -> None:
  """One clear error for a seed, class list or clip length we cannot use."""
  if not isinstance(seed, (int, np.integer)) or seed < 0:
    raise LaryError(f"--seed must be an integer >= 0, got {seed!r}")
  unknown = set(sizes.classes) - set(motions.CLASSES)
  if unknown:
    raise LaryError(f"unknown LARY-Sim classes {sorted(unknown)}; expected "
                    f"some of {motions.CLASSES}")
  if sizes.frames_per_clip < 24:
    raise LaryError("LARY-Sim clips need >= 24 frames, got "
                    f"{sizes.frames_per_clip}")


def _missing_jobs(out_dir: str, clips: list, episodes: list) -> list:
  """The episodes, then the clips, that some file of is not yet on disk."""
  cls_root = os.path.join(out_dir, layout.CLASSIFICATION_DIR)
  reg_root = os.path.join(out_dir, layout.REGRESSION_DIR)
  jobs = []
  for p in episodes:  # the longest jobs first keeps the pool busy
    if not all(os.path.exists(os.path.join(reg_root, f)) for f in p.files()):
      jobs.append(("episode", p, out_dir))
  for p in clips:
    if not all(os.path.exists(os.path.join(cls_root, f)) for f in p.files()):
      jobs.append(("clip", p, out_dir))
  return jobs


def _write_split_csvs(out_dir: str, clips: list, episodes: list) -> dict:
  """Writes each split's metadata CSVs; returns the row counts."""
  counts = {"classification": {}, "regression": {}}
  meta = os.path.join(out_dir, layout.METADATA_DIR)
  for split in layout.SPLITS:
    rows = layout.classification_rows(clips, split)
    counts["classification"][split] = len(rows)
    _write_if_changed(
        os.path.join(meta, layout.csv_name("classification", split)),
        _csv_bytes(layout.CLASSIFICATION_COLUMNS, rows))
    rows = layout.regression_rows(episodes, split)
    counts["regression"][split] = {
        "episodes": sum(p.split == split for p in episodes),
        "rows": len(rows)}
    _write_if_changed(
        os.path.join(meta, layout.csv_name("regression", split)),
        _csv_bytes(layout.REGRESSION_COLUMNS, rows))
  return counts


def _simulate(
    out_dir: str,
    sizes: layout.Sizes,
    *,
    tiny: bool,
    seed: int,
    num_workers: int | None,
    progress: bool,
) -> dict:
  """`simulate` with explicit sizes (tests render smaller than --tiny)."""
  start = time.perf_counter()
  _check_request(sizes, seed)
  config = {"version": layout.VERSION, "seed": int(seed),
            "sizes": sizes.as_json()}
  os.makedirs(out_dir, exist_ok=True)
  _check_same_dataset(out_dir, config)

  clips = layout.plan_clips(sizes, int(seed))
  episodes = layout.plan_episodes(sizes, int(seed))
  jobs = _missing_jobs(out_dir, clips, episodes)
  if jobs:
    import_pybullet()  # fail here, in one line, rather than in every worker
    _write_if_changed(os.path.join(out_dir, layout.PARTIAL_FILE),
                      _json_bytes(config))
    workers = num_workers or os.cpu_count() or 1
    _run_jobs(jobs, min(workers, len(jobs)), progress)

  counts = _write_split_csvs(out_dir, clips, episodes)

  summary = {
      "name": layout.NAME,
      **config,
      "tiny": bool(tiny),
      "classes": list(sizes.classes),
      "arms": {"seen": arms.SEEN_ARM, "unseen": arms.UNSEEN_ARM},
      "scene_styles": {"seen": list(scene_lib.SEEN_STYLES),
                       "unseen": list(scene_lib.UNSEEN_STYLES)},
      "fps": layout.FPS,
      "image_size": camera_lib.IMAGE_SIZE,
      "stride": layout.STRIDE,
      "action_dims": list(layout.ACTION_DIMS),
      "state_dims": list(layout.STATE_DIMS),
      "counts": counts,
  }
  _write_if_changed(os.path.join(out_dir, layout.SUMMARY_FILE),
                    _json_bytes(summary))
  partial = os.path.join(out_dir, layout.PARTIAL_FILE)
  if os.path.exists(partial):
    os.remove(partial)
  rendered = {"clips": sum(j[0] == "clip" for j in jobs),
              "episodes": sum(j[0] == "episode" for j in jobs)}
  return {**summary, "out_dir": out_dir, "rendered": rendered,
          "seconds": round(time.perf_counter() - start, 2)}


def simulate(
    out_dir: str,
    *,
    tiny: bool = False,
    seed: int = 0,
    num_workers: int | None = None,
    progress: bool = True,
) -> dict:
  """Renders LARY-Sim (or finishes an interrupted rendering) into out_dir.

  Args:
    out_dir: the DATA_DIR to write: classification/LARY-Sim/...,
      regression/lary_sim/..., metadata/sim_*_metadata_<split>.csv and, last,
      LARY_SIM.json.
    tiny: render the tiny preset (a few clips per class) instead of the
      default size.
    seed: the dataset seed; equal seeds give byte-identical files.
    num_workers: worker processes; None means os.cpu_count().
    progress: show a tqdm progress bar.

  Returns:
    The summary written to LARY_SIM.json (seed, sizes, classes, counts per
    split, ...) plus `out_dir`, `rendered` (jobs run now) and `seconds`.

  Raises:
    LaryError: PyBullet is missing, or out_dir holds a LARY-Sim rendered
      with another seed or size.
  """
  sizes = layout.TINY_SIZES if tiny else layout.DEFAULT_SIZES
  return _simulate(out_dir, sizes, tiny=tiny, seed=seed,
                   num_workers=num_workers, progress=progress)
