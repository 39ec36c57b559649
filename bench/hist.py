"""Latency histograms: HdrHistogram (microsecond resolution, 3 significant digits) reported in ms.

A miss (a camera frame that produced no event) is recorded as "infinitely late": it sits above
every real value, so a percentile that falls on misses reads as ``None`` (JSON null) instead of
a number that would flatter the run.
"""

from __future__ import annotations

from hdrh.histogram import HdrHistogram

__all__ = ["LatencyHistogram", "PERCENTILES"]

PERCENTILES = (("p50", 50.0), ("p90", 90.0), ("p99", 99.0), ("p999", 99.9))
_LOWEST_US = 1
_HIGHEST_US = 120_000_000  # two minutes: anything later is a miss in all but name
_MISS_US = _HIGHEST_US


class LatencyHistogram:
    """Record milliseconds (and misses); read p50/p90/p99/p99.9/max in milliseconds."""

    def __init__(self) -> None:
        self.h = HdrHistogram(_LOWEST_US, _HIGHEST_US, 3)
        self.misses = 0
        self.n = 0

    def record(self, value_ms: float) -> None:
        us = min(_HIGHEST_US - 1, max(_LOWEST_US, int(round(value_ms * 1000.0))))
        self.h.record_value(us)
        self.n += 1

    def record_miss(self, count: int = 1) -> None:
        if count > 0:
            self.h.record_value(_MISS_US, count)
            self.misses += count

    def _ms(self, us: int) -> float | None:
        return None if us >= _MISS_US else round(us / 1000.0, 3)

    def summary(self) -> dict:
        """``{p50, p90, p99, p999, max, mean, n, misses}``; values in ms, None where misses rule."""
        if self.h.get_total_count() == 0:
            return {**{k: None for k, _ in PERCENTILES}, "max": None, "mean": None, "n": 0, "misses": 0}
        out: dict = {k: self._ms(self.h.get_value_at_percentile(p)) for k, p in PERCENTILES}
        out["max"] = self._ms(self.h.get_max_value())
        out["mean"] = None if self.misses else round(self.h.get_mean_value() / 1000.0, 3)
        out["n"] = self.n
        out["misses"] = self.misses
        return out

    def cdf(self, points: int = 200) -> list[tuple[float, float]]:
        """``[(latency_ms, fraction <= it), ...]`` over the recorded values (misses excluded)."""
        total = self.h.get_total_count()
        if total == 0:
            return []
        out = []
        cum = 0
        for item in self.h.get_recorded_iterator():
            if item.value_iterated_to >= _MISS_US:
                break
            cum += item.count_at_value_iterated_to
            out.append((item.value_iterated_to / 1000.0, cum / total))
        if len(out) > points:  # thin evenly, keep the tail's last point
            step = len(out) / points
            out = [out[int(i * step)] for i in range(points)] + [out[-1]]
        return out
