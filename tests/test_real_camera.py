"""The camera scored on real videos against the detector teacher (``fusion eval --videos``)."""

from __future__ import annotations

import subprocess
import sys

import cv2
import numpy as np
import pytest

from fusion_node.errors import ConfigError
from models.real_camera import rates
from models.teacher_vision import VISUAL_CLASSES

from .conftest import ROOT, SHARED_DATA, shared_file

DEFAULT = ROOT / "models" / "default" / "manifest.json"
YOLOX = SHARED_DATA.parent / "models" / "teachers" / "yolox_nano.onnx"


def _yolox():
    from models.teacher_vision import YoloxTeacher

    if not YOLOX.is_file():
        pytest.skip(f"needs the detector teacher {YOLOX} (training and evaluation only, never shipped)")
    return YoloxTeacher(YOLOX)


def _clip(path, source, indices) -> None:
    cap = cv2.VideoCapture(str(source))
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 10, (768, 432))
    for i in indices:
        cap.set(cv2.CAP_PROP_POS_FRAMES, i)
        ok, frame = cap.read()
        assert ok, i
        writer.write(cv2.resize(frame, (768, 432)))
    writer.release()
    cap.release()


def test_rates_count_what_the_teacher_calls_present_and_empty():
    teacher = np.array([0.9, 0.6, 0.5, 0.3, 0.2, 0.0, 0.1])  # 0.3 is neither: left out of both rates
    labelled = np.array([True, False, True, True, True, False, False])
    r = rates(teacher, labelled)
    assert r == {"teacher_present": 3, "teacher_empty": 3, "recall": round(2 / 3, 4), "false_rate": round(1 / 3, 4),
                 "precision": round(2 / 3, 4)}
    assert rates(np.zeros(4), np.zeros(4, bool)) == {"teacher_present": 0, "teacher_empty": 4, "recall": None,
                                                     "false_rate": 0.0, "precision": None}


def test_videos_are_scored_as_a_camera_only_rig_labels_them(tmp_path):
    from fusion_node.cpu_runtime import ModelRuntime
    from models.real_camera import evaluate_videos, video_verdicts

    teacher = _yolox()
    office = shared_file("video/one-by-one-person-detection.mp4")
    (tmp_path / "videos").mkdir()
    _clip(tmp_path / "videos" / "room.avi", office, [0, 5, 10, 15, 300, 330, 360, 400])
    (tmp_path / "videos" / "notes.txt").write_text("not a video")
    rt = ModelRuntime(DEFAULT, provider="cpu")
    res = evaluate_videos(rt, tmp_path / "videos", YOLOX)
    assert res["videos"] == 1 and res["frames"] == 8 and set(res["per_video"]) == {"room.avi"}
    person = res["per_video"]["room.avi"]["person"]
    assert person["teacher_empty"] >= 4 and person["teacher_present"] >= 3  # the empty room, then people
    # The figures are those of the bundle's own labels on the same frames, judged by the teacher.
    scores, labels = video_verdicts(rt, teacher, tmp_path / "videos" / "room.avi")
    k = VISUAL_CLASSES.index("person")
    assert person == rates(scores[:, k], labels[:, k]) == res["pooled"]["person"]
    assert res["mean_recall"]["person"] == person["recall"]
    probs = [rt.fuse({"camera": rt.encode("camera", *rt.preprocess("camera", f))}).probabilities
             for f in _frames(tmp_path / "videos" / "room.avi")]
    assert labels[:, k].tolist() == [p[rt.classes.index("person")] >= rt.thresholds["person"] for p in probs]


def _frames(path):
    cap = cv2.VideoCapture(str(path))
    while True:
        ok, frame = cap.read()
        if not ok:
            break
        yield frame
    cap.release()


def test_a_folder_without_videos_or_with_a_broken_one_is_a_one_line_error(tmp_path):
    from fusion_node.cpu_runtime import ModelRuntime
    from models.real_camera import evaluate_videos

    _yolox()
    rt = ModelRuntime(DEFAULT, provider="cpu")
    with pytest.raises(ConfigError, match="no video files"):
        evaluate_videos(rt, tmp_path, YOLOX)
    (tmp_path / "broken.mp4").write_bytes(b"\x00not a video" * 100)
    with pytest.raises(ConfigError, match="broken.mp4: no frame could be read"):
        evaluate_videos(rt, tmp_path, YOLOX)


@pytest.mark.parametrize("args, says", [
    (("--videos", "."), "--videos needs --camera-teacher"),
    (("--videos", "no/such/folder", "--camera-teacher", str(DEFAULT)), "--videos no/such/folder: no such folder"),
    (("--videos", ".", "--camera-teacher", "no/such/yolox.onnx"), "--camera-teacher no/such/yolox.onnx: no such file"),
])
def test_eval_videos_needs_a_folder_and_the_teacher(args, says):
    proc = subprocess.run([sys.executable, "-m", "fusion_node", "eval", "--models", str(DEFAULT), *args],
                          cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0 and says in proc.stderr and "Traceback" not in proc.stderr, proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1
