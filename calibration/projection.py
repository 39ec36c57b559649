"""Geometry between sensors: rigid transforms, the camera model, radar points into images and back.

Pure numpy and OpenCV; no I/O. Frames (see ``calibration/rig.py``):

* camera optical frame: x right, y down, z forward (OpenCV);
* TI radar frame: x right, y forward along boresight, z up;
* rig frame: whatever the rig file says, by default the reference camera's optical frame.

A :class:`Transform` ``T_a_b`` maps points from frame b into frame a: ``p_a = T_a_b.apply(p_b)``;
``T_a_b.compose(T_b_c)`` is ``T_a_c``. Rig extrinsics are ``T_rig_sensor``.

Typical use::

    rig = load_rig("rig.yaml")
    proj = RadarCameraProjection.from_rig(rig, radar_id="radar0", camera_id="cam0")
    pixels, visible = proj.project(points_radar)          # (N, 2) px, (N,) bool
    origin, rays = proj.rays(pixels[visible])             # in the radar frame, unit length
"""

from __future__ import annotations

from dataclasses import dataclass, field

import cv2
import numpy as np

from fusion_node.errors import ConfigError
from fusion_node.rig import Extrinsics, Intrinsics, Provenance, Rig

__all__ = [
    "Transform",
    "CameraModel",
    "RadarCameraProjection",
    "RADAR_AXES_IN_CAMERA",
    "radar_to_camera",
    "sensor_to_rig",
    "project_radar_points",
    "pixel_rays_in_radar",
    "rotation_angle_deg",
]

#: Rotation taking TI radar axes (x right, y forward, z up) to camera optical axes (x right,
#: y down, z forward) for a radar whose boresight is the camera's optical axis.
RADAR_AXES_IN_CAMERA = np.array([[1.0, 0.0, 0.0], [0.0, 0.0, -1.0], [0.0, 1.0, 0.0]])


def _as_points(points: np.ndarray, name: str = "points") -> np.ndarray:
    p = np.asarray(points, dtype=np.float64)
    if p.ndim == 1 and p.shape[0] == 3:
        p = p[None, :]
    if p.ndim != 2 or p.shape[1] != 3:
        raise ValueError(f"{name} must have shape (N, 3), got {p.shape}")
    return p


def _as_pixels(pixels: np.ndarray) -> np.ndarray:
    p = np.asarray(pixels, dtype=np.float64)
    if p.ndim == 1 and p.shape[0] == 2:
        p = p[None, :]
    if p.ndim != 2 or p.shape[1] != 2:
        raise ValueError(f"pixels must have shape (N, 2), got {p.shape}")
    return p


def rotation_angle_deg(R: np.ndarray) -> float:
    """Rotation angle of a rotation matrix, degrees (0 for the identity)."""
    c = (np.trace(np.asarray(R, dtype=np.float64)) - 1.0) / 2.0
    return float(np.degrees(np.arccos(np.clip(c, -1.0, 1.0))))


@dataclass(frozen=True, eq=False)
class Transform:
    """A rigid transform ``p_out = R @ p_in + t`` (R: 3x3 rotation, t: metres)."""

    R: np.ndarray
    t: np.ndarray

    def __post_init__(self) -> None:
        R = np.array(self.R, dtype=np.float64).reshape(3, 3)
        t = np.array(self.t, dtype=np.float64).reshape(3)
        if not (np.all(np.isfinite(R)) and np.all(np.isfinite(t))):
            raise ValueError("Transform: R and t must be finite")
        if np.abs(R.T @ R - np.eye(3)).max() > 1e-6 or np.linalg.det(R) < 0:
            raise ValueError(f"Transform: R is not a rotation matrix (R^T R != I or det < 0): {R.tolist()}")
        R.setflags(write=False)
        t.setflags(write=False)
        object.__setattr__(self, "R", R)
        object.__setattr__(self, "t", t)

    @classmethod
    def identity(cls) -> "Transform":
        return cls(np.eye(3), np.zeros(3))

    @classmethod
    def from_rvec(cls, rvec, t) -> "Transform":
        """From a rotation vector (radians, Rodrigues) and a translation (metres)."""
        R, _ = cv2.Rodrigues(np.asarray(rvec, dtype=np.float64).reshape(3, 1))
        return cls(R, t)

    @classmethod
    def from_matrix(cls, M: np.ndarray) -> "Transform":
        """From a 4x4 homogeneous matrix."""
        M = np.asarray(M, dtype=np.float64)
        return cls(M[:3, :3], M[:3, 3])

    @classmethod
    def from_extrinsics(cls, ext: Extrinsics) -> "Transform":
        """The sensor-to-rig transform of a rig file's extrinsics entry."""
        return cls.from_rvec(ext.rotation_rvec_rad, ext.translation_m)

    def to_extrinsics(self, provenance: Provenance | None = None) -> Extrinsics:
        """A rig file extrinsics entry holding this transform (read as sensor-to-rig)."""
        return Extrinsics(rotation_rvec_rad=tuple(float(v) for v in self.rvec),
                          translation_m=tuple(float(v) for v in self.t), provenance=provenance)

    @property
    def rvec(self) -> np.ndarray:
        """Rotation vector (radians), shape (3,)."""
        rvec, _ = cv2.Rodrigues(self.R)
        return rvec.reshape(3)

    @property
    def matrix(self) -> np.ndarray:
        """4x4 homogeneous matrix."""
        M = np.eye(4)
        M[:3, :3] = self.R
        M[:3, 3] = self.t
        return M

    def apply(self, points: np.ndarray) -> np.ndarray:
        """Transform points, shape (N, 3) (or (3,)), returning (N, 3)."""
        return _as_points(points) @ self.R.T + self.t

    def rotate(self, vectors: np.ndarray) -> np.ndarray:
        """Rotate direction vectors (no translation), shape (N, 3)."""
        return _as_points(vectors, "vectors") @ self.R.T

    def compose(self, other: "Transform") -> "Transform":
        """``self ∘ other``: apply ``other`` first, then ``self`` (T_a_b.compose(T_b_c) = T_a_c)."""
        return Transform(self.R @ other.R, self.R @ other.t + self.t)

    __matmul__ = compose

    def inverse(self) -> "Transform":
        return Transform(self.R.T, -self.R.T @ self.t)

    def angle_to_deg(self, other: "Transform") -> float:
        """Angle of the rotation between this transform's rotation and another's, degrees."""
        return rotation_angle_deg(self.R.T @ other.R)

    def __repr__(self) -> str:
        r = np.degrees(self.rvec)
        return (f"Transform(rvec_deg=[{r[0]:.3f}, {r[1]:.3f}, {r[2]:.3f}], "
                f"t_m=[{self.t[0]:.4f}, {self.t[1]:.4f}, {self.t[2]:.4f}])")


def _distort(xy: np.ndarray, d: np.ndarray) -> np.ndarray:
    """Apply OpenCV's 5-coefficient model to normalised coordinates (N, 2)."""
    k1, k2, p1, p2, k3 = d
    x, y = xy[:, 0], xy[:, 1]
    r2 = x * x + y * y
    radial = 1.0 + r2 * (k1 + r2 * (k2 + r2 * k3))
    xd = x * radial + 2.0 * p1 * x * y + p2 * (r2 + 2.0 * x * x)
    yd = y * radial + p1 * (r2 + 2.0 * y * y) + 2.0 * p2 * x * y
    return np.stack([xd, yd], axis=1)


def _distort_jacobian(xy: np.ndarray, d: np.ndarray) -> np.ndarray:
    """Jacobian of :func:`_distort` per point, shape (N, 2, 2)."""
    k1, k2, p1, p2, k3 = d
    x, y = xy[:, 0], xy[:, 1]
    r2 = x * x + y * y
    radial = 1.0 + r2 * (k1 + r2 * (k2 + r2 * k3))
    dradial = k1 + r2 * (2.0 * k2 + 3.0 * k3 * r2)  # d radial / d r2
    J = np.empty((xy.shape[0], 2, 2))
    J[:, 0, 0] = radial + x * dradial * 2.0 * x + 2.0 * p1 * y + p2 * 6.0 * x
    J[:, 0, 1] = x * dradial * 2.0 * y + 2.0 * p1 * x + p2 * 2.0 * y
    J[:, 1, 0] = y * dradial * 2.0 * x + p1 * 2.0 * x + 2.0 * p2 * y
    J[:, 1, 1] = radial + y * dradial * 2.0 * y + p1 * 6.0 * y + 2.0 * p2 * x
    return J


@dataclass(frozen=True, eq=False)
class CameraModel:
    """A pinhole camera with OpenCV's 5-coefficient distortion, for images of ``size`` (w, h).

    ``project`` maps points in the camera optical frame to pixels; ``unproject`` maps pixels to
    unit rays in the camera frame. Pixel (0, 0) is the centre of the top-left pixel.
    """

    K: np.ndarray
    dist: np.ndarray
    size: tuple[int, int]
    _bounds: tuple[float, float, float, float] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        K = np.array(self.K, dtype=np.float64).reshape(3, 3)
        dist = np.zeros(5)
        given = np.asarray(self.dist, dtype=np.float64).ravel()
        if given.size not in (0, 4, 5):
            raise ValueError(f"CameraModel: distortion must have 4 or 5 coefficients (k1 k2 p1 p2 [k3]), "
                             f"got {given.size}")
        dist[: given.size] = given
        w, h = (int(v) for v in self.size)
        if w < 1 or h < 1 or K[0, 0] <= 0 or K[1, 1] <= 0:
            raise ValueError(f"CameraModel: need positive focal lengths and image size, got K={K.tolist()} "
                             f"size={self.size}")
        for a in (K, dist):
            a.setflags(write=False)
        object.__setattr__(self, "K", K)
        object.__setattr__(self, "dist", dist)
        object.__setattr__(self, "size", (w, h))
        object.__setattr__(self, "_bounds", self._valid_bounds())

    @classmethod
    def from_intrinsics(cls, intr: Intrinsics) -> "CameraModel":
        return cls(intr.camera_matrix, intr.dist_coeffs, intr.size)

    @classmethod
    def from_rig(cls, rig: Rig, camera_id: str) -> "CameraModel":
        """The camera model of a rig file's camera; ConfigError when it has no intrinsics yet."""
        cam = rig.sensor(camera_id, kind="camera")
        if cam.intrinsics is None:
            raise ConfigError(f"rig {rig.rig!r}: camera {camera_id!r} has no key 'intrinsics' yet: run "
                              f"`fusion calibrate intrinsics --sensor-id {camera_id} ...` first")
        return cls.from_intrinsics(cam.intrinsics)

    def to_intrinsics(self, provenance: Provenance | None = None) -> Intrinsics:
        k1, k2, p1, p2, k3 = (float(v) for v in self.dist)
        return Intrinsics(width_px=self.size[0], height_px=self.size[1], fx_px=float(self.K[0, 0]),
                          fy_px=float(self.K[1, 1]), cx_px=float(self.K[0, 2]), cy_px=float(self.K[1, 2]),
                          distortion={"k1": k1, "k2": k2, "p1": p1, "p2": p2, "k3": k3}, provenance=provenance)

    @property
    def width(self) -> int:
        return self.size[0]

    @property
    def height(self) -> int:
        return self.size[1]

    # --- normalised coordinates ------------------------------------------------------------------

    def distort_normalized(self, xy: np.ndarray) -> np.ndarray:
        """Ideal normalised coordinates (x/z, y/z), shape (N, 2), to distorted ones."""
        return _distort(np.asarray(xy, dtype=np.float64).reshape(-1, 2), self.dist)

    def undistort_normalized(self, xy_distorted: np.ndarray, iterations: int = 8) -> np.ndarray:
        """Invert :meth:`distort_normalized` (OpenCV's estimate, then Newton steps to ~1e-12)."""
        xd = np.asarray(xy_distorted, dtype=np.float64).reshape(-1, 2)
        if not np.any(self.dist):
            return xd.copy()
        xy = cv2.undistortPoints(xd.reshape(-1, 1, 2), np.eye(3), self.dist).reshape(-1, 2)
        for _ in range(iterations):
            residual = _distort(xy, self.dist) - xd
            if np.nanmax(np.abs(residual), initial=0.0) < 1e-13:
                break
            J = _distort_jacobian(xy, self.dist)
            det = J[:, 0, 0] * J[:, 1, 1] - J[:, 0, 1] * J[:, 1, 0]
            det = np.where(np.abs(det) < 1e-12, np.nan, det)
            dx = (J[:, 1, 1] * residual[:, 0] - J[:, 0, 1] * residual[:, 1]) / det
            dy = (-J[:, 1, 0] * residual[:, 0] + J[:, 0, 0] * residual[:, 1]) / det
            xy = xy - np.stack([dx, dy], axis=1)
        return xy

    def pixels_to_normalized(self, pixels: np.ndarray) -> np.ndarray:
        """Pixels (N, 2) to ideal (undistorted) normalised coordinates (N, 2)."""
        p = _as_pixels(pixels)
        xd = np.stack([(p[:, 0] - self.K[0, 2]) / self.K[0, 0], (p[:, 1] - self.K[1, 2]) / self.K[1, 1]], axis=1)
        return self.undistort_normalized(xd)

    def normalized_to_pixels(self, xy: np.ndarray) -> np.ndarray:
        """Ideal normalised coordinates (N, 2) to pixels (N, 2), distortion applied."""
        xd = self.distort_normalized(xy)
        return np.stack([xd[:, 0] * self.K[0, 0] + self.K[0, 2], xd[:, 1] * self.K[1, 1] + self.K[1, 2]], axis=1)

    def _valid_bounds(self) -> tuple[float, float, float, float]:
        """Box of ideal normalised coordinates seen through the image, with a 10 % margin.

        Polynomial distortion folds back far outside the field of view, so a point can land in
        the image although the lens never sees it; :meth:`project` masks points outside this box.
        """
        w, h = self.size
        n = 64
        xs, ys = np.linspace(-0.5, w - 0.5, n), np.linspace(-0.5, h - 0.5, n)
        border = np.concatenate([np.stack([xs, np.full(n, -0.5)], 1), np.stack([xs, np.full(n, h - 0.5)], 1),
                                 np.stack([np.full(n, -0.5), ys], 1), np.stack([np.full(n, w - 0.5), ys], 1)])
        xd = np.stack([(border[:, 0] - self.K[0, 2]) / self.K[0, 0],
                       (border[:, 1] - self.K[1, 2]) / self.K[1, 1]], axis=1)
        xy = self.undistort_normalized(xd) if np.any(self.dist) else xd
        xy = xy[np.all(np.isfinite(xy), axis=1)]
        if xy.size == 0:
            xy = xd
        lo, hi = xy.min(axis=0), xy.max(axis=0)
        pad = 0.1 * (hi - lo)
        return float(lo[0] - pad[0]), float(lo[1] - pad[1]), float(hi[0] + pad[0]), float(hi[1] + pad[1])

    # --- points and rays ---------------------------------------------------------------------------

    def in_image(self, pixels: np.ndarray) -> np.ndarray:
        """Whether pixels (N, 2) fall inside the image (edges of the border pixels included)."""
        p = _as_pixels(pixels)
        w, h = self.size
        with np.errstate(invalid="ignore"):
            return (p[:, 0] >= -0.5) & (p[:, 0] < w - 0.5) & (p[:, 1] >= -0.5) & (p[:, 1] < h - 0.5)

    def project(self, points_cam: np.ndarray, min_depth_m: float = 1e-3) -> tuple[np.ndarray, np.ndarray]:
        """Project camera-frame points (N, 3) to pixels with distortion.

        Returns ``(pixels, visible)``: pixels (N, 2), NaN for points not in front of the camera;
        ``visible`` (N,) is True for points in front of the camera (z > ``min_depth_m``), within
        the lens' field of view and inside the image.
        """
        p = _as_points(points_cam)
        pixels = np.full((p.shape[0], 2), np.nan)
        front = np.isfinite(p).all(axis=1) & (p[:, 2] > min_depth_m)
        if np.any(front):
            pf = p[front]
            proj, _ = cv2.projectPoints(pf.reshape(-1, 1, 3), np.zeros(3), np.zeros(3), self.K, self.dist)
            pixels[front] = proj.reshape(-1, 2)
            xy = pf[:, :2] / pf[:, 2:3]
            x0, y0, x1, y1 = self._bounds
            in_fov = (xy[:, 0] >= x0) & (xy[:, 0] <= x1) & (xy[:, 1] >= y0) & (xy[:, 1] <= y1)
            front_idx = np.flatnonzero(front)
            front[front_idx[~in_fov]] = False
        visible = front & self.in_image(pixels)
        return pixels, visible

    def unproject(self, pixels: np.ndarray) -> np.ndarray:
        """Pixels (N, 2) to unit rays (N, 3) in the camera frame, distortion removed."""
        xy = self.pixels_to_normalized(pixels)
        rays = np.concatenate([xy, np.ones((xy.shape[0], 1))], axis=1)
        return rays / np.linalg.norm(rays, axis=1, keepdims=True)

    def undistort_image(self, image: np.ndarray) -> np.ndarray:
        """The image as a distortion-free camera with the same K would have seen it."""
        return cv2.undistort(image, self.K, self.dist)


def sensor_to_rig(rig: Rig, sensor_id: str) -> Transform:
    """``T_rig_sensor`` from the rig file; ConfigError when the sensor has no extrinsics yet."""
    s = rig.sensor(sensor_id)
    if s.extrinsics is None:
        hint = ("`fusion calibrate extrinsics`" if s.kind == "radar"
                else "key 'extrinsics' (identity if this sensor defines the rig frame)")
        raise ConfigError(f"rig {rig.rig!r}: sensor {sensor_id!r} has no key 'extrinsics' yet: set it with {hint}")
    return Transform.from_extrinsics(s.extrinsics)


def radar_to_camera(rig: Rig, radar_id: str, camera_id: str) -> Transform:
    """``T_camera_radar`` composed from both sensors' rig extrinsics: p_cam = T.apply(p_radar)."""
    rig.sensor(radar_id, kind="radar")
    rig.sensor(camera_id, kind="camera")
    return sensor_to_rig(rig, camera_id).inverse().compose(sensor_to_rig(rig, radar_id))


def project_radar_points(points_radar: np.ndarray, T_cam_radar: Transform,
                         camera: CameraModel) -> tuple[np.ndarray, np.ndarray]:
    """Radar-frame points (N, 3) to pixels (N, 2) and a visibility mask (N,), see CameraModel.project."""
    return camera.project(T_cam_radar.apply(points_radar))


def pixel_rays_in_radar(pixels: np.ndarray, T_cam_radar: Transform,
                        camera: CameraModel) -> tuple[np.ndarray, np.ndarray]:
    """Pixels (N, 2) to rays in the radar frame: ``(origin (3,), unit directions (N, 3))``.

    The origin is the camera centre expressed in the radar frame; every ray starts there.
    """
    T_radar_cam = T_cam_radar.inverse()
    return T_radar_cam.t.copy(), T_radar_cam.rotate(camera.unproject(pixels))


@dataclass(frozen=True, eq=False)
class RadarCameraProjection:
    """A camera model and the radar-to-camera transform, bundled for repeated use."""

    camera: CameraModel
    T_cam_radar: Transform

    @classmethod
    def from_rig(cls, rig: Rig, radar_id: str, camera_id: str) -> "RadarCameraProjection":
        return cls(CameraModel.from_rig(rig, camera_id), radar_to_camera(rig, radar_id, camera_id))

    def project(self, points_radar: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Radar-frame points (N, 3) to ``(pixels (N, 2), visible (N,))``."""
        return project_radar_points(points_radar, self.T_cam_radar, self.camera)

    def rays(self, pixels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Pixels (N, 2) to ``(origin (3,), unit directions (N, 3))`` in the radar frame."""
        return pixel_rays_in_radar(pixels, self.T_cam_radar, self.camera)
