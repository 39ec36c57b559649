"""The drift monitor: a per-rig baseline of cross-modal similarity and a ``drift`` alert. Pure code.

For every pair of modalities bound into one embedding space (``vocabulary.BOUND_PAIRS``), the
cosine of the two embeddings of one set measures how well the sensors still see the same scene
the way they did when the models were trained. A sensor knocked out of alignment, a fogged
lens, a radar re-mounted at another angle or a clock offset gone stale lower it; the literature
on multimodal alignment watches that similarity against a baseline.

Per rig and per pair:

* **baseline**: the median similarity over the first ``drift_warmup_sets`` sets in which both
  modalities are present (the median: a few odd sets during warm-up do not move it). It is then
  **frozen** for the life of the rig's core, on purpose: a baseline that tracked the similarity,
  however slowly, would follow a slow misalignment down and never see it, and slow degradation is
  the drift worth reporting. A new node run learns it afresh.
* **similarity**: the median of the pair's last ``SMOOTHING_SETS`` similarities, so that one odd
  frame neither starts nor breaks a fall.
* the alert **fires** when the similarity stays below ``baseline x (1 - drift_fraction)`` for
  ``drift_sustain_s`` of reference time and **clears** when it stays back above
  ``baseline x (1 - drift_fraction / 2)`` for ``drift_clear_s`` (hysteresis in level and time).

A baseline under ``MIN_BASELINE`` means the pair was never aligned (an untrained bundle, a
pair bound in name only): a fall from it means nothing, and that pair raises no alert.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Mapping, Sequence

import numpy as np

from .alerts import Sustained
from .config import AlertsConfig

__all__ = ["DriftMonitor", "PairDrift", "SMOOTHING_SETS", "MIN_BASELINE"]

SMOOTHING_SETS = 5
MIN_BASELINE = 0.2


class PairDrift:
    """Baseline, recent similarity and alert state of one bound pair of modalities."""

    def __init__(self, pair: tuple[str, str], cfg: AlertsConfig):
        self.pair = pair
        self.name = "-".join(pair)
        self.fraction = cfg.drift_fraction
        self.warmup_sets = cfg.drift_warmup_sets
        self._warmup: list[float] = []
        self._recent: deque[float] = deque(maxlen=SMOOTHING_SETS)
        self.baseline: float | None = None
        self.similarity: float | None = None
        self.state = Sustained(cfg.drift_sustain_s, cfg.drift_clear_s)

    def reset(self) -> None:
        self._warmup.clear()
        self._recent.clear()
        self.baseline = self.similarity = None
        self.state.reset()

    def update(self, t_ref_ns: int, cosine: float) -> bool:
        """One set's cosine for this pair; whether the pair is in drift after it."""
        self._recent.append(cosine)
        self.similarity = float(np.median(self._recent))
        if self.baseline is None:
            self._warmup.append(cosine)
            if len(self._warmup) >= self.warmup_sets:
                self.baseline = float(np.median(self._warmup))
                self._warmup.clear()
            return False
        if self.baseline < MIN_BASELINE:
            return False
        fallen = self.similarity < self.baseline * (1 - self.fraction)
        recovered = self.similarity >= self.baseline * (1 - self.fraction / 2)
        return self.state.update(t_ref_ns, fallen, recovered)

    def summary(self) -> dict:
        return {"similarity": None if self.similarity is None else round(self.similarity, 4),
                "baseline": None if self.baseline is None else round(self.baseline, 4),
                "warmup_left": 0 if self.baseline is not None else self.warmup_sets - len(self._warmup),
                "drift": self.state.active, "fired": self.state.fired}


class DriftMonitor:
    """Every bound pair of one rig: ``update`` per fused set, ``drift`` while any pair has fallen."""

    def __init__(self, pairs: Sequence[tuple[str, str]], cfg: AlertsConfig):
        self.pairs = [PairDrift(tuple(p), cfg) for p in pairs]

    def reset(self) -> None:
        for p in self.pairs:
            p.reset()

    def update(self, t_ref_ns: int, embeddings: Mapping[str, np.ndarray | None]) -> bool:
        """One set's embeddings (L2-normalised, missing ones None); whether ``drift`` is on after it."""
        active = False
        for p in self.pairs:
            a, b = (embeddings.get(m) for m in p.pair)
            if a is not None and b is not None:
                p.update(t_ref_ns, _cosine(a, b))
            active |= p.state.active
        return active

    def summary(self) -> dict:
        """Per pair (``camera-radar``): similarity, baseline, warm-up sets left, whether in drift, alerts fired."""
        return {p.name: p.summary() for p in self.pairs}


def _cosine(a: np.ndarray, b: np.ndarray) -> float:
    a = np.asarray(a, np.float64).reshape(-1)
    b = np.asarray(b, np.float64).reshape(-1)
    return float(a @ b / max(np.linalg.norm(a) * np.linalg.norm(b), 1e-12))
