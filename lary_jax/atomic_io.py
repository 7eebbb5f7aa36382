"""Files written whole or not at all: atomic writes, JSON, checksums.

Every writer goes through a temporary file, fsync and rename, so that a job
killed at any moment leaves either the old file or the new one, never half
of one; a restarted job reads what it finds with `read_json`, which treats
a missing or unreadable file as absent.
"""

from __future__ import annotations

import hashlib
import json
import os
from typing import Any


def write_json(path: str, obj: Any) -> None:
  """Writes JSON atomically (temporary file, fsync, rename)."""
  write_atomic(path, json.dumps(obj, indent=1).encode())


def read_json(path: str) -> dict[str, Any] | None:
  """The JSON object in `path`, or None if it is missing or unreadable."""
  try:
    with open(path, "rb") as f:
      obj = json.loads(f.read())
  except (OSError, ValueError):
    return None
  return obj if isinstance(obj, dict) else None


def write_atomic(path: str, data: bytes) -> None:
  """Writes `data` to `path` via a temporary file, fsync and rename."""
  tmp = f"{path}.tmp"
  with open(tmp, "wb") as f:
    f.write(data)
    f.flush()
    os.fsync(f.fileno())
  os.replace(tmp, path)


def sha256_file(path: str) -> str:
  """SHA-256 hex digest of a file of any size, read in 4 MiB blocks."""
  h = hashlib.sha256()
  with open(path, "rb") as f:
    for block in iter(lambda: f.read(1 << 22), b""):
      h.update(block)
  return h.hexdigest()
