"""MCAP recordings: what the writer puts in, what the reader and the mcap library get out, and
the recorder process on real sensors (a clean file after SIGINT, a readable one after SIGKILL)."""

from __future__ import annotations

import base64
import json
import subprocess
import sys

import cv2
import msgpack
import numpy as np
import pytest
import yaml
import zmq
from mcap.reader import make_reader

from fusion_node.config import config_from_dict
from fusion_node.recording import Recording, RecordingWriter, rotation_quaternion, wire_topic
from fusion_node.rig import load_rig
from fusion_node.wire import AudioChunk, CameraFrame, RadarPoints, encode, encode_map

from .conftest import ROOT, SAMPLES

CALIBRATION = ROOT / "examples" / "rig_calibration.yaml"


def _cfg(endpoint_dir="/tmp/nowhere"):
    return config_from_dict({
        "rig": "lab-rig-1", "calibration_file": str(CALIBRATION),
        "sensors": [{"id": "cam0", "kind": "camera", "endpoint": f"ipc://{endpoint_dir}/cam0"},
                    {"id": "radar0", "kind": "radar", "endpoint": f"ipc://{endpoint_dir}/radar0"},
                    {"id": "mic0", "kind": "audio", "endpoint": f"ipc://{endpoint_dir}/mic0"}]})


def _messages():
    """Wire frames of a JPEG and a raw camera frame, a radar frame, an audio chunk and a bad message."""
    rng = np.random.default_rng(3)
    image = rng.integers(0, 255, (48, 64, 3), dtype=np.uint8)
    ok, jpeg = cv2.imencode(".jpg", image)
    assert ok
    t = 1_000_000_000
    jpeg_frame = CameraFrame("cam0", 0, t, t + 1000, image, encoding="jpeg", jpeg=jpeg.tobytes(), run_id=5)
    raw_frame = CameraFrame("cam0", 1, t + 100_000_000, t + 100_001_000, image, run_id=5)
    points = rng.normal(size=(7, 6)).astype(np.float32)
    radar = RadarPoints("radar0", 0, t + 10, t + 20, points, frame_number=9, run_id=6)
    samples = np.sin(np.linspace(0, 40, 320)).astype(np.float32) * 0.5
    audio = AudioChunk("mic0", 0, t + 30, t + 40, samples, run_id=7)
    frames = [[bytes(f) for f in encode(m)] for m in (jpeg_frame, raw_frame, radar, audio)]
    bad = [b"radar", b"\xc1 not msgpack", b"x"]
    return frames, bad, (image, points, samples)


def test_writer_and_reader_round_trip_with_foxglove_views(tmp_path):
    frames, bad, (image, points, samples) = _messages()
    path = tmp_path / "run.mcap"
    cfg = _cfg()
    with RecordingWriter(path, [cfg], {"lab-rig-1": load_rig(CALIBRATION)}, command="test", raw_images=True) as w:
        for i, f in enumerate(frames):
            sid = {b"camera": "cam0", b"radar": "radar0", b"audio": "mic0"}[f[0]]
            assert not hasattr(w.add_sensor_message(sid, f, 2_000_000_000 + i), "reason")
        assert w.add_sensor_message("radar0", bad, 2_000_000_010).reason == "bad_msgpack"
        fused = {"event_id": "lab-rig-1:1:1", "seq": 1, "rig": "lab-rig-1", "t_publish_ns": 5, "labels": []}
        assert w.add_node_message(encode_map("fused", fused), 2_000_000_020)
        assert not w.add_node_message([b"fused", b"\xc1"], 2_000_000_021)

    with Recording(path) as rec:
        assert rec.finalised
        assert [s.sensor_id for s in rec.sensors] == ["cam0", "radar0", "mic0"]
        assert rec.sensors[0].endpoint == "ipc:///tmp/nowhere/cam0"
        got = list(rec.wire_messages(by_publish_time=False))
        assert [m.frames for m in got] == [frames[0], frames[1], frames[2], frames[3], bad]  # byte for byte
        assert got[0].publish_time_ns == 1_000_001_000 and got[0].log_time_ns == 2_000_000_000
        # by publish time: the radar and audio were sent before the camera frames; the bad message has none
        assert [m.sensor_id for m in rec.wire_messages()] == ["radar0", "mic0", "cam0", "cam0", "radar0"]
        assert rec.rigs()[0] == cfg
        assert rec.calibration("lab-rig-1") == load_rig(CALIBRATION)
        assert [body for _, body in rec.node_messages("fused")] == [fused]
        info = rec.info()
    assert "messages:    " in info and "zstd: [" in info
    for line in ("/cam0/wire", "/radar0/wire", "/mic0/wire", "foxglove.CompressedImage", "foxglove.RawImage",
                 "foxglove.PointCloud", "foxglove.RawAudio", "foxglove.FrameTransform", "fusion.FusedEvent"):
        assert line in info, line

    # The views, as any MCAP reader decodes them (JSON with base64 bytes).
    with open(path, "rb") as fh:
        views = {}
        for schema, channel, message in make_reader(fh).iter_messages():
            assert schema is not None and schema.encoding == "jsonschema"
            assert json.loads(schema.data)["title"] == schema.name
            if channel.message_encoding == "json":
                views.setdefault((channel.topic, schema.name), []).append(json.loads(message.data))
    compressed, = views[("/cam0/image", "foxglove.CompressedImage")]
    assert base64.b64decode(compressed["data"]) == frames[0][2] and compressed["format"] == "jpeg"
    raw, = views[("/cam0/image", "foxglove.RawImage")]
    assert (raw["width"], raw["height"], raw["step"], raw["encoding"]) == (64, 48, 192, "bgr8")
    assert base64.b64decode(raw["data"]) == image.tobytes()
    cloud, = views[("/radar0/points", "foxglove.PointCloud")]
    assert [f["name"] for f in cloud["fields"]][:3] == ["x", "y", "z"] and cloud["point_stride"] == 24
    np.testing.assert_array_equal(np.frombuffer(base64.b64decode(cloud["data"]), "<f4").reshape(-1, 6), points)
    assert cloud["timestamp"] == {"sec": 1, "nsec": 10}
    audio, = views[("/mic0/audio", "foxglove.RawAudio")]
    pcm = np.frombuffer(base64.b64decode(audio["data"]), "<i2") / 32767.0
    assert audio["sample_rate"] == 16000 and np.abs(pcm - samples).max() < 1e-4
    transforms = views[("/tf", "foxglove.FrameTransform")]
    radar_tf = next(t for t in transforms if t["child_frame_id"] == "radar0")
    assert radar_tf["parent_frame_id"] == "lab-rig-1"
    assert radar_tf["rotation"] == pytest.approx({"x": np.sin(np.pi / 4), "y": 0.0, "z": 0.0, "w": np.cos(np.pi / 4)})
    calib, = views[("/cam0/calibration", "foxglove.CameraCalibration")]
    assert calib["K"][0] == 600.0 and calib["width"] == 768


def test_raw_frames_are_viewed_as_jpeg_by_default(tmp_path):
    y, x = np.mgrid[0:48, 0:64]
    image = np.dstack([x * 4, y * 5, (x + y) * 2]).astype(np.uint8)  # smooth: what JPEG keeps well
    frame = [bytes(f) for f in encode(CameraFrame("cam0", 0, 10, 20, image))]
    path = tmp_path / "run.mcap"
    with RecordingWriter(path, [_cfg()]) as w:
        w.add_sensor_message("cam0", frame, 1)
    with open(path, "rb") as fh:
        (schema, channel, message), = make_reader(fh).iter_messages(topics=["/cam0/image"])
    assert schema.name == "foxglove.CompressedImage"
    view = json.loads(message.data)
    decoded = cv2.imdecode(np.frombuffer(base64.b64decode(view["data"]), np.uint8), cv2.IMREAD_COLOR)
    assert decoded.shape == image.shape and np.abs(decoded.astype(int) - image).mean() < 3
    with Recording(path) as rec:
        assert next(rec.wire_messages()).frames == frame  # the exact pixels stay in the wire channel


def test_rotation_quaternion_matches_opencv_rotation():
    rvec = np.array([0.3, -0.5, 0.2])
    q = rotation_quaternion(rvec)
    x, y, z, w = q["x"], q["y"], q["z"], q["w"]
    from_q = np.array([[1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)],
                       [2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)],
                       [2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)]])
    np.testing.assert_allclose(from_q, cv2.Rodrigues(rvec)[0], atol=1e-12)


def test_a_file_that_is_not_a_recording_is_one_clear_error(tmp_path):
    path = tmp_path / "junk.mcap"
    path.write_bytes(b"not an mcap file at all")
    proc = subprocess.run([sys.executable, "-m", "fusion_node", "record", "--info", str(path)], cwd=ROOT,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 1
    assert proc.stderr.strip().startswith("fusion: error:") and "not an MCAP recording" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1


def _record_audio(ipc_dir, spawn, zctx, out, *extra):
    """A recorder and a real audio reader (playing once the recorder subscribed); waits for 25 chunks."""
    cfg = {"rig": "r", "sensors": [{"id": "mic0", "kind": "audio", "endpoint": f"ipc://{ipc_dir}/mic0"},
                                   {"id": "cam0", "kind": "camera", "endpoint": f"ipc://{ipc_dir}/cam0"}],
           "node": {"publish_endpoint": f"ipc://{ipc_dir}/ev"}}
    path = ipc_dir / "rig.yaml"
    path.write_text(yaml.safe_dump(cfg))
    recorder = spawn("record", "--config", str(path), "--out", str(out), *extra)
    assert recorder.json_line("event", "recording")["sensors"] == ["mic0", "cam0"]
    spawn("sensor", "audio", "--source", str(SAMPLES / "audio" / "dog_bark_1_gcompris_LA.ogg"), "--sensor-id",
          "mic0", "--endpoint", f"ipc://{ipc_dir}/mic0", "--loop", "--wait-subscriber", "30")
    sub = zctx.socket(zmq.SUB)
    sub.setsockopt(zmq.SUBSCRIBE, b"audio")
    sub.connect(f"ipc://{ipc_dir}/mic0")
    for _ in range(25):
        assert sub.poll(20_000), "no audio"
        sub.recv_multipart()
    return recorder


def test_recorder_sigint_leaves_a_finalised_file_with_every_message(ipc_dir, spawn, zctx, tmp_path):
    out = tmp_path / "audio.mcap"
    recorder = _record_audio(ipc_dir, spawn, zctx, out)
    assert recorder.stop() == 0
    done = recorder.json_line("event", "recorded")
    n = done["received"]["mic0"]
    assert n >= 25 and done["lost"] == {} and done["invalid"] == {}
    with Recording(out) as rec:
        assert rec.finalised
        counts = {rec.channels[cid].topic: c for cid, c in rec.message_counts().items()}
        assert counts[wire_topic("mic0")] == n and counts["/mic0/audio"] == n
        assert counts[wire_topic("cam0")] == 0  # a configured sensor that sent nothing is listed all the same
        seqs = [msgpack.unpackb(m.frames[1])["seq"] for m in rec.wire_messages()]
    assert seqs == list(range(seqs[0], seqs[0] + n))


def test_a_killed_recorder_leaves_a_file_that_still_reads(ipc_dir, spawn, zctx, tmp_path):
    out = tmp_path / "killed.mcap"
    recorder = _record_audio(ipc_dir, spawn, zctx, out, "--chunk-mib", "0.01")
    recorder.kill()
    with Recording(out) as rec:
        assert not rec.finalised
        counts = {rec.channels[cid].topic: c for cid, c in rec.message_counts().items()}
        assert counts[wire_topic("mic0")] > 0
        assert len(list(rec.wire_messages())) == counts[wire_topic("mic0")]
        assert "not finalised" in rec.info()
