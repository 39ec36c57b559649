"""Real videos through the shipped runtime: a camera-only rig's verdicts against the detector teacher's.

``fusion eval --videos DIR --camera-teacher yolox_nano.onnx`` scores the bundle's camera on videos
it never trained on (a site's own footage, or any recording from a source training never saw;
the development videos are training sources, so scoring them says nothing of new places). Every
video is read at a stride (at most ``max_frames`` frames); on each frame the detector teacher
(:class:`models.teacher_vision.YoloxTeacher`) says, per visual class, present (a box scoring at
least :data:`~models.teacher_vision.PRESENT_SCORE`) or empty (every box under
:data:`~models.teacher_vision.EMPTY_SCORE`; frames in between are left out), and the bundle
runs as the node runs a camera-only rig: preprocessing, the camera encoder, the fusion head with
only the camera present, and the manifest's threshold per class.

Per video and class: frames the teacher calls present and empty, the recall on the first, the
false rate on the second, the precision. ``pooled`` sums the frames of every video, so a long
video weighs most; ``mean_recall`` and ``mean_false_rate`` give each video the same weight,
which is what a new site meets.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from fusion_node.cpu_runtime import ModelRuntime
from fusion_node.errors import ConfigError
from models.teacher_vision import EMPTY_SCORE, PRESENT_SCORE, VISUAL_CLASSES, YoloxTeacher
from sensors.camera import VIDEO_SUFFIXES, frame_stride, video_files_in

__all__ = ["video_verdicts", "rates", "evaluate_videos"]


def video_verdicts(rt: ModelRuntime, teacher: YoloxTeacher, path: Path, max_frames: int = 300
                   ) -> tuple[np.ndarray, np.ndarray]:
    """``(teacher best score, bundle labels)``, each ``(frames, len(VISUAL_CLASSES))``, on every
    stride-th frame of ``path``; ConfigError naming the file when no frame can be read."""
    stride = frame_stride(path, max_frames)
    cap = cv2.VideoCapture(str(path))
    order = [rt.classes.index(c) for c in VISUAL_CLASSES]
    thresholds = np.array([rt.thresholds.get(c, 0.5) for c in VISUAL_CLASSES], np.float32)
    scores, labels = [], []
    k = 0
    while len(scores) < max_frames:
        ok, frame = cap.read()
        if not ok:
            break
        if k % stride == 0:
            best = teacher.detect(frame).best()
            scores.append([best[c] for c in VISUAL_CLASSES])
            probs = rt.fuse({"camera": rt.encode("camera", *rt.preprocess("camera", frame))}).probabilities
            labels.append(probs[order] >= thresholds)
        k += 1
    cap.release()
    if not scores:
        raise ConfigError(f"{path}: no frame could be read; give a video OpenCV can decode")
    return np.array(scores, np.float32), np.array(labels, bool)


def rates(teacher: np.ndarray, labelled: np.ndarray) -> dict:
    """One class's figures from the teacher's scores and the bundle's labels on the same frames."""
    present, empty = teacher >= PRESENT_SCORE, teacher < EMPTY_SCORE
    tp, fp = int((labelled & present).sum()), int((labelled & empty).sum())
    return {"teacher_present": int(present.sum()), "teacher_empty": int(empty.sum()),
            "recall": round(tp / int(present.sum()), 4) if present.any() else None,
            "false_rate": round(fp / int(empty.sum()), 4) if empty.any() else None,
            "precision": round(tp / (tp + fp), 4) if tp + fp else None}


def evaluate_videos(rt: ModelRuntime, folder: Path, teacher_path: Path, max_frames: int = 300) -> dict:
    """The ``real_camera`` keys: per video, pooled, and the per-video means (see the module docstring)."""
    from tqdm import tqdm

    folder = Path(folder)
    videos = video_files_in([folder])
    if not videos:
        raise ConfigError(f"--videos {folder}: no video files ({', '.join(VIDEO_SUFFIXES)}) in it")
    teacher = YoloxTeacher(teacher_path)
    per_video, all_scores, all_labels = {}, [], []
    for path in tqdm(videos, desc="real videos", unit="video", leave=False):
        scores, labels = video_verdicts(rt, teacher, path, max_frames)
        per_video[path.name] = {"frames": len(scores),
                                **{c: rates(scores[:, k], labels[:, k]) for k, c in enumerate(VISUAL_CLASSES)}}
        all_scores.append(scores)
        all_labels.append(labels)
    scores, labels = np.concatenate(all_scores), np.concatenate(all_labels)
    pooled = {c: rates(scores[:, k], labels[:, k]) for k, c in enumerate(VISUAL_CLASSES)}

    def mean(cls: str, key: str) -> float | None:
        values = [v[cls][key] for v in per_video.values() if v[cls][key] is not None]
        return round(float(np.mean(values)), 4) if values else None

    return {"folder": str(folder), "videos": len(videos), "frames": int(len(scores)), "per_video": per_video,
            "pooled": pooled, "mean_recall": {c: mean(c, "recall") for c in VISUAL_CLASSES},
            "mean_false_rate": {c: mean(c, "false_rate") for c in VISUAL_CLASSES}}
