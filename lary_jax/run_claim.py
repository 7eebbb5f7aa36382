"""The run claim: a work folder holds one run, the one its settings record.

`claim(workdir, settings)` writes `<workdir>/run.json` on the first start and
refuses a later start with other settings, so that a checkpoint is only ever
resumed by the run that wrote it. The probes and `train_lam` claim their
folders this way.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Mapping
from typing import Any

from lary_jax import atomic_io
from lary_jax import workdir_layout as layout
from lary_jax.errors import LaryError


def digest_file(path: str) -> str:
  """SHA-256 of a small file (e.g. a feature store's manifest)."""
  with open(path, "rb") as f:
    return hashlib.sha256(f.read()).hexdigest()


def claim(workdir: str, settings: Mapping[str, Any]) -> None:
  """Records what this run is; refuses a folder holding another run.

  A checkpoint is only resumed by the run that wrote it: same options, same
  probe, same features (their manifests' digests), same seed.
  """
  settings = json.loads(json.dumps(settings, default=str))
  path = layout.settings_file(workdir)
  found = atomic_io.read_json(path)
  if found is None:
    os.makedirs(workdir, exist_ok=True)
    atomic_io.write_json(path, settings)
    return
  if found != settings:
    keys = sorted(k for k in set(found) | set(settings)
                  if found.get(k) != settings.get(k))
    raise LaryError(
        f"{workdir} holds a run with other settings (differing: {keys}); "
        "use another --workdir, or delete that folder to start over")
