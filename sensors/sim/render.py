"""The three renderers: one scene seen by the camera, the radar and the microphone.

:func:`render_camera` draws the targets over a background (a real place from the assets or a
procedural street) with lighting changes, night, blur and occlusion; :func:`render_radar` gives
their detections in the radar frame with range, azimuth and doppler noise, clutter, static
returns and missed detections; :func:`render_audio` plays each source's sound clip attenuated
with distance and delayed by the speed of sound, over the ambience of the place. Given the same
scene and time, each renderer returns the same output.
"""

from __future__ import annotations

import math
import zlib

import cv2
import numpy as np

from fusion_node.vocabulary import RADAR_POINT_FIELDS, SPEED_OF_SOUND_MPS, WIRE_AUDIO_RATE_HZ

from .assets import Assets
from .world import BODY, RigGeometry, Scene, Target

__all__ = ["render_camera", "render_radar", "render_audio"]

# Radar points per frame and SNR (dB) of each kind of target.
RADAR_POINTS = {"person": 5.0, "vehicle": 14.0, "dog": 3.5}
RADAR_SNR_DB = {"person": 22.0, "vehicle": 33.0, "dog": 16.0}
# Sound level at 1 m (linear amplitude scale of the normalised clip).
SOUND_LEVEL = {"person": 0.25, "vehicle": 1.6, "dog": 1.2, "speech": 0.9, "glass_break": 2.0, "alarm": 2.5}


# -- backgrounds -----------------------------------------------------------------------------------


def _background(assets: Assets, bg_id: int, geometry: RigGeometry) -> np.ndarray:
    """Background ``bg_id``: a real place from the assets (even ids) or a procedural street, fixed per id."""
    rng = np.random.default_rng(10_000 + bg_id)
    w, h = geometry.width_px, geometry.height_px
    if bg_id % 2 == 0 and assets.backgrounds:
        base = assets.backgrounds[(bg_id // 2) % len(assets.backgrounds)]
        # A different crop, flip and colour balance per id: many places from a few real ones.
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


def _static_clutter(assets: Assets, layout: int) -> np.ndarray:
    """Static radar returns of layout ``layout``: points of the assets' static pool, fixed per id."""
    rng = np.random.default_rng(20_000 + layout)
    n = int(rng.integers(3, 10))
    idx = rng.choice(len(assets.radar_static), size=n, replace=len(assets.radar_static) < n)
    pts = assets.radar_static[idx].copy()
    pts[:, 1] += rng.uniform(2.0, 12.0)  # the pool lies within a few metres of the radar
    pts[:, 0] += rng.uniform(-3, 3)
    return pts



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
    """Radar detections (N, 6), columns ``RADAR_POINT_FIELDS``, in the radar frame."""
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
    static = _static_clutter(assets, scene.static_layout)
    keep = rng.random(len(static)) > 0.25  # missed detections
    rows.append(static[keep])
    n_clutter = rng.poisson(scene.clutter_rate)
    if n_clutter:
        cy = rng.uniform(0.5, geometry.radar_max_range_m, n_clutter)
        cx = cy * np.tan(rng.uniform(-half_fov, half_fov, n_clutter))
        cz = rng.uniform(-radar_z, 2.0, n_clutter)
        cd = rng.normal(0, 0.8 if scene.clutter_rate > 10 else 0.2, n_clutter)
        rows.append(np.stack([cx, cy, cz, cd, rng.uniform(12, 20, n_clutter), rng.uniform(55, 85, n_clutter)], axis=1))
    pts = np.concatenate(rows).astype(np.float32) if rows else np.zeros((0, len(RADAR_POINT_FIELDS)), np.float32)
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
    t = t0 + np.arange(n) / WIRE_AUDIO_RATE_HZ
    return (coloured + hum_level * np.sin(2 * math.pi * hum_hz * t)).astype(np.float32)


def render_audio(scene: Scene, t_end: float, duration_s: float, assets: Assets) -> np.ndarray:
    """Mono 16 kHz samples of the ``duration_s`` ending at ``t_end``."""
    n = int(round(duration_s * WIRE_AUDIO_RATE_HZ))
    t0 = t_end - duration_s
    times = t0 + np.arange(n) / WIRE_AUDIO_RATE_HZ
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
            start = int((emit[0] + tg.sound_offset_s) * WIRE_AUDIO_RATE_HZ)
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
        k = (emit - ev.t_start) * WIRE_AUDIO_RATE_HZ * speed
        if ev.kind == "glass_break":
            ok = (k >= 0) & (k < len(clip) - 1)
            signal[ok] += gain * SOUND_LEVEL["glass_break"] / dist * np.interp(k[ok], np.arange(len(clip)), clip)
        else:
            active = (emit >= ev.t_start) & (emit <= ev.t_end)
            signal[active] += gain * SOUND_LEVEL["alarm"] / dist * np.interp(k[active] % len(clip),
                                                                            np.arange(len(clip)), clip)
    rng = np.random.default_rng([scene.seed, int(round(t_end * 1000)) & 0x7FFFFFFF, 11])
    if duration_s >= 0.5 and rng.random() < 0.15:  # an unlabelled distractor: a door
        clip = assets.clips["door"][0]
        start = int(rng.integers(0, n))
        m = min(n - start, len(clip))
        signal[start:start + m] += float(rng.uniform(0.05, 0.3)) * clip[:m]
    if scene.noise_snr_db is not None:
        p_signal = float(np.mean(signal ** 2)) + 1e-8
        noise = rng.normal(0, math.sqrt(p_signal / 10 ** (scene.noise_snr_db / 10)), n)
        signal += noise.astype(np.float32)
    return np.clip(out + signal, -1.0, 1.0).astype(np.float32)
