"""Projection utilities: transforms, the distorted camera model, radar points into images and back."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from calibration.projection import (
    RADAR_AXES_IN_CAMERA,
    CameraModel,
    RadarCameraProjection,
    Transform,
    pixel_rays_in_radar,
    project_radar_points,
    radar_to_camera,
)
from calibration.synthetic import TRUE_CAMERA, TRUE_T_CAM_RADAR
from fusion_node.errors import ConfigError
from fusion_node.rig import load_rig

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "rig_calibration.yaml"

CAMERAS = {
    "strong barrel": TRUE_CAMERA,
    "no distortion": CameraModel(TRUE_CAMERA.K, np.zeros(5), TRUE_CAMERA.size),
    "pincushion + tangential": CameraModel(np.array([[900.0, 0, 640], [0, 905.0, 360], [0, 0, 1]]),
                                           [0.08, -0.02, -0.002, 0.0015, 0.004], (1280, 720)),
}


@pytest.mark.parametrize("name", sorted(CAMERAS))
def test_unproject_then_project_returns_the_pixel(name):
    cam = CAMERAS[name]
    rng = np.random.default_rng(0)
    w, h = cam.size
    px = np.column_stack([rng.uniform(-0.5, w - 0.5, 2000), rng.uniform(-0.5, h - 0.5, 2000)])
    rays = cam.unproject(px)
    assert np.allclose(np.linalg.norm(rays, axis=1), 1.0)
    back, visible = cam.project(rays * rng.uniform(0.5, 50.0, (2000, 1)))
    assert visible.all()
    assert np.abs(back - px).max() < 1e-6


@pytest.mark.parametrize("name", sorted(CAMERAS))
def test_project_then_unproject_gives_the_same_ray(name):
    cam = CAMERAS[name]
    rng = np.random.default_rng(1)
    pts = np.column_stack([rng.uniform(-6, 6, 20000), rng.uniform(-4, 4, 20000), rng.uniform(-3, 12, 20000)])
    px, visible = cam.project(pts)
    assert visible.sum() > 1000
    rays = cam.unproject(px[visible])
    expected = pts[visible] / np.linalg.norm(pts[visible], axis=1, keepdims=True)
    assert np.abs(rays - expected).max() < 1e-6
    # agrees with OpenCV's own projection
    ref, _ = cv2.projectPoints(pts[visible].reshape(-1, 1, 3), np.zeros(3), np.zeros(3), cam.K, cam.dist)
    assert np.abs(ref.reshape(-1, 2) - px[visible]).max() < 1e-9


def test_points_behind_or_beside_the_camera_are_masked():
    cam = TRUE_CAMERA
    pts = np.array([
        [0.0, 0.0, 5.0],    # straight ahead: visible
        [0.0, 0.0, -5.0],   # behind
        [0.1, 0.1, 0.0],    # in the camera plane
        [0.0, 0.0, -1e-9],  # just behind
        [2.533, 0.0, 1.0],  # 68 degrees right: polynomial distortion would fold it back into the image
        [5.0, 0.0, 5.0],    # 45 degrees right, outside a 64 degree field of view
        [np.nan, 0.0, 1.0],
    ])
    px, visible = cam.project(pts)
    assert visible.tolist() == [True, False, False, False, False, False, False]
    assert np.isnan(px[1:4]).all() and np.isnan(px[6]).all()
    # the fold-back is real: OpenCV alone would put that far-off point inside the image
    folded, _ = cv2.projectPoints(pts[4:5].reshape(-1, 1, 3), np.zeros(3), np.zeros(3), cam.K, cam.dist)
    u, v = folded.ravel()
    assert 0 <= u < cam.width and 0 <= v < cam.height


def test_transform_algebra():
    rng = np.random.default_rng(2)
    A = Transform.from_rvec(rng.normal(size=3), rng.normal(size=3))
    B = Transform.from_rvec(rng.normal(size=3), rng.normal(size=3))
    p = rng.normal(size=(10, 3))
    assert np.allclose(A.compose(B).apply(p), A.apply(B.apply(p)))
    assert np.allclose((A @ B).matrix, A.matrix @ B.matrix)
    assert np.allclose(A.inverse().apply(A.apply(p)), p)
    assert A.compose(A.inverse()).angle_to_deg(Transform.identity()) < 1e-6
    assert np.allclose(Transform.from_matrix(A.matrix).t, A.t)
    with pytest.raises(ValueError, match="not a rotation"):
        Transform(np.diag([1.0, 1.0, -1.0]), np.zeros(3))


def test_radar_axes_map_to_camera_axes():
    # TI radar x right, y forward, z up -> camera x right, y down, z forward
    assert np.allclose(RADAR_AXES_IN_CAMERA @ [1, 0, 0], [1, 0, 0])
    assert np.allclose(RADAR_AXES_IN_CAMERA @ [0, 1, 0], [0, 0, 1])
    assert np.allclose(RADAR_AXES_IN_CAMERA @ [0, 0, 1], [0, -1, 0])


def test_radar_to_camera_composes_both_extrinsics():
    rig = load_rig(EXAMPLE)
    T = radar_to_camera(rig, "radar0", "cam0")
    # move the camera in the rig: the radar-to-camera transform must follow
    cam = rig.sensor("cam0")
    T_rig_cam = Transform.from_rvec([0.0, 0.3, 0.0], [1.0, 0.0, 0.0])
    T_rig_radar = T_rig_cam.compose(T)
    moved = rig.with_sensor(cam.model_copy(update={"extrinsics": T_rig_cam.to_extrinsics()}))
    moved = moved.with_sensor(rig.sensor("radar0").model_copy(update={"extrinsics": T_rig_radar.to_extrinsics()}))
    T2 = radar_to_camera(moved, "radar0", "cam0")
    assert T2.angle_to_deg(T) < 1e-6 and np.allclose(T2.t, T.t)
    with pytest.raises(ConfigError, match="'mic0' is a audio, expected a radar"):
        radar_to_camera(rig, "mic0", "cam0")
    no_ext = rig.with_sensor(rig.sensor("radar0").model_copy(update={"extrinsics": None}))
    with pytest.raises(ConfigError, match="'radar0' has no key 'extrinsics'.*fusion calibrate extrinsics"):
        radar_to_camera(no_ext, "radar0", "cam0")


def test_radar_points_and_pixel_rays_round_trip():
    cam, T = TRUE_CAMERA, TRUE_T_CAM_RADAR
    rng = np.random.default_rng(3)
    pts = np.column_stack([rng.uniform(-4, 4, 500), rng.uniform(-2, 10, 500), rng.uniform(-1, 2, 500)])
    px, visible = project_radar_points(pts, T, cam)
    behind = T.apply(pts)[:, 2] <= 0
    assert not visible[behind].any() and visible.sum() > 100
    origin, rays = pixel_rays_in_radar(px[visible], T, cam)
    # each ray starts at the camera centre (in the radar frame) and passes through its point
    assert np.allclose(origin, T.inverse().t)
    expected = pts[visible] - origin
    expected /= np.linalg.norm(expected, axis=1, keepdims=True)
    assert np.abs(rays - expected).max() < 1e-6
    proj = RadarCameraProjection(cam, T)
    assert np.array_equal(proj.project(pts)[1], visible)


def test_projection_from_the_example_rig():
    proj = RadarCameraProjection.from_rig(load_rig(EXAMPLE), "radar0", "cam0")
    px, visible = proj.project(np.array([[0.0, 10.0, 0.0], [0.0, -10.0, 0.0]]))
    # a point on the radar boresight 10 m out: near the principal point, a little below it
    cx, cy = proj.camera.K[0, 2], proj.camera.K[1, 2]
    assert visible.tolist() == [True, False]
    assert abs(px[0, 0] - cx) < 1e-6 and 0 < px[0, 1] - cy < 10


def test_camera_model_validation_and_missing_intrinsics():
    with pytest.raises(ValueError, match="4 or 5 coefficients"):
        CameraModel(np.eye(3), [0.1, 0.2, 0.3], (10, 10))
    rig = load_rig(EXAMPLE)
    bare = rig.with_sensor(rig.sensor("cam0").model_copy(update={"intrinsics": None}))
    with pytest.raises(ConfigError, match="camera 'cam0' has no key 'intrinsics'.*fusion calibrate intrinsics"):
        RadarCameraProjection.from_rig(bare, "radar0", "cam0")
