"""Radar-to-camera extrinsics from reflector correspondences, and the overlay check on a recording."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from calibration.errors import CalibrationError
from calibration.extrinsics import (
    load_correspondences,
    solve_radar_to_camera,
    write_correspondences,
)
from calibration.projection import Transform, radar_to_camera
from calibration.synthetic import (
    TRUE_CAMERA,
    TRUE_T_CAM_RADAR,
    simulate_correspondences,
    simulate_recording,
    truth_rig,
)
from fusion_node.errors import ConfigError
from fusion_node.rig import load_rig, save_rig

ROOT = Path(__file__).resolve().parents[1]


def fusion(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "fusion_node", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, "PYTHONUNBUFFERED": "1"})


@pytest.mark.parametrize("seed", [3, 4, 5, 6])
def test_known_transform_recovered_despite_outliers(seed):
    pts, px, outlier = simulate_correspondences(n=60, outlier_fraction=0.2, pixel_noise_px=0.5, seed=seed)
    assert outlier.sum() == 12
    result = solve_radar_to_camera(pts, px, TRUE_CAMERA)
    T = result.T_cam_radar
    assert T.angle_to_deg(TRUE_T_CAM_RADAR) < 0.5
    assert np.linalg.norm(T.t - TRUE_T_CAM_RADAR.t) < 0.02
    assert np.array_equal(result.inliers, ~outlier)
    assert result.n_outliers == 12 and result.n_inliers == 48
    assert 0.3 < result.rms_px < 1.0  # about sqrt(2) * 0.5 px of pixel noise


def test_radar_noise_and_a_loose_threshold():
    """Radar points are noisy too: with 2 cm of point noise, 150 spots still give the pose within 2 cm."""
    pts, px, outlier = simulate_correspondences(n=150, outlier_fraction=0.2, pixel_noise_px=1.0, radar_noise_m=0.02,
                                                seed=1)
    result = solve_radar_to_camera(pts, px, TRUE_CAMERA, threshold_px=15.0)
    assert result.T_cam_radar.angle_to_deg(TRUE_T_CAM_RADAR) < 0.5
    assert np.linalg.norm(result.T_cam_radar.t - TRUE_T_CAM_RADAR.t) < 0.02
    assert (result.inliers & outlier).sum() <= 3 and (~result.inliers & ~outlier).sum() <= 3


def test_too_few_or_degenerate_correspondences():
    pts, px, _ = simulate_correspondences(n=10, outlier_fraction=0.0)
    with pytest.raises(CalibrationError, match="5 correspondence.*at least 6"):
        solve_radar_to_camera(pts[:5], px[:5], TRUE_CAMERA, source="session.csv")
    line = np.column_stack([np.zeros(10), np.linspace(2, 8, 10), np.zeros(10)])
    with pytest.raises(CalibrationError, match="collinear"):
        solve_radar_to_camera(line, px, TRUE_CAMERA)


def test_csv_errors_name_file_line_and_column(tmp_path):
    bad = tmp_path / "bad.csv"
    bad.write_text("x_m,y_m,z_m,u_px\n1,2,3,4\n")
    with pytest.raises(ConfigError, match="bad.csv: the header must name.*missing v_px"):
        load_correspondences([bad])
    bad.write_text("# reflector session 1\nx_m,y_m,z_m,u_px,v_px,note\n1,2,3,4,5,ok\n1,2,three,4,5,typo\n")
    with pytest.raises(ConfigError, match=r"bad.csv:4: column z_m: not a number: 'three'"):
        load_correspondences([bad])
    with pytest.raises(ConfigError, match="no such file"):
        load_correspondences([tmp_path / "missing.csv"])


def test_command_writes_radar_extrinsics_into_the_rig(tmp_path):
    pts, px, outlier = simulate_correspondences(n=60, seed=3)
    a = write_correspondences(tmp_path / "morning.csv", pts[:30], px[:30])
    b = write_correspondences(tmp_path / "afternoon.csv", pts[30:], px[30:])
    rig_path = tmp_path / "rig.yaml"
    truth = truth_rig()
    # start from a rig with calibrated intrinsics, a nominal radar mounting and a microphone
    nominal = Transform(np.eye(3), [0, 0.1, 0]).compose(Transform(TRUE_T_CAM_RADAR.R, [0, 0, 0]))
    start = truth.with_sensor(truth.sensor("radar0").model_copy(update={"extrinsics": nominal.to_extrinsics()}))
    save_rig(start, rig_path)
    proc = fusion("calibrate", "extrinsics", "--correspondences", str(a), str(b), "--rig", str(rig_path),
                  "--camera", "cam0", "--radar", "radar0")
    assert proc.returncode == 0, proc.stderr
    assert "outliers rejected 12" in proc.stdout and "inliers 48" in proc.stdout
    rig = load_rig(rig_path)
    T = radar_to_camera(rig, "radar0", "cam0")
    assert T.angle_to_deg(TRUE_T_CAM_RADAR) < 0.5 and np.linalg.norm(T.t - TRUE_T_CAM_RADAR.t) < 0.02
    prov = rig.sensor("radar0").extrinsics.provenance
    assert prov.residual_unit == "px" and prov.residual < 1.0
    assert prov.details["inliers"] == 48 and prov.details["outliers"] == 12
    assert rig.sensor("cam0") == start.sensor("cam0") and rig.sensor("mic0") == start.sensor("mic0")
    report = json.loads((tmp_path / "rig_extrinsics_radar0.json").read_text())
    assert report["inliers"] == 48 and report["change_from_previous"]["translation_m"] > 0.03
    assert len(report["outlier_rows"]) == 12
    rows = {f"morning.csv:{i + 2}" for i in np.flatnonzero(outlier[:30])}
    rows |= {f"afternoon.csv:{i + 2}" for i in np.flatnonzero(outlier[30:])}
    assert set(report["outlier_rows"]) == rows
    assert cv2.imread(str(tmp_path / "rig_extrinsics_radar0.png")) is not None


def test_command_needs_camera_intrinsics(tmp_path):
    rig_path = tmp_path / "rig.yaml"
    truth = truth_rig()
    save_rig(truth.with_sensor(truth.sensor("cam0").model_copy(update={"intrinsics": None})), rig_path)
    csv = write_correspondences(tmp_path / "c.csv", *simulate_correspondences(n=20)[:2])
    proc = fusion("calibrate", "extrinsics", "--correspondences", str(csv), "--rig", str(rig_path))
    assert proc.returncode == 2
    assert "camera 'cam0' has no key 'intrinsics'" in proc.stderr and "fusion calibrate intrinsics" in proc.stderr


@pytest.fixture(scope="module")
def recording(tmp_path_factory):
    out = tmp_path_factory.mktemp("recording")
    info = simulate_recording(out, 6.0, radar_offset_s=-0.04, audio_offset_s=0.0, seed=5)
    rig = save_rig(truth_rig(radar_offset_s=-0.04), out / "rig.yaml")
    return info, rig


def test_check_overlays_radar_points_on_video_frames(recording, tmp_path):
    info, rig = recording
    out = tmp_path / "check"
    proc = fusion("calibrate", "check", "--rig", str(rig), "--video", info["video"], "--radar-capture", info["radar"],
                  "--out", str(out), "--frames", "3", "--radar-period-ms", "50")
    assert proc.returncode == 0, proc.stderr
    report = json.loads((out / "check.json").read_text())
    assert len(report["pictures"]) == 3
    for frame in report["frames"]:
        assert abs(frame["dt_ms"]) <= 26 and frame["visible"] > 0
        img = cv2.imread(frame["picture"])
        assert img.shape == (TRUE_CAMERA.height, TRUE_CAMERA.width, 3)
    proc = fusion("calibrate", "check", "--rig", str(rig), "--video", info["video"], "--radar-capture", info["radar"],
                  "--out", str(tmp_path / "by_range"), "--frames", "1", "--radar-period-ms", "50",
                  "--color-by", "range")
    assert proc.returncode == 0, proc.stderr


def test_check_reports_recordings_that_do_not_overlap(recording, tmp_path):
    info, rig_path = recording
    rig = load_rig(rig_path)
    radar = rig.sensor("radar0")
    far = rig.with_sensor(radar.model_copy(update={"clock": radar.clock.model_copy(
        update={"clock_offset_ns": 3_600_000_000_000})}))
    save_rig(far, tmp_path / "far.yaml")
    proc = fusion("calibrate", "check", "--rig", str(tmp_path / "far.yaml"), "--video", info["video"],
                  "--radar-capture", info["radar"], "--out", str(tmp_path / "o"), "--radar-period-ms", "50")
    assert proc.returncode == 1
    assert "do not overlap in time" in proc.stderr and "clock_offset_ns" in proc.stderr
