"""End to end with real processes: the demo, a sensor killed and restarted, a flood of bad messages.

Sensor readers and the node run as real subprocesses of the ``fusion`` command over ipc
sockets in a private folder; the tests subscribe to the node's real event stream.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from collections import Counter

import msgpack
import numpy as np
import yaml
import zmq

from fusion_node.wire import RadarPoints, decode_map, encode
from sensors.samples import DEFAULT_CAMERA, DEFAULT_RADAR
from sensors.ti_mmwave import read_capture

from .conftest import ROOT, SAMPLES

VIDEO = DEFAULT_CAMERA  # the bundled street video (real)
RADAR = DEFAULT_RADAR  # the bundled TI capture (simulated)
AUDIO = SAMPLES / "audio" / "engine_truck_start_pullaway_opensfx25_CC0.wav"


def _rig(ipc_dir, **node):
    cfg = {
        "rig": "test-rig",
        "sensors": [
            {"id": "cam0", "kind": "camera", "endpoint": f"ipc://{ipc_dir}/cam0", "liveness_timeout_s": 0.5},
            {"id": "radar0", "kind": "radar", "endpoint": f"ipc://{ipc_dir}/radar0", "liveness_timeout_s": 0.5},
            {"id": "mic0", "kind": "audio", "endpoint": f"ipc://{ipc_dir}/mic0", "liveness_timeout_s": 0.5},
        ],
        "sync": {"deadline_ms": 150, "audio_window_s": 0.5},
        "node": {"publish_endpoint": f"ipc://{ipc_dir}/events", "stats_interval_s": 0.25, **node},
    }
    path = ipc_dir / "rig.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path, cfg


def _subscribe(zctx, endpoint, *topics):
    sub = zctx.socket(zmq.SUB)
    sub.setsockopt(zmq.LINGER, 0)
    for t in topics:
        sub.setsockopt(zmq.SUBSCRIBE, t)
    sub.connect(endpoint)
    return sub


def _wait_event(sub, predicate, timeout=30.0, what="event"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if sub.poll(100):
            topic, body = decode_map(sub.recv_multipart())
            if predicate(topic, body):
                return body
    raise AssertionError(f"timed out waiting for {what}")


def _node_and_subscriber(ipc_dir, spawn, zctx):
    """A node serving the test rig (once ready) and a subscriber to its events and stats."""
    cfg_path, _ = _rig(ipc_dir)
    node = spawn("node", "--config", str(cfg_path))
    ready = node.json_line("event", "ready")
    return node, _subscribe(zctx, ready["publish_endpoint"], b"fused", b"stats")


def _sensor(spawn, kind, sid, ipc_dir, src, *extra):
    return spawn("sensor", kind, "--source", str(src), "--sensor-id", sid, "--endpoint",
                 f"ipc://{ipc_dir}/{sid}", "--loop", *extra)


def test_demo_runs_the_bundled_recordings_end_to_end(tmp_path, untrained_models):
    out = tmp_path / "events.jsonl"
    proc = subprocess.run(
        [sys.executable, "-m", "fusion_node", "demo", "--duration", "4", "--events-out", str(out),
         "--models", str(untrained_models)],
        cwd=ROOT, capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert "fusion demo summary" in proc.stdout
    # Which input is real and which simulated, and that they were not recorded together.
    assert re.search(r"camera +street_bikes\S+\.mp4 \(real recordings", proc.stdout), proc.stdout[:2000]
    assert re.search(r"radar +demo_street_simulated\.dat \(SIMULATED", proc.stdout)
    assert re.search(r"audio +demo_street_mix\.flac \(real recordings", proc.stdout)
    assert "not recorded together" in proc.stdout and "side-by-side replay" in proc.stdout
    events = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(events) >= 50  # 25 fps video for ~4 s
    full = [e for e in events if not e["missing"]]
    assert full, "no set had every modality"
    ev = full[-1]
    assert {m["topic"] for m in ev["members"]} == {"camera", "radar"}
    assert ev["model"]["trained"] is False and ev["labels"] == []  # untrained: never detections
    for stage in ("receive", "sync_wait", "preprocess", "encode_camera", "encode_radar", "encode_audio",
                  "head", "publish", "e2e"):
        assert stage in ev["latency_ms"], stage
    assert [e["seq"] for e in events] == list(range(1, len(events) + 1))


def test_killed_sensor_is_reported_missing_and_picked_up_again(ipc_dir, spawn, zctx):
    node, sub = _node_and_subscriber(ipc_dir, spawn, zctx)
    _sensor(spawn, "camera", "cam0", ipc_dir, VIDEO)
    radar = _sensor(spawn, "radar", "radar0", ipc_dir, RADAR)
    _sensor(spawn, "audio", "mic0", ipc_dir, AUDIO)
    _wait_event(sub, lambda t, b: t == "fused" and not b["missing"], what="a complete set")

    radar.kill()
    _wait_event(sub, lambda t, b: t == "stats" and not b["sensors"]["radar0"]["alive"], what="radar dead in stats")
    ev = _wait_event(sub, lambda t, b: t == "fused" and b["missing"] == ["radar0"], what="radar missing")
    assert ev["modalities"]["camera"]["present"]

    _sensor(spawn, "radar", "radar0", ipc_dir, RADAR)  # same endpoint, new process
    _wait_event(sub, lambda t, b: t == "fused" and not b["missing"], what="radar back")
    stats = _wait_event(sub, lambda t, b: t == "stats" and b["sensors"]["radar0"]["alive"], what="stats")
    radar_stats = stats["sensors"]["radar0"]
    assert radar_stats["restarts"] == 1 and radar_stats["deaths"] == 1
    assert sum(radar_stats["rejected"].values()) == 0
    assert node.p.poll() is None  # the node never restarted


def _garbage(rng, valid_frames):
    """One malformed message of a random kind, built from a valid radar message: (reason, frames).

    ``reason`` is the rejection docs/wire.md promises for that kind of damage.
    """
    topic, head, payload = valid_frames[0], msgpack.unpackb(valid_frames[1]), bytes(valid_frames[2])
    kind = rng.integers(0, 8)
    if kind == 0:
        return "multipart_shape", [topic, msgpack.packb(head)]  # payload frame missing
    if kind == 1:
        return "bad_msgpack", [topic, rng.bytes(int(rng.integers(1, 64))), payload]
    if kind == 2:
        return "payload_size", [topic, msgpack.packb({**head, "payload_bytes": len(payload) + 4}), payload]
    if kind == 3:
        pts = np.frombuffer(payload, np.float32).copy()
        pts[0] = np.nan
        return "non_finite", [topic, valid_frames[1], pts.tobytes()]
    if kind == 4:
        return "timestamp_past", [topic, msgpack.packb({**head, "t_capture_ns": 1}), payload]  # ancient
    if kind == 5:
        return "schema_version", [topic, msgpack.packb({**head, "schema": 7}), payload]
    if kind == 6:
        return "unknown_sensor", [topic, msgpack.packb({**head, "sensor_id": "intruder"}), payload]
    return "multipart_shape", [b"radar", rng.bytes(8), rng.bytes(8), rng.bytes(8), rng.bytes(8)]


def test_flood_of_malformed_messages_does_not_stop_valid_events(ipc_dir, spawn, zctx):
    node, sub = _node_and_subscriber(ipc_dir, spawn, zctx)
    _sensor(spawn, "camera", "cam0", ipc_dir, VIDEO, "--fps", "10")  # one camera frame per radar frame
    _sensor(spawn, "audio", "mic0", ipc_dir, AUDIO)
    # This test is the radar: it publishes the bundled capture's frames at 10 Hz with bursts of
    # malformed messages between them, on the same socket.
    pub = zctx.socket(zmq.XPUB)
    pub.setsockopt(zmq.SNDHWM, 100_000)
    pub.bind(f"ipc://{ipc_dir}/radar0")
    assert pub.poll(20_000), "node never subscribed"
    pub.recv()
    frames = read_capture(RADAR)
    rng = np.random.default_rng(7)
    sent_bad: Counter = Counter()  # reason -> malformed messages sent that should be counted under it
    events_with_radar = 0

    def count(topic, body):
        nonlocal events_with_radar
        events_with_radar += topic == "fused" and "radar0" not in body["missing"]

    # Start once the camera and the microphone stream (their processes may start slowly), so
    # that every radar frame has camera frames to be fused with.
    _wait_event(sub, lambda t, b: t == "stats" and b["sensors"]["cam0"]["alive"] and b["sensors"]["mic0"]["alive"],
                what="camera and audio streaming")
    t_next = time.monotonic_ns()
    for seq, frame in enumerate(frames[:40]):
        while time.monotonic_ns() < t_next:  # pace at the capture's 10 Hz, draining events meanwhile
            if sub.poll(5):
                count(*decode_map(sub.recv_multipart()))
        t_next += 100_000_000
        now = time.monotonic_ns()
        msg = RadarPoints("radar0", seq, now, now, np.asarray(frame.points), frame.frame_number,
                          frame.has_side_info, run_id=99)
        valid = [bytes(f) for f in encode(msg)]
        pub.send_multipart(valid)
        for _ in range(150):
            reason, bad = _garbage(rng, valid)
            pub.send_multipart(bad)
            sent_bad[reason] += 1

    def all_counted(topic, body):
        count(topic, body)  # events delivered late still count
        if topic != "stats":
            return False
        radar = body["sensors"]["radar0"]
        return sum(radar["rejected"].values()) + sum(body["rejected_unattributed"].values()) >= sent_bad.total()

    _wait_event(sub, all_counted, timeout=20, what="every malformed message counted")
    node.stop()
    final = node.json_line("event", "final_stats")
    radar = final["sensors"]["radar0"]
    # Every malformed message is counted once, under the reason its damage calls for.
    counted = Counter(radar["rejected"]) + Counter(final["rejected_unattributed"])
    assert counted == sent_bad, (radar["rejected"], final["rejected_unattributed"])
    assert len(sent_bad) == 7  # every kind of damage was sent
    assert radar["accepted"] == 40 and radar["dropped"] == 0 and radar["seq_gaps"] == 0
    assert events_with_radar >= 20


def test_demo_sim_runs_the_simulator_through_the_pipeline_and_exits_0(tmp_path, untrained_models):
    out = tmp_path / "events.jsonl"
    proc = subprocess.run(
        [sys.executable, "-m", "fusion_node", "demo", "--sim", "--duration", "3", "--quiet", "--events-out", str(out),
         "--models", str(untrained_models)],
        cwd=ROOT, capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert "FAILED" not in proc.stdout and "simulated world" in proc.stdout
    events = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(events) >= 20  # 10 Hz camera for 3 s
    complete = [e for e in events if not e["missing"]]
    assert len(complete) >= len(events) // 2, [e["missing"] for e in events]
    assert {m["topic"] for m in complete[-1]["members"]} == {"camera", "radar"}


def test_demo_reports_a_sensor_that_died_with_its_error(tmp_path):
    # The file exists (a missing one is refused before anything starts) but is no audio.
    bad = tmp_path / "not_audio.flac"
    bad.write_bytes(np.random.default_rng(0).bytes(3000))
    proc = subprocess.run(
        [sys.executable, "-m", "fusion_node", "demo", "--duration", "3", "--models", "none", "--audio", str(bad)],
        cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1
    assert "FAILED: mic0 died (exit code 1)" in proc.stdout
    assert "not_audio.flac" in proc.stdout
    assert "fusion demo summary" in proc.stdout  # the rest of the rig still ran and was summarised


def _documented_keys(section: str) -> set[str]:
    doc = (ROOT / "docs" / "wire.md").read_text()
    block = doc.split(f"### `{section}`")[1].split("\n### ")[0].split("\n## ")[0]
    first_cells = [line.split("|")[1] for line in block.splitlines() if line.startswith("| `")]
    return {name for cell in first_cells for name in re.findall(r"`([a-z_0-9]+)`", cell)}


def test_fusion_events_prints_json_lines_with_the_documented_keys(ipc_dir, spawn, zctx, untrained_models):
    cfg_path, _ = _rig(ipc_dir, models=str(untrained_models))
    node = spawn("node", "--config", str(cfg_path))
    ready = node.json_line("event", "ready")
    assert ready["provider"] == "CPUExecutionProvider" and ready["trained"] is False
    printer = spawn("events", "--endpoint", ready["publish_endpoint"], "--count", "5", "--timeout", "30")
    for kind, sid, src in (("camera", "cam0", VIDEO), ("radar", "radar0", RADAR), ("audio", "mic0", AUDIO)):
        _sensor(spawn, kind, sid, ipc_dir, src)
    events = [printer.json_line("rig", "test-rig") for _ in range(5)]
    assert printer.p.wait(30) == 0
    keys = _documented_keys("fused")
    for ev in events:
        assert set(ev) == keys, set(ev) ^ keys
        assert ev["model"]["provider"] == "CPUExecutionProvider"


def test_a_subscriber_written_from_the_doc_alone_decodes_events(ipc_dir, spawn, zctx):
    # Only pyzmq and msgpack, as docs/wire.md describes: no project code on the receiving side.
    cfg_path, _ = _rig(ipc_dir)
    node = spawn("node", "--config", str(cfg_path))
    ready = node.json_line("event", "ready")
    sub = zctx.socket(zmq.SUB)
    sub.connect(ready["publish_endpoint"])
    sub.setsockopt(zmq.SUBSCRIBE, b"stats")
    sub.setsockopt(zmq.SUBSCRIBE, b"fused")
    for kind, sid, src in (("camera", "cam0", VIDEO), ("radar", "radar0", RADAR), ("audio", "mic0", AUDIO)):
        _sensor(spawn, kind, sid, ipc_dir, src)
    seen = {}
    deadline = time.monotonic() + 30
    while len(seen) < 2 and time.monotonic() < deadline:
        if sub.poll(100):
            topic, body = sub.recv_multipart()
            seen[topic] = msgpack.unpackb(body, raw=False)
    sub.close(0)
    assert set(seen) == {b"fused", b"stats"}
    assert set(seen[b"stats"]) == _documented_keys("stats")
    assert isinstance(seen[b"fused"]["latency_ms"]["e2e"], float)
