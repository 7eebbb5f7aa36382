"""Scenes: a table, the manipulated cube, a goal marker and distractors.

`sample_scene` is pure numpy (so episodes can be planned without PyBullet);
`build_scene` turns a spec into visual-only bodies in a client. Colours,
layout and distractors are drawn independently of the motion class.
"""

import dataclasses

import numpy as np

from lary_jax.sim.client import Client

# Seen scenes go with the Panda; held-out ones only with the unseen arm.
SEEN_STYLES = ("plain", "tray")
UNSEEN_STYLES = ("round", "walled")

_SHAPES = ("box", "sphere", "cylinder")


@dataclasses.dataclass(frozen=True)
class Prop:
  """A static visual body.

  Attributes:
    shape: "box", "sphere" or "cylinder".
    position: (x, y, z) of its centre.
    yaw: rotation about z.
    size: box half extents, or (radius, radius, half length).
    rgba: colour.
  """

  shape: str
  position: tuple[float, float, float]
  yaw: float
  size: tuple[float, float, float]
  rgba: tuple[float, float, float, float]


@dataclasses.dataclass(frozen=True)
class SceneSpec:
  """Everything that makes one scene look the way it does.

  Attributes:
    style: one of SEEN_STYLES or UNSEEN_STYLES.
    table_rgba: table top colour.
    floor_rgba: floor colour.
    wall_rgba: wall colour (style "walled").
    cube_xy: where the manipulated cube rests.
    cube_yaw: its yaw.
    cube_half: its half edge.
    cube_rgba: its colour.
    goal_xy: the place target (a flat pad, or the tray in style "tray").
    goal_rgba: the pad or tray colour.
    distractors: static props away from the workspace centre.
  """

  style: str
  table_rgba: tuple[float, ...]
  floor_rgba: tuple[float, ...]
  wall_rgba: tuple[float, ...]
  cube_xy: tuple[float, float]
  cube_yaw: float
  cube_half: float
  cube_rgba: tuple[float, ...]
  goal_xy: tuple[float, float]
  goal_rgba: tuple[float, ...]
  distractors: tuple[Prop, ...]


def _colour(
    rng: np.random.Generator,
    saturation: tuple[float, float] = (0.2, 0.95),
    value: tuple[float, float] = (0.25, 0.95),
) -> tuple[float, float, float, float]:
  """A random opaque colour, uniform in hue."""
  h = rng.uniform(0.0, 1.0)
  s = rng.uniform(*saturation)
  v = rng.uniform(*value)
  k = (np.array([5.0, 3.0, 1.0]) + h * 6.0) % 6.0
  rgb = v - v * s * np.clip(np.minimum(k, 4.0 - k), 0.0, 1.0)
  return (*(float(c) for c in rgb), 1.0)


def _distractor(rng: np.random.Generator) -> Prop:
  shape = _SHAPES[rng.integers(len(_SHAPES))]
  if rng.uniform() < 0.7:  # beside the workspace
    side = rng.choice([-1.0, 1.0])
    x, y = rng.uniform(0.25, 0.8), side * rng.uniform(0.42, 0.65)
  else:  # behind it
    x, y = rng.uniform(0.78, 0.88), rng.uniform(-0.4, 0.4)
  if shape == "box":
    size = tuple(float(v) for v in rng.uniform(0.02, 0.06, size=3))
    z = size[2]
  elif shape == "sphere":
    r = float(rng.uniform(0.025, 0.05))
    size, z = (r, r, r), r
  else:
    r, half = float(rng.uniform(0.02, 0.045)), float(rng.uniform(0.03, 0.08))
    size, z = (r, r, half), half
  return Prop(shape, (float(x), float(y), z), float(rng.uniform(0, np.pi)),
              size, _colour(rng))


def sample_scene(
    rng: np.random.Generator, styles: tuple[str, ...]
) -> SceneSpec:
  """Draws a scene.

  Args:
    rng: the scene's generator.
    styles: the styles to choose from (SEEN_STYLES or UNSEEN_STYLES).

  Returns:
    The scene spec.
  """
  style = styles[rng.integers(len(styles))]
  cube_xy = rng.uniform([0.4, -0.2], [0.58, 0.2])
  while True:  # a goal that is not on top of the cube
    goal_xy = rng.uniform([0.38, -0.25], [0.6, 0.25])
    if np.linalg.norm(goal_xy - cube_xy) > 0.14:
      break
  count = rng.integers(1, 5) if style != "walled" else rng.integers(3, 7)
  return SceneSpec(
      style=style,
      table_rgba=_colour(rng, (0.05, 0.6), (0.35, 0.95)),
      floor_rgba=_colour(rng, (0.0, 0.5), (0.2, 0.9)),
      wall_rgba=_colour(rng, (0.0, 0.4), (0.4, 0.95)),
      cube_xy=(float(cube_xy[0]), float(cube_xy[1])),
      cube_yaw=float(rng.uniform(-np.pi / 4, np.pi / 4)),
      cube_half=float(rng.uniform(0.02, 0.028)),
      cube_rgba=_colour(rng, (0.5, 1.0), (0.4, 1.0)),
      goal_xy=(float(goal_xy[0]), float(goal_xy[1])),
      goal_rgba=_colour(rng),
      distractors=tuple(_distractor(rng) for _ in range(count)),
  )


def _visual_body(client: Client, shape: str, size, position, yaw, rgba) -> int:
  pb, cid = client.pb, client.cid
  if shape == "box":
    vis = pb.createVisualShape(
        pb.GEOM_BOX, halfExtents=size, rgbaColor=rgba, physicsClientId=cid
    )
  elif shape == "sphere":
    vis = pb.createVisualShape(
        pb.GEOM_SPHERE, radius=size[0], rgbaColor=rgba, physicsClientId=cid
    )
  else:
    vis = pb.createVisualShape(
        pb.GEOM_CYLINDER, radius=size[0], length=2 * size[2], rgbaColor=rgba,
        physicsClientId=cid,
    )
  return pb.createMultiBody(
      baseMass=0,
      baseVisualShapeIndex=vis,
      basePosition=position,
      baseOrientation=pb.getQuaternionFromEuler((0, 0, yaw)),
      physicsClientId=cid,
  )


def build_scene(client: Client, spec: SceneSpec) -> int:
  """Creates the scene's bodies.

  Args:
    client: an emptied client (the arm may already be loaded).
    spec: the scene.

  Returns:
    The body id of the cube, the one prop that the arm moves.
  """
  # The software renderer draws bodies in creation order and shades every
  # fragment that passes the depth test so far: near things first, so that
  # the table hides the floor cheaply (measured 37 -> ~33 ms a frame).
  if spec.style == "tray":
    pb, cid = client.pb, client.cid
    with client.quiet():
      tray = pb.loadURDF(
          "tray/traybox.urdf", (*spec.goal_xy, 0.0), globalScaling=0.45,
          useFixedBase=True, physicsClientId=cid,
      )
    pb.changeVisualShape(tray, -1, rgbaColor=spec.goal_rgba,
                         physicsClientId=cid)
  else:
    _visual_body(client, "cylinder", (0.045, 0.045, 0.001),
                 (*spec.goal_xy, 0.001), 0.0, spec.goal_rgba)
  for prop in spec.distractors:
    _visual_body(client, prop.shape, prop.size, prop.position, prop.yaw,
                 prop.rgba)
  if spec.style == "round":
    _visual_body(client, "cylinder", (0.85, 0.85, 0.025), (0.35, 0.0, -0.025),
                 0.0, spec.table_rgba)
    _visual_body(client, "cylinder", (0.08, 0.08, 0.36), (0.35, 0.0, -0.4),
                 0.0, spec.table_rgba)
  else:
    _visual_body(client, "box", (0.6, 0.85, 0.025), (0.3, 0.0, -0.025), 0.0,
                 spec.table_rgba)
    leg = tuple(0.5 * c for c in spec.table_rgba[:3]) + (1.0,)
    for x in (-0.25, 0.85):
      for y in (-0.78, 0.78):
        _visual_body(client, "box", (0.03, 0.03, 0.36), (x, y, -0.41), 0.0,
                     leg)
  if spec.style == "walled":  # behind the robot and on its left: the
    # camera looks from the front-right, so walls there never block it.
    _visual_body(client, "box", (0.02, 1.2, 0.6), (-0.45, 0.0, 0.3), 0.0,
                 spec.wall_rgba)
    _visual_body(client, "box", (0.9, 0.02, 0.6), (0.3, 0.9, 0.3), 0.0,
                 spec.wall_rgba)
  _visual_body(client, "box", (3.0, 3.0, 0.01), (0.3, 0.0, -0.76), 0.0,
               spec.floor_rgba)
  h = spec.cube_half
  return _visual_body(client, "box", (h, h, h), (*spec.cube_xy, h),
                      spec.cube_yaw, spec.cube_rgba)
