"""Plays a TCP trajectory on an arm in a scene and renders the frames.

The world is kinematic: the arm follows IK targets with a lag (arms.py), and
the cube obeys two rules instead of a physics solver, which keeps every
frame a pure function of the clip's seed: a closing gripper around it
carries it (until the gripper opens, when it drops onto the table), and a
low TCP pushes it aside.
"""

import dataclasses

import numpy as np

from lary_jax.sim import arms as arms_lib
from lary_jax.sim import camera as camera_lib
from lary_jax.sim import scene as scene_lib
from lary_jax.sim.client import Client

_GRASP_XY = 0.03
_GRASP_Z = 0.035
_PUSH_MARGIN = 0.015


@dataclasses.dataclass
class _Cube:
  body: int
  half: float
  position: np.ndarray  # [3]
  yaw: float
  # While carried: the cube's offset from the TCP in the TCP's yaw frame,
  # and its yaw relative to the TCP's.
  held: tuple[np.ndarray, float] | None = None
  # An open gripper that came down over the cube has it between its fingers;
  # one that runs into it sideways pushes it.
  straddled: bool = False


def _rot_z(angle: float, v: np.ndarray) -> np.ndarray:
  c, s = np.cos(angle), np.sin(angle)
  return np.array([c * v[0] - s * v[1], s * v[0] + c * v[1], v[2]])


def _update_cube(
    client: Client, cube: _Cube, tcp: np.ndarray, tcp_yaw: float,
    gripper: float, was_open: bool,
) -> None:
  """Applies the carry and push rules after an arm step."""
  if cube.held is not None:
    offset, yaw = cube.held
    cube.position = tcp + _rot_z(tcp_yaw, offset)
    cube.yaw = tcp_yaw + yaw
    if gripper > 0:  # released: it drops onto the table, between the fingers
      cube.held = None
      cube.straddled = True
      cube.position = np.r_[cube.position[:2], cube.half]
  else:
    offset = cube.position - tcp
    gap = float(np.linalg.norm(offset[:2]))
    if gap >= _GRASP_XY:
      cube.straddled = False
    elif tcp[2] > 2 * cube.half:
      cube.straddled = was_open
    if cube.straddled:
      if gripper < 0 and abs(offset[2]) < _GRASP_Z:
        cube.held = (_rot_z(-tcp_yaw, offset), cube.yaw - tcp_yaw)
    elif tcp[2] < 2 * cube.half + _PUSH_MARGIN:
      reach = cube.half * 1.2 + _PUSH_MARGIN
      if 1e-9 < gap < reach:
        cube.position = np.r_[tcp[:2] + offset[:2] * (reach / gap), cube.half]
  pb = client.pb
  pb.resetBasePositionAndOrientation(
      cube.body,
      cube.position.tolist(),
      pb.getQuaternionFromEuler((0, 0, cube.yaw)),
      physicsClientId=client.cid,
  )


def rollout(
    client: Client,
    arm_name: str,
    scene: scene_lib.SceneSpec,
    camera: camera_lib.CameraSpec,
    trajectory: np.ndarray,
    render_every: int = 1,
) -> tuple[np.ndarray, np.ndarray]:
  """Plays a trajectory from an empty world.

  Args:
    client: the process's PyBullet client; it is reset first.
    arm_name: "panda" or "iiwa".
    scene: the scene to build.
    camera: camera and light.
    trajectory: float [T, 7]; row 0 is the start pose, row t + 1 the command
      at step t (see motions.py).
    render_every: render the frames t = 0, k, 2k, ... only.

  Returns:
    frames: uint8 [ceil(T / render_every), H, W, 3].
    states: float32 [T, 15], the robot state before each step (and at the
      end), laid out like CALVIN's robot_obs.
  """
  client.reset()
  arm = arms_lib.Arm(client, arms_lib.ARM_SPECS[arm_name])
  cube_body = scene_lib.build_scene(client, scene)
  cube = _Cube(
      cube_body, scene.cube_half, np.r_[scene.cube_xy, scene.cube_half],
      scene.cube_yaw,
  )
  arm.teleport(trajectory[0, :3], trajectory[0, 3:6], trajectory[0, 6])
  tcp, rpy = arm.tcp_pose()
  _update_cube(client, cube, tcp, rpy[2], trajectory[0, 6], False)
  frames, states = [], []
  for t in range(len(trajectory)):
    if t > 0:
      was_open = arm.state.opening > 0.5
      arm.step(trajectory[t, :3], trajectory[t, 3:6], trajectory[t, 6])
      tcp, rpy = arm.tcp_pose()
      _update_cube(client, cube, tcp, rpy[2], trajectory[t, 6], was_open)
    states.append(arm.robot_obs())
    if t % render_every == 0:
      frames.append(camera_lib.render_frame(client, camera))
  return np.stack(frames), np.stack(states)
