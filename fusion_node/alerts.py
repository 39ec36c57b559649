"""Alerts that need a condition to last: the sustain/clear rule, and ``modalities_disagree``. Pure code.

One set whose modalities seem to disagree is noise (a frame caught mid-motion, a sound that just
ended); a security consumer must hear only of a contradiction that lasts. :class:`Sustained`
turns a per-set condition into an alert state on the sets' reference times:

* the alert **fires** once the condition has held in every set for ``sustain_s``;
* it **clears** once the release condition (by default: the condition not holding) has held in
  every set for ``clear_s``: hysteresis in time, and in level where the caller gives a release
  condition stricter than "not the condition";
* a stretch without sets longer than ``max_gap_s``, or a reference time going back (a restarted
  timeline), breaks the run: what was not seen is not counted as having held.

:class:`DisagreementMonitor` applies it to the head's consistency: the condition is "two or more
modalities present and consistency below the model's calibrated threshold".
"""

from __future__ import annotations

from .config import AlertsConfig

__all__ = ["Sustained", "DisagreementMonitor"]


class Sustained:
    """An alert state that fires after a condition held ``sustain_s`` and clears after release held ``clear_s``."""

    def __init__(self, sustain_s: float, clear_s: float, max_gap_s: float = 1.0):
        self.sustain_ns = int(sustain_s * 1e9)
        self.clear_ns = int(clear_s * 1e9)
        self.max_gap_ns = int(max_gap_s * 1e9)
        self.active = False
        self._since: int | None = None  # start of the current run of the condition (or of release, if active)
        self._last_ns: int | None = None
        self.fired = 0

    def reset(self) -> None:
        self.active = False
        self._since = None
        self._last_ns = None

    def update(self, t_ns: int, condition: bool, release: bool | None = None) -> bool:
        """One set at reference time ``t_ns``; whether the alert is active after it."""
        if release is None:
            release = not condition
        if self._last_ns is not None and (t_ns < self._last_ns or t_ns - self._last_ns > self.max_gap_ns):
            self._since = None  # a run is only as long as it was watched
        self._last_ns = t_ns
        running = release if self.active else condition
        if not running:
            self._since = None
            return self.active
        if self._since is None:
            self._since = t_ns
        if t_ns - self._since >= (self.clear_ns if self.active else self.sustain_ns):
            self.active = not self.active
            self._since = None
            self.fired += self.active
        return self.active


class DisagreementMonitor:
    """``modalities_disagree`` for one rig: consistency below threshold, sustained, with two or more present."""

    def __init__(self, cfg: AlertsConfig):
        self.state = Sustained(cfg.disagree_sustain_s, cfg.disagree_clear_s)

    def reset(self) -> None:
        self.state.reset()

    def update(self, t_ref_ns: int, consistency: float, threshold: float, n_present: int) -> bool:
        """One set's consistency; whether ``modalities_disagree`` is on."""
        return self.state.update(t_ref_ns, n_present >= 2 and consistency < threshold)
