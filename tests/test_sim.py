"""The simulator: deterministic, geometrically consistent across modalities, and a real sensor backend.

Also the demo's project-made inputs: the simulated TI capture and the street sound mix are what
``python -m sensors.sim.make_demo`` makes from the scripted street.
"""

from __future__ import annotations

import math
import time

import numpy as np
import pytest
import zmq

from fusion_node.rig import load_rig
from fusion_node.vocabulary import CLASSES, SPEED_OF_SOUND_MPS, WIRE_AUDIO_RATE_HZ
from fusion_node.wire import AudioChunk, CameraFrame, RadarPoints, decode
from sensors.audio import load_audio_file
from sensors.samples import DEFAULT_AUDIO, DEFAULT_RADAR, DEMO_INPUTS
from sensors.sim import make_demo
from sensors.sim.assets import REAL_SOUNDS, load_assets
from sensors.sim.render import _variation, render_audio, render_camera, render_radar
from sensors.sim.world import (
    DEMO_DURATION_S,
    RigGeometry,
    Scene,
    SoundEvent,
    Target,
    demo_street_scene,
    sample_scene,
    scene_labels,
)
from sensors.ti_mmwave import read_capture

from .conftest import ROOT, SHARED_DATA

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
    clip_onset = np.flatnonzero(np.abs(clip) > 1e-3)[0] / WIRE_AUDIO_RATE_HZ / speed  # the recording's own lead-in
    onset = np.flatnonzero(np.abs(audio - quiet) > 0.9e-3 * gain * 2.0 / 34.3)[0] / WIRE_AUDIO_RATE_HZ
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


def test_shipped_assets_split_long_clips_and_need_nothing_else(assets):
    ev = load_assets("eval", GEOMETRY)
    assert assets.real_files == () and ev.real_files == ()
    assert not assets.person_frames and not assets.car_frames and not assets.radar_walkers
    assert len(assets.backgrounds) >= 2 and assets.backgrounds[0].shape == (180, 320, 3)
    assert len(assets.radar_static) > 50 and np.all(assets.radar_static[:, 3] == 0)  # static returns
    n_speech = [len(c) for c in assets.clips["speech"]], [len(c) for c in ev.clips["speech"]]
    assert all(a > b for a, b in zip(*n_speech))  # speech clips are long: cut 70 % / 30 %
    assert [len(c) for c in assets.clips["dog"]] == [len(c) for c in ev.clips["dog"]]  # one bark: used whole


@pytest.mark.parametrize("split", ["train", "eval"])
def test_each_simulated_sound_is_heard_as_its_class_by_the_audio_teacher(split):
    """The simulator labels a window by what sounds in it, so each sound must be what AudioSet
    calls that class (a level-crossing bell is a train to it, a jet a vehicle), and the unlabelled
    distractor none of them. People are labelled by sight, and some footsteps are too faint to name."""
    yamnet = SHARED_DATA.parent / "models" / "teachers" / "yamnet.onnx"
    if not yamnet.is_file():
        pytest.skip(f"needs the YAMNet teacher at {yamnet} (training-time only, not shipped)")
    from models.teacher_audio import YamnetTeacher

    teacher, win = YamnetTeacher(yamnet), WIRE_AUDIO_RATE_HZ
    for kind, clips in load_assets(split, GEOMETRY).clips.items():
        for j, clip in enumerate(clips):
            parts = [clip[s:s + win] for s in range(0, max(1, len(clip) - win + 1), win // 2)]
            scores = teacher.windows(np.stack([np.pad(p, (0, win - len(p))) for p in parts])).scores.max(axis=0)
            heard = dict(zip(CLASSES, np.round(scores, 2).tolist()))
            if kind not in CLASSES:
                assert scores.max() < 0.3, f"distractor {kind} #{j} is heard as {heard}"
            elif kind != "person":
                own = scores[CLASSES.index(kind)]
                assert own >= 0.5 and own == scores.max(), f"{kind} #{j} is heard as {heard}"


def test_real_recordings_are_split_between_train_and_eval(shared_data):
    train, ev = load_assets("train", GEOMETRY, shared_data), load_assets("eval", GEOMETRY, shared_data)
    assert len(train.real_files) == 5 and train.real_files == ev.real_files
    assert train.person_frames and ev.person_frames and train.radar_walkers and ev.radar_walkers
    assert len(train.person_frames) > len(ev.person_frames) and len(train.car_frames) > len(ev.car_frames)
    shipped = len(load_assets("train", GEOMETRY).clips["speech"])
    assert len(train.clips["speech"]) == shipped + len(REAL_SOUNDS["speech"])
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
    g = RigGeometry.from_rig(load_rig(ROOT / "examples" / "rig_calibration.yaml"))
    assert (g.width_px, g.height_px) == (768, 432)
    assert abs(g.fx - 600.0) < 1e-6 and abs(g.radar_below_camera_m - 0.06) < 1e-9


# -- the demo's project-made inputs --------------------------------------------------------------


def test_demo_radar_capture_is_the_simulated_street():
    """The committed capture is the simulator's rendering of the scripted street, as make_demo writes it."""
    frames = read_capture(DEFAULT_RADAR)
    fresh = make_demo.demo_radar_frames(GEOMETRY)
    assert len(frames) == len(fresh) == int(DEMO_DURATION_S * make_demo.RADAR_HZ)
    assert [f.frame_number for f in frames] == list(range(1, len(frames) + 1))
    for f, pts in zip(frames, fresh):
        assert f.has_side_info and f.stats is not None
        np.testing.assert_allclose(f.points[:, :4], pts[:, :4], atol=1e-4)
        np.testing.assert_allclose(f.points[:, 4:], pts[:, 4:], atol=0.051)
    assert not DEMO_INPUTS["radar"].real and "simulator" in DEMO_INPUTS["radar"].description
    # The scripted car passes 12 m out: its returns carry its radial velocity while it crosses.
    car = demo_street_scene().targets[1]
    for t in (2.0, 3.0, 4.0):
        x, y = car.position(t)
        pts = frames[int(t * make_demo.RADAR_HZ)].points
        near = pts[np.hypot(pts[:, 0] - x, pts[:, 1] - y) < 2.5]
        radial = (car.vx * near[:, 0] + car.vy * near[:, 1]) / np.hypot(near[:, 0], near[:, 1])
        assert len(near) >= 5 and abs(np.median(near[:, 3] - radial)) < 0.3, t


def test_demo_sound_mix_follows_the_street_timeline():
    mix = make_demo.demo_audio_mix()
    shipped = load_audio_file(DEFAULT_AUDIO)
    assert len(shipped) == len(mix) == int(DEMO_DURATION_S * WIRE_AUDIO_RATE_HZ)
    # The committed file is this mix, as 16-bit samples.
    np.testing.assert_allclose(shipped, mix, atol=1.5 / 32768)
    level = np.sqrt(np.mean(mix.reshape(-1, WIRE_AUDIO_RATE_HZ // 10) ** 2, axis=1))  # per 100 ms
    for p in make_demo.MIX:
        k = int(p.start_s * 10) + 1
        assert level[k] > 0.02, p.clip  # sound where each clip was placed
    assert level.max() > 0.1 and np.abs(mix).max() <= 0.9 + 1e-6


def test_make_demo_writes_both_files(tmp_path, capsys):
    assert make_demo.main(["--out", str(tmp_path)]) == 0
    assert (tmp_path / "radar" / DEFAULT_RADAR.name).read_bytes() == make_demo.demo_radar_capture()
    assert len(load_audio_file(tmp_path / "audio" / DEFAULT_AUDIO.name)) == int(DEMO_DURATION_S * WIRE_AUDIO_RATE_HZ)
    assert "simulated TI frames" in capsys.readouterr().out


def test_scene_sequences_follow_each_scene_through_time_deterministically():
    from models.dataset import scene_sequences

    a = list(scene_sequences(2, 5, seed=3, split="eval"))
    b = list(scene_sequences(2, 5, seed=3, split="eval"))
    assert [(i, k) for i, k, _, _ in a] == [(i, k) for i in range(2) for k in range(5)]
    for (_, _, img_a, pts_a), (_, _, img_b, pts_b) in zip(a, b):
        assert np.array_equal(img_a, img_b) and np.array_equal(pts_a, pts_b)
    assert a[0][2].dtype == np.uint8 and a[0][3].shape[1] == 6
    # One scene moves on from step to step; the next scene is another place.
    assert not np.array_equal(a[0][3], a[1][3]) or not np.array_equal(a[0][2], a[1][2])
    assert not np.array_equal(a[0][2], a[5][2])


def _shared_share(a: np.ndarray, b: np.ndarray, tol_m: float = 0.5) -> float:
    """Share of the points of ``a`` with a point of ``b`` within ``tol_m`` metres."""
    if not len(a) or not len(b):
        return 0.0
    d = np.linalg.norm(a[:, None, :2] - b[None, :, :2], axis=2)
    return float((d.min(axis=1) < tol_m).mean())


def test_static_radar_returns_belong_to_the_scene_not_to_its_backdrop(assets):
    """The picture says nothing of the radar's static returns: a radar bound to the camera must
    learn the targets, not recognise the backdrop. One place keeps its returns through time."""
    same_place, same_backdrop = [], []
    for k in range(20):
        a = sample_scene(np.random.default_rng(100 + k), 10.0, classes=set(), assets=assets)
        b = sample_scene(np.random.default_rng(200 + k), 10.0, classes=set(), assets=assets)
        b.background = a.background
        a.clutter_rate = b.clutter_rate = 0.0
        # Over a second, every static return of a place shows (each frame misses some).
        seen_a = np.concatenate([render_radar(a, t, assets) for t in np.arange(10.0, 11.0, 0.1)])
        seen_b = np.concatenate([render_radar(b, t, assets) for t in np.arange(10.0, 11.0, 0.1)])
        later = render_radar(a, 20.0, assets)
        if len(later):
            same_place.append(_shared_share(later, seen_a))
            same_backdrop.append(_shared_share(later, seen_b))
    assert np.mean(same_place) > 0.9, same_place
    assert np.mean(same_backdrop) < 0.3, same_backdrop


def test_a_live_world_keeps_its_place_when_the_cast_changes():
    from sensors.sim.world import LiveWorld

    world = LiveWorld(3, GEOMETRY)
    first = (world.scene.background, world.scene.static_layout)
    world.update(0.0)
    seeds = {world.scene.seed}
    for t in np.arange(0.5, 30.0, 0.5):
        world.update(float(t))
        seeds.add(world.scene.seed)
        assert (world.scene.background, world.scene.static_layout) == first
    assert len(seeds) > 2  # the cast did change
