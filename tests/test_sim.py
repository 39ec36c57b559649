"""The simulator: deterministic, geometrically consistent across modalities, and a real sensor backend."""

from __future__ import annotations

import math
import time
from pathlib import Path

import numpy as np
import pytest
import zmq

from fusion_node.wire import AudioChunk, CameraFrame, RadarPoints, decode
from sensors.sim import _variation
from sensors.sim import (CLASSES, SPEED_OF_SOUND_MPS, RigGeometry, Scene, SoundEvent, Target, load_assets,
                         render_audio, render_camera, render_radar, sample_scene, scene_labels)

GEOMETRY = RigGeometry()


@pytest.fixture(scope="module")
def assets():
    return load_assets("train", GEOMETRY)


def test_same_seed_same_scene(assets):
    a = sample_scene(np.random.default_rng(5), 10.0, assets=assets, real_prob=0.3)
    b = sample_scene(np.random.default_rng(5), 10.0, assets=assets, real_prob=0.3)
    np.testing.assert_array_equal(render_camera(a, 10.0, assets), render_camera(b, 10.0, assets))
    np.testing.assert_array_equal(render_radar(a, 10.0, assets), render_radar(b, 10.0, assets))
    np.testing.assert_array_equal(render_audio(a, 10.0, 1.0, assets), render_audio(b, 10.0, 1.0, assets))


def test_a_target_is_where_all_three_sensors_put_it(assets):
    person = Target("person", x0=1.0, y0=6.0, vx=1.0, vy=0.0, colour=(0, 0, 255))
    scene = Scene(seed=1, background=1, targets=[person], clutter_rate=0.0)
    t = 0.5
    x, y = person.position(t)
    img = render_camera(scene, t, assets)
    empty = render_camera(Scene(seed=1, background=1), t, assets)
    u, v = GEOMETRY.project(x, y, 1.0)  # the torso
    assert np.abs(img[int(v), int(u)].astype(int) - empty[int(v), int(u)].astype(int)).sum() > 30
    pts = render_radar(scene, t, assets)
    near = pts[np.hypot(pts[:, 0] - x, pts[:, 1] - y) < 1.0]
    assert len(near) >= 1
    # Radial velocity of a target moving along x, seen at azimuth atan(x/y).
    expected = person.vx * x / math.hypot(x, y)
    assert abs(np.median(near[:, 3]) - expected) < 0.5


def test_sound_arrives_after_the_propagation_delay(assets):
    ev = SoundEvent("glass_break", x=0.0, y=34.3, z=1.0, t_start=0.2, t_end=5.0)  # 34.3 m: 100 ms
    scene = Scene(seed=2, background=3, events=[ev])
    audio = render_audio(scene, 1.0, 1.0, assets)  # window [0, 1] s
    quiet = render_audio(Scene(seed=2, background=3), 1.0, 1.0, assets)
    clip = assets.clips["glass_break"][0]
    speed, gain = _variation(scene, f"glass_break{ev.t_start}")  # this scene's playback of the clip
    clip_onset = np.flatnonzero(np.abs(clip) > 1e-3)[0] / 16000 / speed  # the recording's own lead-in
    onset = np.flatnonzero(np.abs(audio - quiet) > 0.9e-3 * gain * 2.0 / 34.3)[0] / 16000
    assert abs(onset - (0.2 + 34.3 / SPEED_OF_SOUND_MPS + clip_onset)) < 0.002


def test_louder_when_closer(assets):
    def level(dist):
        scene = Scene(seed=3, background=5, events=[SoundEvent("alarm", 0.0, dist, 1.0, -5.0, 5.0)])
        return float(np.sqrt(np.mean(render_audio(scene, 1.0, 1.0, assets) ** 2)))
    assert level(3.0) > 2 * level(12.0)


def test_labels_follow_the_requested_classes(assets):
    rng = np.random.default_rng(11)
    for cls in CLASSES:
        scene = sample_scene(rng, 20.0, classes={cls}, assets=assets)
        labels = scene_labels(scene, 20.0)
        assert labels[CLASSES.index(cls)] == 1, cls
    empty = sample_scene(rng, 20.0, classes=set(), assets=assets)
    assert scene_labels(empty, 20.0).sum() == 0


def test_adverse_conditions_change_the_signals(assets):
    rng = np.random.default_rng(2)
    night = sample_scene(rng, 5.0, classes={"person"}, adverse="night", assets=assets)
    assert render_camera(night, 5.0, assets).mean() < 40
    clutter = sample_scene(rng, 5.0, classes={"dog"}, adverse="clutter", assets=assets)
    assert len(render_radar(clutter, 5.0, assets)) >= 12
    assert sample_scene(rng, 5.0, adverse="noise", assets=assets).noise_snr_db == 0.0


def test_real_recordings_are_split_between_train_and_eval():
    train, ev = load_assets("train"), load_assets("eval")
    assert train.person_frames and ev.person_frames and train.radar_walkers and ev.radar_walkers
    n_speech = [len(c) for c in train.clips["speech"]], [len(c) for c in ev.clips["speech"]]
    assert all(a > b for a, b in zip(*n_speech))  # 70 % / 30 %


def test_sim_backend_publishes_three_agreeing_streams(ipc_dir, spawn, zctx):
    eps = {k: f"ipc://{ipc_dir}/{k}" for k in ("camera", "radar", "audio")}
    spawn("sensor", "sim", "--camera-endpoint", eps["camera"], "--radar-endpoint", eps["radar"],
          "--audio-endpoint", eps["audio"], "--duration", "1.0", "--wait-subscriber", "30")
    sub = zctx.socket(zmq.SUB)
    sub.setsockopt(zmq.LINGER, 0)
    sub.setsockopt(zmq.SUBSCRIBE, b"")
    for ep in eps.values():
        sub.connect(ep)
    got = {"camera": [], "radar": [], "audio": []}
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and (len(got["camera"]) < 10 or len(got["audio"]) < 50):
        if sub.poll(100):
            msg = decode(sub.recv_multipart())
            got[msg.topic].append(msg)
    assert isinstance(got["camera"][0], CameraFrame) and got["camera"][0].image.shape == (180, 320, 3)
    assert isinstance(got["radar"][0], RadarPoints) and isinstance(got["audio"][0], AudioChunk)
    assert len(got["camera"]) == 10 and len(got["audio"]) == 50
    # One world clock: frames and chunks share a time base and their schedule.
    t_cam = np.array([m.t_capture_ns for m in got["camera"]])
    t_aud = np.array([m.t_capture_ns for m in got["audio"]])
    assert np.all(np.diff(t_cam) == 100_000_000) and t_aud[0] == t_cam[0]


def test_geometry_comes_from_a_rig_calibration_file():
    from fusion_node.rig import load_rig

    g = RigGeometry.from_rig(load_rig(Path(__file__).resolve().parents[1] / "examples" / "rig_calibration.yaml"))
    assert (g.width_px, g.height_px) == (768, 432)
    assert abs(g.fx - 600.0) < 1e-6 and abs(g.radar_below_camera_m - 0.06) < 1e-9
