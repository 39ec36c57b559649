"""Faulty but alive sensors (fusion_node.faults) on real recordings, through the core, and over sockets.

Healthy streams are the bundled street video, radar capture and sound mix (and, when present,
the development data's real videos, TI capture and microphone recordings); faulty ones are the
same recordings made faulty the way :mod:`sensors.sim.faults` describes (a covered lens = the
video darkened and blurred to near uniformity, a frozen camera = one real frame repeated, ...).
"""

from __future__ import annotations

import time

import cv2
import numpy as np
import pytest
import yaml

from bench.faults import (
    CHUNK,
    FAULTS,
    audio_samples,
    audio_stream,
    camera_stream,
    chunked,
    radar_frames,
    radar_stream,
    run_detector,
    video_frames,
)
from fusion_node.config import FaultsConfig, LifecycleConfig, config_from_dict, config_schema
from fusion_node.core import FusionCore
from fusion_node.cpu_runtime import ModelRuntime
from fusion_node.errors import ConfigError
from fusion_node.faults import FAULT_KINDS, FaultMonitor, SensorFaults
from fusion_node.lifecycle import Lifecycle
from fusion_node.paths import SHIPPED_MODELS
from fusion_node.vocabulary import CLASSES
from fusion_node.wire import AudioChunk, CameraFrame, RadarPoints, decode_map
from sensors.samples import DEFAULT_AUDIO, DEFAULT_CAMERA, DEFAULT_RADAR
from sensors.sim.faults import FaultInjection, parse_fault

from .conftest import SHARED_DATA
from .fake_runtime import FakeRuntime
from .test_core import _cfg as core_rig

S = 1_000_000_000
AUDIO = DEFAULT_AUDIO
# The bound: a fault is reported within 2 s of its onset at the nominal rates.
DETECT_WITHIN_S = 2.0


def _raised(timeline, fault: str, after: float = 0.0) -> float | None:
    return next((t for t, active in timeline if t >= after and fault in active), None)


def _cleared(timeline, fault: str, after: float) -> float | None:
    return next((t for t, active in timeline if t >= after and fault not in active), None)


# -- healthy real streams raise nothing ------------------------------------------------------------


def test_the_bundled_healthy_streams_raise_no_fault_over_their_whole_length():
    for kind, stream in (("camera", camera_stream(loops=2)), ("radar", radar_stream(loops=2)),
                         ("audio", audio_stream())):
        timeline, det = run_detector(kind, stream)
        assert all(not active for _, active in timeline), (kind, [t for t, a in timeline if a][:5])
        assert sum(det.onsets.values()) == 0


def _shared(pattern: str) -> list:
    return sorted(SHARED_DATA.glob(pattern))


@pytest.mark.parametrize("pattern, kind", [("video/*.mp4", "camera"), ("registry/video/*", "camera"),
                                           ("radar/*.dat", "radar"), ("audio/speech_librispeech_*.ogg", "audio"),
                                           ("registry/audio/speech_*.wav", "audio"),
                                           ("registry/audio/siren_*.wav", "audio")])
def test_real_recordings_of_the_development_data_raise_no_fault(shared_data, pattern, kind):
    paths = [p for p in _shared(pattern) if p.suffix in (".mp4", ".avi", ".dat", ".ogg", ".wav")]
    assert paths, f"no {pattern} in {shared_data}"
    for path in paths:
        stream = {"camera": camera_stream, "radar": radar_stream, "audio": audio_stream}[kind](path)
        timeline, _ = run_detector(kind, stream)
        assert all(not active for _, active in timeline), (path.name, [(t, a) for t, a in timeline if a][:3])


def test_a_real_static_scene_is_not_frozen_though_its_video_repeats_some_frames_exactly(shared_data):
    # An office filmed by a fixed camera, mostly empty: H.264 repeats frames bit for bit now and then.
    path = shared_data / "video" / "one-by-one-person-detection.mp4"
    if not path.is_file():
        pytest.skip(f"needs {path}")
    fps, frames = video_frames(str(path))
    identical = sum(np.array_equal(a, b) for a, b in zip(frames[1:], frames[:-1]))
    assert identical >= 5  # the hard case is real: exact repeats happen
    timeline, det = run_detector("camera", camera_stream(path))
    assert det.onsets["frozen"] == 0 and det.onsets["covered"] == 0


# -- each fault, on real data, within 2 s and cleared after recovery ---------------------------------



@pytest.mark.parametrize("modality, fault", FAULTS)
def test_each_fault_is_raised_within_2_s_of_onset_alone_and_cleared_after_recovery(modality, fault):
    onset, end = 3.0, 6.5
    stream = {"camera": camera_stream, "radar": radar_stream, "audio": audio_stream}[modality]()
    timeline, det = run_detector(modality, stream, FaultInjection(modality, fault, onset, end))
    raised = _raised(timeline, fault)
    assert raised is not None, f"{fault} never raised"
    assert onset < raised <= onset + DETECT_WITHIN_S, raised
    cleared = _cleared(timeline, fault, raised)
    assert cleared is not None and end < cleared <= end + DETECT_WITHIN_S, cleared
    assert _raised(timeline, fault, cleared) is None  # stays cleared on the healthy rest
    assert {k: det.onsets[k] for k in FAULT_KINDS[modality]} == {k: int(k == fault) for k in FAULT_KINDS[modality]}


def test_a_frozen_camera_whose_clock_overlay_still_ticks_is_frozen():
    # Some cameras burn the time into the picture: the overlay goes on changing on a frozen image.
    fps, frames = video_frames(str(DEFAULT_CAMERA))
    held = frames[40]
    stream = []
    for i in range(len(frames)):
        t = i / fps
        img = frames[i] if t < 3 else held.copy()
        cv2.putText(img, f"{t:08.3f}", (10, 30), cv2.FONT_HERSHEY_SIMPLEX, 0.8, (255, 255, 255), 2)
        stream.append((t, img))
    timeline, _ = run_detector("camera", stream)
    assert 3 < _raised(timeline, "frozen") <= 3 + DETECT_WITHIN_S


def test_a_microphone_replaying_a_buffer_of_another_length_than_the_chunks_is_stuck():
    x = audio_samples(str(AUDIO))
    buf = x[16_000:16_000 + 1024].copy()  # a 64 ms driver buffer, replayed over and over
    looped = np.concatenate([x[:48_000], np.tile(buf, 200)])
    timeline, _ = run_detector("audio", chunked(looped))
    assert 3 < _raised(timeline, "stuck") <= 3 + DETECT_WITHIN_S
    assert _raised(timeline, "silent") is None


def test_a_short_clipped_transient_is_no_fault_but_a_gain_set_too_high_is():
    x = audio_samples(str(AUDIO))
    burst = x.copy()
    burst[48_000:48_960] = np.sign(burst[48_000:48_960] + 1e-9)  # 60 ms slammed to full scale: a door, a shot
    timeline, det = run_detector("audio", chunked(burst))
    assert det.onsets["clipped"] == 0
    hot = np.concatenate([x[:48_000], np.clip(x[48_000:] * 10, -1, 1)])  # the gain turned up tenfold at 3 s
    timeline, _ = run_detector("audio", chunked(hot))
    assert 3 < _raised(timeline, "clipped") <= 3 + DETECT_WITHIN_S


def test_a_constant_non_zero_signal_is_stuck_and_digital_zero_is_silent():
    x = audio_samples(str(AUDIO))[:48_000]
    dc = np.concatenate([x, np.full(32_000, 0.25, np.float32)])
    timeline, _ = run_detector("audio", chunked(dc))
    assert 3 < _raised(timeline, "stuck") <= 5 and _raised(timeline, "silent") is None


def test_a_radar_empty_from_its_start_is_not_faulty_but_one_that_goes_empty_is_and_a_restart_forgets():
    det = SensorFaults("r0", "radar", FaultsConfig())
    empty = np.zeros((0, 6), np.float32)
    for i in range(30):  # a radar watching an empty room from the start: nothing to compare with
        det.observe(1, i * S // 10, empty)
    assert det.active == []
    points = radar_frames(str(DEFAULT_RADAR))
    for i in range(30, 40):
        det.observe(1, i * S // 10, points[i])
    for i in range(40, 60):
        det.observe(1, i * S // 10, empty)
    assert det.active == ["empty"]
    for i in range(60, 80):  # a new run (the radar process restarted): it has reported nothing yet
        det.observe(2, i * S // 10, empty)
    assert det.active == [] and det.onsets["empty"] == 1


def test_latency_is_within_2_s_at_every_nominal_rate():
    # Camera 25 and 30 fps, radar 10 Hz, audio 20 ms chunks: a frozen or silent stream from t = 1 s.
    for kind, period, data in (("camera", 1 / 25, video_frames(str(DEFAULT_CAMERA))[1][0]),
                               ("camera", 1 / 30, video_frames(str(DEFAULT_CAMERA))[1][0]),
                               ("radar", 0.1, radar_frames(str(DEFAULT_RADAR))[0]),
                               ("audio", 0.02, np.zeros(CHUNK, np.float32))):
        det = SensorFaults("s", kind, FaultsConfig())
        t = 1.0
        while not det.active:
            det.observe(1, int(t * S), data)
            t += period
        assert t - 1.0 <= DETECT_WITHIN_S, (kind, period, t)


# -- the config --------------------------------------------------------------------------------------


def test_the_faults_section_is_validated_and_in_the_schema():
    schema = config_schema()
    assert "FaultsConfig" in schema["$defs"]
    props = schema["$defs"]["FaultsConfig"]["properties"]
    assert {"enabled", "window_s", "camera_covered_std_max", "audio_silent_rms_max"} <= set(props)
    base = {"rig": "r", "sensors": [{"id": "cam0", "kind": "camera", "endpoint": "inproc://c"}]}
    assert config_from_dict(base).faults.window_s <= 2.0
    for bad in ({"window_s": 3.0}, {"raise_fraction": 0.5, "clear_fraction": 0.6}, {"no_such_key": 1}):
        with pytest.raises(ConfigError, match="faults"):
            config_from_dict({**base, "faults": bad})


def test_parse_fault_reads_the_spec_and_names_what_is_wrong():
    f = parse_fault("audio:clipped@2-5")
    assert (f.modality, f.kind, f.start_s, f.end_s) == ("audio", "clipped", 2.0, 5.0)
    for bad in ("camera:melted@1", "camera:frozen", "radar:empty@3-2"):
        with pytest.raises(ValueError, match="fault"):
            parse_fault(bad)


# -- through the core ------------------------------------------------------------------------------


def _rig(**faults):
    """tests/test_core.py's rig (camera, radar, microphone) with fault detection on and these settings."""
    return core_rig().model_copy(update={"faults": FaultsConfig(**faults)})


def _through_core(core: FusionCore, injections: dict[str, FaultInjection], seconds: float) -> list[dict]:
    """Real camera (25 fps), radar (10 Hz) and audio (20 ms) on one clock through the core; returns events."""
    fps, frames = video_frames(str(DEFAULT_CAMERA))
    points = radar_frames(str(DEFAULT_RADAR))
    x = audio_samples(str(AUDIO))
    t0 = 100 * S
    clock = [t0]
    core.timer = lambda: clock[0]
    events = []
    seq = {"camera": 0, "radar": 0, "audio": 0}
    for step in range(int(seconds * 100)):  # a 10 ms tick
        t = step / 100
        msgs = []
        if step % 2 == 0:
            k = seq["audio"]
            chunk = injections.get("audio", FaultInjection("audio", "silent", 1e9)).apply(t, x[k * CHUNK:(k + 1) * CHUNK])
            msgs.append(AudioChunk("mic0", k, t0 + int(t * S), t0 + int(t * S), chunk, 16_000, run_id=1))
            seq["audio"] += 1
        if step % 4 == 0:
            k = seq["camera"]
            img = injections.get("camera", FaultInjection("camera", "frozen", 1e9)).apply(t, frames[k % len(frames)])
            msgs.append(CameraFrame("cam0", k, t0 + int(t * S), t0 + int(t * S), img, run_id=1))
            seq["camera"] += 1
        if step % 10 == 5:
            k = seq["radar"]
            pts = injections.get("radar", FaultInjection("radar", "empty", 1e9)).apply(t, points[k % len(points)])
            msgs.append(RadarPoints("radar0", k, t0 + int(t * S), t0 + int(t * S), pts, run_id=1))
            seq["radar"] += 1
        clock[0] = t0 + int(t * S) + 5_000_000
        events += [dict(e, t_s=(e["t_ref_ns"] - t0) / S) for e in core.step(clock[0], [(clock[0], m) for m in msgs])]
    return events


def test_a_frozen_camera_is_alerted_in_events_and_left_out_of_the_fusion_until_it_recovers():
    runtime = FakeRuntime()
    core = FusionCore(_rig(), runtime)
    events = _through_core(core, {"camera": FaultInjection("camera", "frozen", 2.0, 5.0)}, 8.0)
    alerted = [e for e in events if "sensor_fault:cam0:frozen" in e["alerts"]]
    assert alerted
    first, last = alerted[0]["t_s"], alerted[-1]["t_s"]
    assert 2.0 < first <= 2.0 + DETECT_WITHIN_S and 5.0 < last <= 5.0 + DETECT_WITHIN_S
    # Every event from the first alert to the last carries it: no flicker while the fault lasts.
    span = [e for e in events if first <= e["t_s"] <= last]
    assert all("sensor_fault:cam0:frozen" in e["alerts"] for e in span)
    for e in alerted:
        assert e["faults"] == {"cam0": ["frozen"]} and "cam0" in e["missing"]
        cam = e["modalities"]["camera"]
        assert cam["present"] is False and cam["weight"] == 0.0 and cam["faults"] == ["frozen"]
        assert e["modalities"]["radar"]["weight"] > 0 and "cam0" not in {m["sensor_id"] for m in e["members"]}
    healthy = [e for e in events if e["t_s"] < 2.0 or e["t_s"] > last + 0.2]
    assert healthy and all(e["faults"] == {} and not e["alerts"] for e in healthy)
    stats = core.stats(core.timer(), 1.0)
    assert stats["sensors"]["cam0"]["faults"] == {"covered": 0, "frozen": 1}
    assert stats["sensors"]["cam0"]["faulty"] == []
    assert stats["sensors"]["mic0"]["faults"] == {"silent": 0, "clipped": 0, "stuck": 0}


def test_a_fault_becomes_one_alert_occurrence_about_its_sensor():
    core = FusionCore(_rig(), FakeRuntime())
    events = _through_core(core, {"radar": FaultInjection("radar", "empty", 1.0)}, 3.0)
    lc = Lifecycle(LifecycleConfig(), thresholds={c: 0.5 for c in CLASSES})
    out = []
    for e in events:
        now = e["t_ref_ns"] + 10_000_000
        out += lc.observe(e, now, now)
    starts = [o for o in out if o["kind"] == "alert" and o["type"] == "start"]
    assert [(o["label"], o["sensor_id"]) for o in starts] == [("sensor_fault:radar0:empty", "radar0")]


def test_the_camera_is_not_encoded_while_faulty():
    runtime = FakeRuntime()
    core = FusionCore(_rig(), runtime)
    events = _through_core(core, {"camera": FaultInjection("camera", "covered", 1.0)}, 4.0)
    faulty = [e for e in events if e["faults"]]
    assert faulty and runtime.calls["encode_camera"] == len(events) - len(faulty)


def test_a_silent_microphone_with_the_shipped_model_gets_zero_weight(tmp_path):
    runtime = ModelRuntime(SHIPPED_MODELS, provider="cpu")
    core = FusionCore(_rig(), runtime)
    events = _through_core(core, {"audio": FaultInjection("audio", "silent", 1.5)}, 4.0)
    faulty = [e for e in events if "sensor_fault:mic0:silent" in e["alerts"]]
    assert faulty and 1.5 < faulty[0]["t_s"] <= 1.5 + DETECT_WITHIN_S
    for e in faulty:
        assert e["modalities"]["audio"]["weight"] == 0.0 and not e["modalities"]["audio"]["present"]
        assert "encode_audio" not in e["latency_ms"]
    # Before the fault, once the model's audio window is covered, the microphone has a weight.
    before = [e for e in events if e["t_s"] < 1.5 and e["modalities"]["audio"]["present"]]
    assert before and all(e["modalities"]["audio"]["weight"] > 0 for e in before)


def test_faults_disabled_leaves_events_as_they_were():
    core = FusionCore(_rig(enabled=False), FakeRuntime())
    events = _through_core(core, {"camera": FaultInjection("camera", "frozen", 1.0)}, 3.0)
    assert events and all(e["faults"] == {} and not e["alerts"] for e in events)
    assert "faults" not in core.stats(core.timer(), 1.0)["sensors"]["cam0"]


def test_the_monitor_reports_sensors_by_id():
    mon = FaultMonitor(FaultsConfig(), {"mic0": "audio", "cam0": "camera"})
    for i in range(60):
        mon.observe("mic0", 1, i * 20_000_000, np.zeros(CHUNK, np.float32))
    assert mon.active() == {"mic0": ["silent"]} and mon.onsets("mic0")["silent"] == 1


# -- over real sockets ----------------------------------------------------------------------------


def test_a_fault_injected_in_the_live_simulator_is_alerted_by_the_node(ipc_dir, spawn, zctx):
    import zmq

    cfg = {
        "rig": "sim-rig",
        "sensors": [{"id": "cam0", "kind": "camera", "endpoint": f"ipc://{ipc_dir}/cam0"},
                    {"id": "radar0", "kind": "radar", "endpoint": f"ipc://{ipc_dir}/radar0"},
                    {"id": "mic0", "kind": "audio", "endpoint": f"ipc://{ipc_dir}/mic0"}],
        "node": {"publish_endpoint": f"ipc://{ipc_dir}/events", "stats_interval_s": 0.25},
    }
    path = ipc_dir / "rig.yaml"
    path.write_text(yaml.safe_dump(cfg))
    node = spawn("node", "--config", str(path))
    ready = node.json_line("event", "ready")
    sub = zctx.socket(zmq.SUB)
    sub.setsockopt(zmq.LINGER, 0)
    sub.setsockopt(zmq.SUBSCRIBE, b"fused")
    sub.connect(ready["publish_endpoint"])
    spawn("sensor", "sim", "--camera-endpoint", f"ipc://{ipc_dir}/cam0", "--radar-endpoint",
          f"ipc://{ipc_dir}/radar0", "--audio-endpoint", f"ipc://{ipc_dir}/mic0", "--duration", "20",
          "--fault", "radar:repeating@3", "--wait-subscriber", "10")
    seen_healthy = False
    deadline = time.monotonic() + 40
    while time.monotonic() < deadline:
        if not sub.poll(100):
            continue
        _, ev = decode_map(sub.recv_multipart())
        cam = next((m for m in ev["members"] if m["sensor_id"] == "cam0"), None)
        if cam is None:
            continue
        # Stream time: the simulated camera's frame seq counts from 0 at 10 fps from the stream's start.
        t = cam["seq"] / 10.0
        if "sensor_fault:radar0:repeating" in ev["alerts"]:
            assert seen_healthy and ev["faults"] == {"radar0": ["repeating"]}
            assert "radar0" in ev["missing"] and not ev["modalities"]["radar"]["present"]
            assert 3 < t <= 3 + DETECT_WITHIN_S, t
            break
        assert not ev["faults"], ev["faults"]
        seen_healthy = seen_healthy or not ev["missing"]
    else:
        raise AssertionError(f"no sensor_fault:radar0:repeating alert; node stderr:\n{node.stderr()}")
