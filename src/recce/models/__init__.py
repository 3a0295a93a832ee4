"""Detectors: RECCE and the plain Xception baseline."""

from recce.models.outputs import RecceOutput, fake_probability
from recce.models.recce import Recce, RecceConfig
from recce.models.xception import Xception, XceptionConfig

__all__ = ["Recce", "RecceConfig", "RecceOutput", "Xception", "XceptionConfig", "fake_probability"]
