"""Radar-to-camera extrinsics from reflector correspondences, and the overlay check on a recording.

Correspondences are a corner reflector (or any target the radar sees as one point) placed at
10-100 spots in front of the rig: for each spot, the radar's detection of it in the radar frame
and the reflector's pixel position in the camera picture taken at the same moment. A CSV file
per session, one row per spot, with a header naming at least these columns::

    x_m,y_m,z_m,u_px,v_px
    0.412,3.120,-0.050,431.5,240.2

(radar frame: x right, y forward along boresight, z up, metres; pixels of the distorted image
as recorded, (0, 0) = centre of the top-left pixel). Other columns are ignored.

:func:`solve_radar_to_camera` finds ``T_cam_radar`` with ``cv2.solvePnPRansac`` (radar points
as the "object", the camera intrinsics from the rig file), refines it on the inliers with
iterative PnP and Levenberg-Marquardt, re-selects inliers and repeats until they settle.
``fusion calibrate extrinsics`` writes the radar's pose in the rig frame,
``T_rig_radar = T_rig_cam @ T_cam_radar``, into the rig file; when the camera has no extrinsics
yet it defines the rig frame (identity) and that is written too.

``fusion calibrate check`` projects the radar points of a recording into its video frames.
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from fusion_node.errors import ConfigError
from fusion_node.rig import Provenance, Rig, load_rig, now_iso, update_rig_sensor
from sensors.ti_mmwave import TIStreamParser, iter_capture

from .errors import CalibrationError
from .projection import CameraModel, Transform, radar_to_camera, sensor_to_rig

__all__ = [
    "CSV_COLUMNS",
    "Correspondences",
    "load_correspondences",
    "write_correspondences",
    "ExtrinsicsResult",
    "solve_radar_to_camera",
    "draw_residuals",
    "run_extrinsics",
    "run_check",
    "draw_radar_overlay",
]

CSV_COLUMNS = ("x_m", "y_m", "z_m", "u_px", "v_px")
MIN_CORRESPONDENCES = 6


@dataclass
class Correspondences:
    """Radar points (N, 3) and their pixels (N, 2); ``sources`` names each row's file and line."""

    points_radar: np.ndarray
    pixels: np.ndarray
    sources: list[str]

    def __len__(self) -> int:
        return int(self.points_radar.shape[0])


def load_correspondences(paths: list[str | Path]) -> Correspondences:
    """Read one or more correspondence CSV files; ConfigError names the file, line and column at fault."""
    points, pixels, sources = [], [], []
    for path in paths:
        path = Path(path)
        try:
            fh = path.open(newline="")
        except FileNotFoundError:
            raise ConfigError(f"--correspondences {path}: no such file") from None
        with fh:
            numbered = [(n, line) for n, line in enumerate(fh, 1) if line.strip() and not line.lstrip().startswith("#")]
        rows = csv.reader([line for _, line in numbered])
        header = [h.strip() for h in next(rows, [])]
        missing = [c for c in CSV_COLUMNS if c not in header]
        if missing:
            raise ConfigError(f"{path}: the header must name the columns {', '.join(CSV_COLUMNS)}; missing "
                              f"{', '.join(missing)} (header read: {', '.join(header) or 'none'})")
        where = [header.index(c) for c in CSV_COLUMNS]
        for (line, _), row in zip(numbered[1:], rows):
            values = []
            for col, i in zip(CSV_COLUMNS, where):
                text = row[i].strip() if i < len(row) else ""
                try:
                    v = float(text)
                except ValueError:
                    raise ConfigError(f"{path}:{line}: column {col}: not a number: {text!r}") from None
                if not np.isfinite(v):
                    raise ConfigError(f"{path}:{line}: column {col}: not finite: {text!r}")
                values.append(v)
            points.append(values[:3])
            pixels.append(values[3:])
            sources.append(f"{path.name}:{line}")
    return Correspondences(np.array(points, dtype=np.float64).reshape(-1, 3),
                           np.array(pixels, dtype=np.float64).reshape(-1, 2), sources)


def write_correspondences(path: str | Path, points_radar: np.ndarray, pixels: np.ndarray) -> Path:
    """Write correspondences in the CSV format :func:`load_correspondences` reads."""
    path = Path(path)
    with path.open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(CSV_COLUMNS)
        for p, u in zip(np.asarray(points_radar), np.asarray(pixels)):
            w.writerow([f"{p[0]:.4f}", f"{p[1]:.4f}", f"{p[2]:.4f}", f"{u[0]:.3f}", f"{u[1]:.3f}"])
    return path


@dataclass
class ExtrinsicsResult:
    """The outcome of :func:`solve_radar_to_camera`."""

    T_cam_radar: Transform
    inliers: np.ndarray  # (N,) bool
    errors_px: np.ndarray  # (N,) reprojection error of every correspondence
    threshold_px: float

    @property
    def n_inliers(self) -> int:
        return int(self.inliers.sum())

    @property
    def n_outliers(self) -> int:
        return int((~self.inliers).sum())

    @property
    def rms_px(self) -> float:
        """RMS reprojection error over the inliers, pixels."""
        return float(np.sqrt(np.mean(self.errors_px[self.inliers] ** 2)))


def _reprojection_errors(T: Transform, camera: CameraModel, points: np.ndarray, pixels: np.ndarray) -> np.ndarray:
    proj, _ = camera.project(T.apply(points))
    err = np.linalg.norm(proj - pixels, axis=1)
    return np.where(np.isfinite(err), err, np.inf)


def solve_radar_to_camera(points_radar: np.ndarray, pixels: np.ndarray, camera: CameraModel, *,
                          threshold_px: float = 10.0, iterations: int = 5000, confidence: float = 0.9999,
                          seed: int = 0, source: str = "correspondences") -> ExtrinsicsResult:
    """Robust ``T_cam_radar`` from radar points (N, 3) and their pixels (N, 2).

    RANSAC (``cv2.solvePnPRansac``, EPnP minimal sets, ``threshold_px`` inlier threshold), then
    iterative PnP and ``solvePnPRefineLM`` on the inliers; inliers are re-selected with the
    refined pose and the refinement repeated until the set settles. CalibrationError (naming
    ``source``) when there are too few correspondences or inliers.
    """
    pts = np.ascontiguousarray(np.asarray(points_radar, dtype=np.float64).reshape(-1, 3))
    px = np.ascontiguousarray(np.asarray(pixels, dtype=np.float64).reshape(-1, 2))
    n = pts.shape[0]
    if n < MIN_CORRESPONDENCES:
        raise CalibrationError(f"{source}: {n} correspondence(s), at least {MIN_CORRESPONDENCES} are needed "
                               f"(record the reflector at 15 or more spots spread over range, azimuth and height)")
    if np.linalg.matrix_rank(pts - pts.mean(axis=0), tol=1e-3) < 2:
        raise CalibrationError(f"{source}: the radar points are (nearly) collinear; move the reflector around, "
                               f"left and right, near and far, higher and lower")
    cv2.setRNGSeed(seed)
    ok, rvec, tvec, inl = cv2.solvePnPRansac(pts, px, camera.K, camera.dist, iterationsCount=iterations,
                                             reprojectionError=float(threshold_px), confidence=confidence,
                                             flags=cv2.SOLVEPNP_EPNP)
    if not ok or inl is None or len(inl) < MIN_CORRESPONDENCES:
        found = 0 if inl is None else len(inl)
        raise CalibrationError(f"{source}: no consistent radar-to-camera pose found ({found} of {n} "
                               f"correspondences agree within {threshold_px:g} px). Check that u_px/v_px are "
                               f"pixels of the same camera as the rig's intrinsics, that x/y/z are in the radar "
                               f"frame (y forward), or raise --ransac-px")
    inliers = np.zeros(n, bool)
    inliers[inl.ravel()] = True
    for _ in range(10):
        ok, rvec, tvec = cv2.solvePnP(pts[inliers], px[inliers], camera.K, camera.dist, rvec, tvec,
                                      useExtrinsicGuess=True, flags=cv2.SOLVEPNP_ITERATIVE)
        rvec, tvec = cv2.solvePnPRefineLM(pts[inliers], px[inliers], camera.K, camera.dist, rvec, tvec,
                                          (cv2.TERM_CRITERIA_EPS + cv2.TERM_CRITERIA_COUNT, 100, 1e-12))
        T = Transform.from_rvec(rvec, tvec)
        errors = _reprojection_errors(T, camera, pts, px)
        new = errors < threshold_px
        if new.sum() < MIN_CORRESPONDENCES or np.array_equal(new, inliers):
            break
        inliers = new
    return ExtrinsicsResult(T, inliers, errors, float(threshold_px))


def _pt(p) -> tuple[int, int]:
    return int(round(float(p[0]))), int(round(float(p[1])))


def _banner(image: np.ndarray, lines: list[str]) -> None:
    scale = max(0.45, image.shape[1] / 1400)
    h = int(22 * scale / 0.5) * len(lines) + 6
    overlay = image.copy()
    cv2.rectangle(overlay, (0, 0), (image.shape[1], h), (0, 0, 0), -1)
    cv2.addWeighted(overlay, 0.65, image, 0.35, 0, dst=image)
    for k, text in enumerate(lines):
        cv2.putText(image, text, (8, int((k + 1) * 22 * scale / 0.5) - 4), cv2.FONT_HERSHEY_SIMPLEX, scale,
                    (255, 255, 255), 1, cv2.LINE_AA)


def draw_residuals(result: ExtrinsicsResult, camera: CameraModel, points_radar: np.ndarray, pixels: np.ndarray,
                   out_path: str | Path, background: np.ndarray | None = None, title: str = "") -> Path:
    """Picture of the fit: each measured pixel (inliers green, outliers red) joined to where the
    solved transform projects its radar point (white dot); residuals are drawn 5x enlarged."""
    w, h = camera.size
    img = background.copy() if background is not None else np.full((h, w, 3), 40, np.uint8)
    if background is None:  # faint grid, so the frame has a scale
        for x in range(0, w, 64):
            cv2.line(img, (x, 0), (x, h - 1), (60, 60, 60), 1)
        for y in range(0, h, 64):
            cv2.line(img, (0, y), (w - 1, y), (60, 60, 60), 1)
    proj, _ = camera.project(result.T_cam_radar.apply(points_radar))
    for p, q, ok in zip(pixels, proj, result.inliers):
        if not np.all(np.isfinite(q)):
            continue
        if ok:
            tip = q + 5.0 * (p - q)
            cv2.line(img, _pt(q), _pt(tip), (80, 220, 80), 1, cv2.LINE_AA)
            cv2.circle(img, _pt(tip), 3, (80, 220, 80), -1, cv2.LINE_AA)
        else:
            cv2.line(img, _pt(q), _pt(p), (70, 70, 230), 1, cv2.LINE_AA)
            cv2.drawMarker(img, _pt(p), (70, 70, 230), cv2.MARKER_TILTED_CROSS, 9, 2, cv2.LINE_AA)
        cv2.circle(img, _pt(q), 2, (255, 255, 255), -1, cv2.LINE_AA)
    r = np.degrees(result.T_cam_radar.rvec)
    lines = [title or "radar -> camera fit",
             f"inliers {result.n_inliers} (green, residual x5)  outliers {result.n_outliers} (red)  "
             f"RMS {result.rms_px:.2f} px",
             f"t = [{result.T_cam_radar.t[0]:+.3f}, {result.T_cam_radar.t[1]:+.3f}, {result.T_cam_radar.t[2]:+.3f}] m"
             f"  rvec = [{r[0]:+.2f}, {r[1]:+.2f}, {r[2]:+.2f}] deg"]
    _banner(img, lines)
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    if not cv2.imwrite(str(out_path), img):
        raise CalibrationError(f"{out_path}: cannot write the picture (check the folder is writable)")
    return out_path


def run_extrinsics(correspondences: list[str | Path], rig_path: str | Path, camera_id: str, radar_id: str, *,
                   threshold_px: float = 10.0, echo=print) -> dict:
    """The ``fusion calibrate extrinsics`` command; returns the report (also written as JSON)."""
    rig_path = Path(rig_path)
    rig = load_rig(rig_path)
    camera = CameraModel.from_rig(rig, camera_id)
    if rig.has(radar_id):
        rig.sensor(radar_id, kind="radar")
    corr = load_correspondences(correspondences)
    names = ", ".join(Path(p).name for p in correspondences)
    result = solve_radar_to_camera(corr.points_radar, corr.pixels, camera, threshold_px=threshold_px, source=names)
    cam_entry = rig.sensor(camera_id)
    prov_date = now_iso()
    if cam_entry.extrinsics is None:
        T_rig_cam = Transform.identity()
        rig = update_rig_sensor(rig_path, camera_id, "camera", extrinsics=T_rig_cam.to_extrinsics(Provenance(
            date=prov_date, method=f"defines the rig frame (set by fusion calibrate extrinsics for {radar_id})")))
    else:
        T_rig_cam = sensor_to_rig(rig, camera_id)
    previous = None
    if rig.has(radar_id) and rig.sensor(radar_id).extrinsics is not None:
        previous = radar_to_camera(rig, radar_id, camera_id)
    T_rig_radar = T_rig_cam.compose(result.T_cam_radar)
    prov = Provenance(
        date=prov_date,
        method=(f"reflector correspondences ({names}) with camera {camera_id}: cv2.solvePnPRansac "
                f"({threshold_px:g} px) then solvePnP iterative + solvePnPRefineLM on the inliers"),
        residual=round(result.rms_px, 4), residual_unit="px",
        details={"correspondences": len(corr), "inliers": result.n_inliers, "outliers": result.n_outliers,
                 "relative_to": camera_id})
    update_rig_sensor(rig_path, radar_id, "radar", extrinsics=T_rig_radar.to_extrinsics(prov))
    picture = draw_residuals(result, camera, corr.points_radar, corr.pixels,
                             rig_path.with_name(f"{rig_path.stem}_extrinsics_{radar_id}.png"),
                             title=f"{radar_id} -> {camera_id}: {len(corr)} reflector correspondences")
    outliers = [corr.sources[i] for i in np.flatnonzero(~result.inliers)]
    report = {
        "command": "extrinsics", "rig": str(rig_path), "camera": camera_id, "radar": radar_id,
        "correspondences": len(corr), "inliers": result.n_inliers, "outliers": result.n_outliers,
        "outlier_rows": outliers, "rms_px": result.rms_px, "threshold_px": threshold_px,
        "T_cam_radar": {"rotation_rvec_rad": result.T_cam_radar.rvec.tolist(),
                        "translation_m": result.T_cam_radar.t.tolist()},
        "T_rig_radar": {"rotation_rvec_rad": T_rig_radar.rvec.tolist(), "translation_m": T_rig_radar.t.tolist()},
        "picture": str(picture),
    }
    if previous is not None:
        report["change_from_previous"] = {"rotation_deg": previous.angle_to_deg(result.T_cam_radar),
                                          "translation_m": float(np.linalg.norm(previous.t - result.T_cam_radar.t))}
    report_path = rig_path.with_name(f"{rig_path.stem}_extrinsics_{radar_id}.json")
    report_path.write_text(json.dumps(report, indent=2) + "\n")
    t = result.T_cam_radar.t
    r = np.degrees(result.T_cam_radar.rvec)
    echo(f"fusion calibrate extrinsics: {radar_id} -> {camera_id} from {len(corr)} correspondences ({names})")
    echo(f"  inliers {result.n_inliers}, outliers rejected {result.n_outliers} (threshold {threshold_px:g} px), "
         f"RMS reprojection error {result.rms_px:.3f} px")
    echo(f"  radar in camera frame: t = [{t[0]:+.4f}, {t[1]:+.4f}, {t[2]:+.4f}] m, "
         f"rvec = [{r[0]:+.3f}, {r[1]:+.3f}, {r[2]:+.3f}] deg")
    if outliers:
        echo(f"  outlier rows: {', '.join(outliers[:20])}{' ...' if len(outliers) > 20 else ''}")
    if previous is not None:
        c = report["change_from_previous"]
        echo(f"  change from the previous calibration: {c['rotation_deg']:.3f} deg, {c['translation_m'] * 100:.2f} cm")
    echo(f"  wrote {rig_path} (sensor {radar_id}: extrinsics), picture {picture}, report {report_path}")
    return report


# --- overlay check on a recording -------------------------------------------------------------


def _doppler_colour(v: float, vmax: float) -> tuple[int, int, int]:
    """Blue for approaching (negative), grey for static, red for receding; BGR."""
    a = float(np.clip(v / vmax, -1.0, 1.0))
    grey = np.array([200.0, 200.0, 200.0])
    end = np.array([255.0, 80.0, 30.0]) if a < 0 else np.array([30.0, 60.0, 255.0])
    c = grey + abs(a) * (end - grey)
    return int(c[0]), int(c[1]), int(c[2])


def _range_colour(r: float, rmax: float) -> tuple[int, int, int]:
    cmap = getattr(cv2, "COLORMAP_TURBO", cv2.COLORMAP_JET)
    v = np.uint8(np.clip(r / rmax, 0, 1) * 255)
    c = cv2.applyColorMap(np.array([[v]], np.uint8), cmap)[0, 0]
    return int(c[0]), int(c[1]), int(c[2])


def draw_radar_overlay(frame: np.ndarray, points: np.ndarray, camera: CameraModel, T_cam_radar: Transform, *,
                       color_by: str = "doppler", vmax: float = 2.0, rmax: float = 10.0,
                       header: list[str] | None = None) -> tuple[np.ndarray, int]:
    """Draw radar points (N, >=4: x, y, z, doppler, ...) on a BGR frame; returns (picture, visible count).

    Dot size grows with SNR when the points carry it. A cross marks the radar boresight 5 m out.
    """
    img = frame.copy()
    if img.ndim == 2:
        img = cv2.cvtColor(img, cv2.COLOR_GRAY2BGR)
    if (img.shape[1], img.shape[0]) != camera.size:
        raise CalibrationError(f"video frames are {img.shape[1]}x{img.shape[0]} but the camera intrinsics are for "
                               f"{camera.size[0]}x{camera.size[1]}: calibrate at the recording's resolution")
    pts = np.asarray(points, dtype=np.float64)
    pts = pts.reshape(0, 4) if pts.size == 0 else pts
    visible_count = 0
    if pts.shape[0]:
        px, vis = camera.project(T_cam_radar.apply(pts[:, :3]))
        ranges = np.linalg.norm(pts[:, :3], axis=1)
        order = np.argsort(-ranges)  # near points drawn last, on top
        for i in order:
            if not vis[i]:
                continue
            visible_count += 1
            snr = pts[i, 4] if pts.shape[1] > 4 and pts[i, 4] > 0 else 15.0
            radius = int(np.clip(2 + snr / 6, 3, 9))
            colour = _doppler_colour(pts[i, 3], vmax) if color_by == "doppler" else _range_colour(ranges[i], rmax)
            cv2.circle(img, _pt(px[i]), radius, colour, -1, cv2.LINE_AA)
            cv2.circle(img, _pt(px[i]), radius, (0, 0, 0), 1, cv2.LINE_AA)
    bore, vis = camera.project(T_cam_radar.apply(np.array([[0.0, 5.0, 0.0]])))
    if vis[0]:
        cv2.drawMarker(img, _pt(bore[0]), (0, 255, 255), cv2.MARKER_CROSS, 18, 1, cv2.LINE_AA)
    _legend(img, color_by, vmax, rmax)
    if header:
        _banner(img, header)
    return img, visible_count


def _legend(img: np.ndarray, color_by: str, vmax: float, rmax: float) -> None:
    h, w = img.shape[:2]
    bar_w, bar_h = min(200, w // 4), 10
    x0, y0 = w - bar_w - 12, h - 34
    for k in range(bar_w):
        a = k / (bar_w - 1)
        c = _doppler_colour((2 * a - 1) * vmax, vmax) if color_by == "doppler" else _range_colour(a * rmax, rmax)
        cv2.line(img, (x0 + k, y0), (x0 + k, y0 + bar_h), c, 1)
    cv2.rectangle(img, (x0 - 1, y0 - 1), (x0 + bar_w, y0 + bar_h), (0, 0, 0), 1)
    if color_by == "doppler":
        labels = (f"-{vmax:g} m/s", "0", f"+{vmax:g} m/s")
    else:
        labels = ("0 m", f"{rmax / 2:g}", f"{rmax:g} m")
    for k, text in enumerate(labels):
        x = x0 + int(k * (bar_w - 1) / 2) - 14
        cv2.putText(img, text, (max(0, x), y0 + bar_h + 14), cv2.FONT_HERSHEY_SIMPLEX, 0.38, (0, 0, 0), 3,
                    cv2.LINE_AA)
        cv2.putText(img, text, (max(0, x), y0 + bar_h + 14), cv2.FONT_HERSHEY_SIMPLEX, 0.38, (255, 255, 255), 1,
                    cv2.LINE_AA)


def run_check(rig_path: str | Path, video: str | Path, radar_capture: str | Path, out_dir: str | Path, *,
              camera_id: str = "cam0", radar_id: str = "radar0", frames: int = 8, radar_period_ms: float = 100.0,
              video_fps: float | None = None, color_by: str = "doppler", tolerance_ms: float | None = None,
              progress: bool = True, echo=print) -> dict:
    """The ``fusion calibrate check`` command: overlay pictures of a recording, PNGs in ``out_dir``.

    Both files' time bases start at their sensor clock's zero; the rig file's clock offsets put
    them on the rig clock (video frame i at i/fps + camera offset, radar frame k, counted from
    the capture's first frame number, at k * period + radar offset). Each of ``frames`` camera
    frames, spread over the span both recordings cover, is paired with the nearest radar frame.
    """
    from tqdm import tqdm

    rig: Rig = load_rig(rig_path)
    camera = CameraModel.from_rig(rig, camera_id)
    T = radar_to_camera(rig, radar_id, camera_id)
    if frames < 1:
        raise ConfigError(f"--frames: must be at least 1, got {frames}")
    video, radar_capture = Path(video), Path(radar_capture)
    if not video.exists():
        raise ConfigError(f"--video {video}: no such file")
    if not radar_capture.exists():
        raise ConfigError(f"--radar-capture {radar_capture}: no such file")
    try:
        radar_frames = list(iter_capture(radar_capture, parser=TIStreamParser()))
    except ValueError as exc:
        raise CalibrationError(f"--radar-capture: {exc}") from None
    cap = cv2.VideoCapture(str(video))
    if not cap.isOpened():
        raise CalibrationError(f"--video {video}: OpenCV cannot open it (codec? try converting it to MJPG/H.264)")
    fps = video_fps or cap.get(cv2.CAP_PROP_FPS) or 0.0
    if not 0 < fps < 1000:
        raise ConfigError(f"--video {video}: the file does not state its frame rate; pass --video-fps")
    n_video = int(cap.get(cv2.CAP_PROP_FRAME_COUNT) or 0)
    cam_clock = rig.sensor(camera_id).clock
    radar_clock = rig.sensor(radar_id).clock
    period_ns = radar_period_ms * 1e6
    first = radar_frames[0].frame_number
    t_radar = np.array([radar_clock.to_rig_ns(int(round((f.frame_number - first) * period_ns)))
                        for f in radar_frames], dtype=np.int64)
    if n_video <= 0:
        n_video = 10**7
    t_video_first = cam_clock.to_rig_ns(0)
    t_video_last = cam_clock.to_rig_ns(int((n_video - 1) / fps * 1e9))
    lo, hi = max(t_video_first, int(t_radar[0])), min(t_video_last, int(t_radar[-1]))
    if hi < lo:
        raise CalibrationError(
            f"{video.name} and {radar_capture.name} do not overlap in time on the rig clock (video "
            f"{t_video_first / 1e9:.2f}..{t_video_last / 1e9:.2f} s, radar {t_radar[0] / 1e9:.2f}.."
            f"{t_radar[-1] / 1e9:.2f} s); check clock_offset_ns of {camera_id} and {radar_id} in the rig file, "
            f"or run `fusion calibrate time` first")
    wanted_t = np.linspace(lo, hi, frames + 2)[1:-1] if frames > 1 else np.array([(lo + hi) / 2])
    wanted = sorted({int(round((t - cam_clock.clock_offset_ns) / 1e9 * fps)) for t in wanted_t})
    tol_ns = (tolerance_ms if tolerance_ms is not None else max(radar_period_ms / 2 + 1.0, 500.0 / fps)) * 1e6
    dop = np.concatenate([np.abs(f.points[:, 3]) for f in radar_frames if f.num_points] or [np.zeros(1)])
    vmax = float(max(0.5, np.percentile(dop, 98))) if dop.size else 2.0
    vmax = float(np.ceil(vmax * 10) / 10)
    rng_all = np.concatenate([np.linalg.norm(f.points[:, :3], axis=1) for f in radar_frames if f.num_points]
                             or [np.ones(1)])
    rmax = float(max(1.0, np.ceil(np.percentile(rng_all, 98))))
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    written, summary = [], []
    index = 0
    todo = set(wanted)
    bar = tqdm(total=len(wanted), desc="overlay", unit="frame", disable=not progress, leave=False)
    while todo:
        ok, frame = cap.read()
        if not ok:
            break
        if index in todo:
            todo.discard(index)
            t_rig = cam_clock.to_rig_ns(int(round(index / fps * 1e9)))
            k = int(np.argmin(np.abs(t_radar - t_rig)))
            dt_ms = (t_radar[k] - t_rig) / 1e6
            rf = radar_frames[k]
            if abs(dt_ms) * 1e6 > tol_ns:
                summary.append({"video_frame": index, "radar_frame": None, "dt_ms": dt_ms})
                bar.update(1)
                index += 1
                continue
            n_vis = int(camera.project(T.apply(rf.points[:, :3]))[1].sum()) if rf.num_points else 0
            header = [f"{video.name} frame {index} (t_rig {t_rig / 1e9:.3f} s) + radar frame {rf.frame_number} "
                      f"(dt {dt_ms:+.0f} ms)",
                      f"{radar_id} -> {camera_id}: points coloured by {color_by}, {n_vis} of {rf.num_points} in view"]
            picture, _ = draw_radar_overlay(frame, rf.points, camera, T, color_by=color_by, vmax=vmax, rmax=rmax,
                                            header=header)
            path = out_dir / f"check_{len(written):03d}_frame{index:05d}.png"
            if not cv2.imwrite(str(path), picture):
                raise CalibrationError(f"{path}: cannot write (check --out is writable)")
            written.append(str(path))
            summary.append({"video_frame": index, "radar_frame": rf.frame_number, "dt_ms": dt_ms,
                            "points": rf.num_points, "visible": n_vis, "picture": str(path)})
            bar.update(1)
        index += 1
    bar.close()
    cap.release()
    if not written:
        raise CalibrationError(f"{video.name}: no video frame had a radar frame within {tol_ns / 1e6:.0f} ms "
                               f"(video has {index} frames); check --radar-period-ms and the rig clock offsets")
    report = {"command": "check", "rig": str(rig_path), "video": str(video), "radar_capture": str(radar_capture),
              "color_by": color_by, "pictures": written, "frames": summary}
    (out_dir / "check.json").write_text(json.dumps(report, indent=2) + "\n")
    vis = sum(s.get("visible", 0) for s in summary)
    tot = sum(s.get("points", 0) for s in summary)
    echo(f"fusion calibrate check: {len(written)} pictures in {out_dir} ({vis} of {tot} radar points in view)")
    return report
