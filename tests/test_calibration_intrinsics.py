"""Camera intrinsics from checkerboards: simulated views with known truth, the command, real photographs."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from calibration.errors import CalibrationError
from calibration.intrinsics import (
    calibrate_images,
    list_images,
    parse_pattern,
    run_intrinsics,
)
from calibration.synthetic import TRUE_CAMERA, write_checkerboard_folder
from fusion_node.errors import ConfigError
from fusion_node.rig import load_rig

ROOT = Path(__file__).resolve().parents[1]
OPENCV_SAMPLES = ROOT / "calibration" / "samples" / "opencv_left"


def fusion(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "fusion_node", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, "PYTHONUNBUFFERED": "1"})


@pytest.fixture(scope="module")
def board_folder(tmp_path_factory) -> Path:
    """15 rendered views of a 9x6 board (25 mm) through TRUE_CAMERA, plus a blank, a corrupt and a small picture."""
    folder = tmp_path_factory.mktemp("checkerboard")
    write_checkerboard_folder(folder, n=15, seed=7)
    return folder


def test_simulated_views_recover_the_intrinsics(board_folder):
    images, _ = list_images(board_folder)
    result = calibrate_images(images, (9, 6), 25.0, progress=False)
    K, true_K = result.camera.K, TRUE_CAMERA.K
    assert abs(K[0, 0] / true_K[0, 0] - 1) < 0.005
    assert abs(K[1, 1] / true_K[1, 1] - 1) < 0.005
    assert abs(K[0, 2] - true_K[0, 2]) < 3 and abs(K[1, 2] - true_K[1, 2]) < 3
    assert result.rms_px < 0.3
    assert len(result.per_view) == 15
    # the distortion model reproduces the true lens across the image to a fraction of a pixel
    w, h = TRUE_CAMERA.size
    grid = np.stack(np.meshgrid(np.linspace(0, w - 1, 9), np.linspace(0, h - 1, 6)), -1).reshape(-1, 2)
    rays = TRUE_CAMERA.unproject(grid)
    px, _ = result.camera.project(rays)
    assert np.abs(px - grid).max() < 1.0
    rejected = dict(result.rejected)
    assert rejected["blank_wall.png"].startswith("no board found")
    assert rejected["corrupt.png"].startswith("unreadable")
    assert rejected["thumbnail.png"].startswith("wrong size 384x216")


def test_command_writes_rig_report_and_preview(board_folder, tmp_path):
    (tmp_path / "rigs").mkdir()
    out = tmp_path / "rigs" / "lab.yaml"
    shutil.copy(ROOT / "examples" / "rig_calibration.yaml", out)
    before = load_rig(out)
    proc = fusion("calibrate", "intrinsics", "--images", str(board_folder), "--pattern", "9x6", "--square-mm", "25",
                  "--out", str(out), "--sensor-id", "cam0")
    assert proc.returncode == 0, proc.stderr
    assert "RMS reprojection error" in proc.stdout
    for name in ("blank_wall.png: no board found", "corrupt.png: unreadable", "thumbnail.png: wrong size"):
        assert name in proc.stdout
    rig = load_rig(out)
    intr = rig.sensor("cam0").intrinsics
    assert abs(intr.fx_px / TRUE_CAMERA.K[0, 0] - 1) < 0.005 and abs(intr.fy_px / TRUE_CAMERA.K[1, 1] - 1) < 0.005
    assert intr.provenance.residual < 0.3 and intr.provenance.residual_unit == "px"
    assert "checkerboard 9x6" in intr.provenance.method and intr.provenance.details["views_used"] == 15
    # everything else in the file is kept
    assert rig.sensor("radar0") == before.sensor("radar0") and rig.sensor("mic0") == before.sensor("mic0")
    assert rig.sensor("cam0").extrinsics == before.sensor("cam0").extrinsics
    report = json.loads((out.parent / "lab_intrinsics.json").read_text())
    assert report["rms_px"] < 0.3 and len(report["per_image"]) == 15
    assert all(e["error_px"] < 0.5 for e in report["per_image"])
    assert {r["image"] for r in report["rejected"]} == {"blank_wall.png", "corrupt.png", "thumbnail.png"}
    preview = cv2.imread(str(out.parent / "lab_undistorted.png"))
    assert preview is not None and preview.shape[0] == TRUE_CAMERA.height
    assert preview.shape[1] == 2 * TRUE_CAMERA.width + 4


def test_too_few_views_fail_naming_the_folder(board_folder, tmp_path):
    folder = tmp_path / "few"
    folder.mkdir()
    for name in ("view_00.png", "view_01.png", "blank_wall.png", "corrupt.png"):
        shutil.copy(board_folder / name, folder / name)
    with pytest.raises(CalibrationError, match=f"{folder}: only 2 usable checkerboard view"):
        run_intrinsics(folder, "9x6", 25, tmp_path / "rig.yaml", progress=False, echo=lambda *_: None)
    proc = fusion("calibrate", "intrinsics", "--images", str(folder), "--pattern", "9x6", "--square-mm", "25",
                  "--out", str(tmp_path / "rig.yaml"))
    assert proc.returncode == 1
    assert str(folder) in proc.stderr and "at least 3" in proc.stderr and "inner corners" in proc.stderr
    assert not (tmp_path / "rig.yaml").exists()


def test_option_errors():
    with pytest.raises(ConfigError, match="COLSxROWS"):
        parse_pattern("nine by six")
    with pytest.raises(ConfigError, match="no such folder"):
        list_images("/nonexistent/checkerboards")
    proc = fusion("calibrate", "intrinsics", "--images", ".", "--pattern", "9x6", "--square-mm", "-1", "--out", "x")
    assert proc.returncode == 2 and "must be positive" in proc.stderr


def test_real_photographs_from_opencv():
    """OpenCV's own sample pictures (left01-14.jpg, a 9x6 board, 640x480) against its reference calibration."""
    images, _ = list_images(OPENCV_SAMPLES)
    assert len(images) == 13
    result = calibrate_images(images, (9, 6), 25.0, progress=False)
    fs = cv2.FileStorage(str(OPENCV_SAMPLES / "left_intrinsics.yml"), cv2.FILE_STORAGE_READ)
    ref_K = fs.getNode("camera_matrix").mat()
    fs.release()
    K = result.camera.K
    assert result.camera.size == (640, 480)
    assert len(result.per_view) == 13 and not result.rejected
    assert result.rms_px < 0.3
    assert abs(K[0, 0] / ref_K[0, 0] - 1) < 0.01 and abs(K[1, 1] / ref_K[1, 1] - 1) < 0.01
    assert abs(K[0, 2] - ref_K[0, 2]) < 5 and abs(K[1, 2] - ref_K[1, 2]) < 5
