"""Checkpoints named by Hugging Face hub id, fetched into the HF cache.

`resolve(source)` turns what a user typed after `--src`/`--checkpoint` (or
gave `encoders.load`) into a local path:

- an existing file or folder: itself;
- `org/name`: the repository's snapshot in the Hugging Face cache (its
  `*.json` and `*.safetensors` files: a `transformers` model folder);
- `org/name/sub/path`: that file or folder of the repository (e.g.
  `Wan-AI/Wan2.2-TI2V-5B/Wan2.2_VAE.pth`, `microsoft/villa-x/lam`);
- either with `@revision` appended (a branch, tag or commit).

Fetching uses `huggingface_hub` (the `hub` extra), so its cache, token and
settings apply: `HF_HOME`/`HF_HUB_CACHE` place the cache, `HF_TOKEN` opens
gated repositories, and with `HF_HUB_OFFLINE=1` (or no network) a
repository already in the cache is used without asking the hub. Anything
else is one LaryError naming the source.
"""

from __future__ import annotations

import os
import re

from lary_jax.errors import LaryError

EXTRA = "pip install 'lary-jax[hub]'"
# The hub's rule for an owner or repository name: letters, digits, `-`, `_`
# and `.`, not at either end and never doubled as `--` or `..`; <= 96 long.
_NAME = re.compile(r"^[A-Za-z0-9](?:[\w.-]{0,94}[A-Za-z0-9])?$")
_REVISION = re.compile(r"^[\w./-]+$")
# What a whole-repository snapshot fetches: a transformers/diffusers model
# folder, not its duplicate .bin/.h5/.msgpack weights.
_SNAPSHOT_PATTERNS = ("*.json", "*.safetensors")


def parse(source: str) -> tuple[str, str, str | None] | None:
  """(repo id, path inside the repo or "", revision or None), or None."""
  name, _, revision = source.partition("@")
  parts = name.split("/")
  if len(parts) < 2 or (revision and not _REVISION.match(revision)):
    return None
  for part in parts[:2]:
    if not _NAME.match(part) or "--" in part or ".." in part:
      return None
  sub = parts[2:]
  if any(p in ("", ".", "..") for p in sub):
    return None
  return "/".join(parts[:2]), "/".join(sub), revision or None


def resolve(source: str) -> str:
  """The local path of `source`: itself if it exists, else its hub copy.

  Args:
    source: a file or folder, or a hub id (`org/name[/sub/path][@rev]`).

  Returns:
    A local file or folder.

  Raises:
    LaryError: `source` is neither, `huggingface_hub` is missing, or the
      hub (or, offline, the cache) does not have it.
  """
  if os.path.exists(source):
    return source
  parsed = parse(source)
  if parsed is None:
    raise LaryError(f"{source}: no such file or folder, and not a Hugging "
                    "Face hub id (org/name, org/name/file or "
                    "org/name@revision)")
  repo, sub, revision = parsed
  try:
    import huggingface_hub  # pylint: disable=g-import-not-at-top
  except ImportError:
    raise LaryError(
        f"{source}: no such file or folder; to fetch it as a Hugging Face hub "
        f"id, install huggingface_hub ({EXTRA})") from None
  patterns = [sub, f"{sub}/*"] if sub else list(_SNAPSHOT_PATTERNS)
  try:
    folder = huggingface_hub.snapshot_download(
        repo, revision=revision, allow_patterns=patterns)
  except Exception as e:  # pylint: disable=broad-except
    # huggingface_hub's error types change between releases.
    raise LaryError(_why_not(source, repo, e)) from None
  path = os.path.join(folder, *sub.split("/")) if sub else folder
  if not os.path.exists(path):
    raise LaryError(f"{source}: the hub repository {repo} has no {sub!r}"
                    f" (or the cached snapshot {folder} lacks it)")
  return path


def _why_not(source: str, repo: str, error: Exception) -> str:
  kind = type(error).__name__
  first = (str(error).strip().splitlines() or [""])[0]
  missing = f"{source}: no such file or folder; as a Hugging Face hub id"
  if kind == "LocalEntryNotFoundError" or "offline" in first.lower():
    return (f"{missing} it is not in the cache, and the hub cannot be asked "
            "(HF_HUB_OFFLINE is set, or no network): fetch it once online")
  if kind in ("RepositoryNotFoundError", "GatedRepoError"):
    return (f"{missing}: the hub has no repository {repo} that you may read "
            f"({kind}; gated or private ones need HF_TOKEN)")
  return f"{missing}: fetching {repo} failed ({kind}: {first})"
