"""Simulated calibration data with known truth, for the tests and the documentation pictures.

* :func:`render_checkerboard` / :func:`checkerboard_views`: pictures of a checkerboard seen by a
  known distorted camera at known poses, with blur and noise;
* :func:`simulate_correspondences`: radar detections of a reflector and their pixel positions
  for a known radar-to-camera transform, with pixel noise and gross outliers;
* :func:`simulate_recording`: a short rig recording (video, TI radar capture, audio) of targets
  moving in bursts, each sensor's clock shifted by a known offset;

``python -m calibration.synthetic --out DIR`` writes a complete example data set (the one the
walkthrough in ``docs/calibration.md`` runs on) together with ``truth.json``.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from fusion_node.rig import Clock, Provenance, Rig, SensorCalibration, now_iso, save_rig
from sensors.ti_writer import write_capture

from .projection import RADAR_AXES_IN_CAMERA, CameraModel, Transform

__all__ = [
    "TRUE_CAMERA",
    "TRUE_T_CAM_RADAR",
    "render_checkerboard",
    "checkerboard_poses",
    "checkerboard_views",
    "write_checkerboard_folder",
    "simulate_correspondences",
    "Scene",
    "simulate_recording",
    "truth_rig",
]

#: The simulated camera: 768x432 like the bundled videos, noticeable barrel distortion.
TRUE_CAMERA = CameraModel(np.array([[612.0, 0.0, 389.5], [0.0, 609.5, 213.0], [0.0, 0.0, 1.0]]),
                          np.array([-0.27, 0.085, 0.0012, -0.0009, -0.01]), (768, 432))

#: The simulated radar mounting: 7 cm below and 2 cm right of the camera, boresight along the
#: optical axis, turned 2 degrees left, pitched 3 degrees down, rolled 1 degree.
TRUE_T_CAM_RADAR = Transform(
    cv2.Rodrigues(np.radians([3.0, 2.0, 1.0]))[0] @ RADAR_AXES_IN_CAMERA, np.array([0.02, 0.07, 0.01]))


# --- checkerboards -----------------------------------------------------------------------------


def _normalized_grid(camera: CameraModel, ss: int) -> np.ndarray:
    """Ideal normalised coordinates of ss x ss sub-samples of every pixel, shape (h*ss, w*ss, 2).

    Exact on a lattice every 4 pixels, bicubic spline in between (error ~1e-6 px).
    """
    from scipy.interpolate import RectBivariateSpline

    w, h = camera.size
    u = (np.arange(w * ss) + 0.5) / ss - 0.5
    v = (np.arange(h * ss) + 0.5) / ss - 0.5
    uc = np.linspace(u[0], u[-1], max(4, w // 4 + 1))
    vc = np.linspace(v[0], v[-1], max(4, h // 4 + 1))
    uu, vv = np.meshgrid(uc, vc)
    xy = camera.pixels_to_normalized(np.stack([uu.ravel(), vv.ravel()], axis=1)).reshape(vc.size, uc.size, 2)
    gx = RectBivariateSpline(vc, uc, xy[..., 0])(v, u)
    gy = RectBivariateSpline(vc, uc, xy[..., 1])(v, u)
    return np.stack([gx, gy], axis=-1)


_GRID_CACHE: dict[tuple, np.ndarray] = {}


def render_checkerboard(camera: CameraModel, pattern: tuple[int, int], square_m: float, rvec, tvec, *,
                        blur_sigma_px: float = 0.7, noise_sigma: float = 2.0, rng: np.random.Generator | None = None,
                        ss: int = 3, background: int = 110) -> np.ndarray:
    """A grey picture (h, w) uint8 of a checkerboard posed at (rvec, tvec) board-to-camera.

    The board frame matches :func:`calibration.intrinsics.board_object_points`: inner corner
    (i, j) sits at (i, j, 0) * square_m. The board has (cols+1) x (rows+1) squares and a white
    margin one square wide. Each pixel averages ss x ss sub-samples (anti-aliasing), then the
    picture is blurred and Gaussian noise added.
    """
    rng = rng if rng is not None else np.random.default_rng(0)
    key = (camera.K.tobytes(), camera.dist.tobytes(), camera.size, ss)
    if key not in _GRID_CACHE:
        _GRID_CACHE.clear()
        _GRID_CACHE[key] = _normalized_grid(camera, ss).astype(np.float32)
    xy = _GRID_CACHE[key]
    R, _ = cv2.Rodrigues(np.asarray(rvec, dtype=np.float64).reshape(3, 1))
    t = np.asarray(tvec, dtype=np.float64).reshape(3)
    H = np.column_stack([R[:, 0], R[:, 1], t])  # board (x, y, 1) -> camera ray (up to scale)
    Hinv = np.linalg.inv(H)
    cols, rows = pattern
    # board coordinates in units of squares, through the inverse homography
    A = (Hinv[:2] / square_m).astype(np.float32)
    Hw = Hinv[2].astype(np.float32)
    xs, ys = xy[..., 0], xy[..., 1]
    W = Hw[0] * xs + Hw[1] * ys + Hw[2]
    with np.errstate(divide="ignore", invalid="ignore"):
        bx = (A[0, 0] * xs + A[0, 1] * ys + A[0, 2]) / W
        by = (A[1, 0] * xs + A[1, 1] * ys + A[1, 2]) / W
    i = np.floor(bx)
    j = np.floor(by)
    on_squares = (i >= -1) & (i <= cols - 1) & (j >= -1) & (j <= rows - 1)
    on_board = (i >= -2) & (i <= cols) & (j >= -2) & (j <= rows) & (W > 0)
    black = on_squares & (np.remainder(i + j, 2) == 0)
    # a gentle light falloff across the board, like a print under a lamp
    shade = 225.0 - 27.0 * np.minimum((bx / cols) ** 2 + (by / rows) ** 2, 2.0)
    h, w = camera.size[1], camera.size[0]
    # a cluttered but smooth room behind the board
    backdrop = cv2.resize(rng.uniform(background - 50, background + 50, (6, 10)).astype(np.float32),
                          (w * ss, h * ss), interpolation=cv2.INTER_CUBIC)
    value = np.where(on_board, np.where(black, np.float32(28.0), shade), backdrop)
    img = value.reshape(h, ss, w, ss).mean(axis=(1, 3))
    if blur_sigma_px > 0:
        img = cv2.GaussianBlur(img, (0, 0), blur_sigma_px)
    if noise_sigma > 0:
        img = img + rng.normal(0.0, noise_sigma, img.shape)
    return np.clip(np.round(img), 0, 255).astype(np.uint8)


def checkerboard_poses(camera: CameraModel, pattern: tuple[int, int], square_m: float, n: int,
                       rng: np.random.Generator, margin_px: float = 8.0) -> list[tuple[np.ndarray, np.ndarray]]:
    """``n`` varied board poses (rvec, tvec) with the whole board (margin included) in the image.

    Tilts reach 40 degrees and the board visits the image corners, which is what constrains
    distortion and the principal point.
    """
    cols, rows = pattern
    outline = np.array([[-2, -2, 0], [cols, -2, 0], [cols, rows, 0], [-2, rows, 0]], float) * square_m
    centre = np.array([(cols - 2) / 2, (rows - 2) / 2, 0.0]) * square_m
    width_m = (cols + 2) * square_m
    poses: list[tuple[np.ndarray, np.ndarray]] = []
    targets = [(0.5, 0.5), (0.22, 0.25), (0.78, 0.25), (0.22, 0.75), (0.78, 0.75), (0.5, 0.25), (0.5, 0.75),
               (0.2, 0.5), (0.8, 0.5)]
    tries = 0
    while len(poses) < n:
        tries += 1
        if tries > 20000:
            raise RuntimeError("checkerboard_poses: could not place the board; is it larger than the view?")
        tx, ty = targets[len(poses) % len(targets)]
        tx += rng.uniform(-0.06, 0.06)
        ty += rng.uniform(-0.06, 0.06)
        # distance so that the board spans 30-60 % of the image width
        frac = rng.uniform(0.75, 0.9) if len(poses) == 0 else rng.uniform(0.3, 0.6)
        z = camera.K[0, 0] * width_m / (frac * camera.size[0])
        ray = camera.unproject(np.array([[tx * camera.size[0], ty * camera.size[1]]]))[0]
        c = ray / ray[2] * z
        angles = np.radians(rng.uniform(-40, 40, 2))
        roll = np.radians(rng.uniform(-20, 20))
        rvec_tilt = np.array([angles[0], angles[1], 0.0])
        R = cv2.Rodrigues(np.array([0.0, 0.0, roll]))[0] @ cv2.Rodrigues(rvec_tilt)[0]
        t = c - R @ centre
        corners_cam = outline @ R.T + t
        if np.any(corners_cam[:, 2] < 0.05):
            continue
        px, visible = camera.project(corners_cam)
        w, h = camera.size
        if not visible.all() or px[:, 0].min() < margin_px or px[:, 1].min() < margin_px \
                or px[:, 0].max() > w - 1 - margin_px or px[:, 1].max() > h - 1 - margin_px:
            continue
        poses.append((cv2.Rodrigues(R)[0].ravel(), t))
    return poses


def checkerboard_views(camera: CameraModel = TRUE_CAMERA, pattern: tuple[int, int] = (9, 6),
                       square_m: float = 0.025, n: int = 15, seed: int = 7, **render) -> list[np.ndarray]:
    """``n`` rendered checkerboard pictures (grey uint8) of a known camera."""
    rng = np.random.default_rng(seed)
    poses = checkerboard_poses(camera, pattern, square_m, n, rng)
    return [render_checkerboard(camera, pattern, square_m, r, t, rng=rng, **render) for r, t in poses]


def write_checkerboard_folder(folder: str | Path, camera: CameraModel = TRUE_CAMERA,
                              pattern: tuple[int, int] = (9, 6), square_m: float = 0.025, n: int = 15,
                              seed: int = 7, bad: bool = True) -> list[Path]:
    """Write ``n`` rendered views as PNG into ``folder``; with ``bad``, also a blank picture, a
    corrupt file and a picture of the wrong size (which calibration must reject and name)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for k, img in enumerate(checkerboard_views(camera, pattern, square_m, n, seed)):
        p = folder / f"view_{k:02d}.png"
        cv2.imwrite(str(p), img)
        paths.append(p)
    if bad:
        w, h = camera.size
        rng = np.random.default_rng(seed + 1)
        blank = np.clip(rng.normal(128, 3, (h, w)), 0, 255).astype(np.uint8)
        cv2.imwrite(str(folder / "blank_wall.png"), blank)
        (folder / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n" + rng.bytes(2000))
        small = cv2.resize(cv2.imread(str(paths[0]), cv2.IMREAD_GRAYSCALE), (w // 2, h // 2))
        cv2.imwrite(str(folder / "thumbnail.png"), small)
        paths += [folder / "blank_wall.png", folder / "corrupt.png", folder / "thumbnail.png"]
    return paths


# --- radar-camera correspondences ---------------------------------------------------------------


def simulate_correspondences(camera: CameraModel = TRUE_CAMERA, T_cam_radar: Transform = TRUE_T_CAM_RADAR,
                             n: int = 60, outlier_fraction: float = 0.2, pixel_noise_px: float = 0.5,
                             radar_noise_m: float = 0.0, seed: int = 3) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A reflector at ``n`` places in front of the rig: ``(points_radar (n,3), pixels (n,2), is_outlier (n,))``.

    Places are spread over 1.5-9 m range, the radar's +-50 degree field of view and -0.6..+1.5 m
    height, kept where the camera sees them. Inliers get Gaussian pixel noise (and radar noise);
    outliers are gross mismatches: the pixel is replaced by a random spot in the image.
    """
    rng = np.random.default_rng(seed)
    points, pixels = [], []
    while len(points) < n:
        rng_m = rng.uniform(1.5, 9.0)
        az = np.radians(rng.uniform(-50, 50))
        height = rng.uniform(-0.6, 1.5)
        p = np.array([rng_m * np.sin(az), rng_m * np.cos(az), height])
        px, vis = camera.project(T_cam_radar.apply(p))
        if not vis[0]:
            continue
        points.append(p)
        pixels.append(px[0])
    points = np.array(points)
    pixels = np.array(pixels)
    pixels = pixels + rng.normal(0.0, pixel_noise_px, pixels.shape)
    if radar_noise_m > 0:
        points = points + rng.normal(0.0, radar_noise_m, points.shape)
    is_outlier = np.zeros(n, bool)
    k = int(round(outlier_fraction * n))
    idx = rng.choice(n, size=k, replace=False)
    is_outlier[idx] = True
    w, h = camera.size
    for i in idx:
        while True:
            cand = np.array([rng.uniform(0, w - 1), rng.uniform(0, h - 1)])
            if np.linalg.norm(cand - pixels[i]) > 40:
                pixels[i] = cand
                break
    return points, pixels, is_outlier


# --- a simulated rig recording ------------------------------------------------------------------


@dataclass
class Scene:
    """Targets moving in quick bursts in front of the rig (radar frame, metres).

    Each target has a home position and moves back and forth along a direction at burst
    instants: the velocity is a Gaussian bump of width ``burst_sigma_s`` around each instant,
    peaking at ``burst_speed_mps``, and each burst makes a short click in the audio at its centre
    (like a reflector being struck). Motion, doppler and sound peak together, which is what a
    data-only time calibration needs.
    """

    homes: np.ndarray  # (K, 3) radar frame
    directions: np.ndarray  # (K, 3) unit vectors, radar frame
    bursts: list[np.ndarray]  # per target, burst centre times (s, true time)
    signs: list[np.ndarray]  # per target, +1 / -1 per burst
    burst_sigma_s: float = 0.06
    burst_speed_mps: float = 2.0
    size_m: tuple[float, float] = (0.5, 1.0)
    clutter: np.ndarray | None = None  # (M, 3) static radar points

    @classmethod
    def random(cls, duration_s: float, n_targets: int = 3, mean_gap_s: float = 0.9, seed: int = 11) -> "Scene":
        """Targets at random spots 3-6 m out; bursts one at a time, 0.45 s or more apart, each
        given to a random target (like someone striking reflectors in turn)."""
        rng = np.random.default_rng(seed)
        homes, dirs = [], []
        for _ in range(n_targets):
            homes.append(np.array([rng.uniform(-1.5, 1.5), rng.uniform(3.0, 6.0), rng.uniform(-0.3, 0.5)]))
            ang = rng.uniform(0, 2 * np.pi)
            d = np.array([np.cos(ang), 1.0, 0.0])
            dirs.append(d / np.linalg.norm(d))
        times, t = [], 0.4 + rng.uniform(0, 0.5)
        while t < duration_s - 0.4:
            times.append(t)
            t += 0.45 + rng.exponential(max(0.05, mean_gap_s - 0.45))
        owner = rng.integers(0, n_targets, len(times))
        bursts = [np.array([tt for tt, o in zip(times, owner) if o == k]) for k in range(n_targets)]
        signs = [np.where(np.arange(b.size) % 2 == 0, 1.0, -1.0) for b in bursts]
        clutter = np.column_stack([rng.uniform(-4, 4, 12), rng.uniform(2, 10, 12), rng.uniform(-0.8, 1.5, 12)])
        return cls(np.array(homes), np.array(dirs), bursts, signs, clutter=clutter)

    def _speed_profile(self, k: int, t: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(displacement m, velocity m/s) of target k along its direction at true times t."""
        from scipy.special import erf

        t = np.asarray(t, dtype=np.float64)[..., None]
        c, s = self.bursts[k][None, :], self.signs[k][None, :]
        sig = self.burst_sigma_s
        vel = (s * self.burst_speed_mps * np.exp(-0.5 * ((t - c) / sig) ** 2)).sum(axis=-1)
        area = self.burst_speed_mps * sig * np.sqrt(np.pi / 2)
        disp = (s * area * (1 + erf((t - c) / (sig * np.sqrt(2))))).sum(axis=-1)
        return disp, vel

    def state(self, t: float) -> tuple[np.ndarray, np.ndarray]:
        """Target centre positions (K, 3) and velocities (K, 3) in the radar frame at true time t."""
        pos, vel = [], []
        for k in range(len(self.homes)):
            d, v = self._speed_profile(k, np.array([t]))
            pos.append(self.homes[k] + self.directions[k] * d[0])
            vel.append(self.directions[k] * v[0])
        return np.array(pos), np.array(vel)

    def radar_points(self, t: float, rng: np.random.Generator, noise_m: float = 0.03) -> np.ndarray:
        """Detections (N, 6) at true time t: a few points per target plus static clutter."""
        pos, vel = self.state(t)
        rows = []
        for p, v in zip(pos, vel):
            for _ in range(rng.integers(2, 5)):
                q = p + np.array([rng.uniform(-0.2, 0.2), rng.uniform(-0.1, 0.1), rng.uniform(-0.4, 0.4)])
                q = q + rng.normal(0, noise_m, 3)
                radial = float(v @ (q / np.linalg.norm(q)))
                rows.append([*q, radial + rng.normal(0, 0.02), rng.uniform(12, 30), rng.uniform(8, 12)])
        if self.clutter is not None:
            for q in self.clutter:
                if rng.random() < 0.7:
                    rows.append([*(q + rng.normal(0, noise_m, 3)), rng.normal(0, 0.01), rng.uniform(8, 18),
                                 rng.uniform(8, 12)])
        return np.array(rows, dtype=np.float64).reshape(-1, 6)

    def render(self, t: float, camera: CameraModel, T_cam_radar: Transform, background: np.ndarray) -> np.ndarray:
        """A BGR camera picture at true time t: the targets as filled boxes over the background."""
        img = background.copy()
        pos, _ = self.state(t)
        colours = [(40, 90, 220), (60, 170, 60), (200, 120, 40), (160, 60, 160)]
        w2, h2 = self.size_m[0] / 2, self.size_m[1] / 2
        order = np.argsort(-pos[:, 1])  # far first
        for k in order:
            p = pos[k]
            quad = np.array([[p[0] - w2, p[1], p[2] - h2], [p[0] + w2, p[1], p[2] - h2],
                             [p[0] + w2, p[1], p[2] + h2], [p[0] - w2, p[1], p[2] + h2]])
            px, vis = camera.project(T_cam_radar.apply(quad))
            if np.isnan(px).any():
                continue
            cv2.fillConvexPoly(img, np.round(px * 4).astype(np.int32), colours[k % len(colours)], cv2.LINE_AA, 2)
            cv2.polylines(img, [np.round(px * 4).astype(np.int32)], True, (20, 20, 20), 1, cv2.LINE_AA, 2)
        return img

    def audio(self, t: np.ndarray, rng: np.random.Generator, rate_hz: int) -> np.ndarray:
        """Audio samples at true times t: a low noise floor and a decaying click per burst."""
        x = rng.normal(0.0, 0.003, t.shape)
        click_len = int(0.03 * rate_hz)
        env = np.exp(-np.arange(click_len) / (0.004 * rate_hz))
        for k in range(len(self.homes)):
            for c in self.bursts[k]:
                i0 = int(np.ceil((c - t[0]) * rate_hz))
                if i0 < 0 or i0 >= t.size:
                    continue
                seg = slice(i0, min(t.size, i0 + click_len))
                n = seg.stop - seg.start
                x[seg] += 0.4 * env[:n] * rng.normal(0.0, 1.0, n)
        return np.clip(x, -1.0, 1.0).astype(np.float32)


def _background(camera: CameraModel, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    w, h = camera.size
    grey = rng.uniform(70, 190, (9, 16, 1))
    small = (grey + rng.uniform(-18, 18, (9, 16, 3))).astype(np.float32)  # muted colours
    img = cv2.resize(small, (w, h), interpolation=cv2.INTER_CUBIC)
    img[int(h * 0.62):] *= 0.7  # a floor
    return np.clip(img, 0, 255).astype(np.uint8)


def simulate_recording(out_dir: str | Path, duration_s: float = 20.0, *, camera: CameraModel = TRUE_CAMERA,
                       T_cam_radar: Transform = TRUE_T_CAM_RADAR, fps: float = 30.0, radar_period_s: float = 0.05,
                       audio_rate_hz: int = 16000, radar_offset_s: float = 0.0, audio_offset_s: float = 0.0,
                       video_size: tuple[int, int] | None = None, seed: int = 11,
                       scene: Scene | None = None) -> dict:
    """Write ``video.avi`` (MJPG), ``radar.dat`` (TI format) and ``audio.wav`` of one simulated scene.

    The camera clock is the reference. ``radar_offset_s`` / ``audio_offset_s`` are the clock
    offsets of those sensors in the rig-file convention (t_rig = t_sensor + offset): each file
    starts at its own clock's zero, so an event at true time t is found at t in the video and at
    t - offset in the radar and audio files. ``video_size`` scales the video down (the camera
    model is scaled with it). Returns the paths and the truth as a dict.
    """
    import soundfile as sf

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    scene = scene or Scene.random(duration_s, seed=seed)
    cam = camera
    if video_size is not None and tuple(video_size) != camera.size:
        sx, sy = video_size[0] / camera.size[0], video_size[1] / camera.size[1]
        K = camera.K.copy()
        K[0] *= sx
        K[1] *= sy
        cam = CameraModel(K, camera.dist, tuple(video_size))
    background = _background(cam, seed)
    video = out / "video.avi"
    writer = cv2.VideoWriter(str(video), cv2.VideoWriter_fourcc(*"MJPG"), fps, cam.size)
    if not writer.isOpened():
        raise RuntimeError(f"cannot write {video}: OpenCV has no MJPG writer")
    for i in range(int(duration_s * fps)):
        writer.write(scene.render(i / fps, cam, T_cam_radar, background))
    writer.release()
    frames = []
    n_radar = int((duration_s - max(0.0, -radar_offset_s) - 0.1) / radar_period_s)
    for j in range(max(1, n_radar)):
        frames.append(scene.radar_points(j * radar_period_s + radar_offset_s, rng))
    radar = write_capture(out / "radar.dat", frames, first_frame_number=1000)
    n_audio = int((duration_s - max(0.0, -audio_offset_s)) * audio_rate_hz)
    t_audio = np.arange(n_audio) / audio_rate_hz + audio_offset_s
    audio = out / "audio.wav"
    sf.write(str(audio), scene.audio(t_audio, rng, audio_rate_hz), audio_rate_hz, subtype="PCM_16")
    return {"video": str(video), "radar": str(radar), "audio": str(audio), "fps": fps,
            "radar_period_s": radar_period_s, "audio_rate_hz": audio_rate_hz,
            "radar_offset_s": radar_offset_s, "audio_offset_s": audio_offset_s, "duration_s": duration_s,
            "video_size": list(cam.size)}


def truth_rig(camera: CameraModel = TRUE_CAMERA, T_cam_radar: Transform = TRUE_T_CAM_RADAR,
              radar_offset_s: float = 0.0, audio_offset_s: float = 0.0, name: str = "sim-rig") -> Rig:
    """The simulated rig's true calibration (rig frame = camera frame)."""
    prov = Provenance(date=now_iso(), method="simulation ground truth (calibration/synthetic.py)")
    return Rig(rig=name, sensors=[
        SensorCalibration(id="cam0", kind="camera", intrinsics=camera.to_intrinsics(prov),
                          extrinsics=Transform.identity().to_extrinsics(prov)),
        SensorCalibration(id="radar0", kind="radar", extrinsics=T_cam_radar.to_extrinsics(prov),
                          clock=Clock(clock_offset_ns=int(round(radar_offset_s * 1e9)), provenance=prov)),
        SensorCalibration(id="mic0", kind="audio", clock=Clock(clock_offset_ns=int(round(audio_offset_s * 1e9)),
                                                               provenance=prov)),
    ])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m calibration.synthetic",
                                description="Write a simulated calibration data set with known truth.")
    p.add_argument("--out", required=True, help="folder to write into")
    p.add_argument("--duration", type=float, default=20.0, help="recording length, seconds")
    p.add_argument("--radar-offset-ms", type=float, default=-65.0, help="radar clock offset (t_rig = t_radar + offset)")
    p.add_argument("--audio-offset-ms", type=float, default=40.0, help="audio clock offset")
    args = p.parse_args(argv)
    out = Path(args.out)
    write_checkerboard_folder(out / "checkerboard")
    pts, px, outlier = simulate_correspondences()
    with (out / "reflector.csv").open("w") as fh:
        fh.write("x_m,y_m,z_m,u_px,v_px\n")
        for q, u in zip(pts, px):
            fh.write(f"{q[0]:.4f},{q[1]:.4f},{q[2]:.4f},{u[0]:.2f},{u[1]:.2f}\n")
    rec = simulate_recording(out / "recording", args.duration, radar_offset_s=args.radar_offset_ms / 1000,
                             audio_offset_s=args.audio_offset_ms / 1000)
    save_rig(truth_rig(radar_offset_s=args.radar_offset_ms / 1000, audio_offset_s=args.audio_offset_ms / 1000),
             out / "truth_rig.yaml")
    (out / "truth.json").write_text(json.dumps({"recording": rec, "outliers": int(outlier.sum())}, indent=2))
    print(f"wrote {out}: checkerboard/, reflector.csv, recording/, truth_rig.yaml, truth.json")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
