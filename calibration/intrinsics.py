"""Camera intrinsics from checkerboard pictures: detection, sub-pixel refinement, calibrateCamera.

``fusion calibrate intrinsics --images DIR --pattern 9x6 --square-mm 25 --out rig.yaml`` runs
:func:`run_intrinsics`: every picture in the folder is read and searched for the board (OpenCV's
classic detector with sub-pixel refinement, falling back to the sector-based detector), the
camera is calibrated with ``cv2.calibrateCamera`` (k1, k2, p1, p2, k3), pictures whose
reprojection error stands far above the others are dropped and the fit repeated, and the result
goes into the rig file with its provenance. A report (RMS and per-picture errors, every rejected
picture with its reason) is printed and written as JSON, and an undistorted preview is written
next to the rig file.

``COLSxROWS`` counts **inner corners**: a board of 10 x 7 squares is ``9x6``.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

from fusion_node.errors import ConfigError
from fusion_node.rig import Intrinsics, Provenance, load_rig, now_iso, update_rig_sensor

from .errors import CalibrationError
from .projection import CameraModel

__all__ = [
    "IMAGE_EXTENSIONS",
    "parse_pattern",
    "board_object_points",
    "find_board",
    "list_images",
    "IntrinsicsResult",
    "calibrate_images",
    "write_undistorted_preview",
    "run_intrinsics",
]

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp", ".pgm", ".ppm", ".pnm")
MIN_VIEWS = 3


def parse_pattern(text: str) -> tuple[int, int]:
    """``"9x6"`` -> (9, 6): inner corners along the board's columns and rows."""
    try:
        cols, rows = (int(v) for v in str(text).lower().replace("*", "x").split("x"))
    except ValueError:
        raise ConfigError(f"--pattern: expected COLSxROWS of inner corners such as 9x6, got {text!r}") from None
    if cols < 2 or rows < 2 or cols > 100 or rows > 100:
        raise ConfigError(f"--pattern: need 2 to 100 inner corners each way, got {text!r}")
    return cols, rows


def board_object_points(pattern: tuple[int, int], square_m: float) -> np.ndarray:
    """Board corner positions (cols*rows, 3) in the board frame, metres, in OpenCV's detection order."""
    cols, rows = pattern
    grid = np.zeros((rows * cols, 3), np.float32)
    grid[:, :2] = np.mgrid[0:cols, 0:rows].T.reshape(-1, 2) * square_m
    return grid


def find_board(gray: np.ndarray, pattern: tuple[int, int]) -> tuple[np.ndarray | None, str]:
    """Find the board's inner corners in a grey image: ``(corners (N, 1, 2) float32 or None, detector)``.

    The classic detector runs first and its corners are refined with ``cornerSubPix`` (window
    sized from the corner spacing, so neighbouring corners stay out of it); when it finds nothing
    the sector-based detector (``findChessboardCornersSB``, already sub-pixel) has a go.
    """
    flags = cv2.CALIB_CB_ADAPTIVE_THRESH | cv2.CALIB_CB_NORMALIZE_IMAGE | cv2.CALIB_CB_FAST_CHECK
    ok, corners = cv2.findChessboardCorners(gray, pattern, flags=flags)
    if ok:
        pts = corners.reshape(pattern[1], pattern[0], 2)
        spacing = min(np.linalg.norm(np.diff(pts, axis=0), axis=2).min(),
                      np.linalg.norm(np.diff(pts, axis=1), axis=2).min())
        half = int(np.clip(spacing * 0.4, 2, 11))
        criteria = (cv2.TERM_CRITERIA_EPS + cv2.TERM_CRITERIA_MAX_ITER, 50, 1e-4)
        corners = cv2.cornerSubPix(gray, corners, (half, half), (-1, -1), criteria)
        return corners.astype(np.float32), "findChessboardCorners+cornerSubPix"
    ok, corners = cv2.findChessboardCornersSB(gray, pattern, flags=cv2.CALIB_CB_EXHAUSTIVE | cv2.CALIB_CB_ACCURACY)
    if ok:
        return corners.astype(np.float32).reshape(-1, 1, 2), "findChessboardCornersSB"
    return None, ""


def list_images(folder: str | Path) -> tuple[list[Path], list[Path]]:
    """Pictures of a folder by extension, sorted: ``(images, other files)``; hidden files skipped."""
    folder = Path(folder)
    if not folder.is_dir():
        raise ConfigError(f"--images {folder}: no such folder (give the folder holding the checkerboard pictures)")
    images, others = [], []
    for p in sorted(folder.iterdir()):
        if p.name.startswith(".") or not p.is_file():
            continue
        (images if p.suffix.lower() in IMAGE_EXTENSIONS else others).append(p)
    return images, others


@dataclass
class IntrinsicsResult:
    """The outcome of :func:`calibrate_images`."""

    camera: CameraModel
    rms_px: float
    per_view: list[tuple[str, float]]
    rejected: list[tuple[str, str]]
    pattern: tuple[int, int]
    square_mm: float
    views: list[Path] = field(default_factory=list)
    corners: list[np.ndarray] = field(default_factory=list)
    rvecs: list[np.ndarray] = field(default_factory=list)
    tvecs: list[np.ndarray] = field(default_factory=list)
    detectors: Counter = field(default_factory=Counter)

    def provenance(self, folder: str | Path) -> Provenance:
        cols, rows = self.pattern
        return Provenance(
            date=now_iso(),
            method=(f"checkerboard {cols}x{rows} inner corners, {self.square_mm:g} mm squares, "
                    f"{len(self.per_view)} of {len(self.per_view) + len(self.rejected)} pictures in "
                    f"{Path(folder).name}/, cv2.calibrateCamera (k1 k2 p1 p2 k3)"),
            residual=round(self.rms_px, 4), residual_unit="px",
            details={"views_used": len(self.per_view), "views_rejected": len(self.rejected),
                     "worst_view_px": round(max(e for _, e in self.per_view), 4)},
        )

    def to_intrinsics(self, folder: str | Path) -> Intrinsics:
        return self.camera.to_intrinsics(self.provenance(folder))

    def report(self) -> dict:
        K, d = self.camera.K, self.camera.dist
        return {
            "pattern": f"{self.pattern[0]}x{self.pattern[1]}",
            "square_mm": self.square_mm,
            "image_size": list(self.camera.size),
            "rms_px": self.rms_px,
            "views_used": len(self.per_view),
            "intrinsics": {"fx_px": K[0, 0], "fy_px": K[1, 1], "cx_px": K[0, 2], "cy_px": K[1, 2],
                           "k1": d[0], "k2": d[1], "p1": d[2], "p2": d[3], "k3": d[4]},
            "per_image": [{"image": n, "error_px": e} for n, e in self.per_view],
            "rejected": [{"image": n, "reason": r} for n, r in self.rejected],
            "detectors": dict(self.detectors),
        }

    def report_text(self) -> str:
        K, d = self.camera.K, self.camera.dist
        lines = [
            f"  RMS reprojection error {self.rms_px:.3f} px over {len(self.per_view)} pictures",
            f"  fx {K[0, 0]:.2f} px  fy {K[1, 1]:.2f} px  cx {K[0, 2]:.2f} px  cy {K[1, 2]:.2f} px  "
            f"({self.camera.size[0]}x{self.camera.size[1]})",
            f"  k1 {d[0]:.5f}  k2 {d[1]:.5f}  p1 {d[2]:.6f}  p2 {d[3]:.6f}  k3 {d[4]:.5f}",
            "  per picture (RMS px): " + ", ".join(f"{n} {e:.3f}" for n, e in self.per_view),
        ]
        if self.rejected:
            lines.append(f"  rejected {len(self.rejected)}:")
            lines += [f"    {n}: {r}" for n, r in self.rejected]
        return "\n".join(lines)


def _read_gray(path: Path) -> np.ndarray | None:
    data = np.fromfile(str(path), dtype=np.uint8)
    if data.size == 0:
        return None
    level = cv2.utils.logging.getLogLevel()
    cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_SILENT)  # the reason is reported, not logged
    try:
        image = cv2.imdecode(data, cv2.IMREAD_GRAYSCALE)
    finally:
        cv2.utils.logging.setLogLevel(level)
    return image if image is not None and image.size else None


def _view_errors(obj: list[np.ndarray], img: list[np.ndarray], K, dist, rvecs, tvecs) -> np.ndarray:
    errs = []
    for o, i, r, t in zip(obj, img, rvecs, tvecs):
        proj, _ = cv2.projectPoints(o, r, t, K, dist)
        errs.append(float(np.sqrt(np.mean(np.sum((proj.reshape(-1, 2) - i.reshape(-1, 2)) ** 2, axis=1)))))
    return np.array(errs)


def calibrate_images(paths: list[Path], pattern: tuple[int, int], square_mm: float, *, folder: str | Path = "",
                     fix_k3: bool = False, drop_outlier_views: bool = True,
                     progress: bool = True) -> IntrinsicsResult:
    """Detect the board in each picture and calibrate; CalibrationError with fewer than 3 usable views."""
    from tqdm import tqdm

    if square_mm <= 0:
        raise ConfigError(f"--square-mm: must be positive, got {square_mm}")
    folder = Path(folder) if folder else (paths[0].parent if paths else Path("."))
    found: list[tuple[Path, tuple[int, int], np.ndarray, str]] = []
    rejected: list[tuple[str, str]] = []
    sizes: Counter = Counter()
    cols, rows = pattern
    for path in tqdm(paths, desc="checkerboard", unit="img", disable=not progress, leave=False):
        gray = _read_gray(path)
        if gray is None:
            rejected.append((path.name, "unreadable: not an image, or a corrupt file"))
            continue
        size = (gray.shape[1], gray.shape[0])
        sizes[size] += 1
        corners, detector = find_board(gray, pattern)
        if corners is None:
            rejected.append((path.name, f"no board found ({cols}x{rows} inner corners)"))
            continue
        found.append((path, size, corners, detector))
    if not sizes:
        raise CalibrationError(f"{folder}: none of the {len(paths)} pictures could be read")
    size = sizes.most_common(1)[0][0]
    kept = []
    for path, s, corners, detector in found:
        if s != size:
            rejected.append((path.name, f"wrong size {s[0]}x{s[1]}, the other pictures are {size[0]}x{size[1]}"))
        else:
            kept.append((path, corners, detector))
    if len(kept) < MIN_VIEWS:
        reasons = Counter(r.split(" (")[0].split(",")[0] for _, r in rejected)
        summary = ", ".join(f"{n} {r}" for r, n in reasons.most_common()) or "no pictures"
        raise CalibrationError(
            f"{folder}: only {len(kept)} usable checkerboard view(s), at least {MIN_VIEWS} are needed "
            f"({len(paths)} pictures: {summary}). Check --pattern counts inner corners (a board of 10x7 squares is "
            f"9x6), that the whole board is in each picture, and take 10-20 pictures at varied angles and positions.")

    obj_one = board_object_points(pattern, square_mm / 1000.0)
    flags = cv2.CALIB_FIX_K3 if fix_k3 else 0
    criteria = (cv2.TERM_CRITERIA_EPS + cv2.TERM_CRITERIA_MAX_ITER, 100, 1e-12)

    def solve(views):
        obj = [obj_one] * len(views)
        img = [c for _, c, _ in views]
        rms, K, dist, rvecs, tvecs = cv2.calibrateCamera(obj, img, size, None, None, flags=flags, criteria=criteria)
        return rms, K, dist.ravel(), rvecs, tvecs, _view_errors(obj, img, K, dist, rvecs, tvecs)

    rms, K, dist, rvecs, tvecs, errs = solve(kept)
    if drop_outlier_views and len(kept) > MIN_VIEWS:
        limit = max(1.0, 4.0 * float(np.median(errs)))
        bad = [i for i, e in enumerate(errs) if e > limit]
        if bad and len(kept) - len(bad) >= MIN_VIEWS:
            for i in bad:
                rejected.append((kept[i][0].name, f"reprojection error {errs[i]:.2f} px, over {limit:.2f} px "
                                                  f"(4x the median): board misdetected or moving?"))
            kept = [v for i, v in enumerate(kept) if i not in bad]
            rms, K, dist, rvecs, tvecs, errs = solve(kept)

    order = {p.name: i for i, p in enumerate(paths)}
    rejected.sort(key=lambda r: order.get(r[0], 0))
    dist5 = np.zeros(5)
    dist5[: min(5, dist.size)] = dist[:5]
    return IntrinsicsResult(
        camera=CameraModel(K, dist5, size), rms_px=float(rms),
        per_view=[(p.name, float(e)) for (p, _, _), e in zip(kept, errs)], rejected=rejected,
        pattern=pattern, square_mm=float(square_mm), views=[p for p, _, _ in kept],
        corners=[c for _, c, _ in kept], rvecs=list(rvecs), tvecs=list(tvecs),
        detectors=Counter(d for _, _, d in kept))


def write_undistorted_preview(result: IntrinsicsResult, out_path: str | Path) -> Path:
    """Write a side-by-side picture: a calibration view as taken, and undistorted.

    The view whose rows of corners bend most is used (it shows distortion best). On both sides
    each row and column of corners is drawn in green through the corners and in red as the
    straight line between its two end corners: as taken, distortion bends the green lines away
    from the red ones; undistorted, they coincide.
    """
    out_path = Path(out_path)
    cam = result.camera
    idx = int(np.argmax([_bending_px(c.reshape(-1, 2), result.pattern) for c in result.corners]))
    image = cv2.imread(str(result.views[idx]), cv2.IMREAD_COLOR)
    corners = result.corners[idx].reshape(-1, 2)
    undistorted = cam.undistort_image(image)
    xy = cam.pixels_to_normalized(corners)
    ucorners = np.stack([xy[:, 0] * cam.K[0, 0] + cam.K[0, 2], xy[:, 1] * cam.K[1, 1] + cam.K[1, 2]], axis=1)
    cols, rows = result.pattern
    thick = max(1, round(cam.size[0] / 640))
    left, right = image.copy(), undistorted.copy()
    for img, pts in ((left, corners), (right, ucorners)):
        grid = pts.reshape(rows, cols, 2)
        for line in list(grid) + list(grid.transpose(1, 0, 2)):
            cv2.line(img, _pt(line[0]), _pt(line[-1]), (0, 0, 255), thick, cv2.LINE_AA)
            cv2.polylines(img, [np.round(line * 4).astype(np.int32)], False, (0, 200, 0), thick, cv2.LINE_AA, 2)
    d = cam.dist
    _label(left, f"as taken: {result.views[idx].name}")
    _label(right, f"undistorted  k1={d[0]:.3f} k2={d[1]:.3f}  RMS {result.rms_px:.3f} px")
    sep = np.full((image.shape[0], 4, 3), 255, np.uint8)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    if not cv2.imwrite(str(out_path), np.hstack([left, sep, right])):
        raise CalibrationError(f"{out_path}: cannot write the preview image (check the folder is writable)")
    return out_path


def _bending_px(corners: np.ndarray, pattern: tuple[int, int]) -> float:
    """Largest distance of a corner from the chord of its row or column, pixels."""
    cols, rows = pattern
    grid = corners.reshape(rows, cols, 2)
    worst = 0.0
    for line in list(grid) + list(grid.transpose(1, 0, 2)):
        a, b = line[0], line[-1]
        d = b - a
        n = np.array([-d[1], d[0]]) / max(np.linalg.norm(d), 1e-9)
        worst = max(worst, float(np.abs((line - a) @ n).max()))
    return worst


def _pt(p) -> tuple[int, int]:
    return int(round(float(p[0]))), int(round(float(p[1])))


def _label(image: np.ndarray, text: str) -> None:
    scale = image.shape[1] / 1280
    cv2.rectangle(image, (0, 0), (image.shape[1], int(34 * scale + 10)), (0, 0, 0), -1)
    cv2.putText(image, text, (8, int(26 * scale + 4)), cv2.FONT_HERSHEY_SIMPLEX, 0.9 * scale + 0.1,
                (255, 255, 255), 1, cv2.LINE_AA)


def run_intrinsics(images_dir: str | Path, pattern: str, square_mm: float, out: str | Path,
                   sensor_id: str = "cam0", *, fix_k3: bool = False, progress: bool = True,
                   echo=print) -> dict:
    """The ``fusion calibrate intrinsics`` command: calibrate, update the rig file, write the report.

    Returns the report (also written as ``<out stem>_intrinsics.json`` next to ``out``).
    """
    folder = Path(images_dir)
    pat = parse_pattern(pattern)
    images, others = list_images(folder)
    if not images:
        raise CalibrationError(f"{folder}: no pictures ({', '.join(IMAGE_EXTENSIONS)}) in this folder"
                               + (f"; it holds {len(others)} other file(s)" if others else ""))
    out = Path(out)
    if out.exists():
        load_rig(out)  # a broken rig file is reported before the work, not after
    result = calibrate_images(images, pat, square_mm, folder=folder, fix_k3=fix_k3, progress=progress)
    update_rig_sensor(out, sensor_id, "camera", intrinsics=result.to_intrinsics(folder))
    preview = write_undistorted_preview(result, out.with_name(f"{out.stem}_undistorted.png"))
    report = {"command": "intrinsics", "images_dir": str(folder), "rig": str(out), "sensor_id": sensor_id,
              **result.report(), "preview": str(preview),
              "ignored_files": [p.name for p in others]}
    report_path = out.with_name(f"{out.stem}_intrinsics.json")
    report_path.write_text(json.dumps(report, indent=2) + "\n")
    echo(f"fusion calibrate intrinsics: {sensor_id} from {len(result.per_view)} of {len(images)} pictures in "
         f"{folder} ({pat[0]}x{pat[1]} inner corners, {square_mm:g} mm squares)")
    echo(result.report_text())
    echo(f"  wrote {out} (sensor {sensor_id}: intrinsics), preview {preview}, report {report_path}")
    return report
