"""Online tracking of a sensor's clock against the node's receive clock. Pure: no clocks, no sockets.

For every message the node knows two times: ``t_capture_ns`` (the sensor's clock, from the
header) and ``t_receive_ns`` (the node's clock, at arrival). Their difference ``d = receive -
capture`` is the clock offset plus a transport delay that is never negative and mostly small,
with a long tail (scheduling, network, a busy node). So the offset is the **lower envelope**
of ``d``, not its mean:

* capture time is cut into ``buckets`` equal spans over a sliding ``window_s``; each bucket
  keeps its smallest ``d`` (the least-delayed message in it);
* a straight line through the bucket minima (least squares, refitted once without buckets that
  sit far above it, i.e. spans where every message was late) gives the offset at the newest
  capture time and its slope, the **drift** in ppm (microseconds per second): positive when the
  sensor clock runs slow against the node clock, as ``clock_drift_ppm`` in the rig file.

**Jumps.** A looped file, a restarted device or a stepped clock moves capture time against
receive time by far more than any delay. ``observe`` returns ``"jump"`` when

* capture time goes backwards by more than the threshold, or
* ``d`` falls below the envelope by more than the threshold (a message cannot arrive before it
  was captured, so the sensor clock leapt forward), or
* ``d`` stays above the envelope by more than the threshold for ``confirm`` messages in a row
  at one level (one late message is only a delay; so is the backlog after a stall, recognised
  by ``d`` falling as fast as capture time advances while it drains).

After a jump the tracker starts afresh from the new relation (the caller re-bases its own state),
and ``jumps`` counts it. The threshold is ``jump_threshold_ms`` (default: the larger of 250 ms
and 20 expected periods).
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

import numpy as np

__all__ = ["ClockTracker"]


@dataclass
class _Bucket:
    index: int
    min_d: int  # ns
    capture_at_min: int  # ns, relative to the tracker's base


class ClockTracker:
    """Tracks one sensor's clock offset and drift against the receive clock; detects clock jumps.

    ``observe(t_capture_ns, t_receive_ns) -> "jump" | None`` per message; ``summary()`` for the
    stats topic; ``offset_ns`` / ``to_receive_ns()`` to map capture times onto the node clock.
    """

    def __init__(self, sensor_id: str = "", *, expected_period_ns: int | None = None, window_s: float = 60.0,
                 buckets: int = 20, jump_threshold_ms: float | None = None, confirm: int = 3,
                 warmup: int = 10, excess_history: int = 512):
        if window_s <= 0 or buckets < 3 or confirm < 1:
            raise ValueError("ClockTracker: window_s > 0, buckets >= 3 and confirm >= 1 are required")
        self.sensor_id = sensor_id
        self.window_ns = int(window_s * 1e9)
        self.n_buckets = int(buckets)
        self.bucket_ns = max(1, self.window_ns // self.n_buckets)
        period = int(expected_period_ns) if expected_period_ns else 0
        default = max(250_000_000, 20 * period)
        self.threshold_ns = int(jump_threshold_ms * 1e6) if jump_threshold_ms is not None else default
        self.confirm = int(confirm)
        self.warmup = int(warmup)
        self.jumps = 0
        self.samples = 0
        self.late = 0  # messages far above the envelope that turned out to be delays
        self._excess: deque[int] = deque(maxlen=excess_history)
        self._reset_state()

    # --- state -----------------------------------------------------------------------------------

    def _reset_state(self) -> None:
        self._base: int | None = None  # capture time the relative times count from
        self._buckets: deque[_Bucket] = deque()
        self._last_capture: int | None = None
        self._in_epoch = 0  # samples since the last (re)start
        self._pending: list[tuple[int, int]] = []  # (capture, d) of messages far above the envelope
        self._fit: tuple[float, float, int] | None = None  # (intercept ns, slope, reference capture rel)
        self._fit_buckets = 0

    def reset(self) -> None:
        """Forget the clock relation (e.g. when the sensor restarted with a new run_id); counters stay."""
        self._reset_state()

    # --- observing --------------------------------------------------------------------------------

    def observe(self, t_capture_ns: int, t_receive_ns: int) -> str | None:
        """Take one message's capture and receive times (ns); ``"jump"`` when the sensor clock jumped."""
        capture, d = int(t_capture_ns), int(t_receive_ns) - int(t_capture_ns)
        self.samples += 1
        if self._base is None:
            self._start(capture, d)
            return None
        if self._last_capture is not None and capture < self._last_capture - self.threshold_ns:
            return self._jump([(capture, d)])
        predicted = self._predict(capture)
        excess = d - predicted
        if excess < -self.threshold_ns and self._in_epoch >= self.warmup:
            return self._jump([(capture, d)])
        if excess > self.threshold_ns and self._in_epoch >= self.warmup:
            self._pending.append((capture, d))
            del self._pending[:-64]
            if len(self._pending) >= self.confirm:
                last = self._pending[-self.confirm:]
                dc = last[-1][0] - last[0][0]
                dd = abs(last[-1][1] - last[0][1])
                # a new clock relation keeps d level; the backlog after a stall arrives in a burst,
                # so there d falls as fast as capture time advances
                spread = max(p[1] for p in last) - min(p[1] for p in last)
                if dd < 0.5 * dc + 2_000_000 and spread < self.threshold_ns / 2:
                    return self._jump(last)
            return None
        if self._pending:
            self.late += len(self._pending)
            self._pending.clear()
        self._add(capture, d)
        self._excess.append(max(0, d - self._predict(capture)))
        return None

    def _start(self, capture: int, d: int) -> None:
        self._base = capture
        self._last_capture = capture
        self._in_epoch = 1
        self._buckets.clear()
        self._buckets.append(_Bucket(0, d, 0))
        self._fit = None
        self._fit_buckets = 0

    def _jump(self, samples: list[tuple[int, int]]) -> str:
        self.jumps += 1
        self._reset_state()
        self._start(*samples[0])
        for capture, d in samples[1:]:
            self._add(capture, d)
        return "jump"

    def _add(self, capture: int, d: int) -> None:
        rel = capture - self._base
        index = rel // self.bucket_ns
        last = self._buckets[-1] if self._buckets else None
        if last is not None and index == last.index:
            if d < last.min_d:
                last.min_d, last.capture_at_min = d, rel
        elif last is None or index > last.index:
            self._buckets.append(_Bucket(index, d, rel))
            while self._buckets and self._buckets[0].index <= index - self.n_buckets:
                self._buckets.popleft()
            self._refit()
        else:  # an older bucket (capture went back a little): fold into it if still held
            for b in self._buckets:
                if b.index == index and d < b.min_d:
                    b.min_d, b.capture_at_min = d, rel
        self._last_capture = max(self._last_capture or capture, capture)
        self._in_epoch += 1

    # --- the envelope fit -----------------------------------------------------------------------

    def _refit(self) -> None:
        """Line through the minima of the completed buckets (all but the newest)."""
        done = list(self._buckets)[:-1]
        self._fit_buckets = len(done)
        if len(done) < 3:
            self._fit = None
            return
        x = np.array([b.capture_at_min for b in done], dtype=np.float64)
        y = np.array([b.min_d for b in done], dtype=np.float64)
        x0, y0 = x.mean(), y.mean()
        keep = np.ones(x.size, bool)
        for _ in range(2):
            xs, ys = x[keep] - x0, y[keep] - y0
            den = float((xs * xs).sum())
            slope = float((xs * ys).sum() / den) if den > 0 else 0.0
            intercept = float(ys.mean() - slope * xs.mean()) + y0
            resid = y - (intercept + slope * (x - x0))
            mad = float(np.median(np.abs(resid - np.median(resid)))) * 1.4826
            new = resid <= max(3.0 * mad, 1e5)  # drop spans where every message was late (> 0.1 ms and 3 MAD)
            if new.sum() < 3 or np.array_equal(new, keep):
                break
            keep = new
        self._fit = (intercept, slope, int(round(x0)))

    def _predict(self, capture: int) -> int:
        """Envelope value of d at a capture time: the fitted line, or the smallest d held."""
        if self._fit is not None:
            intercept, slope, x0 = self._fit
            return int(round(intercept + slope * ((capture - self._base) - x0)))
        return min(b.min_d for b in self._buckets)

    # --- results -----------------------------------------------------------------------------------

    @property
    def offset_ns(self) -> int | None:
        """receive - capture lower envelope at the newest capture time (ns), None before any sample."""
        if self._base is None:
            return None
        return self._predict(self._last_capture)

    @property
    def drift_ppm(self) -> float | None:
        """Slope of the envelope, ppm (us per s of sensor time); None until 3 buckets are complete."""
        return None if self._fit is None else self._fit[1] * 1e6

    def to_receive_ns(self, t_capture_ns: int) -> int | None:
        """A capture time mapped onto the receive clock (least-delayed arrival time), or None."""
        if self._base is None:
            return None
        return int(t_capture_ns) + self._predict(int(t_capture_ns))

    def summary(self) -> dict:
        """For the node's stats topic: offset_ms, drift_ppm, jumps, samples, and delay figures."""
        off = self.offset_ns
        ex = np.array(self._excess, dtype=np.float64) if self._excess else None
        drift = self.drift_ppm
        return {
            "offset_ms": None if off is None else round(off / 1e6, 3),
            "drift_ppm": None if drift is None else round(drift, 2),
            "jumps": self.jumps,
            "samples": self.samples,
            "late": self.late,
            "delay_excess_ms_p50": None if ex is None else round(float(np.percentile(ex, 50)) / 1e6, 3),
            "delay_excess_ms_p99": None if ex is None else round(float(np.percentile(ex, 99)) / 1e6, 3),
            "window_s": round(self.window_ns / 1e9, 1),
            "span_s": round(self._span_ns() / 1e9, 1),
        }

    def _span_ns(self) -> int:
        if len(self._buckets) < 2:
            return 0
        return self._buckets[-1].capture_at_min - self._buckets[0].capture_at_min

    def __repr__(self) -> str:
        s = self.summary()
        return (f"ClockTracker({self.sensor_id!r}, offset_ms={s['offset_ms']}, drift_ppm={s['drift_ppm']}, "
                f"jumps={self.jumps}, samples={self.samples})")
