"""The camera student's distillation: teacher decoding, composites, targets, the student and a short fit."""

from __future__ import annotations

import cv2
import numpy as np
import onnxruntime as ort
import pytest
import torch

from fusion_node.vocabulary import CLASSES
from models.camera_distill import (EMPTY_SCORE, GRID, PRESENT_SCORE, CameraStudent, FrameSet, augment_batch,
                                   choose_thresholds, composites, decision_targets, fit, load_stamps, paste)
from models.export import ENCODER_INPUT_NAMES, ENCODER_OUTPUT_NAME, _export_one
from models.teacher_vision import VISUAL_CLASSES, YOLOX_SIZE, YoloxTeacher, decode_yolox, letterbox
from tests.conftest import SHARED_DATA, shared_file


# A narrow encoder keeps the short fit fast; the architecture is the shipped one's.
TINY = {"embed_dim": 128, "stem_channels": 8, "blocks": ((16, 2), (32, 2), (32, 2))}


def _teacher(name: str):
    path = SHARED_DATA.parent / "models" / "teachers" / name
    if not path.is_file():
        pytest.skip(f"needs the teacher {name} in {path.parent} (development data, not shipped), which is absent")
    return path


def _frame(video, index: int) -> np.ndarray:
    cap = cv2.VideoCapture(str(video))
    cap.set(cv2.CAP_PROP_POS_FRAMES, index)
    ok, frame = cap.read()
    cap.release()
    assert ok, f"cannot read frame {index} of {video}"
    return frame


def test_yolox_finds_the_people_in_the_office_video_and_none_in_the_empty_room():
    video = shared_file("video/one-by-one-person-detection.mp4")
    teacher = YoloxTeacher(_teacher("yolox_nano.onnx"))
    busy = teacher.detect(_frame(video, 300))
    people = busy.scores[busy.coco == 0]
    assert people.size and people.max() > 0.8
    x0, y0, x1, y1 = busy.boxes[busy.coco == 0][people.argmax()]
    h, w = busy.frame_hw
    assert (h, w) == (432, 768) and 0 <= x0 < x1 <= w and 0 <= y0 < y1 <= h and (y1 - y0) > 0.2 * h
    assert busy.best()["person"] == pytest.approx(float(people.max()))
    assert teacher.detect(_frame(video, 0)).best()["person"] < 0.25  # the clip opens on the empty room


def test_decode_turns_one_confident_cell_into_one_box_in_frame_pixels():
    frame_hw = (208, 416)  # letterboxed at ratio 1: canvas pixels are frame pixels
    _, ratio = letterbox(np.zeros((*frame_hw, 3), np.uint8))
    assert ratio == 1.0
    out = np.full((1, 3549, 85), -0.0, np.float32)
    out[..., 4:] = 0.0
    cell = 52 * 10 + 20  # stride 8, row 10, column 20
    out[0, cell, :4] = [0.5, 0.5, np.log(4.0), np.log(2.0)]  # centre (164, 84), 32 x 16 px
    out[0, cell, 4] = 0.9
    out[0, cell, 5 + 16] = 0.8  # COCO "dog"
    dup = cell + 1  # a neighbour overlapping it with a lower score is suppressed
    out[0, dup, :4] = [-0.5, 0.5, np.log(4.0), np.log(2.0)]
    out[0, dup, 4], out[0, dup, 5 + 16] = 0.5, 0.5
    det = decode_yolox(out, ratio, frame_hw)
    assert len(det.scores) == 1 and det.coco[0] == 16
    assert det.scores[0] == pytest.approx(0.72)
    np.testing.assert_allclose(det.boxes[0], [148, 76, 180, 92], atol=1e-4)
    assert det.best() == {"person": 0.0, "vehicle": 0.0, "dog": pytest.approx(0.72)}
    assert YOLOX_SIZE == 416


def _stamp() -> np.ndarray:
    stamp = np.zeros((60, 30, 4), np.uint8)
    cv2.ellipse(stamp, (15, 30), (12, 28), 0, 0, 360, (0, 0, 255, 255), -1)
    return stamp


def test_paste_puts_the_stamp_where_its_label_says():
    rng = np.random.default_rng(3)
    bg = np.full((180, 320, 3), 128, np.uint8)
    for _ in range(20):
        img, (cls, cx, cy, score) = paste(bg, _stamp(), "person", rng)
        changed = np.abs(img.astype(int) - bg).sum(2) > 60
        ys, xs = np.nonzero(changed)
        assert cls == VISUAL_CLASSES.index("person") and score == 1.0
        assert abs(xs.mean() / 320 - cx) < 0.02 and abs(ys.mean() / 180 - cy) < 0.02


def test_paste_of_the_real_stamps(shared_data):
    stamps = load_stamps(shared_data / "corpus" / "images" / "tuxpaint_stamps")
    assert {c for c, _ in stamps} == set(VISUAL_CLASSES)
    rng = np.random.default_rng(0)
    bg = np.zeros((234, 416, 3), np.uint8)
    for cls, stamp in stamps:
        img, (k, cx, cy, _) = paste(bg, stamp, cls, rng)
        ys, xs = np.nonzero(img.max(2) > 0)
        assert VISUAL_CLASSES[k] == cls
        assert xs.min() / 416 <= cx <= xs.max() / 416 and ys.min() / 234 <= cy <= ys.max() / 234


def _one_box_set(cx: float, cy: float) -> FrameSet:
    img = np.zeros((128, 128, 3), np.uint8)
    return FrameSet(img[None], cv2.resize(img, (96, 96))[None], np.array([[0, 1, cx, cy, 0.8]], np.float32),
                    np.zeros((1, 1280), np.float32), np.zeros(1, bool), np.array(["x"]), np.array(["real"]))


def test_targets_follow_the_box_through_crop_and_flip():
    data = _one_box_set(0.2, 0.6)
    _, presence, grid = augment_batch(data, np.array([0]), np.random.default_rng(0), strength=0)
    assert presence[0].tolist() == [0.0, pytest.approx(0.8), 0.0]
    assert np.argwhere(grid[0, 1]).tolist() == [[int(0.6 * GRID), int(0.2 * GRID)]]
    rng = np.random.default_rng(1)
    cells = set()
    for _ in range(40):
        images, presence, grid = augment_batch(data, np.array([0]), rng)
        assert images.shape == (1, 96, 96, 3) and images.dtype == np.uint8
        assert presence[0, 1] in (0.0, pytest.approx(0.8)) and grid[0, 1].sum() == pytest.approx(presence[0, 1])
        cells |= {tuple(c) for c in np.argwhere(grid[0, 1])}
    assert any(c[1] >= GRID // 2 for c in cells) and any(c[1] < GRID // 2 for c in cells)  # flipped and not


def test_student_shapes_and_its_encoder_exports(tmp_path):
    torch.manual_seed(0)
    student = CameraStudent().eval()
    x = torch.randn(2, 3, 96, 96)
    emb, logits, grid, proj = student(x)
    assert emb.shape == (2, 128) and logits.shape == (2, len(CLASSES))
    assert grid.shape == (2, len(VISUAL_CLASSES), GRID, GRID) and proj.shape == (2, 1280)
    torch.testing.assert_close(emb.norm(dim=1), torch.ones(2))
    path = tmp_path / "camera.onnx"
    _export_one(student.encoder, (x[:1],), path, ENCODER_INPUT_NAMES["camera"], [ENCODER_OUTPUT_NAME], 17,
                "torchscript")
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    out = sess.run(None, {ENCODER_INPUT_NAMES["camera"][0]: x[:1].numpy()})[0]
    assert out.shape == (1, 128)
    np.testing.assert_allclose(out, emb[:1].detach().numpy(), atol=1e-4)


def test_a_short_fit_on_composites_lowers_the_loss():
    rng = np.random.default_rng(0)
    backgrounds = {"noise": [rng.integers(0, 256, (120, 200, 3), dtype=np.uint8) for _ in range(4)]}
    data, _ = composites(backgrounds, [("person", _stamp()), ("vehicle", _stamp()[:, :, [1, 0, 2, 3]])], 48, rng,
                         None, progress=False)
    assert set(data.kind) == {"composite"} and set(data.source) == {"noise"} and len(data.boxes) > 0
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        student, hist = fit(data, seed=0, steps=30, batch=8, progress=False, encoder_config=TINY)
    finally:
        torch.set_num_threads(threads)
    assert hist["loss_last_epoch"] < 0.8 * hist["loss_first_epoch"]
    assert not student.training


def test_targets_are_the_detectors_decision_not_its_confidence():
    scores = np.array([0.0, EMPTY_SCORE, (EMPTY_SCORE + PRESENT_SCORE) / 2, PRESENT_SCORE, 0.62, 1.0], np.float32)
    np.testing.assert_allclose(decision_targets(scores), [0, 0, 0.5, 1, 1, 1])
    # Per cell of a grid as well: a person the detector finds at 0.6 is a person to learn.
    grid = np.zeros((1, 3, GRID, GRID), np.float32)
    grid[0, 0, 1, 2] = 0.6
    out = decision_targets(grid)
    assert out.shape == grid.shape and out[0, 0, 1, 2] == 1 and out.sum() == 1


def test_thresholds_are_chosen_for_precision():
    rng = np.random.default_rng(0)
    teacher = np.zeros((400, 3), np.float32)
    teacher[:200, 0] = 0.9
    prob = np.zeros((400, 3), np.float32)
    prob[:200, 0] = rng.uniform(0.3, 1.0, 200)
    prob[200:, 0] = rng.uniform(0.0, 0.6, 200)
    t = choose_thresholds(prob, teacher)
    hit = prob[:, 0] >= t["person"]
    assert hit[:200].sum() / hit.sum() >= 0.95 and hit[200:].mean() <= 0.05
    assert t["person"] <= 0.62 and t["vehicle"] == 0.5 and t["dog"] == 0.5
    # A class the out-of-fold student cannot tell (few positives drowned in look-alike empty
    # frames: best F0.5 under 0.5) votes rarely: its threshold is the top of the range, where
    # false alarms are fewest, not the best F1's many more.
    teacher[:20, 1] = 0.9
    prob[:20, 1] = rng.uniform(0.5, 1.0, 20)
    prob[20:, 1] = rng.uniform(0.0, 1.0, 380)
    t = choose_thresholds(prob, teacher)
    assert t["vehicle"] >= 0.9 and (prob[20:, 1] >= t["vehicle"]).mean() <= 0.1


def test_corpus_videos_join_as_training_only_frames_with_their_empty_backgrounds(tmp_path):
    from models.camera_distill import corpus_videos, label_videos
    from models.teacher_vision import MobileNetTeacher

    yolox, mobilenet = YoloxTeacher(_teacher("yolox_nano.onnx")), MobileNetTeacher(_teacher("mobilenet_v2_imagenet.onnx"))
    source = shared_file("video/one-by-one-person-detection.mp4")
    (tmp_path / "video").mkdir()
    (tmp_path / "audio").mkdir()  # a corpus's other folders are not videos
    (tmp_path / "video" / "notes.txt").write_text("not a video")
    clip = tmp_path / "video" / "site.avi"
    writer = cv2.VideoWriter(str(clip), cv2.VideoWriter_fourcc(*"MJPG"), 10, (768, 432))
    for i in (0, 5, 400):  # the empty room first, then people
        writer.write(_frame(source, i))
    writer.release()

    assert corpus_videos([tmp_path, tmp_path / "missing"]) == [clip]
    data, backgrounds = label_videos([clip], yolox, mobilenet, progress=False, kind="corpus")
    assert list(data.kind) == ["corpus"] * 3 and set(data.source) == {"site"}
    present = data.presence()[:, VISUAL_CLASSES.index("person")]
    assert present[0] < EMPTY_SCORE and present[2] >= PRESENT_SCORE
    assert len(backgrounds["site"]) >= 1  # empty frames become backgrounds for composites


def test_a_still_camera_gives_its_scene_without_the_people_and_a_moving_one_none(tmp_path):
    from models.camera_distill import label_videos, still_frame
    from models.teacher_vision import MobileNetTeacher

    source = shared_file("video/one-by-one-person-detection.mp4")
    empty = [_frame(source, i) for i in range(0, 40, 5)]
    people = [_frame(source, i) for i in (300, 330, 360, 400)]  # someone walking through the room
    frames = empty[:4] + people + empty[4:]
    still = still_frame(frames)
    assert still is not None and still.shape == empty[0].shape
    assert np.abs(still.astype(int) - empty[0]).mean() < 4  # the room, not the people
    # A camera that pans: every frame is another picture, so no scene is left once the movers go.
    panned = [np.roll(f, 64 * k, axis=1) for k, f in enumerate(frames)]
    assert still_frame(panned) is None
    assert still_frame(frames[:5]) is None  # too few frames to tell

    clip = tmp_path / "room.avi"
    writer = cv2.VideoWriter(str(clip), cv2.VideoWriter_fourcc(*"MJPG"), 10, (768, 432))
    for f in frames:
        writer.write(f)
    writer.release()
    yolox, mobilenet = YoloxTeacher(_teacher("yolox_nano.onnx")), MobileNetTeacher(_teacher("mobilenet_v2_imagenet.onnx"))
    data, _ = label_videos([clip], yolox, mobilenet, progress=False, kind="corpus", still_share=0.5)
    assert list(data.kind) == ["corpus"] * 12 + ["still"] * 6 and set(data.source) == {"room"}
    person = data.presence()[:, VISUAL_CLASSES.index("person")]
    assert (person[4:8] >= PRESENT_SCORE).all()  # the detector sees the people walking through
    assert (person[12:] < EMPTY_SCORE).all()  # and no one in the still scene: a negative of the same room
    plain, _ = label_videos([clip], yolox, mobilenet, progress=False)
    assert list(plain.kind) == ["real"] * 12
