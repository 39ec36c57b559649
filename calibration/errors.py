"""Errors of the calibration tools (see ``fusion_node.errors`` for the hierarchy)."""

from __future__ import annotations

from fusion_node.errors import FusionError

__all__ = ["CalibrationError"]


class CalibrationError(FusionError):
    """The data given cannot produce a trustworthy calibration; names the file or folder and says what to do."""
