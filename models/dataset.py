"""Training and evaluation data: simulated tri-modal windows, already preprocessed like the node does.

Each sample is one synchronised set: the camera frame at the reference time, the radar frame
at the same time pooled with the frames just before it (:func:`radar_window`) and the audio
window ending at it, passed through the very preprocessing the
node runs (:mod:`fusion_node.preprocess`), so the models see exactly what they will see live.
Camera images are stored as the resized uint8 picture (the normalisation is a fixed affine map
applied per batch), audio as float16 log-mel; a dataset of 20 000 windows takes under 1 GB.

Generation is deterministic given (seed, split, adverse, real recordings) and parallel over
worker processes; ``DATA_VERSION`` changes whenever what a seed produces changes. Third-party
recordings (``real_dir``, the ``--real-clips`` folder) are read from where they lie and never
copied into the package.
"""

from __future__ import annotations

import multiprocessing as mp
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from fusion_node.errors import ConfigError
from fusion_node.radar_projection import RadarProjection
from fusion_node.rig import load_rig
from fusion_node.preprocess import AudioPreprocess, CameraPreprocess, RadarPreprocess
from fusion_node.vocabulary import CLASSES, WIRE_AUDIO_RATE_HZ
from sensors.audio import load_audio_file
from sensors.sim.assets import Assets, load_assets, real_tag
from sensors.sim.render import render_audio, render_camera, render_radar
from sensors.sim.world import RigGeometry, Scene, sample_scene, scene_labels
from sensors.ti_mmwave import read_capture

__all__ = ["DATA_VERSION", "RADAR_FRAME_INTERVAL_S", "Windows", "PREPROCESS", "generate", "load_or_generate",
           "radar_window", "scene_sequences", "windows_from_recordings"]

DATA_VERSION = "sim-v7"
# The simulated radar's frame interval (10 Hz, as the live simulator and the demo capture run it).
RADAR_FRAME_INTERVAL_S = 0.1

PREPROCESS = {
    "camera": CameraPreprocess(size_hw=(96, 96)),
    # The sim's own geometry (RigGeometry's defaults) is the nominal one the bundle records.
    # A window's radar points are those of the radar's last three frames (0.3 s at 10 Hz).
    "radar": RadarPreprocess(max_points=64, image_features=True, stack_frames=3),
    "audio": AudioPreprocess(window_s=1.0),
}


@dataclass
class Windows:
    """A batch of preprocessed windows (arrays share their first axis)."""

    image: np.ndarray  # (N, 96, 96, 3) uint8 BGR, resized as CameraPreprocess does
    points: np.ndarray  # (N, 64, F) float32 (F: PREPROCESS["radar"].out_features)
    mask: np.ndarray  # (N, 64) float32
    logmel: np.ndarray  # (N, 1, 64, T) float16
    labels: np.ndarray  # (N, C) float32 multi-hot, CLASSES order
    pairable: np.ndarray  # (N,) bool: all three inputs come from one simulated scene (for InfoNCE)

    def __len__(self) -> int:
        return len(self.labels)

    def subset(self, idx) -> "Windows":
        return Windows(self.image[idx], self.points[idx], self.mask[idx], self.logmel[idx], self.labels[idx],
                       self.pairable[idx])

    def save(self, path: Path) -> None:
        np.savez(path, **self.__dict__)

    @classmethod
    def load(cls, path: Path) -> "Windows":
        with np.load(path) as z:
            w = cls(**{k: z[k] for k in cls.__dataclass_fields__})
        return w.with_image_features()

    def with_image_features(self) -> "Windows":
        """Windows saved before the radar points carried image coordinates, given them.

        The stored x, y, z are the preprocessed ones (divided by the scale), so the columns come
        out exactly as generating the windows again would make them.
        """
        pp = PREPROCESS["radar"]
        if self.points.shape[-1] == pp.out_features:
            return self
        if self.points.shape[-1] != pp.BASE_FEATURES:
            raise ValueError(f"radar points with {self.points.shape[-1]} features per point; "
                             f"expected {pp.BASE_FEATURES} or {pp.out_features}")
        n, p, _ = self.points.shape
        xyz = self.points[..., :3].reshape(-1, 3).astype(np.float64) * np.asarray(pp.scale[:3])
        cols = pp.image_columns(xyz).reshape(n, p, -1) * self.mask[..., None]
        points = np.concatenate([self.points, cols.astype(np.float32)], axis=-1)
        return Windows(self.image, points, self.mask, self.logmel, self.labels, self.pairable)

    @classmethod
    def concat(cls, parts: list["Windows"]) -> "Windows":
        return cls(*(np.concatenate([getattr(p, k) for p in parts]) for k in cls.__dataclass_fields__))


def camera_uint8(image_bgr: np.ndarray) -> np.ndarray:
    """The resize step of CameraPreprocess, kept in uint8 for compact storage."""
    h, w = PREPROCESS["camera"].size_hw
    if image_bgr.shape[:2] == (h, w):
        return image_bgr
    return cv2.resize(image_bgr, (w, h), interpolation=cv2.INTER_AREA)


def _chunk(args: tuple) -> Windows:
    seed, start, count, split, adverse, real_prob, real_dir = args
    geometry = RigGeometry()
    assets = load_assets(split, geometry, real_dir)
    rng = np.random.default_rng([seed, start])
    n_mels, frames = PREPROCESS["audio"].output_shape[2:]
    out = Windows(np.zeros((count, 96, 96, 3), np.uint8), np.zeros((count, 64, PREPROCESS["radar"].out_features), np.float32),
                  np.zeros((count, 64), np.float32), np.zeros((count, 1, n_mels, frames), np.float16),
                  np.zeros((count, len(CLASSES)), np.float32), np.zeros(count, bool))
    for i in range(count):
        t_ref = float(rng.uniform(2.0, 60.0))
        scene = sample_scene(rng, t_ref, geometry, adverse=adverse, assets=assets, real_prob=real_prob)
        out.image[i] = camera_uint8(render_camera(scene, t_ref, assets, geometry))
        pts, mask = PREPROCESS["radar"](radar_window(scene, t_ref, assets, geometry))
        out.points[i], out.mask[i] = pts[0], mask[0]
        out.logmel[i] = PREPROCESS["audio"](render_audio(scene, t_ref, 1.0, assets))[0]
        out.labels[i] = scene_labels(scene, t_ref, geometry)
        out.pairable[i] = scene.real_camera is None and scene.real_radar is None
    return out


def radar_window(scene: Scene, t_ref: float, assets: Assets, geometry: RigGeometry) -> np.ndarray:
    """The radar detections of the window ending at ``t_ref``: the frames the radar preprocessing
    pools, rendered :data:`RADAR_FRAME_INTERVAL_S` apart (a real radar capture is one frame)."""
    pp = PREPROCESS["radar"]
    k = 1 if scene.real_radar is not None else pp.stack_frames
    return pp.pool([render_radar(scene, t_ref - j * RADAR_FRAME_INTERVAL_S, assets, geometry)
                    for j in reversed(range(k))])


def generate(n: int, seed: int, split: str = "train", adverse: str | None = None, real_prob: float = 0.0,
             workers: int | None = None, progress: bool = True, real_dir: Path | None = None) -> Windows:
    """``n`` windows; identical for identical arguments whatever the number of workers.

    ``real_dir``: a folder of third-party recordings mixed into the simulator's assets.
    """
    from tqdm import tqdm

    chunk = 250
    jobs = [(seed, s, min(chunk, n - s), split, adverse, real_prob, real_dir) for s in range(0, n, chunk)]
    workers = workers or min(len(jobs), max(1, mp.cpu_count()))
    desc = f"simulating {split}{'/' + adverse if adverse else ''}"
    if workers == 1:
        parts = [_chunk(j) for j in tqdm(jobs, desc=desc, unit="chunk", disable=not progress)]
    else:
        with mp.get_context("fork").Pool(workers) as pool:
            parts = list(tqdm(pool.imap(_chunk, jobs), total=len(jobs), desc=desc, unit="chunk",
                              disable=not progress))
    return Windows.concat(parts)


def scene_sequences(n_scenes: int, steps: int, seed: int, split: str = "eval", real_dir: Path | None = None,
                    period_s: float = 0.1):
    """``n_scenes`` simulated scenes, each as ``steps`` camera frames and radar frames ``period_s`` apart.

    Yields ``(scene index, step, camera BGR uint8, radar points (N, 6))`` in order. A scene is
    drawn as :func:`generate` draws its windows and then followed through time (targets walk in
    and out of view), as a live rig sees it; deterministic by ``seed``.
    """
    geometry = RigGeometry()
    assets = load_assets(split, geometry, real_dir)
    rng = np.random.default_rng([seed, 11])
    for i in range(n_scenes):
        t_ref = float(rng.uniform(10.0, 60.0))
        scene = sample_scene(rng, t_ref, geometry, assets=assets)
        for k in range(steps):
            t = t_ref - steps * period_s / 3 + k * period_s
            yield i, k, render_camera(scene, t, assets, geometry), render_radar(scene, t, assets, geometry)


def load_or_generate(cache_dir: Path, n: int, seed: int, split: str = "train", adverse: str | None = None,
                     real_prob: float = 0.0, progress: bool = True, real_dir: Path | None = None) -> Windows:
    """Generate once and keep the result in ``cache_dir`` (keyed by every argument and DATA_VERSION)."""
    cache_dir.mkdir(parents=True, exist_ok=True)
    path = cache_dir / (f"{DATA_VERSION}-{split}-{adverse or 'normal'}-n{n}-s{seed}-r{real_prob}-"
                        f"{real_tag(real_dir)}.npz")
    if path.exists():
        return Windows.load(path)
    data = generate(n, seed, split, adverse, real_prob, progress=progress, real_dir=real_dir)
    tmp = path.with_suffix(".tmp.npz")
    data.save(tmp)
    tmp.rename(path)
    return data


def recording_projection(calibration: Path) -> RadarProjection:
    """The radar-to-camera projection of a rig calibration file (its first camera and radar)."""
    proj = RadarProjection.into_first_camera(load_rig(calibration))
    if proj is None:
        raise ConfigError(f"{calibration}: needs a camera with intrinsics and extrinsics and a radar with extrinsics "
                          "(fusion calibrate intrinsics / extrinsics write them)")
    return proj


def windows_from_recordings(folder: Path, radar_period_s: float = 0.1, step_s: float = 0.5,
                            calibration: Path | None = None) -> Windows:
    """Unlabelled windows from a user's synchronised recordings, for alignment fine-tuning.

    ``folder`` holds sets of files sharing a stem: a video (.mp4/.avi/.mkv/.mov), a TI radar
    capture (.dat) and an audio file (.wav/.ogg/.flac), all started at the same instant. Every
    ``step_s`` of video gives one window: that frame, the radar frame nearest in time (pooled with
    the frames before it, as the node pools them) and the second of audio ending at it. Labels
    are unknown (-1): these windows only train alignment.
    The radar points are projected into the picture through ``calibration`` (by default the
    folder's ``rig_calibration.yaml`` when it has one; otherwise the nominal geometry).
    """
    folder = Path(folder)
    if calibration is None and (folder / "rig_calibration.yaml").is_file():
        calibration = folder / "rig_calibration.yaml"
    projection = recording_projection(Path(calibration)) if calibration is not None else None
    radar_pp = PREPROCESS["radar"]
    videos = [p for p in sorted(folder.iterdir()) if p.suffix.lower() in (".mp4", ".avi", ".mkv", ".mov")]
    parts = []
    for video in videos:
        radar = video.with_suffix(".dat")
        audio = next((video.with_suffix(s) for s in (".wav", ".ogg", ".flac") if video.with_suffix(s).exists()), None)
        if not radar.exists() or audio is None:
            raise ConfigError(f"{video}: needs {radar.name} and an audio file with the same stem beside it")
        frames = read_capture(radar)
        samples = load_audio_file(audio)
        cap = cv2.VideoCapture(str(video))
        fps = cap.get(cv2.CAP_PROP_FPS) or 30.0
        rows = []
        i = 0
        next_t = 1.0
        while True:
            ok, img = cap.read()
            if not ok:
                break
            t = i / fps
            i += 1
            if t < next_t:
                continue
            next_t += step_s
            k = int(round(t / radar_period_s))
            end = int(t * WIRE_AUDIO_RATE_HZ)
            if k >= len(frames) or end > len(samples):
                break
            pts, mask = radar_pp(radar_pp.pool([f.points for f in frames[max(0, k + 1 - radar_pp.stack_frames):k + 1]]),
                                 projection)
            rows.append((camera_uint8(img), pts[0], mask[0],
                         PREPROCESS["audio"](samples[end - WIRE_AUDIO_RATE_HZ:end])[0]))
        cap.release()
        if rows:
            n = len(rows)
            parts.append(Windows(np.stack([r[0] for r in rows]), np.stack([r[1] for r in rows]),
                                 np.stack([r[2] for r in rows]), np.stack([r[3] for r in rows]).astype(np.float16),
                                 -np.ones((n, len(CLASSES)), np.float32), np.ones(n, bool)))
    if not parts:
        raise ConfigError(f"{folder}: no synchronised recording sets (video + .dat + audio with one stem) found")
    return Windows.concat(parts)
