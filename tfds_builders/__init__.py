"""TFDS builders for LARY; importing this package registers them.

    import tfds_builders  # registers lary_classification and lary_regression
    tfds.builder("lary_regression/calvin", data_dir=...)
"""

from tfds_builders.lary_classification import LaryClassification
from tfds_builders.lary_regression import LaryRegression

__all__ = ["LaryClassification", "LaryRegression"]
