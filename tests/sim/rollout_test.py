"""Arms, the kinematic cube rules and the renderer, in one PyBullet client."""

import numpy as np
import pytest

from lary_jax.sim import arms
from lary_jax.sim import camera as camera_lib
from lary_jax.sim import layout
from lary_jax.sim.client import process_client
from lary_jax.sim.rollout import rollout


@pytest.fixture(scope="module")
def client():
  return process_client()


def _cube_position(client) -> np.ndarray:
  # build_scene creates the cube last.
  pb, cid = client.pb, client.cid
  body = pb.getBodyUniqueId(pb.getNumBodies(physicsClientId=cid) - 1,
                            physicsClientId=cid)
  return np.array(pb.getBasePositionAndOrientation(
      body, physicsClientId=cid)[0])


@pytest.mark.parametrize("name,open_width,closed_width", [
    ("panda", 0.08, 0.0), ("iiwa", 0.121, 0.04)])
def test_arm_reaches_poses_and_reports_state(client, name, open_width,
                                             closed_width):
  client.reset()
  arm = arms.Arm(client, arms.ARM_SPECS[name])
  rng = np.random.default_rng(0)
  for i in range(8):
    pos = rng.uniform([0.4, -0.2, 0.1], [0.6, 0.2, 0.35])
    rpy = np.array([0.0, 0.0, rng.uniform(-1.2, 1.2)])
    grip = 1.0 if i % 2 else -1.0
    arm.teleport(pos, rpy, grip)
    obs = arm.robot_obs()
    assert obs.shape == (15,) and obs.dtype == np.float32
    np.testing.assert_allclose(obs[:3], pos, atol=5e-3)
    np.testing.assert_allclose(obs[3:6], rpy, atol=0.02)
    assert obs[6] == pytest.approx(open_width if grip > 0 else closed_width,
                                   abs=2e-3)
    np.testing.assert_allclose(obs[7:14], arm.state.joints, atol=1e-6)
    assert obs[14] == grip
  # Steps approach a new target geometrically (the controller lags).
  target = np.array([0.5, 0.1, 0.2])
  errors = []
  for _ in range(8):
    arm.step(target, np.zeros(3), 1.0)
    errors.append(np.linalg.norm(arm.tcp_pose()[0] - target))
  assert errors[0] > 0.02 and errors[-1] < 3e-3
  assert arm.gripper_width() == pytest.approx(open_width, abs=2e-3)


def _episode(split, task, index=0):
  p = layout.EpisodePlan(0, split, index, index, task, 0)
  return p, *p.spec()


@pytest.mark.parametrize("split", ["seen_train", "unseen"])
def test_pick_place_carries_the_cube_to_the_goal(client, split):
  p, scene, camera, trajectory = _episode(split, "pick_place")
  _, states = rollout(client, p.arm, scene, camera, trajectory,
                      render_every=10_000)
  assert states.shape == (len(trajectory), 15)
  cube = _cube_position(client)
  np.testing.assert_allclose(cube[:2], scene.goal_xy, atol=0.02)
  assert cube[2] == pytest.approx(scene.cube_half)


def test_push_moves_the_cube(client):
  p, scene, camera, trajectory = _episode("seen_train", "push", 1)
  rollout(client, p.arm, scene, camera, trajectory, render_every=10_000)
  moved = np.linalg.norm(_cube_position(client)[:2] - scene.cube_xy)
  assert moved > 0.03


def test_rendering_is_repeatable_and_follows_the_camera(client):
  p, scene, camera, trajectory = _episode("seen_train", "poke", 2)
  a, _ = rollout(client, p.arm, scene, camera, trajectory[:6])
  b, _ = rollout(client, p.arm, scene, camera, trajectory[:6])
  assert a.shape == (6, camera_lib.IMAGE_SIZE, camera_lib.IMAGE_SIZE, 3) and a.dtype == np.uint8
  np.testing.assert_array_equal(a, b)
  other = camera_lib.sample_camera(np.random.default_rng(99))
  c, _ = rollout(client, p.arm, scene, other, trajectory[:1])
  assert np.abs(c[0].astype(int) - a[0]).mean() > 10
  # The arm moves between frames, the picture changes.
  assert np.abs(a[-1].astype(int) - a[0]).mean() > 0.1
