"""A timestamped ring of audio samples from which windows ending at any time are cut.

Audio is a continuous signal, not a frame: chunks are appended on their own timeline and a set
takes the window of samples that ends at its reference time. Small timestamp jitter between
chunks is absorbed (the ring keeps its own sample clock); a real gap is filled with silence
marked invalid; a jump backwards (a looped file, a restarted device) re-bases the ring.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["AudioRing", "AudioWindow"]


@dataclass(frozen=True)
class AudioWindow:
    """Samples of one window and the fraction of them that were really captured."""

    samples: np.ndarray
    coverage: float
    t_end_ns: int


class AudioRing:
    """Fixed-capacity ring of mono float32 samples on a nanosecond timeline."""

    def __init__(self, sample_rate_hz: int, capacity_s: float, jitter_tolerance_ns: int = 5_000_000):
        if sample_rate_hz <= 0 or capacity_s <= 0:
            raise ValueError("sample_rate_hz and capacity_s must be positive")
        self.sample_rate_hz = int(sample_rate_hz)
        self.capacity = int(round(capacity_s * sample_rate_hz))
        self.jitter_tolerance_ns = jitter_tolerance_ns
        self._samples = np.zeros(self.capacity, dtype=np.float32)
        self._valid = np.zeros(self.capacity, dtype=bool)
        self._written = 0  # samples ever written, gap fill included; index of the next sample
        self.end_ns: int | None = None  # time just after the newest sample
        self.gaps = 0
        self.rebases = 0

    def _ns(self, n_samples: int) -> int:
        return int(round(n_samples * 1e9 / self.sample_rate_hz))

    def _append(self, samples: np.ndarray, valid: bool) -> None:
        n = len(samples)
        if n >= self.capacity:
            samples = samples[-self.capacity:]
            self._written += n - self.capacity
            n = self.capacity
        start = self._written % self.capacity
        first = min(n, self.capacity - start)
        self._samples[start:start + first] = samples[:first]
        self._valid[start:start + first] = valid
        if first < n:
            self._samples[: n - first] = samples[first:]
            self._valid[: n - first] = valid
        self._written += n

    def write(self, t_start_ns: int, samples: np.ndarray) -> str | None:
        """Append a chunk captured from ``t_start_ns``; returns "gap" or "rebase" when one happened."""
        event = None
        if self.end_ns is not None:
            delta = t_start_ns - self.end_ns
            if delta > self.jitter_tolerance_ns:
                missing = int(round(delta * self.sample_rate_hz / 1e9))
                self._append(np.zeros(min(missing, self.capacity), dtype=np.float32), valid=False)
                self._written += max(0, missing - self.capacity)
                self.gaps += 1
                self.end_ns = t_start_ns
                event = "gap"
            elif delta < -self.jitter_tolerance_ns:
                # The source's clock went backwards: start a new timeline rather than overwrite history.
                self._valid[:] = False
                self.end_ns = None
                self.rebases += 1
                event = "rebase"
        if self.end_ns is None:
            self.end_ns = t_start_ns
        self._append(np.asarray(samples, dtype=np.float32), valid=True)
        self.end_ns += self._ns(len(samples))
        return event

    def window(self, t_end_ns: int, duration_s: float) -> AudioWindow:
        """The ``duration_s`` of samples ending at ``t_end_ns``; parts not held come back as zeros."""
        n = int(round(duration_s * self.sample_rate_hz))
        out = np.zeros(n, dtype=np.float32)
        if self.end_ns is None or n == 0:
            return AudioWindow(out, 0.0, t_end_ns)
        # Sample index (on the ring's running count) just after the window's last sample.
        stop = self._written - int(round((self.end_ns - t_end_ns) * self.sample_rate_hz / 1e9))
        start = stop - n
        lo = max(start, self._written - self.capacity, 0)
        hi = min(stop, self._written)
        if hi <= lo:
            return AudioWindow(out, 0.0, t_end_ns)
        idx = np.arange(lo, hi) % self.capacity
        valid = self._valid[idx]
        out[lo - start: hi - start] = np.where(valid, self._samples[idx], 0.0)
        return AudioWindow(out, float(valid.sum()) / n, t_end_ns)
