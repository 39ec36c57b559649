"""Real recordings through the shipped runtime: held-out sources only, the teacher beside the student.

Every figure here comes from recordings of sources that training never saw (the ``test`` split
of :mod:`models.audio_corpus`: split by source, never by time within a file), run through
:class:`fusion_node.cpu_runtime.ModelRuntime` exactly as the node runs them: preprocessing, the
encoder, the fusion head with only that modality present, and the manifest's thresholds. The
teacher (when its file is given) is scored on the same windows with thresholds chosen on the
``val`` and ``train`` sources, as the student's were (the student's on out-of-fold scores).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from fusion_node.cpu_runtime import ModelRuntime
from fusion_node.vocabulary import CLASSES
from models.audio_distill import (choose_thresholds, clip_errors, clip_metrics, eval_windows, split_clips,
                                  threshold_windows)
from models.teacher_audio import YamnetTeacher

__all__ = ["runtime_audio_probs", "evaluate_real_audio"]


def runtime_audio_probs(rt: ModelRuntime, logmel: np.ndarray, progress: str = "") -> np.ndarray:
    """Fused probabilities ``(N, C)`` of an audio-only rig on preprocessed windows ``(N, 1, M, T)``."""
    from tqdm import tqdm

    out = np.zeros((len(logmel), len(CLASSES)), np.float32)
    order = [rt.classes.index(c) for c in CLASSES]
    for i in tqdm(range(len(logmel)), desc=progress or "audio windows", unit="win", leave=False, disable=not progress):
        emb = rt.encode("audio", logmel[i:i + 1].astype(np.float32))
        out[i] = rt.fuse({"audio": emb}).probabilities[order]
    return out


def evaluate_real_audio(rt: ModelRuntime, real_dir: Path, audio_teacher: Path | None = None,
                        corpora: Sequence[Path] = ()) -> dict:
    """Student (through the runtime) and teacher on the held-out audio sources; the ``real.*`` keys."""
    teacher = YamnetTeacher(audio_teacher) if audio_teacher is not None else None
    splits = split_clips(real_dir, corpora)
    test = eval_windows(splits["test"], teacher, "real audio (held-out sources)")
    thresholds = {c: float(rt.thresholds.get(c, 0.5)) for c in CLASSES}
    probs = runtime_audio_probs(rt, test.logmel, "student")
    student = clip_metrics(probs, test, thresholds)
    result = {"macro_f1": student["macro_f1"], "false_label_rate": student["false_label_rate"],
              "per_class": student["per_class"], "clips": student["clips"],
              "background_windows": student["background_windows"], "background_sources": student["background_sources"],
              "sources": sorted({c.source for c in splits["test"]}),
              "teacher_macro_f1": None, "teacher": None}
    teacher_thresholds = None
    if teacher is not None:
        calib = threshold_windows(splits, teacher, "real audio (threshold sources)")
        teacher_thresholds = choose_thresholds(calib.teacher, calib)
        t_metrics = clip_metrics(test.teacher, test, teacher_thresholds)
        result["teacher_macro_f1"] = t_metrics["macro_f1"]
        result["teacher"] = t_metrics
    result["errors"] = clip_errors(probs, test, thresholds, teacher_thresholds)
    return result
