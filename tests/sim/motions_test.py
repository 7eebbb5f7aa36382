"""Scripted trajectories: class signatures, start poses, episode shapes."""

import numpy as np
import pytest

from lary_jax.sim import motions

T = 24


def _traj(name: str, seed: int) -> np.ndarray:
  return motions.clip_trajectory(name, np.random.default_rng(seed), T)


@pytest.mark.parametrize("name", motions.CLASSES)
def test_clip_trajectory_shape_and_ranges(name):
  for seed in range(20):
    traj = _traj(name, seed)
    assert traj.shape == (T, 7)
    assert np.isin(traj[:, 6], [-1.0, 1.0]).all()
    assert (traj[:, 2] >= 0.019).all() and (traj[:, 2] <= 0.46).all()
    assert np.abs(traj[:, 1]).max() <= 0.37
    np.testing.assert_array_equal(traj[:, 3:5], 0.0)  # gripper points down


def test_start_pose_does_not_depend_on_the_class():
  # The start is drawn before anything class-specific, so equal seeds give
  # equal first poses (only the gripper classes fix the gripper state).
  for seed in range(10):
    starts = np.stack([_traj(n, seed)[0, :6] for n in motions.CLASSES])
    np.testing.assert_array_equal(starts, np.repeat(starts[:1], 12, axis=0))


@pytest.mark.parametrize("name,axis,sign", [
    ("reach_left", 1, 1), ("reach_right", 1, -1), ("push_forward", 0, 1),
    ("pull_back", 0, -1), ("lift_up", 2, 1), ("put_down", 2, -1)])
def test_linear_classes_move_along_their_axis(name, axis, sign):
  for seed in range(20):
    traj = _traj(name, seed)
    net = traj[-1, :3] - traj[0, :3]
    assert sign * net[axis] >= 0.06
    others = np.delete(net, axis)
    assert np.abs(others).max() < 0.02  # only the shared slow drift


def test_oscillating_and_rotating_classes_return_or_turn():
  for seed in range(10):
    wave = _traj("wave", seed)
    assert np.ptp(wave[:, 1]) > 0.07
    assert np.abs(wave[-1, :3] - wave[0, :3]).max() < 0.02
    tap = _traj("tap", seed)
    assert np.ptp(tap[:, 2]) > 0.03
    circle = _traj("draw_circle", seed)
    assert np.ptp(circle[:, 0]) > 0.08 and np.ptp(circle[:, 1]) > 0.08
    rot = _traj("rotate_wrist", seed)
    assert abs(rot[-1, 5] - rot[0, 5]) >= 1.0
    assert np.abs(rot[-1, :3] - rot[0, :3]).max() < 0.02


def test_gripper_classes_switch_once_and_hold_the_arm():
  for seed in range(10):
    for name, before, after in (("open_gripper", -1, 1),
                                ("close_gripper", 1, -1)):
      traj = _traj(name, seed)
      assert traj[0, 6] == before and traj[-1, 6] == after
      assert np.count_nonzero(np.diff(traj[:, 6])) == 1
      assert np.abs(traj[:, :3] - traj[0, :3]).max() < 0.02


def test_unknown_class_raises():
  with pytest.raises(ValueError, match="unknown LARY-Sim class"):
    _traj("juggle", 0)


@pytest.mark.parametrize("task", motions.EPISODE_TASKS)
def test_episode_trajectories(task):
  for seed in range(10):
    rng = np.random.default_rng(seed)
    traj = motions.episode_trajectory(task, rng, np.array([0.5, 0.1]), 0.3,
                                      0.025, np.array([0.45, -0.15]))
    assert traj.shape[1] == 7 and (len(traj) - 1) % 5 == 0
    assert len(traj) - 1 >= 20
    assert np.isin(traj[:, 6], [-1.0, 1.0]).all()
    steps = np.linalg.norm(np.diff(traj[:, :3], axis=0), axis=1)
    assert steps.max() < 0.06  # smooth enough for the lagging controller
    if task == "pick_place":
      # Grasps at the cube, releases over the goal.
      closed = np.flatnonzero(traj[:, 6] < 0)
      np.testing.assert_allclose(traj[closed[0], :3], [0.5, 0.1, 0.025])
      np.testing.assert_allclose(traj[closed[-1] + 1, :2], [0.45, -0.15])


def test_trajectories_are_functions_of_the_seed():
  a = motions.episode_trajectory("poke", np.random.default_rng(3),
                                 np.zeros(2), 0.0, 0.02, np.ones(2))
  b = motions.episode_trajectory("poke", np.random.default_rng(3),
                                 np.zeros(2), 0.0, 0.02, np.ones(2))
  np.testing.assert_array_equal(a, b)
  np.testing.assert_array_equal(_traj("wave", 5), _traj("wave", 5))
  assert not np.array_equal(_traj("wave", 5), _traj("wave", 6))
