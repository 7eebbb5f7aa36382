"""LARY-Sim: a small LARY-format dataset rendered with PyBullet."""
