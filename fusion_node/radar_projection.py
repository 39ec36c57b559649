"""Radar points into a camera picture, from the rig calibration file: the node's own projection.

Rig frame to camera optical frame through both sensors' extrinsics, then OpenCV's pinhole and
distortion model with the camera's intrinsics (scaled to the picture's size). The snapshots and
the live view use it. It is written here in a few lines rather than imported because the
calibration package (``calibration.projection``, the full camera model) sits above the node in
the layering; a test checks the two agree.
"""

from __future__ import annotations

import cv2
import numpy as np

from .rig import Rig

__all__ = ["RadarProjection"]

_MIN_DEPTH_M = 0.05  # nearer than this to the camera's plane (or behind it) a point has no pixel


class RadarProjection:
    """Radar points (radar frame, metres) to camera pixels, from the rig calibration file."""

    def __init__(self, K: np.ndarray, dist: np.ndarray, size: tuple[int, int], R: np.ndarray, t: np.ndarray):
        self.K, self.dist, self.size = K, dist, size
        self.R, self.t = R, t  # radar -> camera optical frame

    @classmethod
    def from_rig(cls, rig: Rig, camera_id: str, radar_id: str) -> "RadarProjection | None":
        """The projection, or None when the file lacks the camera intrinsics or an extrinsics."""
        cams = {s.id: s for s in rig.sensors}
        cam, radar = cams.get(camera_id), cams.get(radar_id)
        if cam is None or radar is None or cam.intrinsics is None or cam.extrinsics is None \
                or radar.extrinsics is None:
            return None
        R_rc, _ = cv2.Rodrigues(np.array(cam.extrinsics.rotation_rvec_rad, dtype=np.float64))
        R_rr, _ = cv2.Rodrigues(np.array(radar.extrinsics.rotation_rvec_rad, dtype=np.float64))
        t_rc = np.array(cam.extrinsics.translation_m, dtype=np.float64)
        t_rr = np.array(radar.extrinsics.translation_m, dtype=np.float64)
        # p_cam = R_rc^T (R_rr p_radar + t_rr - t_rc)
        return cls(cam.intrinsics.camera_matrix, cam.intrinsics.dist_coeffs, cam.intrinsics.size,
                   R_rc.T @ R_rr, R_rc.T @ (t_rr - t_rc))

    @classmethod
    def into_first_camera(cls, rig: Rig, radar_id: str | None = None,
                          camera_ids: list[str] | None = None) -> "RadarProjection | None":
        """A radar's projection into the rig's first camera (the one a radar's points are read in).

        ``radar_id`` defaults to the file's first radar and ``camera_ids`` (in the rig config's
        order) to the file's cameras; None when there is none, or the file lacks the pair's
        intrinsics or extrinsics.
        """
        cameras = camera_ids if camera_ids is not None else [s.id for s in rig.sensors if s.kind == "camera"]
        if radar_id is None:
            radar_id = next((s.id for s in rig.sensors if s.kind == "radar"), None)
        if not cameras or radar_id is None:
            return None
        return cls.from_rig(rig, cameras[0], radar_id)

    @classmethod
    def nominal(cls, hfov_deg: float, aspect_wh: float, radar_below_m: float) -> "RadarProjection":
        """An ideal pinhole looking along the radar's boresight, the radar ``radar_below_m`` below it.

        The radar frame is x right, y forward, z up; the camera optical frame x right, y down, z
        forward. This is the geometry a model bundle was trained with, used for a rig whose
        calibration file does not give the pair's intrinsics and extrinsics.
        """
        w = 1600  # 16:9 and 4:3 pictures get whole-pixel heights
        h = max(1, int(round(w / float(aspect_wh))))
        f = w / (2.0 * np.tan(np.radians(float(hfov_deg)) / 2.0))
        K = np.array([[f, 0.0, w / 2.0], [0.0, f, h / 2.0], [0.0, 0.0, 1.0]])
        R = np.array([[1.0, 0.0, 0.0], [0.0, 0.0, -1.0], [0.0, 1.0, 0.0]])
        return cls(K, np.zeros(5), (w, h), R, np.array([0.0, float(radar_below_m), 0.0]))

    def normalised(self, xyz: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``(uv (N, 2), front (N,), inside (N,))``: pixel coordinates as fractions of the picture's
        width and height (0..1 inside it), whether each point is in front of the camera, and
        whether it falls inside the picture."""
        p = self._camera_frame(xyz)
        px, inside = self._pixels(p, self.size)
        return px / np.asarray(self.size, np.float64), p[:, 2] > _MIN_DEPTH_M, inside

    def project(self, xyz: np.ndarray, image_size: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
        """Pixels (N, 2) in an image of ``image_size`` (w, h), and which points are in front and inside."""
        return self._pixels(self._camera_frame(xyz), image_size)

    def _camera_frame(self, xyz: np.ndarray) -> np.ndarray:
        return xyz.astype(np.float64) @ self.R.T + self.t

    def _pixels(self, p: np.ndarray, image_size: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
        front = p[:, 2] > _MIN_DEPTH_M
        K = self.K.copy()
        K[0] *= image_size[0] / self.size[0]
        K[1] *= image_size[1] / self.size[1]
        if not len(p):
            return np.zeros((0, 2)), front
        px, _ = cv2.projectPoints(p.reshape(-1, 1, 3), np.zeros(3), np.zeros(3), K, self.dist)
        px = px.reshape(-1, 2)
        inside = front & (px[:, 0] >= 0) & (px[:, 0] < image_size[0]) & (px[:, 1] >= 0) & (px[:, 1] < image_size[1])
        return px, inside
