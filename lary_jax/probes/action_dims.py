"""Names and semantic groups of each dataset's action dimensions.

Upstream's tables (its regression/main.py, `get_dim_labels`): CALVIN-style 7-d actions (xyz, rpy,
gripper) for CALVIN, VLABench and LARY-Sim; AgiBot-Beta's 16-d two-arm
quaternion actions; RoboCOIN's 12-d two-arm Euler actions. Upstream computes
group MSEs only for calvin, agibotbeta and robocoin; VLABench and LARY-Sim
share CALVIN's layout, so they get its groups here too.
"""

from __future__ import annotations

CALVIN = ("x", "y", "z", "roll", "pitch", "yaw", "gripper")
AGIBOT = ("l_x", "l_y", "l_z", "r_x", "r_y", "r_z", "l_qx", "l_qy", "l_qz",
          "l_qw", "r_qx", "r_qy", "r_qz", "r_qw", "r_g", "l_g")
ROBOCOIN = ("l_x", "l_y", "l_z", "l_roll", "l_pitch", "l_yaw", "r_x", "r_y",
            "r_z", "r_roll", "r_pitch", "r_yaw")

_CALVIN_GROUPS = {"position": (0, 1, 2), "orientation": (3, 4, 5),
                  "gripper": (6,)}
_GROUPS = {
    "agibotbeta": {"position": (0, 1, 2, 3, 4, 5),
                   "orientation": tuple(range(6, 14)), "gripper": (14, 15)},
    "robocoin": {"position": (0, 1, 2, 6, 7, 8),
                 "orientation": (3, 4, 5, 9, 10, 11)},
}


def labels(dataset: str, action_dim: int) -> tuple[str, ...]:
  """Per-dimension names; `dim_<i>` where no table applies."""
  table = {"agibotbeta": AGIBOT, "robocoin": ROBOCOIN}.get(dataset, CALVIN)
  if len(table) != action_dim:
    return tuple(f"dim_{i}" for i in range(action_dim))
  return table


def groups(dataset: str, action_dim: int) -> dict[str, tuple[int, ...]]:
  """Group name -> dimension indices ({} where no table applies)."""
  if dataset in _GROUPS:
    table = _GROUPS[dataset]
  elif action_dim == len(CALVIN):
    table = _CALVIN_GROUPS
  else:
    return {}
  if max(max(v) for v in table.values()) >= action_dim:
    return {}
  return dict(table)
