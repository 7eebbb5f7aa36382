"""Plans, paths and CSV rows of LARY-Sim, without rendering."""

import re

import numpy as np

from lary_jax.sim import layout
from lary_jax.sim import motions


def test_presets():
  for sizes in (layout.TINY_SIZES, layout.DEFAULT_SIZES):
    assert len(sizes.classes) >= 10
    assert sizes.frames_per_clip >= 24
    assert all(n >= 1 for n in sizes.clips_per_class + sizes.episodes)
  assert layout.TINY_SIZES.clips_per_class == (2, 1, 1)
  assert sum(layout.DEFAULT_SIZES.episodes) >= 40


def test_clip_plans():
  plans = layout.plan_clips(layout.TINY_SIZES, seed=0)
  assert len(plans) == 12 * 4
  assert [p.clip_id for p in plans] == list(range(48))
  by_split = {s: [p for p in plans if p.split == s] for s in layout.SPLITS}
  assert [len(v) for v in by_split.values()] == [24, 12, 12]
  for split, ps in by_split.items():
    # Every class appears equally often in every split.
    counts = {c: sum(p.class_name == c for p in ps) for c in motions.CLASSES}
    assert len(set(counts.values())) == 1
    assert {p.arm for p in ps} == {"iiwa" if split == "unseen" else "panda"}
  p = plans[13]
  assert p.video_path == "LARY-Sim/panda/reach_right/clip_000013.mp4"
  assert p.state_path == "LARY-Sim/panda/reach_right/clip_000013_states.npy"
  assert layout.classification_rows(plans, "unseen")[0] == (
      "LARY-Sim-iiwa", "LARY-Sim/iiwa/reach_left/clip_000036.mp4",
      "reach_left", "LARY-Sim/iiwa/reach_left/clip_000036_states.npy")


def test_episode_plans_and_regression_rows():
  plans = layout.plan_episodes(layout.TINY_SIZES, seed=0)
  assert [p.episode_id for p in plans] == [0, 1, 2, 3, 4]
  assert [p.split for p in plans] == ["seen_train"] * 3 + ["seen_val", "unseen"]
  assert [p.arm for p in plans] == ["panda"] * 4 + ["iiwa"]
  assert all(p.steps % layout.STRIDE == 0 and p.steps >= 20 for p in plans)
  rows = layout.regression_rows(plans, "seen_val")
  ep = plans[3]
  assert len(rows) == ep.steps // 5
  assert rows[1] == (
      "LARY-Sim", "robot", "3rd", "images/ep_3/frame_000005.png",
      "states/ep_3/state_000005.npy", "images/ep_3/frame_000010.png",
      "states/ep_3/state_000010.npy", "actions/ep_3/action_000005to000009.npy")
  # The files an episode writes are exactly those its rows name.
  named = {f for r in rows for f in r[3:]}
  assert named == set(ep.files())
  calvin = re.compile(r"(images/ep_\d+/frame_\d{6}\.png|states/ep_\d+/"
                      r"state_\d{6}\.npy|actions/ep_\d+/action_\d{6}to\d{6}"
                      r"\.npy)")
  assert all(calvin.fullmatch(f) for f in named)


def test_plans_depend_on_seed_split_and_index_only():
  small = layout.Sizes(clips_per_class=(1, 1, 1), episodes=(2, 1, 1))
  a = layout.plan_episodes(small, seed=0)
  b = layout.plan_episodes(layout.TINY_SIZES, seed=0)
  # The first two seen_train episodes are the same in both sizes ...
  assert a[:2] == b[:2]
  np.testing.assert_array_equal(a[1].spec()[2], b[1].spec()[2])
  # ... and the seed changes them.
  c = layout.plan_episodes(small, seed=1)
  assert not np.array_equal(a[0].spec()[2], c[0].spec()[2])
  clip_a = layout.plan_clips(small, 0)[3]
  clip_b = layout.plan_clips(layout.TINY_SIZES, 0)[3]
  assert clip_a.spec()[1] == clip_b.spec()[1]  # same camera


def test_scene_styles_follow_the_split():
  plans = layout.plan_clips(
      layout.Sizes(clips_per_class=(2, 2, 2), episodes=(1, 1, 1)), seed=0)
  styles = {s: {p.spec()[0].style for p in plans if p.split == s}
            for s in layout.SPLITS}
  assert styles["seen_train"] == styles["seen_val"] == {"plain", "tray"}
  assert styles["unseen"] == {"round", "walled"}


def test_csv_names():
  assert (layout.csv_name("classification", "seen_train")
          == "sim_classification_metadata_seen_train.csv")
  assert (layout.csv_name("regression", "unseen")
          == "sim_regression_metadata_unseen.csv")
