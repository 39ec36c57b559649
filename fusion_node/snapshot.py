"""Occurrence snapshots: the camera frame at the top score, radar points drawn on it, as JPEG.

With a rig calibration file that holds the camera's intrinsics and both sensors' extrinsics, the
radar points are projected into the picture (rig frame to camera frame, then OpenCV's pinhole
and distortion model; intrinsics scaled to the frame's size) and the moving ones are boxed: the
fusion head scores the scene as a whole and gives no box of its own, so the box shown is the
extent of the radar points that move (``|doppler| >= MOVING_MPS``). Without a calibration the
points cannot be placed in the picture, and they are drawn as a top view (x across, range up)
in an inset instead. Colours: blue approaching, red receding, grey static.

The projection is :class:`fusion_node.radar_projection.RadarProjection`, which the live view
uses too.
"""

from __future__ import annotations

import cv2
import numpy as np

from .radar_projection import RadarProjection

__all__ = ["RadarProjection", "render_snapshot", "MOVING_MPS"]

# Radial speed above which a radar point counts as moving, m/s.
MOVING_MPS = 0.2
_INSET_PX = 160
_INSET_RANGE_M = 10.0


def _colour(doppler: float) -> tuple[int, int, int]:
    if doppler <= -MOVING_MPS:
        return (255, 120, 0)  # BGR: blue, approaching
    if doppler >= MOVING_MPS:
        return (0, 0, 255)  # red, receding
    return (160, 160, 160)


def _draw_projected(img: np.ndarray, points: np.ndarray, proj: RadarProjection) -> None:
    px, ok = proj.project(points[:, :3], (img.shape[1], img.shape[0]))
    moving = ok & (np.abs(points[:, 3]) >= MOVING_MPS)
    for (u, v), d in zip(px[ok], points[ok, 3]):
        cv2.circle(img, (int(u), int(v)), 4, _colour(float(d)), -1, cv2.LINE_AA)
    if moving.any():
        (x0, y0), (x1, y1) = px[moving].min(axis=0), px[moving].max(axis=0)
        pad = 12
        cv2.rectangle(img, (int(x0) - pad, int(y0) - pad), (int(x1) + pad, int(y1) + pad), (0, 255, 255), 2)
        cv2.putText(img, "radar", (int(x0) - pad, max(12, int(y0) - pad - 4)), cv2.FONT_HERSHEY_SIMPLEX, 0.45,
                    (0, 255, 255), 1, cv2.LINE_AA)


def _draw_inset(img: np.ndarray, points: np.ndarray) -> None:
    h, w = img.shape[:2]
    s = min(_INSET_PX, h // 2, w // 2)
    x0, y0 = w - s - 4, h - s - 4
    panel = img[y0:y0 + s, x0:x0 + s]
    panel[:] = (panel * 0.35).astype(np.uint8)
    cv2.rectangle(img, (x0, y0), (x0 + s - 1, y0 + s - 1), (200, 200, 200), 1)
    scale = s / _INSET_RANGE_M
    for x, y, _, d in points[:, :4]:
        u, v = x0 + s / 2 + x * scale, y0 + s - y * scale
        if x0 <= u < x0 + s and y0 <= v < y0 + s:
            cv2.circle(img, (int(u), int(v)), 2, _colour(float(d)), -1, cv2.LINE_AA)
    cv2.putText(img, "radar, top view", (x0 + 4, y0 + 14), cv2.FONT_HERSHEY_SIMPLEX, 0.4, (230, 230, 230), 1,
                cv2.LINE_AA)


def render_snapshot(image: np.ndarray, points: np.ndarray | None, caption: str,
                    projection: RadarProjection | None = None, quality: int = 85) -> bytes:
    """JPEG bytes of ``image`` (BGR) with the radar ``points`` (N, 6) and a caption drawn on a copy."""
    img = np.ascontiguousarray(image, dtype=np.uint8).copy()
    if points is not None and len(points):
        pts = np.asarray(points, dtype=np.float32)
        if projection is not None:
            _draw_projected(img, pts, projection)
        else:
            _draw_inset(img, pts)
    cv2.rectangle(img, (0, 0), (img.shape[1], 22), (0, 0, 0), -1)
    cv2.putText(img, caption, (6, 16), cv2.FONT_HERSHEY_SIMPLEX, 0.5, (255, 255, 255), 1, cv2.LINE_AA)
    ok, buf = cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, int(quality)])
    if not ok:
        raise ValueError("JPEG encoding of a snapshot failed")
    return buf.tobytes()
