"""Labels that do not flicker: per-class smoothing over sets, with hysteresis. Pure code.

The head scores every set on its own, and a score near a class's threshold crosses it back and
forth from one frame to the next. :class:`LabelSmoother` keeps, per class, the mean probability
of the last ``smoothing_sets`` sets, and a label state:

* a label turns **on** when the smoothed probability reaches the class's threshold (the
  manifest's ``thresholds``, chosen for precision);
* it turns **off** only when the smoothed probability falls below ``threshold x release_ratio``,
  and never before it has been on for ``min_on_sets`` sets.

One smoother per rig (the rig's fusion core owns it); :meth:`LabelSmoother.reset` forgets the
history, which the core does when the rig's timeline restarts. With ``smoothing`` off, a label
is every class whose probability in the set reaches its threshold, as without this module.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Mapping, Sequence

import numpy as np

from .config import LabelsConfig

__all__ = ["LabelSmoother"]


class LabelSmoother:
    """Smoothed probabilities and on/off label states for one rig's classes."""

    def __init__(self, classes: Sequence[str], thresholds: Mapping[str, float], cfg: LabelsConfig):
        self.classes = tuple(classes)
        self.cfg = cfg
        self._thresholds = np.array([thresholds[c] for c in self.classes], np.float64)
        self._release = self._thresholds * cfg.release_ratio
        self._history: deque[np.ndarray] = deque(maxlen=cfg.smoothing_sets if cfg.smoothing else 1)
        self._on = np.zeros(len(self.classes), bool)
        self._on_sets = np.zeros(len(self.classes), np.int64)  # sets since it turned on (0 in that set)

    def reset(self) -> None:
        """Forget every past set: the next one starts the smoothing afresh, every label off."""
        self._history.clear()
        self._on[:] = False
        self._on_sets[:] = 0

    def update(self, probabilities: Sequence[float]) -> tuple[dict[str, float], list[str]]:
        """One set's probabilities (in ``classes`` order): the smoothed ones and the classes labelled now."""
        p = np.asarray(probabilities, np.float64)
        if p.shape != self._thresholds.shape:
            raise ValueError(f"expected {len(self.classes)} probabilities, got shape {p.shape}")
        self._history.append(p)
        smoothed = np.mean(self._history, axis=0)
        if not self.cfg.smoothing:
            self._on = smoothed >= self._thresholds
        else:
            self._on_sets[self._on] += 1
            held = self._on & ((smoothed >= self._release) | (self._on_sets < self.cfg.min_on_sets))
            rising = ~self._on & (smoothed >= self._thresholds)
            self._on_sets[rising] = 0
            self._on = held | rising
        return dict(zip(self.classes, smoothed.tolist())), [c for c, on in zip(self.classes, self._on) if on]
