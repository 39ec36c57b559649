"""Training and evaluation data: simulated tri-modal windows, already preprocessed like the node does.

Each sample is one synchronised set: the camera frame at the reference time, the radar frame
at the same time and the audio window ending at it, passed through the very preprocessing the
node runs (:mod:`fusion_node.preprocess`), so the models see exactly what they will see live.
Camera images are stored as the resized uint8 picture (the normalisation is a fixed affine map
applied per batch), audio as float16 log-mel; a dataset of 20 000 windows takes under 1 GB.

Generation is deterministic given (seed, split, adverse) and parallel over worker processes;
``DATA_VERSION`` changes whenever what a seed produces changes.
"""

from __future__ import annotations

import multiprocessing as mp
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from fusion_node.preprocess import AudioPreprocess, CameraPreprocess, RadarPreprocess
from sensors.sim import CLASSES, RigGeometry, load_assets, render_audio, render_camera, render_radar, \
    sample_scene, scene_labels

__all__ = ["DATA_VERSION", "Windows", "PREPROCESS", "generate", "load_or_generate", "real_windows",
           "windows_from_recordings"]

DATA_VERSION = "sim-v2"

PREPROCESS = {
    "camera": CameraPreprocess(size_hw=(96, 96)),
    "radar": RadarPreprocess(max_points=64),
    "audio": AudioPreprocess(window_s=1.0),
}


@dataclass
class Windows:
    """A batch of preprocessed windows (arrays share their first axis)."""

    image: np.ndarray  # (N, 96, 96, 3) uint8 BGR, resized as CameraPreprocess does
    points: np.ndarray  # (N, 64, 5) float32
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
            return cls(**{k: z[k] for k in cls.__dataclass_fields__})

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
    seed, start, count, split, adverse, real_prob = args
    geometry = RigGeometry()
    assets = load_assets(split, geometry)
    rng = np.random.default_rng([seed, start])
    n_mels, frames = PREPROCESS["audio"].output_shape[2:]
    out = Windows(np.zeros((count, 96, 96, 3), np.uint8), np.zeros((count, 64, 5), np.float32),
                  np.zeros((count, 64), np.float32), np.zeros((count, 1, n_mels, frames), np.float16),
                  np.zeros((count, len(CLASSES)), np.float32), np.zeros(count, bool))
    for i in range(count):
        t_ref = float(rng.uniform(2.0, 60.0))
        scene = sample_scene(rng, t_ref, geometry, adverse=adverse, assets=assets, real_prob=real_prob)
        out.image[i] = camera_uint8(render_camera(scene, t_ref, assets, geometry))
        pts, mask = PREPROCESS["radar"](render_radar(scene, t_ref, assets, geometry))
        out.points[i], out.mask[i] = pts[0], mask[0]
        out.logmel[i] = PREPROCESS["audio"](render_audio(scene, t_ref, 1.0, assets))[0]
        out.labels[i] = scene_labels(scene, t_ref, geometry)
        out.pairable[i] = scene.real_camera is None and scene.real_radar is None
    return out


def generate(n: int, seed: int, split: str = "train", adverse: str | None = None, real_prob: float = 0.0,
             workers: int | None = None, progress: bool = True) -> Windows:
    """``n`` windows; identical for identical arguments whatever the number of workers."""
    from tqdm import tqdm

    chunk = 250
    jobs = [(seed, s, min(chunk, n - s), split, adverse, real_prob) for s in range(0, n, chunk)]
    workers = workers or min(len(jobs), max(1, mp.cpu_count()))
    desc = f"simulating {split}{'/' + adverse if adverse else ''}"
    if workers == 1:
        parts = [_chunk(j) for j in tqdm(jobs, desc=desc, unit="chunk", disable=not progress)]
    else:
        with mp.get_context("fork").Pool(workers) as pool:
            parts = list(tqdm(pool.imap(_chunk, jobs), total=len(jobs), desc=desc, unit="chunk",
                              disable=not progress))
    return Windows.concat(parts)


def load_or_generate(cache_dir: Path, n: int, seed: int, split: str = "train", adverse: str | None = None,
                     real_prob: float = 0.0, progress: bool = True) -> Windows:
    """Generate once and keep the result in ``cache_dir`` (keyed by every argument and DATA_VERSION)."""
    cache_dir.mkdir(parents=True, exist_ok=True)
    path = cache_dir / f"{DATA_VERSION}-{split}-{adverse or 'normal'}-n{n}-s{seed}-r{real_prob}.npz"
    if path.exists():
        return Windows.load(path)
    data = generate(n, seed, split, adverse, real_prob, progress=progress)
    tmp = path.with_suffix(".tmp.npz")
    data.save(tmp)
    tmp.rename(path)
    return data


def real_windows(split: str = "eval") -> dict[str, tuple[str, str, list, bool]]:
    """Real recordings cut into single-modality inputs: name -> (modality, class, inputs, seen).

    Only the ``split`` part of each recording is used (the last 30 % for "eval"), so these are
    windows the training never saw, except for sound clips shorter than the simulator's
    ``WHOLE_CLIP_S``: those single events are used whole by training too (``seen`` is True).
    """
    from sensors.audio import load_audio_file
    from sensors.samples import SAMPLES_DIR
    from sensors.ti_mmwave import read_capture

    from sensors.sim import TRAIN_FRACTION, WHOLE_CLIP_S

    out: dict[str, tuple[str, str, list, bool]] = {}
    expected_audio = {
        "speech_librispeech_198-209-0000.ogg": "speech",
        "speech_librispeech_5703-47212-0000.ogg": "speech",
        "dog_bark_1_gcompris_LA.ogg": "dog",
        "glass_break02_ufoai.ogg": "glass_break",
        "car_horn_modern_opensfx35_CC-BY-3.0.wav": "alarm",
        "level_crossing_bell_opensfx14_CC0.wav": "alarm",
        "engine_truck_start_pullaway_opensfx25_CC0.wav": "vehicle",
        "footsteps_gravel1_ufoai.ogg": "person",
        "footsteps_wood1_ufoai.ogg": "person",
    }
    for name, label in expected_audio.items():
        x = load_audio_file(SAMPLES_DIR / "audio" / name)
        seen = len(x) < WHOLE_CLIP_S * 16000
        cut = int(len(x) * TRAIN_FRACTION)
        part = x if seen else (x[cut:] if split == "eval" else x[:cut])
        part = part / (np.abs(part).max() + 1e-9) * 0.3
        # Windows of 1 s every 0.5 s; a part shorter than 1 s is one left-padded window.
        starts = range(0, max(1, len(part) - 16000 + 1), 8000)
        out[f"audio/{name}"] = ("audio", label, [PREPROCESS["audio"](part[s:s + 16000])[0] for s in starts], seen)
    assets = load_assets(split)
    out["video/one-by-one-person-detection.mp4"] = (
        "camera", "person", [camera_uint8(f) for f in assets.person_frames], False)
    out["video/car-detection.mp4"] = ("camera", "vehicle", [camera_uint8(f) for f in assets.car_frames], False)
    frames = read_capture(SAMPLES_DIR / "radar" / "ti_iwr6843_oob_automated_doors_2019-12-04.dat")
    cut = int(len(frames) * TRAIN_FRACTION)
    part = frames[cut:] if split == "eval" else frames[:cut]
    moving = [f.points for f in part if (np.abs(f.points[:, 3]) > 0.1).sum() >= 2]
    out["radar/ti_iwr6843_oob_automated_doors_2019-12-04.dat"] = (
        "radar", "person", [PREPROCESS["radar"](p) for p in moving], False)
    return out


def windows_from_recordings(folder: Path, radar_period_s: float = 0.1, step_s: float = 0.5) -> Windows:
    """Unlabelled windows from a user's synchronised recordings, for alignment fine-tuning.

    ``folder`` holds sets of files sharing a stem: a video (.mp4/.avi/.mkv/.mov), a TI radar
    capture (.dat) and an audio file (.wav/.ogg/.flac), all started at the same instant. Every
    ``step_s`` of video gives one window: that frame, the radar frame nearest in time and the
    second of audio ending at it. Labels are unknown (-1): these windows only train alignment.
    """
    from fusion_node.errors import ConfigError
    from sensors.audio import load_audio_file
    from sensors.ti_mmwave import read_capture

    folder = Path(folder)
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
            end = int(t * 16000)
            if k >= len(frames) or end > len(samples):
                break
            pts, mask = PREPROCESS["radar"](frames[k].points)
            rows.append((camera_uint8(img), pts[0], mask[0], PREPROCESS["audio"](samples[end - 16000:end])[0]))
        cap.release()
        if rows:
            n = len(rows)
            parts.append(Windows(np.stack([r[0] for r in rows]), np.stack([r[1] for r in rows]),
                                 np.stack([r[2] for r in rows]), np.stack([r[3] for r in rows]).astype(np.float16),
                                 -np.ones((n, len(CLASSES)), np.float32), np.ones(n, bool)))
    if not parts:
        raise ConfigError(f"{folder}: no synchronised recording sets (video + .dat + audio with one stem) found")
    return Windows.concat(parts)
