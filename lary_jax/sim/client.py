"""A headless PyBullet client per process, imported lazily.

PyBullet is the optional extra `sim`, so nothing imports it at module level:
each renderer process calls `process_client()`, which connects once and
keeps the client for every clip it renders.
"""

import contextlib
import ctypes
import os
import sys
from typing import Any, Iterator

from lary_jax.errors import LaryError


@contextlib.contextmanager
def _output_silenced() -> Iterator[None]:
  # PyBullet's C code prints a build banner (stderr) and loader warnings
  # (stdout) straight to the file descriptors, which would interleave with
  # the progress bar of every worker.
  sys.stdout.flush()
  sys.stderr.flush()
  saved = [os.dup(1), os.dup(2)]
  devnull = os.open(os.devnull, os.O_WRONLY)
  try:
    os.dup2(devnull, 1)
    os.dup2(devnull, 2)
    yield
  finally:
    # C stdio buffers its writes; flush them while the fds are /dev/null.
    ctypes.CDLL(None).fflush(None)
    os.dup2(saved[0], 1)
    os.dup2(saved[1], 2)
    for fd in saved + [devnull]:
      os.close(fd)


def import_pybullet() -> Any:
  """Imports PyBullet, or raises LaryError naming the extra to install."""
  try:
    with _output_silenced():
      import pybullet  # pylint: disable=g-import-not-at-top
      import pybullet_data  # pylint: disable=g-import-not-at-top,unused-import
  except ImportError as e:
    raise LaryError(
        f"LARY-Sim needs PyBullet ({e}); install it with "
        "pip install 'lary-jax[sim]'"
    ) from e
  return pybullet


class Client:
  """One PyBullet DIRECT connection (no GUI, no OpenGL).

  Attributes:
    pb: the pybullet module.
    cid: the physics client id to pass as `physicsClientId`.
    data_path: pybullet_data's folder (the robot and prop assets).
  """

  def __init__(self):
    self.pb = import_pybullet()
    import pybullet_data  # pylint: disable=g-import-not-at-top

    with _output_silenced():
      self.cid = self.pb.connect(self.pb.DIRECT)
    self.data_path = pybullet_data.getDataPath()
    self.pb.setAdditionalSearchPath(self.data_path, physicsClientId=self.cid)

  def reset(self) -> None:
    """Empties the world so that every clip starts from the same state."""
    self.pb.resetSimulation(physicsClientId=self.cid)

  def quiet(self) -> contextlib.AbstractContextManager[None]:
    """A context in which PyBullet's own prints are dropped."""
    return _output_silenced()


_CLIENT: Client | None = None


def process_client() -> Client:
  """The process-wide client, created on first use."""
  global _CLIENT
  if _CLIENT is None:
    _CLIENT = Client()
  return _CLIENT
