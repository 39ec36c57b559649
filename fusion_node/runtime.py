"""The runtime contract: what the fusion core asks of whatever runs the models.

:class:`Runtime` is the typed protocol the core (``fusion_node.core``) is written against. Two
runtimes implement it on an exported bundle: ``fusion_node.cpu_runtime.ModelRuntime``
(onnxruntime sessions with an explicit provider chain) and ``fusion_node.gpu_runtime.GpuRuntime``
(IO binding, CUDA graphs, TensorRT); the tests add a small deterministic one. The same contract
tests run against each (``tests/test_runtime_contract.py``).

Both bundle runtimes share :class:`BundleRuntime`: the manifest, the preprocessing it
describes, the checks on every input, and the assembly of the head's outputs into a
:class:`HeadOutput`; each adds only how a model is run (:meth:`BundleRuntime._run`).
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

import numpy as np

from .manifest import Manifest, load_manifest
from .preprocess import PREPROCESSORS
from .radar_projection import RadarProjection
from .vocabulary import MODALITIES

__all__ = ["HeadOutput", "Runtime", "BundleRuntime", "sigmoid"]


# eq=False: fields are arrays, whose == is elementwise; identity comparison is the sane default.
@dataclass(frozen=True, eq=False)
class HeadOutput:
    """The fusion head's answer for one synchronised set.

    ``probabilities (C,)`` sigmoid of the logits, in the runtime's class order; ``certainty``,
    ``weights`` and ``present``, each ``(M,)`` in :data:`fusion_node.vocabulary.MODALITIES`
    order; ``consistency`` the cross-modal agreement in [-1, 1] (exactly 1.0 with fewer than two
    modalities present); ``logits (C,)`` the raw logits.
    """

    probabilities: np.ndarray
    certainty: np.ndarray
    weights: np.ndarray
    consistency: float
    logits: np.ndarray
    present: np.ndarray


@runtime_checkable
class Runtime(Protocol):
    """Everything the fusion core uses of a model runtime.

    ``preprocess(modality, raw)`` turns one modality's raw data (a BGR uint8 image, radar points
    ``(N, 6)`` float32, mono float32 samples at :attr:`audio_sample_rate_hz`) into the tuple of
    arrays ``encode(modality, *arrays)`` takes; ``encode`` returns the embedding ``(1, D)``
    float32; ``encode_batch`` does the same for several sets' inputs at once and equals encoding
    them one by one; ``fuse`` maps modality -> embedding (None or no entry: missing, given zero
    weight) to a :class:`HeadOutput`. Wrong modalities, shapes or dtypes raise ValueError.
    """

    @property
    def name(self) -> str:
        """The model bundle's name."""

    @property
    def trained(self) -> bool:
        """False for untrained weights: their outputs are never reported as detections."""

    @property
    def provider(self) -> str:
        """The execution provider in use (e.g. "CPUExecutionProvider"), or "mixed"."""

    @property
    def provider_note(self) -> str:
        """One line: which provider was asked for and which is used, and why if they differ."""

    @property
    def classes(self) -> tuple[str, ...]:
        """Event class names, in the order of :attr:`HeadOutput.probabilities`."""

    @property
    def thresholds(self) -> Mapping[str, float]:
        """Decision threshold per class: a label is reported when its probability reaches it."""

    @property
    def consistency_threshold(self) -> float | None:
        """Consistency below which two or more present modalities disagree (None: not calibrated)."""

    @property
    def embedding_dim(self) -> int:
        """D, the width of every embedding."""

    @property
    def audio_window_s(self) -> float:
        """Length of audio (seconds) the audio encoder looks at; the core cuts windows this long."""

    @property
    def audio_sample_rate_hz(self) -> int:
        """Sample rate the audio preprocessing expects; the core admits audio at this rate only."""

    @property
    def radar_frames(self) -> int:
        """Radar frames the radar encoder looks at (the set's and those before it); the core pools this many."""

    def preprocess(self, modality: str, *raw: np.ndarray,
                   projection: RadarProjection | None = None) -> tuple[np.ndarray, ...]:
        """One modality's raw data -> the arrays :meth:`encode` takes (``projection``: radar only,
        the rig's radar-to-camera projection)."""

    def encode(self, modality: str, *arrays: np.ndarray) -> np.ndarray:
        """Preprocessed arrays -> the embedding ``(1, D)`` float32."""

    def encode_batch(self, modality: str, batch: Sequence[tuple[np.ndarray, ...]]) -> list[np.ndarray]:
        """Several sets' preprocessed arrays -> their embeddings, as :meth:`encode` one by one gives."""

    def fuse(self, embeddings: Mapping[str, np.ndarray | None]) -> HeadOutput:
        """Embeddings by modality (None or absent: missing) -> the head's output."""


def sigmoid(x: np.ndarray) -> np.ndarray:
    """Logistic function in float32; the tanh form gives no overflow warning for large |x|."""
    return (0.5 * (1.0 + np.tanh(0.5 * x.astype(np.float64)))).astype(np.float32)


class BundleRuntime:
    """The manifest-driven half of a :class:`Runtime` on an exported bundle.

    Holds the validated manifest and the preprocessing it describes, answers the contract's
    properties from them, checks every input of :meth:`encode` and :meth:`fuse` against the
    manifest (ValueError naming the modality and the expected shape), and builds the
    :class:`HeadOutput`. A subclass sets ``_provider``/``_provider_note`` and implements
    :meth:`_run`; it may override :meth:`encode_batch` to batch.
    """

    def __init__(self, manifest: Manifest | str | os.PathLike) -> None:
        self.manifest = manifest if isinstance(manifest, Manifest) else load_manifest(manifest)
        self.preprocessors: dict[str, Any] = {
            m: PREPROCESSORS[m].from_dict(dict(spec.preprocess)) for m, spec in self.manifest.encoders.items()
        }
        self._provider = ""
        self._provider_note = ""

    def _run(self, key: str, feed: dict[str, np.ndarray]) -> list[np.ndarray]:
        """Run model ``key`` (a modality or "head") on checked inputs; outputs in manifest order."""
        raise NotImplementedError

    # ------------------------------------------------------------------ properties

    @property
    def name(self) -> str:
        """The bundle's name from the manifest."""
        return self.manifest.name

    @property
    def trained(self) -> bool:
        """False for an untrained bundle: its outputs must not be reported as detections."""
        return self.manifest.trained

    @property
    def provider(self) -> str:
        """The execution provider every session uses, or "mixed"."""
        return self._provider

    @property
    def provider_note(self) -> str:
        """What was asked for, what is used, and why they differ."""
        return self._provider_note

    @property
    def classes(self) -> tuple[str, ...]:
        """Event class names, in the order of :attr:`HeadOutput.probabilities`."""
        return self.manifest.classes

    @property
    def thresholds(self) -> Mapping[str, float]:
        """Decision threshold per class, from the manifest."""
        return self.manifest.thresholds

    @property
    def consistency_threshold(self) -> float | None:
        """Consistency below which the present modalities disagree, from the manifest (None: not calibrated)."""
        return self.manifest.consistency_threshold

    @property
    def embedding_dim(self) -> int:
        """D, the width of every embedding."""
        return self.manifest.embedding_dim

    @property
    def audio_window_s(self) -> float:
        """Length of audio (seconds) the audio encoder looks at; the node cuts windows this long."""
        return self.preprocessors["audio"].window_s

    @property
    def audio_sample_rate_hz(self) -> int:
        """Sample rate the audio preprocessing expects (the manifest's ``audio.preprocess``)."""
        return self.preprocessors["audio"].sample_rate_hz

    @property
    def radar_frames(self) -> int:
        """Radar frames pooled into one window (the manifest's ``radar.preprocess.stack_frames``, default 1)."""
        return self.preprocessors["radar"].stack_frames

    # ------------------------------------------------------------------ the calls

    def preprocess(self, modality: str, *raw: np.ndarray,
                   projection: RadarProjection | None = None) -> tuple[np.ndarray, ...]:
        """Preprocess one modality's raw data; returns the tuple ``encode(modality, *result)`` takes.

        ``preprocess("camera", image)`` -> ``(image_tensor,)``; ``preprocess("radar", points)``
        -> ``(points, mask)``; ``preprocess("audio", samples)`` -> ``(logmel,)``. ``projection``
        (radar only): the rig's radar-to-camera projection, for a bundle whose radar encoder reads
        where points land in the picture; None uses the bundle's nominal geometry.
        """
        _check_modality(modality)
        if len(raw) != 1:
            raise ValueError(f"{modality}: preprocess takes one raw array, got {len(raw)}")
        if modality == "radar":
            return self.preprocessors["radar"](raw[0], projection)
        out = self.preprocessors[modality](raw[0])
        return out if isinstance(out, tuple) else (out,)

    def encode(self, modality: str, *arrays: np.ndarray) -> np.ndarray:
        """Run one encoder on its preprocessed inputs; returns the embedding ``(1, D)`` float32.

        ``encode("radar", points, mask)``; camera and audio take one array. Raises ValueError
        naming the modality and the expected shape if an input does not match the manifest.
        """
        return self._run(modality, self._encoder_feed(modality, arrays))[0]

    def encode_batch(self, modality: str, batch: Sequence[tuple[np.ndarray, ...]]) -> list[np.ndarray]:
        """Embeddings ``(1, D)`` of several sets' preprocessed inputs (here: one encoder run each)."""
        return [self.encode(modality, *arrays) for arrays in batch]

    def fuse(self, embeddings: Mapping[str, np.ndarray | None]) -> HeadOutput:
        """Run the fusion head on the available embeddings.

        ``embeddings`` maps modality -> embedding ``(1, D)`` or ``(D,)``, or None (or no entry)
        when the modality is missing: its input is then zeros with ``present = 0``, which gives
        it exactly zero weight. Raises ValueError on unknown modalities, wrong shapes or
        non-finite values.
        """
        feed = self._head_feed(embeddings)
        # Outputs in manifest order, which load_manifest holds to HEAD_OUTPUTS.
        logits, certainty, weights, consistency = self._run("head", feed)
        return HeadOutput(
            probabilities=sigmoid(logits[0]),
            certainty=certainty[0],
            weights=weights[0],
            consistency=float(consistency[0, 0]),
            logits=logits[0],
            present=feed["present"][0],
        )

    # ------------------------------------------------------------------ input checks

    def _encoder_feed(self, modality: str, arrays: Sequence[np.ndarray]) -> dict[str, np.ndarray]:
        _check_modality(modality)
        spec = self.manifest.encoders[modality]
        if len(arrays) != len(spec.inputs):
            want = ", ".join(f"{t.name} {t.dtype} {t.shape}" for t in spec.inputs)
            raise ValueError(f"{modality}: expected {len(spec.inputs)} input array(s) ({want}), got {len(arrays)}")
        feed = {}
        for t, a in zip(spec.inputs, arrays):
            if not isinstance(a, np.ndarray) or a.dtype != np.dtype(t.dtype) or a.shape != t.shape:
                got = f"{a.dtype} {a.shape}" if isinstance(a, np.ndarray) else type(a).__name__
                raise ValueError(f"{modality}: input '{t.name}' must be {t.dtype} with shape {t.shape}, got {got}")
            feed[t.name] = a
        return feed

    def _head_feed(self, embeddings: Mapping[str, np.ndarray | None]) -> dict[str, np.ndarray]:
        unknown = set(embeddings) - set(MODALITIES)
        if unknown:
            raise ValueError(f"fuse: unknown modalities {sorted(unknown)}; expected a subset of {MODALITIES}")
        dim = self.manifest.embedding_dim
        present = np.zeros((1, len(MODALITIES)), dtype=np.float32)
        feed: dict[str, np.ndarray] = {}
        for k, m in enumerate(MODALITIES):
            e = embeddings.get(m)
            if e is None:
                feed[m] = np.zeros((1, dim), dtype=np.float32)
                continue
            if not isinstance(e, np.ndarray) or not np.issubdtype(e.dtype, np.floating) \
                    or e.shape not in ((1, dim), (dim,)):
                got = f"{e.dtype} {e.shape}" if isinstance(e, np.ndarray) else type(e).__name__
                raise ValueError(f"fuse: {m} embedding must be float32 with shape (1, {dim}) or ({dim},), got {got}")
            if not np.isfinite(e).all():
                raise ValueError(f"fuse: {m} embedding contains NaN or inf")
            feed[m] = np.ascontiguousarray(e.reshape(1, dim), dtype=np.float32)
            present[0, k] = 1.0
        feed["present"] = present
        return feed


def _check_modality(modality: str) -> None:
    if modality not in MODALITIES:
        raise ValueError(f"unknown modality {modality!r}; expected one of {MODALITIES}")

