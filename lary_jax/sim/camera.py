"""Cameras, lights and the software renderer.

ER_TINY_RENDERER runs on the CPU without OpenGL, so frames need no GPU or
display and repeat byte for byte. The camera always looks at the workspace
from the robot's front-right. Classification clips draw its pose, field of
view and light anew for every clip, so that no pixel position or colour
identifies a class; regression episodes film each scene style from a fixed
pose (lighting still drawn), so that the robot-frame actions they are
labelled with can be read off the images.
"""

import dataclasses

import numpy as np

from lary_jax.sim.client import Client

# Rendered below LARY's 224 (prepare resizes, as it does CALVIN's 200 x 200
# frames): the software renderer's cost grows with the pixels (0.66 vs
# 0.40 s a 24-frame clip at 224 vs 160).
IMAGE_SIZE = 160


@dataclasses.dataclass(frozen=True)
class CameraSpec:
  """A camera and its light.

  Attributes:
    eye: camera position.
    target: the point it looks at.
    fov: vertical field of view, degrees.
    light_direction: direction towards the light.
    light_color: light RGB.
    ambient: ambient coefficient.
    diffuse: diffuse coefficient.
    specular: specular coefficient.
  """

  eye: tuple[float, float, float]
  target: tuple[float, float, float]
  fov: float
  light_direction: tuple[float, float, float]
  light_color: tuple[float, float, float]
  ambient: float
  diffuse: float
  specular: float


def _look_from(target: np.ndarray, azimuth_deg: float, elevation_deg: float,
               distance: float) -> np.ndarray:
  azimuth, elevation = np.deg2rad(azimuth_deg), np.deg2rad(elevation_deg)
  return target + distance * np.array([
      np.cos(elevation) * np.cos(azimuth),
      np.cos(elevation) * np.sin(azimuth),
      np.sin(elevation),
  ])


def _with_light(rng: np.random.Generator, eye: np.ndarray,
                target: np.ndarray, fov: float) -> CameraSpec:
  light = rng.normal(size=3)
  light[2] = abs(light[2]) + 0.6
  light /= np.linalg.norm(light)
  return CameraSpec(
      eye=tuple(float(v) for v in eye),
      target=tuple(float(v) for v in target),
      fov=float(fov),
      light_direction=tuple(float(v) for v in light),
      light_color=tuple(float(v) for v in rng.uniform(0.75, 1.0, size=3)),
      ambient=float(rng.uniform(0.3, 0.65)),
      diffuse=float(rng.uniform(0.35, 0.75)),
      specular=float(rng.uniform(0.0, 0.35)),
  )


def sample_camera(rng: np.random.Generator) -> CameraSpec:
  """Draws a camera pose and lighting (classification clips).

  Args:
    rng: the clip's camera generator.

  Returns:
    The camera spec.
  """
  target = np.array([0.38, 0.0, 0.22]) + rng.uniform(
      [-0.05, -0.07, -0.04], [0.05, 0.07, 0.05]
  )
  eye = _look_from(target, rng.uniform(-68.0, -18.0), rng.uniform(22.0, 48.0),
                   rng.uniform(1.25, 1.6))
  return _with_light(rng, eye, target, rng.uniform(40.0, 52.0))


# Regression episodes film each scene style from one fixed camera, as
# CALVIN's static camera: (azimuth from +x, elevation, distance, fov). An
# absolute robot-frame action is then a function of what the image shows,
# which a new camera per episode would not allow.
STYLE_CAMERAS = {
    "plain": (-40.0, 36.0, 1.6, 46.0),
    "tray": (-32.0, 30.0, 1.65, 46.0),
    "round": (-50.0, 40.0, 1.55, 46.0),
    "walled": (-26.0, 34.0, 1.6, 46.0),
}
_FIXED_TARGET = np.array([0.40, 0.0, 0.26])


def fixed_camera(style: str, rng: np.random.Generator) -> CameraSpec:
  """The style's fixed camera pose with lighting drawn from `rng`.

  Args:
    style: a scene style (a key of STYLE_CAMERAS).
    rng: the episode's camera generator (lighting only).

  Returns:
    The camera spec.
  """
  azimuth, elevation, distance, fov = STYLE_CAMERAS[style]
  eye = _look_from(_FIXED_TARGET, azimuth, elevation, distance)
  return _with_light(rng, eye, _FIXED_TARGET, fov)


def render_frame(client: Client, camera: CameraSpec) -> np.ndarray:
  """Renders one RGB frame, uint8 [IMAGE_SIZE, IMAGE_SIZE, 3]."""
  pb, cid = client.pb, client.cid
  view = pb.computeViewMatrix(camera.eye, camera.target, (0, 0, 1),
                              physicsClientId=cid)
  proj = pb.computeProjectionMatrixFOV(camera.fov, 1.0, 0.05, 6.0,
                                       physicsClientId=cid)
  _, _, rgba, _, _ = pb.getCameraImage(
      IMAGE_SIZE,
      IMAGE_SIZE,
      view,
      proj,
      lightDirection=camera.light_direction,
      lightColor=camera.light_color,
      lightAmbientCoeff=camera.ambient,
      lightDiffuseCoeff=camera.diffuse,
      lightSpecularCoeff=camera.specular,
      shadow=0,
      flags=pb.ER_NO_SEGMENTATION_MASK,
      renderer=pb.ER_TINY_RENDERER,
      physicsClientId=cid,
  )
  rgba = np.asarray(rgba, np.uint8).reshape(IMAGE_SIZE, IMAGE_SIZE, 4)
  return np.ascontiguousarray(rgba[..., :3])
