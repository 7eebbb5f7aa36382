"""Cameras, lights and the software renderer.

ER_TINY_RENDERER runs on the CPU without OpenGL, so frames need no GPU or
display and repeat byte for byte. The camera always looks at the workspace
from the robot's front-right, with its pose, field of view and the light
drawn anew for every clip, so that no pixel position or colour identifies a
class.
"""

import dataclasses

import numpy as np

from lary_jax.sim.client import Client

IMAGE_SIZE = 224


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


def sample_camera(rng: np.random.Generator) -> CameraSpec:
  """Draws a camera pose and lighting.

  Args:
    rng: the clip's camera generator.

  Returns:
    The camera spec.
  """
  target = np.array([0.38, 0.0, 0.22]) + rng.uniform(
      [-0.05, -0.07, -0.04], [0.05, 0.07, 0.05]
  )
  azimuth = np.deg2rad(rng.uniform(-68.0, -18.0))  # from +x, front-right
  elevation = np.deg2rad(rng.uniform(22.0, 48.0))
  distance = rng.uniform(1.25, 1.6)
  eye = target + distance * np.array([
      np.cos(elevation) * np.cos(azimuth),
      np.cos(elevation) * np.sin(azimuth),
      np.sin(elevation),
  ])
  light = rng.normal(size=3)
  light[2] = abs(light[2]) + 0.6
  light /= np.linalg.norm(light)
  return CameraSpec(
      eye=tuple(float(v) for v in eye),
      target=tuple(float(v) for v in target),
      fov=float(rng.uniform(40.0, 52.0)),
      light_direction=tuple(float(v) for v in light),
      light_color=tuple(float(v) for v in rng.uniform(0.75, 1.0, size=3)),
      ambient=float(rng.uniform(0.3, 0.65)),
      diffuse=float(rng.uniform(0.35, 0.75)),
      specular=float(rng.uniform(0.0, 0.35)),
  )


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
