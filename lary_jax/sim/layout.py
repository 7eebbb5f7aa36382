"""What LARY-Sim contains and where each file goes.

Pure functions: the sizes, the splits, one plan per clip and per episode
(each seeded from (seed, split, index) only), the file paths of the
LARYBench DATA_DIR layout, and the metadata CSV rows.
"""

import dataclasses

import numpy as np

from lary_jax.sim import arms
from lary_jax.sim import camera as camera_lib
from lary_jax.sim import motions
from lary_jax.sim import scene as scene_lib

NAME = "LARY-Sim"
VERSION = "2.0.0"
SPLITS = ("seen_train", "seen_val", "unseen")
FPS = 10
STRIDE = 5  # regression pairs (t, t + STRIDE); action chunks of STRIDE steps
SUMMARY_FILE = "LARY_SIM.json"
PARTIAL_FILE = ".LARY_SIM.partial.json"

CLASSIFICATION_DIR = "classification"
REGRESSION_DIR = "regression/lary_sim"
METADATA_DIR = "metadata"
# `state_path`: the clip's ground truth, one robot state per video frame
# (STATE_DIMS), for the `sim_oracle` control; not a LARYBench column.
CLASSIFICATION_COLUMNS = ("dataset", "video_path", "action", "state_path")
REGRESSION_COLUMNS = ("dataset", "type", "perspective", "src_img",
                      "src_state", "tgt_img", "tgt_state", "action")
ACTION_DIMS = ("x", "y", "z", "roll", "pitch", "yaw", "gripper")
STATE_DIMS = ("tcp_x", "tcp_y", "tcp_z", "tcp_roll", "tcp_pitch", "tcp_yaw",
              "gripper_width", "joint_1", "joint_2", "joint_3", "joint_4",
              "joint_5", "joint_6", "joint_7", "gripper_action")

_SPLIT_CODE = {s: i for i, s in enumerate(SPLITS)}
_CLIP, _EPISODE = 0, 1


@dataclasses.dataclass(frozen=True)
class Sizes:
  """How much to render.

  Attributes:
    classes: the motion classes (a subset of motions.CLASSES).
    clips_per_class: clips of each class in seen_train, seen_val, unseen.
    episodes: regression episodes in seen_train, seen_val, unseen.
    frames_per_clip: frames of every classification clip.
  """

  classes: tuple[str, ...] = motions.CLASSES
  # 12 x 12 = 144 validation and unseen clips: the standard error of a top-1
  # at chance (1/12) is then sqrt(p (1 - p) / 144) = 2.3 points.
  clips_per_class: tuple[int, int, int] = (24, 12, 12)
  episodes: tuple[int, int, int] = (40, 10, 10)
  frames_per_clip: int = 24

  def as_json(self) -> dict:
    return {
        "classes": list(self.classes),
        "clips_per_class": dict(zip(SPLITS, self.clips_per_class)),
        "episodes": dict(zip(SPLITS, self.episodes)),
        "frames_per_clip": self.frames_per_clip,
    }


DEFAULT_SIZES = Sizes()
TINY_SIZES = Sizes(clips_per_class=(2, 1, 1), episodes=(3, 1, 1))


def arm_of(split: str) -> str:
  """The Panda renders the seen splits, the iiwa only `unseen`."""
  return arms.UNSEEN_ARM if split == "unseen" else arms.SEEN_ARM


def styles_of(split: str) -> tuple[str, ...]:
  return scene_lib.UNSEEN_STYLES if split == "unseen" else scene_lib.SEEN_STYLES


def _generators(seed: int, split: str, kind: int, index: int):
  """Independent scene, camera and motion generators of one item."""
  root = np.random.SeedSequence([seed, _SPLIT_CODE[split], kind, index])
  return [np.random.default_rng(s) for s in root.spawn(3)]


@dataclasses.dataclass(frozen=True)
class ClipPlan:
  """One classification clip.

  Attributes:
    seed: the dataset seed.
    split: one of SPLITS.
    index: position within the split.
    clip_id: number unique across splits.
    class_name: the motion class.
    frames: frame count.
  """

  seed: int
  split: str
  index: int
  clip_id: int
  class_name: str
  frames: int

  @property
  def arm(self) -> str:
    return arm_of(self.split)

  @property
  def video_path(self) -> str:
    """Relative to <out>/classification/, as in the CSV."""
    return (f"{NAME}/{self.arm}/{self.class_name}/"
            f"clip_{self.clip_id:06d}.mp4")

  @property
  def state_path(self) -> str:
    """The per-frame states [frames, 15] beside the video."""
    return self.video_path[:-len(".mp4")] + "_states.npy"

  def files(self) -> list[str]:
    """Every file of the clip, relative to <out>/classification/."""
    return [self.video_path, self.state_path]

  def spec(self):
    """(scene, camera, trajectory [frames, 7]) of this clip."""
    rs, rc, rm = _generators(self.seed, self.split, _CLIP, self.index)
    return (scene_lib.sample_scene(rs, styles_of(self.split)),
            camera_lib.sample_camera(rc),
            motions.clip_trajectory(self.class_name, rm, self.frames))


@dataclasses.dataclass(frozen=True)
class EpisodePlan:
  """One regression episode.

  Attributes:
    seed: the dataset seed.
    split: one of SPLITS.
    index: position within the split.
    episode_id: number unique across splits.
    task: one of motions.EPISODE_TASKS.
    steps: control steps; a multiple of STRIDE (frames 0..steps exist).
  """

  seed: int
  split: str
  index: int
  episode_id: int
  task: str
  steps: int

  @property
  def arm(self) -> str:
    return arm_of(self.split)

  def spec(self):
    """(scene, camera, trajectory [steps + 1, 7]) of this episode."""
    rs, rc, rm = _generators(self.seed, self.split, _EPISODE, self.index)
    scene = scene_lib.sample_scene(rs, styles_of(self.split))
    trajectory = motions.episode_trajectory(
        self.task, rm, np.asarray(scene.cube_xy), scene.cube_yaw,
        scene.cube_half, np.asarray(scene.goal_xy), STRIDE)
    return scene, camera_lib.fixed_camera(scene.style, rc), trajectory

  def image_path(self, t: int) -> str:
    return f"images/ep_{self.episode_id}/frame_{t:06d}.png"

  def state_path(self, t: int) -> str:
    return f"states/ep_{self.episode_id}/state_{t:06d}.npy"

  def action_path(self, t: int) -> str:
    end = t + STRIDE - 1
    return f"actions/ep_{self.episode_id}/action_{t:06d}to{end:06d}.npy"

  def frame_steps(self) -> range:
    """The steps that have an image and a state."""
    return range(0, self.steps + 1, STRIDE)

  def files(self) -> list[str]:
    """Every file of the episode, relative to the regression root."""
    out = []
    for t in self.frame_steps():
      out += [self.image_path(t), self.state_path(t)]
      if t < self.steps:
        out.append(self.action_path(t))
    return out


def plan_clips(sizes: Sizes, seed: int) -> list[ClipPlan]:
  """Every clip, in CSV order: split, then index (classes interleaved)."""
  plans, clip_id = [], 0
  for split, per_class in zip(SPLITS, sizes.clips_per_class):
    for index in range(per_class * len(sizes.classes)):
      name = sizes.classes[index % len(sizes.classes)]
      plans.append(ClipPlan(seed, split, index, clip_id, name,
                            sizes.frames_per_clip))
      clip_id += 1
  return plans


def plan_episodes(sizes: Sizes, seed: int) -> list[EpisodePlan]:
  """Every episode, in CSV order; tasks cycle through EPISODE_TASKS."""
  plans, episode_id = [], 0
  for split, count in zip(SPLITS, sizes.episodes):
    for index in range(count):
      task = motions.EPISODE_TASKS[index % len(motions.EPISODE_TASKS)]
      plan = EpisodePlan(seed, split, index, episode_id, task, 0)
      steps = len(plan.spec()[2]) - 1
      plans.append(dataclasses.replace(plan, steps=steps))
      episode_id += 1
  return plans


def classification_rows(plans: list[ClipPlan], split: str) -> list[tuple]:
  return [(f"{NAME}-{p.arm}", p.video_path, p.class_name, p.state_path)
          for p in plans if p.split == split]


def regression_rows(plans: list[EpisodePlan], split: str) -> list[tuple]:
  rows = []
  for p in plans:
    if p.split != split:
      continue
    for t in range(0, p.steps, STRIDE):
      rows.append((NAME, "robot", "3rd", p.image_path(t), p.state_path(t),
                   p.image_path(t + STRIDE), p.state_path(t + STRIDE),
                   p.action_path(t)))
  return rows


def csv_name(kind: str, split: str) -> str:
  """`sim_classification_metadata_seen_train.csv` and the like."""
  return f"sim_{kind}_metadata_{split}.csv"
