"""The YAMNet audio teacher: its own log-mel patches, its scores mapped onto the product's classes.

YAMNet (AudioSet, 521 classes) is a training-time teacher only: ``fusion train --audio-teacher
PATH`` loads it by path, the shipped audio encoder learns to reproduce it, and ``fusion eval``
runs it beside the student on the same clips. Nothing here is imported by the node.

The features follow YAMNet's published front end exactly, because a teacher fed anything else is
a different teacher: 16 kHz mono, 25 ms frames every 10 ms, periodic Hann window, magnitude of a
512-point FFT, 64 HTK mel bands from 125 to 7500 Hz (DC weighted 0), ``log(mel + 0.001)``, patches
of 96 frames (0.96 s).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np
import onnxruntime as ort

from fusion_node.errors import ConfigError
from fusion_node.vocabulary import CLASSES, WIRE_AUDIO_RATE_HZ

__all__ = ["AUDIOSET_GROUPS", "YamnetTeacher", "yamnet_patch", "PATCH_FRAMES"]

FRAME = 400
HOP = 160
N_FFT = 512
N_MELS = 64
PATCH_FRAMES = 96
LOG_OFFSET = 0.001

# AudioSet classes (indices into YAMNet's class map) that stand for each product class. A horn is
# a vehicle, not an alarm (a car horn honks in traffic all day); sirens and alarms are alarms.
# Drills, lawn mowers and chainsaws share "engine" sounds but are no vehicle, so they are left out.
AUDIOSET_GROUPS: dict[str, tuple[int, ...]] = {
    "person": (46, 47, 48),  # run, shuffle, walk/footsteps: a person heard moving
    "vehicle": (294, *range(300, 304), *range(305, 316), 320, 321, 337, 338, *range(342, 348)),
    "dog": (*range(69, 76), 117),
    "glass_break": (435, 436, 437, 463, 464),
    "speech": tuple(range(0, 6)),
    "alarm": (304, *range(316, 320), 382, *range(389, 396)),
}
assert set(AUDIOSET_GROUPS) == set(CLASSES)


def _htk_mel(f: np.ndarray) -> np.ndarray:
    return 1127.0 * np.log1p(np.asarray(f, np.float64) / 700.0)


def _mel_matrix() -> np.ndarray:
    """(257, 64) weights: triangular bands between 66 mel-spaced edges, in the mel domain."""
    bins_mel = _htk_mel(np.linspace(0.0, WIRE_AUDIO_RATE_HZ / 2, N_FFT // 2 + 1))
    edges = np.linspace(_htk_mel(125.0), _htk_mel(7500.0), N_MELS + 2)
    lower, centre, upper = edges[:-2], edges[1:-1], edges[2:]
    rising = (bins_mel[:, None] - lower) / (centre - lower)
    falling = (upper - bins_mel[:, None]) / (upper - centre)
    w = np.maximum(0.0, np.minimum(rising, falling))
    w[0, :] = 0.0
    return w.astype(np.float32)


_MEL = _mel_matrix()
_WINDOW = (0.5 - 0.5 * np.cos(2 * np.pi * np.arange(FRAME) / FRAME)).astype(np.float32)  # periodic Hann


def yamnet_patch(samples: np.ndarray) -> np.ndarray:
    """The last 0.96 s of mono 16 kHz ``samples`` as YAMNet's ``(96, 64)`` log-mel patch.

    Shorter input is padded with zeros in front, as a window that ends now would be.
    """
    need = FRAME + (PATCH_FRAMES - 1) * HOP
    x = np.asarray(samples, np.float32).reshape(-1)[-need:]
    if len(x) < need:
        x = np.concatenate([np.zeros(need - len(x), np.float32), x])
    idx = np.arange(FRAME)[None, :] + HOP * np.arange(PATCH_FRAMES)[:, None]
    spec = np.abs(np.fft.rfft(x[idx] * _WINDOW, n=N_FFT, axis=1)).astype(np.float32)
    return np.log(spec @ _MEL + LOG_OFFSET).astype(np.float32)


@dataclass(frozen=True)
class TeacherOutput:
    """YAMNet on a batch of windows: product-class scores ``(N, C)`` and the embedding ``(N, 1024)``."""

    scores: np.ndarray
    embedding: np.ndarray


class YamnetTeacher:
    """YAMNet in onnxruntime on the CPU, one patch per window, scores grouped into product classes.

    A product class scores the maximum of its AudioSet classes (:data:`AUDIOSET_GROUPS`): YAMNet's
    outputs are independent sigmoids, so the strongest member is the evidence for the group.
    """

    def __init__(self, path: str | os.PathLike, threads: int = 1) -> None:
        if not os.path.isfile(path):
            raise ConfigError(f"audio teacher {str(path)!r}: no such file; pass --audio-teacher PATH to yamnet.onnx")
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
        try:
            self.session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
        except Exception as exc:  # onnxruntime raises its own exception types for a corrupt model
            raise ConfigError(f"audio teacher {str(path)!r}: cannot load it: {str(exc).splitlines()[0]}") from None
        names = [o.name for o in self.session.get_outputs()]
        if "embedding" not in names or len(names) < 2:
            raise ConfigError(f"audio teacher {str(path)!r}: expected YAMNet's score and 'embedding' outputs, got {names}")
        self.score_name = next(n for n in names if n != "embedding")
        self.input_name = self.session.get_inputs()[0].name
        self.groups = [np.array(AUDIOSET_GROUPS[c]) for c in CLASSES]

    def raw(self, patch: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """One ``(96, 64)`` patch -> (521 AudioSet scores, 1024-d embedding)."""
        scores, emb = self.session.run([self.score_name, "embedding"], {self.input_name: patch[None]})
        return scores.reshape(-1), emb.reshape(-1)

    def group(self, audioset_scores: np.ndarray) -> np.ndarray:
        """AudioSet scores ``(..., 521)`` -> product-class scores ``(..., C)``."""
        return np.stack([audioset_scores[..., g].max(axis=-1) for g in self.groups], axis=-1)

    def windows(self, windows: np.ndarray) -> TeacherOutput:
        """Mono 16 kHz windows ``(N, S)`` -> the teacher's product-class scores and embeddings."""
        scores, embs = [], []
        for w in windows:
            s, e = self.raw(yamnet_patch(w))
            scores.append(self.group(s))
            embs.append(e)
        return TeacherOutput(np.asarray(scores, np.float32).reshape(-1, len(CLASSES)),
                             np.asarray(embs, np.float32).reshape(len(scores), -1))
