"""Tri-modal scene simulator: camera frames, radar point clouds and audio that agree.

One rig geometry (a pinhole camera 1.5 m above the ground, the radar 10 cm below it, both
looking forward) places every target once, so its pixels, its radar points and its sound all
come from the same position and velocity. World frame: X right, Y forward (range), Z up from
the ground, metres; the radar frame is the world frame shifted to the radar (TI convention:
x right, y boresight, z up).

The simulator mixes in the real recordings bundled in ``sensors/samples``:

- audio: each class sounds like its real clip (footsteps and speech for people, a truck engine
  for vehicles, a dog bark, breaking glass, a horn or a level-crossing bell for alarms),
  attenuated with distance and delayed by the speed of sound;
- camera: the office background is the median of the real person video (people removed), and
  real frames of people (from that video) and of cars (from the car video) appear as camera
  inputs of their classes;
- radar: static clutter and real walking-person frames come from the real TI capture.

Real sources are split by time: the first 70 % feeds ``split="train"``, the last 30 %
``split="eval"``, so evaluation never sees the frames or hears the speech training did. Sound
clips shorter than 5 s (a bark, breaking glass, a horn) are single events that a cut would turn
into a different sound: they are used whole in both splits, and evaluation hears them at other
speeds, gains, distances and mixtures than training does.

Camera frames carry lighting changes, night, blur and occlusion; radar points carry range,
azimuth and doppler noise, clutter and missed detections; audio carries ambience, distance
attenuation and propagation delay. Everything is deterministic given a seed.

The same world renders training samples (:func:`sample_scene`) and drives the live simulated
sensor backend (``fusion sensor sim``, ``fusion demo --sim``).
"""

from __future__ import annotations

import argparse
import functools
import math
import zlib
from dataclasses import dataclass, field

import cv2
import numpy as np

from .samples import SAMPLES_DIR

__all__ = ["CLASSES", "RigGeometry", "Target", "SoundEvent", "Scene", "Assets", "load_assets",
           "sample_scene", "render_camera", "render_radar", "render_audio", "scene_labels",
           "add_arguments", "run"]

CLASSES = ("person", "vehicle", "dog", "glass_break", "speech", "alarm")
SPEED_OF_SOUND_MPS = 343.0
RATE_HZ = 16000
TRAIN_FRACTION = 0.7
WHOLE_CLIP_S = 5.0  # sound clips shorter than this are one event: not split between train and eval


@dataclass(frozen=True)
class RigGeometry:
    """Pinhole camera and radar mounting shared by all three renderers."""

    width_px: int = 320
    height_px: int = 180
    hfov_deg: float = 70.0
    camera_height_m: float = 1.5
    radar_below_camera_m: float = 0.1
    radar_fov_deg: float = 120.0
    radar_max_range_m: float = 25.0

    @property
    def fx(self) -> float:
        return self.width_px / (2 * math.tan(math.radians(self.hfov_deg) / 2))

    def project(self, x: np.ndarray, y: np.ndarray, z: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """World points (in front of the camera) to pixel coordinates."""
        f = self.fx
        u = self.width_px / 2 + f * np.asarray(x) / np.asarray(y)
        v = self.height_px / 2 - f * (np.asarray(z) - self.camera_height_m) / np.asarray(y)
        return u, v

    @classmethod
    def from_rig(cls, rig, camera_id: str | None = None, radar_id: str | None = None) -> "RigGeometry":
        """Image size, field of view and radar mounting from a rig calibration file.

        The simulator renders an ideal pinhole (distortion is not simulated) and keeps its own
        camera height above the ground, which a rig file does not record.
        """
        cams = [s for s in rig.sensors if s.kind == "camera" and (camera_id is None or s.id == camera_id)]
        radars = [s for s in rig.sensors if s.kind == "radar" and (radar_id is None or s.id == radar_id)]
        if not cams or cams[0].intrinsics is None:
            raise ValueError(f"rig {rig.rig}: no camera with intrinsics{' named ' + camera_id if camera_id else ''}")
        k = cams[0].intrinsics
        below = cls.radar_below_camera_m
        if radars and radars[0].extrinsics is not None and cams[0].extrinsics is not None:
            # Rig frame y points down (camera optical frame): radar below camera = larger y.
            below = float(radars[0].extrinsics.translation_m[1] - cams[0].extrinsics.translation_m[1])
        return cls(width_px=k.width_px, height_px=k.height_px,
                   hfov_deg=math.degrees(2 * math.atan(k.width_px / (2 * k.fx_px))), radar_below_camera_m=below)

    def in_view(self, x: float, y: float) -> bool:
        return y > 1.0 and abs(x / y) < math.tan(math.radians(self.hfov_deg) / 2) * 0.95


# Physical size (width, height, depth in m), radar points per frame and SNR (dB) per class.
BODY = {"person": (0.5, 1.75, 0.4), "vehicle": (4.2, 1.5, 1.8), "dog": (0.9, 0.6, 0.35)}
RADAR_POINTS = {"person": 5.0, "vehicle": 14.0, "dog": 3.5}
RADAR_SNR_DB = {"person": 22.0, "vehicle": 33.0, "dog": 16.0}
SPEED_MPS = {"person": (0.6, 1.6), "vehicle": (3.0, 9.0), "dog": (1.0, 3.0)}
RANGE_M = {"person": (3.0, 13.0), "vehicle": (7.0, 22.0), "dog": (2.5, 9.0)}
# Sound level at 1 m (linear amplitude scale of the normalised clip).
SOUND_LEVEL = {"person": 0.25, "vehicle": 1.6, "dog": 1.2, "speech": 0.9, "glass_break": 2.0, "alarm": 2.5}


@dataclass
class Target:
    """A moving object: person, vehicle or dog, on the ground plane."""

    kind: str
    x0: float
    y0: float
    vx: float
    vy: float
    colour: tuple[int, int, int]
    speaking: bool = False
    sound_offset_s: float = 0.0

    def position(self, t: float) -> tuple[float, float]:
        return self.x0 + self.vx * t, self.y0 + self.vy * t


@dataclass
class SoundEvent:
    """A localised event: glass breaking (at ``t_start``) or an alarm sounding over an interval."""

    kind: str
    x: float
    y: float
    z: float
    t_start: float
    t_end: float
    clip: int = 0


@dataclass
class Scene:
    """Everything needed to render the three sensors at any time."""

    seed: int
    background: int
    targets: list[Target] = field(default_factory=list)
    events: list[SoundEvent] = field(default_factory=list)
    window_decor: tuple[int, int, int, int] | None = None  # a window pane in the picture (u, v, w, h)
    beacon_decor: tuple[int, int] | None = None  # an alarm beacon housing (u, v)
    gain: float = 1.0
    night: bool = False
    blur: int = 0
    occlusion: tuple[int, int, int, int] | None = None
    clutter_rate: float = 2.0
    noise_snr_db: float | None = None  # audio noise relative to the signal (None: ambience only)
    real_camera: np.ndarray | None = None  # a real frame used instead of the rendering
    real_radar: np.ndarray | None = None  # real points used instead of the rendering
    two_d_radar: bool = False  # the radar reports z = 0 (2-D configuration, like the real capture)


# -- real assets -------------------------------------------------------------------------------


@dataclass
class Assets:
    """Real recordings cut into train/eval parts, plus the backgrounds and clutter made from them."""

    split: str
    backgrounds: list[np.ndarray]
    clips: dict[str, list[np.ndarray]]
    person_frames: list[np.ndarray]
    car_frames: list[np.ndarray]
    radar_walkers: list[np.ndarray]
    radar_static: np.ndarray


def _split(n: int, split: str) -> slice:
    cut = int(n * TRAIN_FRACTION)
    return slice(0, cut) if split == "train" else slice(cut, n)


def _video_frames(path, size: tuple[int, int], step: int) -> list[np.ndarray]:
    cap = cv2.VideoCapture(str(path))
    frames = []
    i = 0
    while True:
        ok, frame = cap.read()
        if not ok:
            break
        if i % step == 0:
            frames.append(cv2.resize(frame, size, interpolation=cv2.INTER_AREA))
        i += 1
    cap.release()
    if not frames:
        raise RuntimeError(f"simulator: cannot read frames from {path}")
    return frames


@functools.lru_cache(maxsize=4)
def load_assets(split: str = "train", geometry: RigGeometry = RigGeometry()) -> Assets:
    """Load and cut the real recordings once per process (cached)."""
    from sensors.audio import load_audio_file
    from sensors.ti_mmwave import read_capture

    if split not in ("train", "eval"):
        raise ValueError(f"split must be 'train' or 'eval', got {split!r}")
    size = (geometry.width_px, geometry.height_px)
    office = _video_frames(SAMPLES_DIR / "video" / "one-by-one-person-detection.mp4", size, step=5)
    # The clip opens on the empty room: frames close to the first one are empty, and their
    # median is the background; frames far from it show people.
    first = office[0].astype(np.int16)
    moving = [float((np.abs(f.astype(np.int16) - first).max(axis=2) > 40).mean()) for f in office]
    office_bg = np.median(np.stack([f for f, m in zip(office, moving) if m < 0.01]), axis=0).astype(np.uint8)
    with_people = [f for f, m in zip(office, moving) if m > 0.03]
    cars = _video_frames(SAMPLES_DIR / "video" / "car-detection.mp4", size, step=4)
    person_frames = with_people[_split(len(with_people), split)]
    car_frames = cars[_split(len(cars), split)]

    audio_dir = SAMPLES_DIR / "audio"
    sources = {
        "person": ["footsteps_gravel1_ufoai.ogg", "footsteps_wood1_ufoai.ogg"],
        "speech": ["speech_librispeech_198-209-0000.ogg", "speech_librispeech_5703-47212-0000.ogg"],
        "vehicle": ["engine_truck_start_pullaway_opensfx25_CC0.wav"],
        "dog": ["dog_bark_1_gcompris_LA.ogg"],
        "glass_break": ["glass_break02_ufoai.ogg"],
        "alarm": ["car_horn_modern_opensfx35_CC-BY-3.0.wav", "level_crossing_bell_opensfx14_CC0.wav"],
        "door": ["door_open1_ufoai.ogg"],
        "aircraft": ["jet_takeoff_opensfx61_CC0.wav"],
    }
    clips: dict[str, list[np.ndarray]] = {}
    for kind, names in sources.items():
        parts = []
        for name in names:
            x = load_audio_file(audio_dir / name)
            x = x / (np.abs(x).max() + 1e-9)
            part = x if len(x) < WHOLE_CLIP_S * RATE_HZ else x[_split(len(x), split)]
            parts.append(part.astype(np.float32))
        clips[kind] = parts

    frames = read_capture(SAMPLES_DIR / "radar" / "ti_iwr6843_oob_automated_doors_2019-12-04.dat")
    frames = frames[_split(len(frames), split)]
    walkers = [f.points[np.abs(f.points[:, 3]) > 0.1] for f in frames]
    walkers = [np.array(p, dtype=np.float32) for p in walkers if len(p) >= 2]
    static = np.concatenate([f.points[np.abs(f.points[:, 3]) <= 0.1] for f in frames]).astype(np.float32)
    return Assets(split, [office_bg], clips, person_frames, car_frames, walkers, static)


# -- scene sampling ----------------------------------------------------------------------------


def _background(assets: Assets, bg_id: int, geometry: RigGeometry) -> np.ndarray:
    """Background ``bg_id``: the real office or a procedural street, fixed per id."""
    rng = np.random.default_rng(10_000 + bg_id)
    w, h = geometry.width_px, geometry.height_px
    if bg_id % 2 == 0:
        base = assets.backgrounds[0]
        # A different crop, flip and colour balance per id: many rooms from one real office.
        zoom = rng.uniform(1.0, 1.4)
        cw, ch = int(w / zoom), int(h / zoom)
        x0, y0 = rng.integers(0, w - cw + 1), rng.integers(0, h - ch + 1)
        img = cv2.resize(base[y0:y0 + ch, x0:x0 + cw], (w, h))
        if rng.random() < 0.5:
            img = img[:, ::-1]
        img = np.clip(img * rng.uniform(0.8, 1.2, 3), 0, 255).astype(np.uint8)
        return np.ascontiguousarray(img)
    horizon = int(h / 2)
    sky = np.array(rng.uniform(120, 230, 3))
    ground = np.array(rng.uniform(40, 130, 3))
    img = np.zeros((h, w, 3), np.float32)
    img[:horizon] = sky * np.linspace(0.8, 1.0, horizon)[:, None, None]
    img[horizon:] = ground * np.linspace(0.9, 1.1, h - horizon)[:, None, None]
    for _ in range(rng.integers(2, 7)):  # buildings along the horizon
        bx, bw = rng.integers(0, w), rng.integers(20, 90)
        bh = rng.integers(10, horizon)
        cv2.rectangle(img, (int(bx), horizon - int(bh)), (int(bx + bw), horizon), rng.uniform(60, 200, 3).tolist(), -1)
    return np.clip(img, 0, 255).astype(np.uint8)


def _static_clutter(assets: Assets, bg_id: int) -> np.ndarray:
    """Static radar returns of background ``bg_id``: real static points, fixed per id."""
    rng = np.random.default_rng(20_000 + bg_id)
    n = int(rng.integers(3, 10))
    idx = rng.choice(len(assets.radar_static), size=n, replace=len(assets.radar_static) < n)
    pts = assets.radar_static[idx].copy()
    pts[:, 1] += rng.uniform(2.0, 12.0)  # the real capture looks at a door a few metres away
    pts[:, 0] += rng.uniform(-3, 3)
    return pts


def _new_target(kind: str, rng: np.random.Generator, geometry: RigGeometry, t_ref: float) -> Target:
    lo, hi = RANGE_M[kind]
    y = float(rng.uniform(lo, hi))
    half = math.tan(math.radians(geometry.hfov_deg) / 2) * 0.8 * y
    x = float(rng.uniform(-half, half))
    speed = float(rng.uniform(*SPEED_MPS[kind]))
    heading = rng.uniform(-0.35, 0.35) + (0 if rng.random() < 0.5 else math.pi)
    vx, vy = speed * math.cos(heading), speed * math.sin(heading)
    # Place it so that it is at (x, y) at t_ref.
    colour = tuple(int(c) for c in rng.integers(20, 235, 3))
    return Target(kind, x - vx * t_ref, y - vy * t_ref, vx, vy, colour,
                  sound_offset_s=float(rng.uniform(0, 5)))


def sample_scene(rng: np.random.Generator, t_ref: float, geometry: RigGeometry = RigGeometry(), *,
                 classes: set[str] | None = None, adverse: str | None = None, assets: Assets | None = None,
                 real_prob: float = 0.0, n_backgrounds: int = 64) -> Scene:
    """A random scene whose labels at ``t_ref`` are ``classes`` (drawn when None).

    ``adverse`` forces one hard condition: "night", "occlusion", "clutter" or "noise" (audio at
    0 dB SNR); otherwise mild variations are drawn. ``real_prob`` is the chance that a person or
    vehicle scene shows a real camera frame, or a person scene a real radar frame.
    """
    if classes is None:
        classes = set()
        if rng.random() > 0.12:
            k = int(rng.choice([1, 1, 2, 2, 3]))
            classes = set(rng.choice(CLASSES, size=k, replace=False).tolist())
    if "speech" in classes:
        classes.add("person")  # someone is talking
    bg = int(rng.integers(0, n_backgrounds))
    scene = Scene(seed=int(rng.integers(0, 2**31)), background=bg)
    w, h = geometry.width_px, geometry.height_px
    if rng.random() < 0.5 or "glass_break" in classes:
        scene.window_decor = (int(rng.integers(10, w - 70)), int(rng.integers(10, h // 2 - 30)),
                              int(rng.integers(35, 60)), int(rng.integers(25, 40)))
    if rng.random() < 0.5 or "alarm" in classes:
        scene.beacon_decor = (int(rng.integers(10, w - 10)), int(rng.integers(8, h // 3)))
    speaker_done = False
    for kind in ("person", "vehicle", "dog"):
        if kind not in classes:
            continue
        for _ in range(1 if kind != "person" else int(rng.integers(1, 3))):
            target = _new_target(kind, rng, geometry, t_ref)
            if kind == "person" and "speech" in classes and not speaker_done:
                target.speaking = True
                speaker_done = True
            scene.targets.append(target)
    if "glass_break" in classes:
        u, v, ww, hh = scene.window_decor
        y = float(rng.uniform(4, 12))
        x = (u + ww / 2 - w / 2) * y / geometry.fx
        z = geometry.camera_height_m - (v + hh / 2 - h / 2) * y / geometry.fx
        t_break = t_ref - float(rng.uniform(0.05, 0.8))
        scene.events.append(SoundEvent("glass_break", x, y, z, t_break, t_break + 4.0))
    if "alarm" in classes:
        u, v = scene.beacon_decor
        y = float(rng.uniform(5, 15))
        x = (u - w / 2) * y / geometry.fx
        z = geometry.camera_height_m - (v - h / 2) * y / geometry.fx
        start = t_ref - float(rng.uniform(0.3, 3.0))
        scene.events.append(SoundEvent("alarm", x, y, z, start, start + 8.0, clip=int(rng.integers(0, 2))))
    scene.gain = float(rng.uniform(0.7, 1.3))
    scene.blur = int(rng.choice([0, 0, 0, 3, 5]))
    scene.clutter_rate = float(rng.uniform(0.5, 3.0))
    scene.two_d_radar = bool(rng.random() < 0.3)
    if adverse == "night" or (adverse is None and rng.random() < 0.08):
        scene.night = True
    if adverse == "occlusion" or (adverse is None and rng.random() < 0.08):
        ow, oh = int(w * rng.uniform(0.45, 0.7)), int(h * rng.uniform(0.6, 1.0))
        scene.occlusion = (int(rng.integers(0, w - ow + 1)), int(rng.integers(0, h - oh + 1)), ow, oh)
    if adverse == "clutter":
        scene.clutter_rate = float(rng.uniform(20, 35))
    if adverse == "noise":
        scene.noise_snr_db = 0.0
    elif adverse is None and rng.random() < 0.15:
        scene.noise_snr_db = float(rng.uniform(5, 20))
    if assets is not None and real_prob > 0 and adverse is None:
        if "person" in classes and "vehicle" not in classes and assets.person_frames and rng.random() < real_prob:
            scene.real_camera = assets.person_frames[int(rng.integers(len(assets.person_frames)))]
        elif "vehicle" in classes and "person" not in classes and assets.car_frames and rng.random() < real_prob:
            scene.real_camera = assets.car_frames[int(rng.integers(len(assets.car_frames)))]
        if classes & {"person", "vehicle", "dog"} == {"person"} and assets.radar_walkers and rng.random() < real_prob:
            scene.real_radar = assets.radar_walkers[int(rng.integers(len(assets.radar_walkers)))]
    return scene


def scene_labels(scene: Scene, t_ref: float, geometry: RigGeometry = RigGeometry(),
                 window_s: float = 1.0) -> np.ndarray:
    """Multi-hot labels (CLASSES order) of what is present at ``t_ref`` / heard in the window."""
    y = np.zeros(len(CLASSES), np.float32)
    for tg in scene.targets:
        x, r = tg.position(t_ref)
        if geometry.in_view(x, r):
            y[CLASSES.index(tg.kind)] = 1
            if tg.speaking:
                y[CLASSES.index("speech")] = 1
    for ev in scene.events:
        heard = ev.t_start + math.hypot(ev.x, ev.y) / SPEED_OF_SOUND_MPS
        if ev.kind == "glass_break" and t_ref - window_s <= heard <= t_ref:
            y[CLASSES.index("glass_break")] = 1
        if ev.kind == "alarm" and heard <= t_ref and ev.t_end >= t_ref - window_s:
            y[CLASSES.index("alarm")] = 1
    return y


# -- camera --------------------------------------------------------------------------------------


def _draw_target(img: np.ndarray, tg: Target, t: float, geometry: RigGeometry) -> None:
    x, y = tg.position(t)
    if not geometry.in_view(x, y):
        return
    bw, bh, _ = BODY[tg.kind]
    u0, v_ground = geometry.project(x - bw / 2, y, 0.0)
    u1, v_top = geometry.project(x + bw / 2, y, bh)
    u0, u1, vt, vg = int(u0), int(u1), int(v_top), int(v_ground)
    c = tg.colour
    if tg.kind == "person":
        head = max(2, (u1 - u0) // 2)
        cx = (u0 + u1) // 2
        cv2.circle(img, (cx, vt + head), head, (60, 80, 150), -1)
        cv2.rectangle(img, (u0, vt + 2 * head), (u1, vt + int((vg - vt) * 0.55)), c, -1)
        leg = max(1, (u1 - u0) // 3)
        swing = int(math.sin(t * 6 + tg.sound_offset_s) * leg)
        cv2.line(img, (cx, vt + int((vg - vt) * 0.55)), (cx - leg + swing, vg), (40, 40, 40), max(1, leg))
        cv2.line(img, (cx, vt + int((vg - vt) * 0.55)), (cx + leg - swing, vg), (40, 40, 40), max(1, leg))
    elif tg.kind == "vehicle":
        body_top = vt + (vg - vt) // 3
        cv2.rectangle(img, (u0, body_top), (u1, vg - max(1, (vg - vt) // 8)), c, -1)
        cv2.rectangle(img, (u0 + (u1 - u0) // 5, vt), (u1 - (u1 - u0) // 5, body_top), c, -1)
        cv2.rectangle(img, (u0 + (u1 - u0) // 4, vt + 2), (u1 - (u1 - u0) // 4, body_top - 1), (90, 60, 30), -1)
        wheel = max(2, (vg - vt) // 5)
        for wu in (u0 + (u1 - u0) // 5, u1 - (u1 - u0) // 5):
            cv2.circle(img, (wu, vg - wheel), wheel, (20, 20, 20), -1)
    else:  # dog
        body_v = vt + (vg - vt) // 3
        cv2.ellipse(img, ((u0 + u1) // 2, body_v + (vg - body_v) // 3), (max(2, (u1 - u0) // 2), max(1, (vg - vt) // 4)),
                    0, 0, 360, c, -1)
        head_u = u1 if tg.vx > 0 else u0
        cv2.circle(img, (head_u, vt + (vg - vt) // 4), max(2, (vg - vt) // 4), c, -1)
        for lu in (u0 + (u1 - u0) // 5, u1 - (u1 - u0) // 5):
            cv2.line(img, (lu, body_v), (lu, vg), c, max(1, (u1 - u0) // 10))


def render_camera(scene: Scene, t: float, assets: Assets, geometry: RigGeometry = RigGeometry()) -> np.ndarray:
    """The camera frame (BGR uint8, geometry size) at time ``t``."""
    if scene.real_camera is not None:
        img = scene.real_camera.copy()
    else:
        img = _background(assets, scene.background, geometry).copy()
        if scene.window_decor is not None:
            u, v, ww, hh = scene.window_decor
            cv2.rectangle(img, (u, v), (u + ww, v + hh), (200, 190, 160), -1)
            cv2.rectangle(img, (u, v), (u + ww, v + hh), (60, 60, 60), 2)
            cv2.line(img, (u + ww // 2, v), (u + ww // 2, v + hh), (60, 60, 60), 1)
            broken = [e for e in scene.events if e.kind == "glass_break" and e.t_start <= t]
            if broken:
                rng = np.random.default_rng(scene.seed)
                centre = (u + int(ww * rng.uniform(0.3, 0.7)), v + int(hh * rng.uniform(0.3, 0.7)))
                cv2.rectangle(img, (u + 2, v + 2), (u + ww - 2, v + hh - 2), (40, 40, 45), -1)
                for a in np.linspace(0, 2 * math.pi, int(rng.integers(7, 12)), endpoint=False):
                    end = (int(centre[0] + math.cos(a) * ww), int(centre[1] + math.sin(a) * hh))
                    cv2.line(img, centre, end, (250, 250, 250), 1)
        if scene.beacon_decor is not None:
            bu, bv = scene.beacon_decor
            lit = any(e.kind == "alarm" and e.t_start <= t <= e.t_end and (t * 2.5) % 1.0 < 0.6 for e in scene.events)
            cv2.rectangle(img, (bu - 5, bv), (bu + 5, bv + 6), (50, 50, 50), -1)
            cv2.circle(img, (bu, bv), 6 if lit else 4, (30, 60, 255) if lit else (40, 40, 110), -1)
            if lit:
                cv2.circle(img, (bu, bv), 12, (60, 120, 255), 2)
        for tg in sorted(scene.targets, key=lambda tg: -tg.position(t)[1]):
            _draw_target(img, tg, t, geometry)
    out = img.astype(np.float32) * scene.gain
    if scene.blur:
        out = cv2.GaussianBlur(out, (scene.blur, scene.blur), 0)
    if scene.night:
        rng = np.random.default_rng(scene.seed + int(t * 1000))
        out = out * 0.12 + rng.normal(0, 6, out.shape)
    if scene.occlusion is not None:
        x0, y0, ow, oh = scene.occlusion
        out[y0:y0 + oh, x0:x0 + ow] = 25
    return np.clip(out, 0, 255).astype(np.uint8)


# -- radar ---------------------------------------------------------------------------------------


def render_radar(scene: Scene, t: float, assets: Assets, geometry: RigGeometry = RigGeometry()) -> np.ndarray:
    """Radar detections (N, 6): x_m, y_m, z_m, doppler_mps, snr_db, noise_db in the radar frame."""
    rng = np.random.default_rng([scene.seed, int(round(t * 1000)) & 0x7FFFFFFF])
    rows = []
    radar_z = geometry.camera_height_m - geometry.radar_below_camera_m
    half_fov = math.radians(geometry.radar_fov_deg) / 2
    if scene.real_radar is not None:
        rows.append(scene.real_radar.copy())
    else:
        for tg in scene.targets:
            x, y = tg.position(t)
            rng_m = math.hypot(x, y)
            if y <= 0.5 or abs(math.atan2(x, y)) > half_fov or rng_m > geometry.radar_max_range_m:
                continue
            n = rng.poisson(RADAR_POINTS[tg.kind] * (1.0 if rng_m < 15 else 0.6))
            if n == 0:
                continue
            bw, bh, bd = BODY[tg.kind]
            px = x + rng.uniform(-bw / 2, bw / 2, n)
            py = y + rng.uniform(-bd / 2, bd / 2, n)
            pz = rng.uniform(0.1, bh, n) - radar_z
            radial = (tg.vx * px + tg.vy * py) / np.maximum(np.hypot(px, py), 1e-3)
            # Limbs and wheels move faster than the body: spread the doppler of people and dogs.
            micro = {"person": 0.35, "vehicle": 0.1, "dog": 0.5}[tg.kind]
            dop = radial + rng.normal(0, micro, n)
            snr = RADAR_SNR_DB[tg.kind] - 20 * np.log10(np.maximum(np.hypot(px, py), 1) / 5) + rng.normal(0, 3, n)
            rows.append(np.stack([px, py, pz, dop, snr, rng.uniform(55, 80, n)], axis=1))
        for ev in scene.events:
            if ev.kind == "glass_break" and ev.t_start <= t <= ev.t_start + 0.6:
                n = int(rng.integers(3, 9))
                px = ev.x + rng.normal(0, 0.3, n)
                py = ev.y + rng.normal(0, 0.2, n)
                fall = (t - ev.t_start) * 9.8
                pz = ev.z - radar_z - rng.uniform(0, fall / 2 + 0.1, n)
                dop = -rng.uniform(0.5, 2.5, n) * np.sign(rng.normal(size=n))
                rows.append(np.stack([px, py, pz, dop, rng.uniform(14, 20, n), rng.uniform(55, 80, n)], axis=1))
    static = _static_clutter(assets, scene.background)
    keep = rng.random(len(static)) > 0.25  # missed detections
    rows.append(static[keep])
    n_clutter = rng.poisson(scene.clutter_rate)
    if n_clutter:
        cy = rng.uniform(0.5, geometry.radar_max_range_m, n_clutter)
        cx = cy * np.tan(rng.uniform(-half_fov, half_fov, n_clutter))
        cz = rng.uniform(-radar_z, 2.0, n_clutter)
        cd = rng.normal(0, 0.8 if scene.clutter_rate > 10 else 0.2, n_clutter)
        rows.append(np.stack([cx, cy, cz, cd, rng.uniform(12, 20, n_clutter), rng.uniform(55, 85, n_clutter)], axis=1))
    pts = np.concatenate(rows).astype(np.float32) if rows else np.zeros((0, 6), np.float32)
    if scene.real_radar is None and len(pts):
        # Measurement noise in range, azimuth and doppler; a 20 % chance each detection is missed.
        r = np.hypot(pts[:, 0], pts[:, 1]) + rng.normal(0, 0.05, len(pts))
        az = np.arctan2(pts[:, 0], pts[:, 1]) + rng.normal(0, math.radians(1.0), len(pts))
        pts[:, 0], pts[:, 1] = r * np.sin(az), r * np.cos(az)
        pts[:, 3] += rng.normal(0, 0.05, len(pts))
        pts = pts[rng.random(len(pts)) > 0.2]
    if scene.two_d_radar:
        pts[:, 2] = 0.0
    return np.ascontiguousarray(pts, dtype=np.float32)


# -- audio ---------------------------------------------------------------------------------------


def _loop(clip: np.ndarray, start: int, n: int, speed: float = 1.0) -> np.ndarray:
    """``n`` samples of ``clip`` played in a loop from ``start`` at ``speed`` (pitch and tempo)."""
    pos = ((start + np.arange(n)) * speed) % len(clip)
    return np.interp(pos, np.arange(len(clip)), clip).astype(np.float32)


def _variation(scene: Scene, key: str) -> tuple[float, float]:
    """Playback speed and gain of one sound source: fixed per scene and source, varied across scenes."""
    rng = np.random.default_rng([scene.seed, zlib.crc32(key.encode())])
    return float(rng.uniform(0.88, 1.12)), float(rng.uniform(0.7, 1.4))


def _ambience(scene: Scene, t0: float, n: int) -> np.ndarray:
    """Background sound of the scene's location: a fixed hum and coloured noise per background."""
    brng = np.random.default_rng(30_000 + scene.background)
    hum_hz = float(brng.uniform(50, 400))
    hum_level = float(brng.uniform(0.002, 0.02))
    tilt = float(brng.uniform(0.5, 0.98))
    level = float(brng.uniform(0.003, 0.012))
    rng = np.random.default_rng([scene.seed, int(round(t0 * 1000)) & 0x7FFFFFFF, 7])
    white = rng.normal(0, 1, n + 1)
    coloured = (white[1:] + tilt * white[:-1]) * level  # a simple one-pole colouring
    t = t0 + np.arange(n) / RATE_HZ
    return (coloured + hum_level * np.sin(2 * math.pi * hum_hz * t)).astype(np.float32)


def render_audio(scene: Scene, t_end: float, duration_s: float, assets: Assets) -> np.ndarray:
    """Mono 16 kHz samples of the ``duration_s`` ending at ``t_end``."""
    n = int(round(duration_s * RATE_HZ))
    t0 = t_end - duration_s
    times = t0 + np.arange(n) / RATE_HZ
    out = _ambience(scene, t0, n)
    signal = np.zeros(n, np.float32)
    for tg in scene.targets:
        x, y = tg.position(t0 + duration_s / 2)
        dist = max(1.0, math.hypot(x, y))
        delay = dist / SPEED_OF_SOUND_MPS
        emit = times - delay
        kinds = [tg.kind] + (["speech"] if tg.speaking else [])
        for kind in kinds:
            clips = assets.clips[kind]
            clip = clips[(scene.seed + zlib.crc32(kind.encode())) % len(clips)]
            speed, gain = _variation(scene, f"{kind}{tg.sound_offset_s}")
            start = int((emit[0] + tg.sound_offset_s) * RATE_HZ)
            part = _loop(clip, start, n, speed)
            if kind == "dog":  # barks come in bursts, not continuously
                part = part * (np.sin(2 * math.pi * 0.7 * (emit + tg.sound_offset_s)) > -0.6)
            signal += gain * SOUND_LEVEL[kind] / dist * part
    for ev in scene.events:
        dist = max(1.0, math.hypot(ev.x, ev.y))
        emit = times - dist / SPEED_OF_SOUND_MPS
        clips = assets.clips[ev.kind]
        clip = clips[ev.clip % len(clips)]
        speed, gain = _variation(scene, f"{ev.kind}{ev.t_start}")
        k = (emit - ev.t_start) * RATE_HZ * speed
        if ev.kind == "glass_break":
            ok = (k >= 0) & (k < len(clip) - 1)
            signal[ok] += gain * SOUND_LEVEL["glass_break"] / dist * np.interp(k[ok], np.arange(len(clip)), clip)
        else:
            active = (emit >= ev.t_start) & (emit <= ev.t_end)
            signal[active] += gain * SOUND_LEVEL["alarm"] / dist * np.interp(k[active] % len(clip),
                                                                            np.arange(len(clip)), clip)
    rng = np.random.default_rng([scene.seed, int(round(t_end * 1000)) & 0x7FFFFFFF, 11])
    if duration_s >= 0.5 and rng.random() < 0.15:  # an unlabelled distractor: a door, or an aircraft far away
        kind = "door" if rng.random() < 0.6 else "aircraft"
        clip = assets.clips[kind][0]
        start = int(rng.integers(0, n))
        m = min(n - start, len(clip))
        signal[start:start + m] += float(rng.uniform(0.05, 0.3)) * clip[:m]
    if scene.noise_snr_db is not None:
        p_signal = float(np.mean(signal ** 2)) + 1e-8
        noise = rng.normal(0, math.sqrt(p_signal / 10 ** (scene.noise_snr_db / 10)), n)
        signal += noise.astype(np.float32)
    return np.clip(out + signal, -1.0, 1.0).astype(np.float32)


# -- the live simulated sensor backend --------------------------------------------------------


class LiveWorld:
    """A scene that never ends: targets and events come and go over time, seeded."""

    def __init__(self, seed: int, geometry: RigGeometry, assets: Assets):
        self.rng = np.random.default_rng(seed)
        self.geometry = geometry
        self.assets = assets
        self.scene = sample_scene(self.rng, 0.0, geometry, classes=set(), assets=None)
        self.next_change = 0.0

    def update(self, t: float) -> None:
        """Every few seconds, replace the cast of the scene with a new random one."""
        if t < self.next_change:
            return
        fresh = sample_scene(self.rng, t + 2.0, self.geometry)
        fresh.background = self.scene.background
        fresh.night, fresh.occlusion = False, None
        self.scene = fresh
        self.next_change = t + float(self.rng.uniform(4.0, 7.0))


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--camera-endpoint", required=True, help="ZeroMQ endpoint for the simulated camera")
    p.add_argument("--radar-endpoint", required=True, help="ZeroMQ endpoint for the simulated radar")
    p.add_argument("--audio-endpoint", required=True, help="ZeroMQ endpoint for the simulated microphone")
    p.add_argument("--camera-id", default="cam0")
    p.add_argument("--radar-id", default="radar0")
    p.add_argument("--audio-id", default="mic0")
    p.add_argument("--seed", type=int, default=0, help="world seed (default 0): same seed, same world")
    p.add_argument("--camera-hz", type=float, default=10.0, help="camera frame rate (default 10)")
    p.add_argument("--radar-hz", type=float, default=10.0, help="radar frame rate (default 10)")
    p.add_argument("--duration", type=float, default=None, metavar="S", help="stop after S seconds")
    p.add_argument("--rig", default=None, metavar="RIG.yaml",
                   help="rig calibration file: take the image size, field of view and radar mounting from it")
    p.add_argument("--wait-subscriber", type=float, default=0.0, metavar="S",
                   help="wait up to S seconds for a subscriber before starting")


def run(args: argparse.Namespace) -> int:
    """Publish the three simulated sensors from one world, on their own sockets, in real time."""
    import time

    from fusion_node.errors import SensorError
    from fusion_node.wire import AudioChunk, CameraFrame, RadarPoints

    from .publisher import SensorPublisher, install_stop_handler, sleep_until

    stop = install_stop_handler()
    geometry = RigGeometry()
    if args.rig:
        from fusion_node.rig import load_rig

        try:
            geometry = RigGeometry.from_rig(load_rig(args.rig), args.camera_id, args.radar_id)
        except ValueError as exc:
            raise SensorError(f"sim: {args.rig}: {exc}") from None
    assets = load_assets("eval", geometry)
    world = LiveWorld(args.seed, geometry, assets)
    pubs = {"camera": SensorPublisher("camera", args.camera_endpoint, args.camera_id),
            "radar": SensorPublisher("radar", args.radar_endpoint, args.radar_id),
            "audio": SensorPublisher("audio", args.audio_endpoint, args.audio_id)}
    try:
        if args.wait_subscriber > 0:
            for pub in pubs.values():
                pub.wait_for_subscriber(args.wait_subscriber)
        t0_ns = time.monotonic_ns()
        periods = {"camera": 1.0 / args.camera_hz, "radar": 1.0 / args.radar_hz, "audio": 0.02}
        count = {k: 0 for k in periods}
        while not stop():
            # Times come from integer counts so schedules never drift by rounding.
            kind = min(periods, key=lambda k: count[k] * periods[k])
            t = count[kind] * periods[kind]
            if args.duration is not None and t >= args.duration:
                break
            # Publish once the sample's capture time (its end, for audio) has passed.
            sleep_until(t0_ns + int((t + (0.02 if kind == "audio" else 0.0)) * 1e9), stop)
            world.update(t)
            t_ns = t0_ns + int(round(t * 1e9))
            if kind == "camera":
                pubs[kind].publish(CameraFrame(args.camera_id, 0, t_ns, 0, render_camera(world.scene, t, assets, geometry)))
            elif kind == "radar":
                pubs[kind].publish(RadarPoints(args.radar_id, 0, t_ns, 0, render_radar(world.scene, t, assets, geometry),
                                               has_side_info=True))
            else:
                samples = render_audio(world.scene, t + 0.02, 0.02, assets)
                pubs[kind].publish(AudioChunk(args.audio_id, 0, t_ns, 0, samples, RATE_HZ))
            count[kind] += 1
    finally:
        for pub in pubs.values():
            pub.close()
    return 0
