"""The two embodiments of LARY-Sim and their kinematics.

The Franka Panda is the seen arm; the KUKA iiwa with a two-finger gripper is
held out for the unseen split. Both are driven kinematically: inverse
kinematics gives joint targets, and joints follow them with a first-order lag,
so no physics step (and no solver nondeterminism) is involved.

Orientation convention: the tool-centre-point (TCP) orientation is stored as
roll, pitch, yaw of the rotation *relative to the arm's gripper-down pose*,
so "pointing down, yaw 0" is (0, 0, 0) for both arms and the angles never
wrap around +-pi the way raw link Euler angles of a downward gripper do.
"""

import dataclasses
import hashlib
import os
import tempfile

import numpy as np

from lary_jax.sim.client import Client

ARMS = ("panda", "iiwa")
SEEN_ARM = "panda"
UNSEEN_ARM = "iiwa"

# Joint space moves this fraction of the way to the IK solution per step.
_TRACKING_GAIN = 0.6
# Gripper opening (0 closed .. 1 open) changes at most this much per step.
_GRIPPER_RATE = 0.4


@dataclasses.dataclass(frozen=True)
class ArmSpec:
  """What the renderer needs to know about one arm model.

  Attributes:
    name: "panda" or "iiwa".
    asset: the pybullet_data path of the model.
    low_poly: draw the links with their collision meshes (see `asset_path`).
    base_position: where the base sits; the table top is z = 0.
    ik_link: the link whose pose inverse kinematics solves for.
    tcp_offset: TCP position in the ik_link frame.
    arm_joints: the 7 arm joint indices.
    down_rpy: the ik_link orientation (world Euler) that points the gripper
      down; TCP orientations are relative to it.
    rest_pose: null-space rest pose of the 7 arm joints.
    finger_joints: finger joint indices.
    finger_open: joint values of finger_joints when fully open.
    finger_closed: joint values of finger_joints when closed.
    tip_links: the two fingertip links, whose distance is the gripper width.
  """

  name: str
  asset: str
  low_poly: bool
  base_position: tuple[float, float, float]
  ik_link: int
  tcp_offset: tuple[float, float, float]
  arm_joints: tuple[int, ...]
  down_rpy: tuple[float, float, float]
  rest_pose: tuple[float, ...]
  finger_joints: tuple[int, ...]
  finger_open: tuple[float, ...]
  finger_closed: tuple[float, ...]
  tip_links: tuple[int, int]


PANDA = ArmSpec(
    name="panda",
    asset="franka_panda/panda.urdf",
    low_poly=True,
    base_position=(0.0, 0.0, 0.0),
    ik_link=11,
    tcp_offset=(0.0, 0.0, 0.0),
    arm_joints=(0, 1, 2, 3, 4, 5, 6),
    down_rpy=(np.pi, 0.0, 0.0),
    rest_pose=(0.0, -0.3, 0.0, -2.2, 0.0, 2.0, 0.785),
    finger_joints=(9, 10),
    finger_open=(0.04, 0.04),
    finger_closed=(0.0, 0.0),
    tip_links=(9, 10),
)

IIWA = ArmSpec(
    name="iiwa",
    asset="kuka_iiwa/kuka_with_gripper2.sdf",
    low_poly=False,
    base_position=(-0.05, 0.0, 0.0),
    ik_link=6,
    # The gripper sits 2.4 cm off the flange axis in this model.
    tcp_offset=(0.0, 0.024, 0.22),
    arm_joints=(0, 1, 2, 3, 4, 5, 6),
    down_rpy=(0.0, -np.pi, 0.0),
    rest_pose=(0.0, 0.3, 0.0, -1.6, 0.0, 1.2, 0.0),
    finger_joints=(8, 11, 10, 13),
    finger_open=(-0.3, 0.3, 0.0, 0.0),
    finger_closed=(0.0, 0.0, 0.0, 0.0),
    tip_links=(10, 13),
)

ARM_SPECS = {"panda": PANDA, "iiwa": IIWA}


def asset_path(spec: ArmSpec, data_path: str) -> str:
  """The model file to load: the asset, or its low-poly copy.

  The Panda's visual meshes hold ~100k triangles, and the software renderer
  spends most of a frame on them (36 vs 16 ms a 224 x 224 frame); its
  collision meshes (~3k triangles) have the same outline. A low-poly arm is
  a copy of the URDF that draws every link with its collision mesh, written
  once into the temp folder (named by its content, so processes share it).

  Args:
    spec: the arm.
    data_path: pybullet_data's folder.

  Returns:
    A path PyBullet can load.
  """
  if not spec.low_poly:
    return spec.asset
  source = os.path.join(data_path, spec.asset)
  with open(source) as f:
    text = f.read()
  meshes = os.path.join(os.path.dirname(source), "meshes")
  text = text.replace("package://meshes/visual/", "package://meshes/collision/")
  text = text.replace("package://meshes/", meshes + "/")
  digest = hashlib.sha256(text.encode()).hexdigest()[:16]
  folder = os.path.join(tempfile.gettempdir(), "lary_sim_assets")
  path = os.path.join(folder, f"{spec.name}_low_poly_{digest}.urdf")
  if not os.path.exists(path):
    os.makedirs(folder, exist_ok=True)
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "w") as f:
      f.write(text)
    os.replace(tmp, path)
  return path


@dataclasses.dataclass
class ArmState:
  """The arm's kinematic state between steps."""

  joints: np.ndarray  # [7]
  opening: float  # 0 closed .. 1 open
  gripper_action: float  # last commanded gripper, -1 closed / +1 open


class Arm:
  """One loaded arm in a client, driven kinematically."""

  def __init__(self, client: Client, spec: ArmSpec):
    self.client = client
    self.spec = spec
    pb, cid = client.pb, client.cid
    with client.quiet():
      if spec.asset.endswith(".sdf"):
        self.body = pb.loadSDF(spec.asset, physicsClientId=cid)[0]
        pb.resetBasePositionAndOrientation(
            self.body, spec.base_position, (0, 0, 0, 1), physicsClientId=cid
        )
      else:
        self.body = pb.loadURDF(
            asset_path(spec, client.data_path),
            spec.base_position,
            useFixedBase=True,
            physicsClientId=cid,
        )
    # Null-space IK wants limits for every movable joint, in joint order.
    self._movable = []
    lower, upper = [], []
    for j in range(pb.getNumJoints(self.body, physicsClientId=cid)):
      info = pb.getJointInfo(self.body, j, physicsClientId=cid)
      if info[2] != pb.JOINT_FIXED:
        self._movable.append(j)
        lo, hi = info[8], info[9]
        if hi <= lo:
          lo, hi = -np.pi, np.pi
        lower.append(lo)
        upper.append(hi)
    self._lower = np.asarray(lower)
    self._upper = np.asarray(upper)
    self._rest = np.zeros(len(self._movable))
    self._rest[: len(spec.arm_joints)] = spec.rest_pose
    self._down_q = pb.getQuaternionFromEuler(spec.down_rpy)
    self._down_inv = pb.invertTransform((0, 0, 0), self._down_q)[1]
    self.state = ArmState(np.asarray(spec.rest_pose), 1.0, 1.0)
    self._apply()

  # --- pose conversions -----------------------------------------------

  def _link_orientation(self, rpy: np.ndarray) -> tuple[float, ...]:
    pb = self.client.pb
    rel = pb.getQuaternionFromEuler([float(v) for v in rpy])
    return pb.multiplyTransforms((0, 0, 0), rel, (0, 0, 0), self._down_q)[1]

  def _link_target(self, pos: np.ndarray, rpy: np.ndarray):
    pb = self.client.pb
    orn = self._link_orientation(rpy)
    # TCP = link pose (x) offset, so link = TCP (x) offset^-1.
    inv = pb.invertTransform(self.spec.tcp_offset, (0, 0, 0, 1))
    link_pos, _ = pb.multiplyTransforms(
        [float(v) for v in pos], orn, inv[0], inv[1]
    )
    return link_pos, orn

  def tcp_pose(self) -> tuple[np.ndarray, np.ndarray]:
    """Returns (position [3], rpy [3]) of the TCP in the convention above."""
    pb, cid = self.client.pb, self.client.cid
    ls = pb.getLinkState(
        self.body, self.spec.ik_link, computeForwardKinematics=True,
        physicsClientId=cid,
    )
    pos, orn = pb.multiplyTransforms(
        ls[4], ls[5], self.spec.tcp_offset, (0, 0, 0, 1)
    )
    rel = pb.multiplyTransforms((0, 0, 0), ls[5], (0, 0, 0), self._down_inv)[1]
    return np.asarray(pos), np.asarray(pb.getEulerFromQuaternion(rel))

  def gripper_width(self) -> float:
    pb, cid = self.client.pb, self.client.cid
    a, b = (
        np.asarray(
            pb.getLinkState(
                self.body, link, computeForwardKinematics=True,
                physicsClientId=cid,
            )[4]
        )
        for link in self.spec.tip_links
    )
    return float(np.linalg.norm(a - b))

  # --- motion ------------------------------------------------------------

  def _solve_ik(self, pos: np.ndarray, rpy: np.ndarray) -> np.ndarray:
    pb = self.client.pb
    link_pos, orn = self._link_target(pos, rpy)
    q = pb.calculateInverseKinematics(
        self.body,
        self.spec.ik_link,
        link_pos,
        orn,
        lowerLimits=self._lower.tolist(),
        upperLimits=self._upper.tolist(),
        jointRanges=(self._upper - self._lower).tolist(),
        restPoses=self._rest.tolist(),
        maxNumIterations=100,
        residualThreshold=1e-5,
        physicsClientId=self.client.cid,
    )
    return np.asarray(q[: len(self.spec.arm_joints)])

  def _apply(self) -> None:
    pb, cid = self.client.pb, self.client.cid
    for j, q in zip(self.spec.arm_joints, self.state.joints):
      pb.resetJointState(self.body, j, float(q), physicsClientId=cid)
    o = self.state.opening
    for j, qo, qc in zip(
        self.spec.finger_joints, self.spec.finger_open, self.spec.finger_closed
    ):
      pb.resetJointState(
          self.body, j, float(qc + o * (qo - qc)), physicsClientId=cid
      )

  def teleport(self, pos: np.ndarray, rpy: np.ndarray, gripper: float) -> None:
    """Puts the TCP at a pose exactly (used for a clip's first frame)."""
    self.state.joints = np.asarray(self.spec.rest_pose, np.float64)
    self._apply()
    for _ in range(8):
      self.state.joints = self._solve_ik(pos, rpy)
      self._apply()
    self.state.opening = 1.0 if gripper > 0 else 0.0
    self.state.gripper_action = 1.0 if gripper > 0 else -1.0
    self._apply()

  def step(self, pos: np.ndarray, rpy: np.ndarray, gripper: float) -> None:
    """Moves one control step towards a commanded TCP pose and gripper."""
    target = self._solve_ik(pos, rpy)
    self.state.joints = self.state.joints + _TRACKING_GAIN * (
        target - self.state.joints
    )
    goal = 1.0 if gripper > 0 else 0.0
    delta = np.clip(goal - self.state.opening, -_GRIPPER_RATE, _GRIPPER_RATE)
    self.state.opening = float(self.state.opening + delta)
    self.state.gripper_action = 1.0 if gripper > 0 else -1.0
    self._apply()

  def robot_obs(self) -> np.ndarray:
    """The 15-d state, laid out like CALVIN's robot_obs.

    Returns:
      float32 [15]: TCP position (3), TCP rpy (3), gripper width (1),
      arm joint positions (7), last gripper action (1).
    """
    pos, rpy = self.tcp_pose()
    return np.concatenate([
        pos, rpy, [self.gripper_width()], self.state.joints,
        [self.state.gripper_action],
    ]).astype(np.float32)
