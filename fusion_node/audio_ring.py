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

    def _spans(self, lo: int, hi: int) -> tuple[tuple[int, int, int], ...]:
        """Where running sample indices ``[lo, hi)`` (at most ``capacity`` of them) lie in storage.

        One ``(start, stop, offset)`` slice, or two when the range wraps past the end of the
        storage; ``offset`` is the slice's position from ``lo``. Plain slices keep reads and
        writes to one copy, with no index arrays.
        """
        start = lo % self.capacity
        n = hi - lo
        first = min(n, self.capacity - start)
        if first == n:
            return ((start, start + n, 0),)
        return ((start, self.capacity, 0), (0, n - first, first))

    def _append(self, samples: np.ndarray | None, n: int) -> None:
        """Append ``n`` captured samples, or ``n`` samples of silence marked invalid when ``samples`` is None."""
        if n >= self.capacity:
            if samples is not None:
                samples = samples[n - self.capacity:]
            self._written += n - self.capacity
            n = self.capacity
        for a, b, off in self._spans(self._written, self._written + n):
            self._samples[a:b] = 0.0 if samples is None else samples[off:off + b - a]
            self._valid[a:b] = samples is not None
        self._written += n

    def write(self, t_start_ns: int, samples: np.ndarray) -> str | None:
        """Append a chunk captured from ``t_start_ns``; returns "gap" or "rebase" when one happened."""
        event = None
        if self.end_ns is not None:
            delta = t_start_ns - self.end_ns
            if delta > self.jitter_tolerance_ns:
                self._append(None, int(round(delta * self.sample_rate_hz / 1e9)))
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
        samples = np.asarray(samples, dtype=np.float32)
        self._append(samples, len(samples))
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
        covered = 0
        for a, b, off in self._spans(lo, hi):
            valid = self._valid[a:b]
            # Copy only what was captured: gap fill and pre-rebase audio stay zero in ``out``.
            np.copyto(out[lo - start + off: lo - start + off + b - a], self._samples[a:b], where=valid)
            covered += int(np.count_nonzero(valid))
        return AudioWindow(out, covered / n, t_end_ns)
