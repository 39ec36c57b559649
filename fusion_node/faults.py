"""Faulty but alive sensors: a covered or frozen camera, a repeating or empty radar, a silent,
clipped or stuck microphone.

A sensor that stops publishing is caught by liveness (``sensor_failed``); this module catches one
that goes on publishing data that carries no information. It is pure: the core hands it each
admitted message once, with its capture time on the rig clock, and asks which faults are active.
No clock is read and nothing is sent.

Each message gives one *symptom* per fault kind: a value in [0, 1] (1: this message looks faulty;
for ``clipped`` the share of its samples at full scale). A kind's symptoms are averaged over the
last ``window_s`` of capture time; the fault is raised when that mean reaches its raise level with
the window spanning at least three quarters of ``window_s``, and cleared only when the mean falls
below a lower clear level: hysteresis, so one odd frame neither raises nor clears a fault. With
the defaults (1 s window, raise at 90 %, clear under 50 %) a fault is raised about 0.9 s after
its onset and cleared about 0.5 s after the signal is healthy again, at any of the nominal rates
(camera 10-30 fps, radar 10 Hz, audio chunks of 20 ms).

The symptoms, each cheap on the hot path:

* camera: the decoded frame is sampled on a grid about :data:`CAMERA_GRID_PX` pixels wide (a
  strided view, no resampling) and turned grey. ``covered``: the sampled frame is nearly uniform
  and dark (spatial standard deviation and mean under their thresholds). ``frozen``: no more than
  a tiny share of the sampled pixels changed at all since the previous frame; a real camera's
  noise changes most of them, and even a static scene out of an H.264 file repeats a frame
  exactly only a few times in a row.
* radar: ``repeating``: a non-empty point set exactly equal to the previous one (measured noise
  makes two real detections of one target differ); ``empty``: no point at all, once this run of
  the sensor has reported points.
* audio (mono float samples): ``silent``: RMS under a level far below any microphone's noise
  floor; ``clipped``: the share of samples at or beyond the clip level; ``stuck``: a constant
  non-silent chunk, or one that exactly repeats a stretch of the last ``audio_stuck_history_s``
  (a driver replaying its buffer).

A new ``run_id`` (the sensor restarted) starts the sensor's detectors afresh.
"""

from __future__ import annotations

from collections import Counter, deque
from typing import Callable

import numpy as np

from .config import FaultsConfig
from .vocabulary import WIRE_AUDIO_RATE_HZ

__all__ = ["FaultMonitor", "SensorFaults", "CAMERA_FAULTS", "RADAR_FAULTS", "AUDIO_FAULTS", "FAULT_KINDS",
           "CAMERA_GRID_PX"]

CAMERA_FAULTS = ("covered", "frozen")
RADAR_FAULTS = ("repeating", "empty")
AUDIO_FAULTS = ("silent", "clipped", "stuck")
# Fault kinds per modality (the config's ``kind``), in the order alerts list them.
FAULT_KINDS: dict[str, tuple[str, ...]] = {"camera": CAMERA_FAULTS, "radar": RADAR_FAULTS, "audio": AUDIO_FAULTS}

# Width of the grid a camera frame is sampled on before its statistics: about 4 000 pixels of a
# 16:9 frame, enough to see a scene's texture and noise, small enough to cost microseconds.
CAMERA_GRID_PX = 80
# ITU-R BT.601 luma weights, in OpenCV's BGR channel order.
_BGR_TO_GREY = np.array([0.114, 0.587, 0.299], np.float32)
# Share of ``window_s`` the observed messages must span before a fault may be raised: fewer
# messages than that (a sensor just started, or restarted) are no evidence yet.
MIN_SPAN = 0.75


class _Window:
    """The mean of one kind's symptoms over the last ``window_ns`` of capture time, with hysteresis."""

    __slots__ = ("window_ns", "raise_at", "clear_below", "items", "total", "active")

    def __init__(self, window_ns: int, raise_at: float, clear_below: float):
        self.window_ns = window_ns
        self.raise_at = raise_at
        self.clear_below = clear_below
        self.items: deque = deque()
        self.total = 0.0
        self.active = False

    def add(self, t_ns: int, value: float) -> bool:
        """Add one message's symptom; returns True when this raised the fault (an onset)."""
        items = self.items
        items.append((t_ns, value))
        self.total += value
        while items and items[0][0] <= t_ns - self.window_ns:
            self.total -= items.popleft()[1]
        mean = self.total / len(items)
        if self.active:
            if mean < self.clear_below:
                self.active = False
            return False
        if mean >= self.raise_at and t_ns - items[0][0] >= MIN_SPAN * self.window_ns:
            self.active = True
            return True
        return False


class SensorFaults:
    """The fault detectors of one sensor: its symptoms, their windows, and onset counts."""

    def __init__(self, sensor_id: str, kind: str, cfg: FaultsConfig, audio_rate_hz: int = WIRE_AUDIO_RATE_HZ):
        self.sensor_id = sensor_id
        self.kind = kind
        self.cfg = cfg
        self._history_len = int(cfg.audio_stuck_history_s * audio_rate_hz)
        self.onsets: Counter = Counter()
        self.run_id: int | None = None
        self._symptoms: Callable[[np.ndarray], dict[str, float]] = {
            "camera": self._camera, "radar": self._radar, "audio": self._audio}[kind]
        self._reset()

    def _reset(self) -> None:
        window_ns = int(self.cfg.window_s * 1e9)
        raise_at, clear_below = self.cfg.raise_fraction, self.cfg.clear_fraction
        self.windows: dict[str, _Window] = {}
        for k in FAULT_KINDS[self.kind]:
            if k == "clipped":  # a share of samples, not of messages: its own levels
                self.windows[k] = _Window(window_ns, self.cfg.audio_clipped_share,
                                          self.cfg.audio_clipped_share * self.cfg.clear_fraction)
            else:
                self.windows[k] = _Window(window_ns, raise_at, clear_below)
        self._prev: np.ndarray | None = None  # camera: the last sampled frame; radar: the last point set
        self._had_points = False
        self._history = np.zeros(0, np.float32)  # audio: the last audio_stuck_history_s of samples

    def observe(self, run_id: int, t_ns: int, data: np.ndarray) -> list[str]:
        """One admitted message's payload (image, points or samples); returns the kinds raised by it."""
        if run_id != self.run_id:
            if self.run_id is not None:
                self._reset()
            self.run_id = run_id
        raised = []
        for k, value in self._symptoms(data).items():
            if self.windows[k].add(t_ns, value):
                self.onsets[k] += 1
                raised.append(k)
        return raised

    @property
    def active(self) -> list[str]:
        """Fault kinds raised and not yet cleared, in :data:`FAULT_KINDS` order."""
        return [k for k, w in self.windows.items() if w.active]

    # -- symptoms ------------------------------------------------------------------------------

    def _camera(self, image: np.ndarray) -> dict[str, float]:
        step = max(1, image.shape[1] // CAMERA_GRID_PX)
        grid = image[::step, ::step]
        # numpy, not OpenCV: on arrays this small OpenCV's thread pool costs more than the arithmetic,
        # and on a busy host its wake-ups took milliseconds now and then.
        grey = grid @ _BGR_TO_GREY if grid.ndim == 3 and grid.shape[2] == 3 else grid.astype(np.float32)
        mean = float(grey.mean())
        std = float(grey.std())
        covered = std <= self.cfg.camera_covered_std_max and mean <= self.cfg.camera_covered_mean_max
        prev, self._prev = self._prev, grey
        # A covered lens sees one flat field frame after frame: that is covered, not also frozen.
        frozen = not covered and prev is not None and prev.shape == grey.shape and \
            np.count_nonzero(prev != grey) <= self.cfg.camera_frozen_changed_max * grey.size
        return {"covered": float(covered), "frozen": float(frozen)}

    def _radar(self, points: np.ndarray) -> dict[str, float]:
        prev, self._prev = self._prev, points
        n = len(points)
        repeating = n > 0 and prev is not None and prev.shape == points.shape and np.array_equal(prev, points)
        empty = n == 0 and self._had_points
        self._had_points = self._had_points or n > 0
        return {"repeating": float(repeating), "empty": float(empty)}

    def _audio(self, samples: np.ndarray) -> dict[str, float]:
        cfg = self.cfg
        x = samples.reshape(-1)
        n = len(x)
        if n == 0:
            return {}
        rms = float(np.sqrt(np.dot(x, x) / n))
        silent = rms < cfg.audio_silent_rms_max
        clipped = np.count_nonzero(np.abs(x) >= cfg.audio_clip_level) / n
        stuck = not silent and (x.min() == x.max() or _repeats(self._history, x))
        keep = self._history_len
        self._history = np.concatenate((self._history, x))[-keep:] if keep > 0 else self._history[:0]
        return {"silent": float(silent), "clipped": clipped, "stuck": float(stuck)}


def _repeats(history: np.ndarray, chunk: np.ndarray) -> bool:
    """Whether ``chunk`` occurs exactly, sample for sample, somewhere in ``history``."""
    n = len(chunk)
    if len(history) < n:
        return False
    starts = np.flatnonzero(history[: len(history) - n + 1] == chunk[0])
    # Real audio seldom repeats even its first sample: few candidates, each checked in full.
    for i in starts[:256]:
        if np.array_equal(history[i:i + n], chunk):
            return True
    return False


class FaultMonitor:
    """The fault detectors of one rig's sensors; what the core asks per message and per event."""

    def __init__(self, cfg: FaultsConfig, sensors: dict[str, str], audio_rate_hz: int = WIRE_AUDIO_RATE_HZ):
        """``sensors``: sensor id -> modality (the config's ``kind``); audio arrives at ``audio_rate_hz``."""
        self.cfg = cfg
        self.sensors = {sid: SensorFaults(sid, kind, cfg, audio_rate_hz) for sid, kind in sensors.items()}

    def observe(self, sensor_id: str, run_id: int, t_ns: int, data: np.ndarray) -> list[str]:
        """One admitted message of ``sensor_id`` captured at ``t_ns``; returns the kinds it raised."""
        return self.sensors[sensor_id].observe(run_id, t_ns, data)

    def active(self) -> dict[str, list[str]]:
        """Sensor id -> the fault kinds active now, for sensors with any."""
        out = {}
        for sid, s in self.sensors.items():
            kinds = s.active
            if kinds:
                out[sid] = kinds
        return out

    def onsets(self, sensor_id: str) -> dict[str, int]:
        """How many times each of the sensor's fault kinds was raised on ``sensor_id`` (zeros included)."""
        s = self.sensors[sensor_id]
        return {k: s.onsets[k] for k in FAULT_KINDS[s.kind]}
