"""Scripted end-effector trajectories: the motion classes and the episodes.

Everything here is pure numpy on a `np.random.Generator`, so a clip's motion
is fixed by its seed alone and the main process can plan episodes (and so
write the metadata) without PyBullet.

A trajectory is float64 [T, 7]: TCP position (x, y, z, metres, table top at
z = 0, robot base at the origin facing +x), TCP roll, pitch, yaw (radians,
relative to the gripper-down pose, see arms.py) and gripper (+1 open,
-1 closed). Row 0 is the start pose; row t + 1 is the command issued at
step t.
"""

import numpy as np

CLASSES = (
    "reach_left",
    "reach_right",
    "push_forward",
    "pull_back",
    "lift_up",
    "put_down",
    "wave",
    "tap",
    "draw_circle",
    "rotate_wrist",
    "open_gripper",
    "close_gripper",
)

EPISODE_TASKS = ("pick_place", "push", "poke")

# Every class starts from the same box, so the first frame says nothing
# about the class; amplitudes are then clipped to the reachable box.
_START_LOW = np.array([0.42, -0.15, 0.15])
_START_HIGH = np.array([0.54, 0.15, 0.30])
_REACH_LOW = np.array([0.30, -0.36, 0.02])
_REACH_HIGH = np.array([0.67, 0.36, 0.45])
_START_YAW = 0.5


def _min_jerk(u: np.ndarray) -> np.ndarray:
  u = np.clip(u, 0.0, 1.0)
  return u**3 * (10.0 - 15.0 * u + 6.0 * u**2)


def _timing(rng: np.random.Generator, num_frames: int) -> np.ndarray:
  """Phase u in [0, 1] per frame: a random start delay and duration."""
  t = np.arange(num_frames, dtype=np.float64)
  delay = rng.integers(0, 4)
  duration = rng.uniform(0.55, 1.0) * (num_frames - 1 - delay)
  return np.clip((t - delay) / duration, 0.0, 1.0)


def _room(p0: np.ndarray, axis: int, sign: float, want: float) -> float:
  """The amplitude along +-axis that stays in the reachable box."""
  if sign > 0:
    limit = _REACH_HIGH[axis] - p0[axis]
  else:
    limit = p0[axis] - _REACH_LOW[axis]
  return float(min(want, max(limit, 0.0)))


def clip_trajectory(
    name: str, rng: np.random.Generator, num_frames: int
) -> np.ndarray:
  """The TCP trajectory of one classification clip.

  Args:
    name: one of CLASSES.
    rng: the clip's motion generator.
    num_frames: frames in the clip (= trajectory rows).

  Returns:
    float64 [num_frames, 7]; see the module docstring.
  """
  if name not in CLASSES:
    raise ValueError(f"unknown LARY-Sim class {name!r}; expected {CLASSES}")
  p0 = rng.uniform(_START_LOW, _START_HIGH)
  yaw0 = rng.uniform(-_START_YAW, _START_YAW)
  grip0 = rng.choice([-1.0, 1.0])
  # A slow drift shared by all classes, so "nothing moves" is no class cue.
  drift = rng.normal(size=3) * 0.004
  u = _timing(rng, num_frames)  # [T]
  s = _min_jerk(u)
  t = np.linspace(0.0, 1.0, num_frames)
  pos = p0 + t[:, None] * drift  # [T, 3]
  rpy = np.zeros((num_frames, 3))
  rpy[:, 2] = yaw0
  grip = np.full(num_frames, grip0)

  linear = {
      "reach_left": (1, +1.0, (0.12, 0.20)),
      "reach_right": (1, -1.0, (0.12, 0.20)),
      "push_forward": (0, +1.0, (0.09, 0.14)),
      "pull_back": (0, -1.0, (0.09, 0.14)),
      "lift_up": (2, +1.0, (0.10, 0.15)),
      "put_down": (2, -1.0, (0.10, 0.15)),
  }
  if name in linear:
    axis, sign, (lo, hi) = linear[name]
    amp = max(_room(p0, axis, sign, rng.uniform(lo, hi)), 0.7 * lo)
    pos[:, axis] += sign * amp * s
  elif name == "wave":
    amp = rng.uniform(0.05, 0.09)
    cycles = rng.uniform(1.5, 2.5)
    envelope = np.minimum(1.0, np.minimum(u, 1.0 - u) * 5.0)
    pos[:, 1] += amp * np.sin(2 * np.pi * cycles * u) * envelope
  elif name == "tap":
    amp = rng.uniform(0.04, 0.07)
    cycles = rng.integers(2, 4)
    pos[:, 2] -= amp * 0.5 * (1.0 - np.cos(2 * np.pi * cycles * u))
  elif name == "draw_circle":
    radius = rng.uniform(0.05, 0.085)
    phase0 = rng.uniform(0.0, 2 * np.pi)
    turn = rng.choice([-1.0, 1.0]) * 2 * np.pi * s
    pos[:, 0] += radius * (np.cos(phase0 + turn) - np.cos(phase0))
    pos[:, 1] += radius * (np.sin(phase0 + turn) - np.sin(phase0))
  elif name == "rotate_wrist":
    rpy[:, 2] += rng.choice([-1.0, 1.0]) * rng.uniform(1.0, 1.6) * s
  else:  # open_gripper / close_gripper: the arm holds still.
    opening = name == "open_gripper"
    switch = rng.integers(2, num_frames - 10)
    grip[:] = -1.0 if opening else 1.0
    grip[switch:] = 1.0 if opening else -1.0
  return np.concatenate([pos, rpy, grip[:, None]], axis=1)


def _interpolate(
    waypoints: list[tuple[np.ndarray, float, float, int]],
    speed: float,
    yaw_speed: float,
) -> np.ndarray:
  """Joins waypoints (position, yaw, gripper, hold steps) with min-jerk moves.

  Returns:
    float64 [T, 7] trajectory; the gripper switches at the start of a move.
  """
  rows = []
  pos, yaw, grip, _ = waypoints[0]
  rows.append(np.r_[pos, 0.0, 0.0, yaw, grip])
  for nxt_pos, nxt_yaw, nxt_grip, hold in waypoints[1:]:
    dist = float(np.linalg.norm(nxt_pos - pos))
    turn = abs(nxt_yaw - yaw)
    steps = max(1, int(np.ceil(dist / speed)), int(np.ceil(turn / yaw_speed)))
    s = _min_jerk(np.arange(1, steps + 1) / steps)
    for si in s:
      p = pos + si * (nxt_pos - pos)
      rows.append(np.r_[p, 0.0, 0.0, yaw + si * (nxt_yaw - yaw), nxt_grip])
    rows.extend([rows[-1]] * hold)
    pos, yaw, grip = nxt_pos, nxt_yaw, nxt_grip
  return np.asarray(rows)


def episode_trajectory(
    task: str,
    rng: np.random.Generator,
    cube_xy: np.ndarray,
    cube_yaw: float,
    cube_half: float,
    goal_xy: np.ndarray,
    stride: int = 5,
) -> np.ndarray:
  """The TCP trajectory of one regression episode (a scripted manipulation).

  Args:
    task: one of EPISODE_TASKS.
    rng: the episode's motion generator.
    cube_xy: [2] the cube's position on the table.
    cube_yaw: the cube's yaw.
    cube_half: the cube's half edge length.
    goal_xy: [2] where pick_place puts the cube down.
    stride: the length T - 1 is padded with a final hold to a multiple of it.

  Returns:
    float64 [T, 7], T - 1 a multiple of `stride`.
  """
  speed = rng.uniform(0.015, 0.03)
  yaw_speed = rng.uniform(0.12, 0.25)
  start = rng.uniform(_START_LOW, _START_HIGH)
  yaw0 = rng.uniform(-_START_YAW, _START_YAW)
  # The gripper is symmetric under quarter turns: grasp at the nearest one.
  grasp_yaw = (cube_yaw + np.pi / 4) % (np.pi / 2) - np.pi / 4
  above = rng.uniform(0.08, 0.14)
  cube = np.r_[cube_xy, cube_half]
  wp = [(start, yaw0, 1.0, 0)]
  if task == "pick_place":
    goal = np.r_[goal_xy, cube_half]
    lift = rng.uniform(0.12, 0.22)
    wp += [
        (cube + [0, 0, above], grasp_yaw, 1.0, 0),
        (cube, grasp_yaw, 1.0, 2),
        (cube, grasp_yaw, -1.0, 3),
        (cube + [0, 0, lift], grasp_yaw, -1.0, 0),
        (goal + [0, 0, lift], grasp_yaw + rng.uniform(-0.4, 0.4), -1.0, 0),
    ]
    wp += [
        (goal + [0, 0, 0.005], wp[-1][1], -1.0, 1),
        (goal + [0, 0, 0.005], wp[-1][1], 1.0, 3),
        (goal + [0, 0, above], wp[-1][1], 1.0, 0),
    ]
  elif task == "push":
    angle = rng.uniform(-np.pi, np.pi)
    d = np.array([np.cos(angle), np.sin(angle), 0.0])
    behind = cube - d * (cube_half + 0.06)
    behind[2] = cube_half
    length = rng.uniform(0.08, 0.16)
    grip = rng.choice([-1.0, 1.0])
    push_yaw = (angle + np.pi / 4) % (np.pi / 2) - np.pi / 4
    wp += [
        (behind + [0, 0, above], push_yaw, grip, 0),
        (behind, push_yaw, grip, 1),
        (behind + d * length, push_yaw, grip, 1),
        (behind + d * length + [0, 0, above], push_yaw, grip, 0),
    ]
  elif task == "poke":
    for _ in range(rng.integers(2, 4)):
      target = rng.uniform(_START_LOW, _START_HIGH)
      target[2] = rng.uniform(0.05, 0.12)
      yaw = rng.uniform(-_START_YAW, _START_YAW)
      grip = rng.choice([-1.0, 1.0])
      wp += [(target, yaw, grip, int(rng.integers(0, 3)))]
    wp += [(start, yaw0, 1.0, 0)]
  else:
    raise ValueError(f"unknown episode task {task!r}; expected {EPISODE_TASKS}")
  traj = _interpolate(wp, speed, yaw_speed)
  traj[:, :3] = np.clip(traj[:, :3], _REACH_LOW, _REACH_HIGH)
  pad = (-(len(traj) - 1)) % stride
  return np.concatenate([traj, np.repeat(traj[-1:], pad, axis=0)], axis=0)
