"""Counters and latency percentiles for the stats topic and the run summary."""

from __future__ import annotations

import numpy as np

__all__ = ["LatencyWindow", "percentiles"]

PERCENTILES = (50.0, 90.0, 99.0, 99.9)


def percentiles(values_ms: np.ndarray | list[float]) -> dict[str, float]:
    """p50, p90, p99, p999 and max of a set of millisecond values (empty: zeros with n=0)."""
    arr = np.asarray(values_ms, dtype=np.float64)
    if arr.size == 0:
        return {"p50": 0.0, "p90": 0.0, "p99": 0.0, "p999": 0.0, "max": 0.0, "n": 0}
    p = np.percentile(arr, PERCENTILES)
    return {"p50": round(float(p[0]), 3), "p90": round(float(p[1]), 3), "p99": round(float(p[2]), 3),
            "p999": round(float(p[3]), 3), "max": round(float(arr.max()), 3), "n": int(arr.size)}


class LatencyWindow:
    """The last ``size`` samples of each named latency, in milliseconds."""

    def __init__(self, size: int = 2048):
        self.size = size
        self._data: dict[str, np.ndarray] = {}
        self._count: dict[str, int] = {}

    def add(self, name: str, value_ms: float) -> None:
        buf = self._data.get(name)
        if buf is None:
            buf = self._data[name] = np.zeros(self.size)
            self._count[name] = 0
        buf[self._count[name] % self.size] = value_ms
        self._count[name] += 1

    def summary(self) -> dict[str, dict[str, float]]:
        return {name: percentiles(buf[: min(self._count[name], self.size)]) for name, buf in self._data.items()}
