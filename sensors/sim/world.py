"""The simulated world: rig geometry, targets, sound events and the scenes they make.

One rig geometry (a pinhole camera 1.5 m above the ground, the radar 10 cm below it, both
looking forward) places every target once, so its pixels, its radar points and its sound all
come from the same position and velocity. World frame: X right, Y forward (range), Z up from
the ground, metres; the radar frame is the world frame shifted to the radar (TI convention:
x right, y boresight, z up).

A :class:`Scene` is everything the renderers (:mod:`sensors.sim.render`) need at any time:
:func:`sample_scene` draws random training scenes with known labels (:func:`scene_labels`),
:class:`LiveWorld` a scene whose cast changes every few seconds (the live sensor), and
:func:`demo_street_scene` the scripted street of the bundled demo. Everything is deterministic
given a seed.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from fusion_node.vocabulary import CLASSES, SPEED_OF_SOUND_MPS

if TYPE_CHECKING:  # annotations only: the assets module builds on this one
    from .assets import Assets

__all__ = ["RigGeometry", "BODY", "Target", "SoundEvent", "Scene", "sample_scene", "scene_labels", "LiveWorld",
           "DEMO_DURATION_S", "demo_street_scene"]


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


# Physical size of each kind of target (width, height, depth in m), its speed and range.
BODY = {"person": (0.5, 1.75, 0.4), "vehicle": (4.2, 1.5, 1.8), "dog": (0.9, 0.6, 0.35)}
SPEED_MPS = {"person": (0.6, 1.6), "vehicle": (3.0, 9.0), "dog": (1.0, 3.0)}
RANGE_M = {"person": (3.0, 13.0), "vehicle": (7.0, 22.0), "dog": (2.5, 9.0)}


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
    # Which static radar returns the place has (None: the background's own). The simulator's
    # pictures are not geometry, so nothing ties a backdrop to its radar returns; a radar bound to
    # the camera on scenes where they were tied learnt to recognise the backdrop, not the targets.
    static_layout: int | None = None

    def __post_init__(self) -> None:
        if self.static_layout is None:
            self.static_layout = self.background


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
                 classes: set[str] | None = None, adverse: str | None = None, assets: "Assets | None" = None,
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
    seed = int(rng.integers(0, 2**31))
    scene = Scene(seed=seed, background=bg, static_layout=seed)  # returns apart from the backdrop
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


class LiveWorld:
    """A scene that never ends: targets and events come and go over time, seeded."""

    def __init__(self, seed: int, geometry: RigGeometry):
        self.rng = np.random.default_rng(seed)
        self.geometry = geometry
        self.scene = sample_scene(self.rng, 0.0, geometry, classes=set(), assets=None)
        self.next_change = 0.0

    def update(self, t: float) -> None:
        """Every few seconds, replace the cast of the scene with a new random one."""
        if t < self.next_change:
            return
        fresh = sample_scene(self.rng, t + 2.0, self.geometry)
        fresh.background = self.scene.background
        fresh.static_layout = self.scene.static_layout  # the same place keeps its static returns
        fresh.night, fresh.occlusion = False, None
        self.scene = fresh
        self.next_change = t + float(self.rng.uniform(4.0, 7.0))


# -- the bundled demo's street -------------------------------------------------------------------

DEMO_DURATION_S = 10.0  # the length of the bundled street video


def demo_street_scene() -> Scene:
    """The scripted street the bundled demo's simulated radar observes (and its sound follows).

    Over :data:`DEMO_DURATION_S`: a pedestrian crosses close by, a car passes further out, a
    cyclist rides away along the pavement and someone stands talking on the left. Its radar
    frames are rendered once into ``sensors/samples/radar`` by ``python -m sensors.sim.make_demo``.
    """
    return Scene(
        seed=2024,
        background=1,
        targets=[
            Target("person", x0=-3.5, y0=4.5, vx=1.3, vy=0.0, colour=(40, 60, 160), sound_offset_s=0.0),
            Target("vehicle", x0=16.0, y0=12.0, vx=-5.5, vy=0.0, colour=(30, 30, 200)),
            Target("person", x0=1.5, y0=3.0, vx=0.2, vy=3.8, colour=(30, 160, 30), sound_offset_s=1.0),
            Target("person", x0=-2.2, y0=3.2, vx=0.0, vy=0.05, colour=(120, 80, 40), speaking=True,
                   sound_offset_s=2.0),
        ],
        clutter_rate=1.0,
    )
