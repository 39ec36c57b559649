"""Snapshots: radar points projected through the example rig calibration, or an inset without one."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from fusion_node.rig import load_rig
from fusion_node.snapshot import RadarProjection, render_snapshot

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "rig_calibration.yaml"


def _decode(jpeg: bytes) -> np.ndarray:
    return cv2.imdecode(np.frombuffer(jpeg, np.uint8), cv2.IMREAD_COLOR)


def test_a_point_on_the_radar_boresight_lands_below_the_principal_point():
    proj = RadarProjection.from_rig(load_rig(EXAMPLE), "cam0", "radar0")
    px, ok = proj.project(np.array([[0.0, 5.0, 0.0], [0.0, -5.0, 0.0]]), (768, 432))
    # 5 m out along the boresight, the radar 6 cm below the camera: 600 px * 0.06 / 5 lower.
    assert ok.tolist() == [True, False]  # the second point is behind the camera
    assert px[0] == pytest.approx([383.5, 215.5 + 600 * 0.06 / 5], abs=0.05)
    half, _ = proj.project(np.array([[0.0, 5.0, 0.0]]), (384, 216))  # a frame resized to half
    assert half[0] == pytest.approx(px[0] / 2, abs=0.3)


def test_projected_moving_points_are_drawn_and_boxed():
    proj = RadarProjection.from_rig(load_rig(EXAMPLE), "cam0", "radar0")
    image = np.full((432, 768, 3), 40, np.uint8)
    points = np.array([[0.0, 5.0, 0.0, -1.0, 10, 0], [0.5, 5.0, 0.0, -1.0, 10, 0]], np.float32)
    img = _decode(render_snapshot(image, points, "r1 person 0.97", proj))
    u, v = 384, 223
    b, g, r = img[v, u].astype(int)
    assert b > 180 and r < 100  # blue: approaching
    box_row = img[:, u]
    assert (box_row[:, 1] > 180).any() and (box_row[:, 2] > 180).any()  # the yellow box crosses this column
    assert img[0:22].mean() < 40 and img[2:20, 6:150].max() > 150  # the caption, white on a black band


def test_without_a_calibration_points_go_into_a_top_view_inset():
    assert RadarProjection.from_rig(load_rig(EXAMPLE).model_copy(update={"sensors": []}), "cam0", "radar0") is None
    image = np.full((432, 768, 3), 200, np.uint8)
    points = np.array([[0.0, 5.0, 0.0, 1.0, 10, 0]], np.float32)  # receding: red
    img = _decode(render_snapshot(image, points, "r1 person 0.97", None))
    inset = img[432 - 164:432 - 4, 768 - 164:768 - 4]
    assert inset.mean() < 120  # the inset darkens its corner
    red = (inset[:, :, 2] > 180) & (inset[:, :, 0] < 90)
    assert red.any()
    assert img[100:300, 100:500].mean() == pytest.approx(200, abs=3)  # the picture itself untouched
