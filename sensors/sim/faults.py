"""Sensor faults injected into a healthy stream: what ``fusion sensor sim --fault`` and the tests use.

A :class:`FaultInjection` turns one modality's data faulty from ``start_s`` (and healthy again from
``end_s``, when given), the way real sensors fail while still publishing:

* camera ``covered``: the frame darkened to a few percent and blurred to near uniformity (a lens
  cap, a hand, tape); ``frozen``: the frame at the onset, repeated (a hung capture pipeline);
* radar ``repeating``: the point set at the onset, repeated (a stuck DSP buffer); ``empty``: no
  points at all (a blocked or detuned front end);
* audio ``silent``: digital zeros (a muted or unplugged input); ``clipped``: the signal amplified
  thirty times and cut at full scale (a gain set wrong); ``stuck``: the chunk at the onset, repeated
  (a driver replaying its buffer).

The spec is ``MODALITY:KIND@START[-END]`` in seconds of the stream, e.g. ``camera:frozen@3`` or
``audio:clipped@2-5``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

import cv2
import numpy as np

from fusion_node.faults import FAULT_KINDS

__all__ = ["FaultInjection", "parse_fault"]

_SPEC = re.compile(r"^(?P<modality>[a-z]+):(?P<kind>[a-z]+)@(?P<start>[0-9.]+)(?:-(?P<end>[0-9.]+))?$")
# Gain that drives ordinary programme material far into full scale.
CLIP_GAIN = 30.0
# Brightness left on a covered lens.
COVERED_GAIN = 0.04


@dataclass
class FaultInjection:
    """One fault of one modality over ``[start_s, end_s)`` of stream time (``end_s`` None: for good)."""

    modality: str
    kind: str
    start_s: float
    end_s: float | None = None
    _held: np.ndarray | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        if self.kind not in FAULT_KINDS.get(self.modality, ()):
            known = ", ".join(f"{m}:{k}" for m, kinds in FAULT_KINDS.items() for k in kinds)
            raise ValueError(f"unknown fault {self.modality}:{self.kind} (known: {known})")
        if self.end_s is not None and self.end_s <= self.start_s:
            raise ValueError(f"fault {self.modality}:{self.kind}: end {self.end_s} s is not after start "
                             f"{self.start_s} s")

    def active(self, t_s: float) -> bool:
        return t_s >= self.start_s and (self.end_s is None or t_s < self.end_s)

    def apply(self, t_s: float, data: np.ndarray) -> np.ndarray:
        """This modality's data at stream time ``t_s``: as given while healthy, else made faulty."""
        if not self.active(t_s):
            self._held = None
            return data
        kind = self.kind
        if kind in ("frozen", "repeating", "stuck"):
            if self._held is None:
                self._held = data.copy()
            return self._held.copy()
        if kind == "covered":
            k = max(3, data.shape[1] // 4) | 1
            return cv2.blur((data.astype(np.float32) * COVERED_GAIN).astype(np.uint8), (k, k))
        if kind == "empty":
            return np.zeros((0,) + data.shape[1:], data.dtype)
        if kind == "silent":
            return np.zeros_like(data)
        return np.clip(data * CLIP_GAIN, -1.0, 1.0).astype(data.dtype)  # clipped


def parse_fault(spec: str) -> FaultInjection:
    """``MODALITY:KIND@START[-END]`` -> a :class:`FaultInjection`; ValueError says what is wrong."""
    m = _SPEC.match(spec.strip())
    if m is None:
        raise ValueError(f"fault {spec!r}: expected MODALITY:KIND@START[-END], e.g. camera:frozen@3 or "
                         f"audio:clipped@2-5 (seconds)")
    end = m.group("end")
    return FaultInjection(m.group("modality"), m.group("kind"), float(m.group("start")),
                          None if end is None else float(end))
