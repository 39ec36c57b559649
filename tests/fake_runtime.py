"""A small deterministic runtime for tests: it implements the runtime contract with outputs a test sets.

:class:`FakeRuntime` satisfies :class:`fusion_node.runtime.Runtime` without a model: it computes
real, deterministic outputs from its inputs and from settings a test controls, so core tests can
put a probability just under or over its threshold, or make modalities agree or disagree.

- ``preprocess`` summarises the raw array as ``(1, 4)`` float32 statistics (mean, std, min,
  max; zeros for an empty array); radar also returns its point count ``(1, 1)``, so radar takes
  two arrays as with a real bundle.
- ``encode`` returns the unit vector ``direction[modality]`` nudged by the sines of those
  statistics (the nudge is small enough that agreement is set by the directions alone: two
  modalities pointing the same way have a cosine above 0.98, opposite ones below -0.98).
- ``fuse`` gives present modalities equal weight and certainty 1, missing ones 0; consistency is
  the mean pairwise cosine of the present embeddings (1.0 with fewer than two), as the real head
  computes it, unless ``forced_consistency`` is set; probabilities are ``sigmoid(logits)``.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from itertools import combinations

import numpy as np

from fusion_node.radar_projection import RadarProjection
from fusion_node.runtime import HeadOutput, sigmoid
from fusion_node.vocabulary import CLASSES, MODALITIES, WIRE_AUDIO_RATE_HZ

__all__ = ["FakeRuntime", "logit"]

# How far an input's statistics move its embedding off its modality's direction.
NUDGE = 0.05


def logit(p: float) -> float:
    """The logit whose sigmoid is ``p``."""
    return float(np.log(p / (1.0 - p)))


class FakeRuntime:
    """A deterministic :class:`fusion_node.runtime.Runtime` whose outputs a test controls."""

    def __init__(self, *, embedding_dim: int = 8, classes: Sequence[str] = CLASSES,
                 thresholds: Mapping[str, float] | None = None, consistency_threshold: float | None = 0.5,
                 audio_window_s: float = 0.2, audio_sample_rate_hz: int = WIRE_AUDIO_RATE_HZ, trained: bool = True,
                 radar_frames: int = 1):
        self._dim = embedding_dim
        self._classes = tuple(classes)
        self._thresholds = dict(thresholds) if thresholds is not None else {c: 0.5 for c in self._classes}
        self._consistency_threshold = consistency_threshold
        self._audio_window_s = audio_window_s
        self._audio_rate = audio_sample_rate_hz
        self._radar_frames = radar_frames
        self.last_raw: dict[str, np.ndarray] = {}  # the raw array each modality's preprocess last took
        self._trained = trained
        # Every modality points the same way until a test says otherwise: they agree.
        first = np.zeros(embedding_dim, np.float32)
        first[0] = 1.0
        self.directions: dict[str, np.ndarray] = {m: first.copy() for m in MODALITIES}
        self.logits = np.zeros(len(self._classes), np.float32)
        self.forced_consistency: float | None = None
        self.calls: Counter = Counter()

    def set_probabilities(self, probabilities: Mapping[str, float]) -> None:
        """Make :meth:`fuse` report these class probabilities (others stay at 0.5)."""
        for c, p in probabilities.items():
            self.logits[self._classes.index(c)] = logit(p)

    def disagree(self, modality: str) -> None:
        """Point ``modality`` opposite to the others, so that it disagrees with them."""
        self.directions[modality] = -self.directions[modality]

    # -- the contract ------------------------------------------------------------------------

    @property
    def name(self) -> str:
        return "fake"

    @property
    def trained(self) -> bool:
        return self._trained

    @property
    def provider(self) -> str:
        return "fake"

    @property
    def provider_note(self) -> str:
        return "fake: numpy"

    @property
    def classes(self) -> tuple[str, ...]:
        return self._classes

    @property
    def thresholds(self) -> Mapping[str, float]:
        return self._thresholds

    @property
    def consistency_threshold(self) -> float | None:
        return self._consistency_threshold

    @property
    def embedding_dim(self) -> int:
        return self._dim

    @property
    def audio_window_s(self) -> float:
        return self._audio_window_s

    @property
    def audio_sample_rate_hz(self) -> int:
        return self._audio_rate

    @property
    def radar_frames(self) -> int:
        return self._radar_frames

    def preprocess(self, modality: str, *raw: np.ndarray,
                   projection: RadarProjection | None = None) -> tuple[np.ndarray, ...]:
        _check_modality(modality)
        if len(raw) != 1 or not isinstance(raw[0], np.ndarray):
            raise ValueError(f"{modality}: preprocess takes one raw array, got {len(raw)}")
        self.last_raw[modality] = raw[0]
        flat = raw[0].astype(np.float64).ravel()
        stats = np.array([[flat.mean(), flat.std(), flat.min(), flat.max()]] if flat.size else [[0.0] * 4],
                         np.float32)
        if modality == "radar":
            return stats, np.array([[len(raw[0])]], np.float32)
        return (stats,)

    def encode(self, modality: str, *arrays: np.ndarray) -> np.ndarray:
        _check_modality(modality)
        want = 2 if modality == "radar" else 1
        if len(arrays) != want:
            raise ValueError(f"{modality}: expected {want} input array(s), got {len(arrays)}")
        stats = arrays[0]
        if not isinstance(stats, np.ndarray) or stats.dtype != np.float32 or stats.shape != (1, 4):
            got = f"{stats.dtype} {stats.shape}" if isinstance(stats, np.ndarray) else type(stats).__name__
            raise ValueError(f"{modality}: input must be float32 with shape (1, 4), got {got}")
        self.calls[f"encode_{modality}"] += 1
        nudge = np.zeros(self._dim, np.float32)
        # sin: bounded, and it tells apart inputs whose statistics differ only a little.
        nudge[1:5] = np.sin(stats[0].astype(np.float64))[: self._dim - 1]
        e = self.directions[modality] + NUDGE * nudge
        return (e / np.linalg.norm(e)).astype(np.float32)[None, :]

    def encode_batch(self, modality: str, batch: Sequence[tuple[np.ndarray, ...]]) -> list[np.ndarray]:
        return [self.encode(modality, *arrays) for arrays in batch]

    def fuse(self, embeddings: Mapping[str, np.ndarray | None]) -> HeadOutput:
        unknown = set(embeddings) - set(MODALITIES)
        if unknown:
            raise ValueError(f"fuse: unknown modalities {sorted(unknown)}")
        self.calls["fuse"] += 1
        present = np.array([embeddings.get(m) is not None for m in MODALITIES], np.float32)
        units = {}
        for m in MODALITIES:
            e = embeddings.get(m)
            if e is None:
                continue
            if not isinstance(e, np.ndarray) or e.shape not in ((1, self._dim), (self._dim,)):
                raise ValueError(f"fuse: {m} embedding must have shape (1, {self._dim}) or ({self._dim},)")
            if not np.isfinite(e).all():
                raise ValueError(f"fuse: {m} embedding contains NaN or inf")
            v = e.reshape(-1).astype(np.float64)
            units[m] = v / max(np.linalg.norm(v), 1e-12)
        pairs = [float(units[a] @ units[b]) for a, b in combinations(units, 2)]
        consistency = float(np.mean(pairs)) if pairs else 1.0
        if self.forced_consistency is not None:
            consistency = self.forced_consistency
        weights = present / present.sum() if present.any() else present.copy()
        return HeadOutput(probabilities=sigmoid(self.logits), certainty=present.copy(), weights=weights,
                          consistency=consistency, logits=self.logits.copy(), present=present)


def _check_modality(modality: str) -> None:
    if modality not in MODALITIES:
        raise ValueError(f"unknown modality {modality!r}; expected one of {MODALITIES}")
