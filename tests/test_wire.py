"""Wire format: round trips over real ZeroMQ sockets and the rejection of each kind of bad message."""

from __future__ import annotations

import cv2
import msgpack
import numpy as np
import pytest
import zmq

from fusion_node.wire import (
    REJECT_REASONS,
    AudioChunk,
    CameraFrame,
    RadarPoints,
    Rejection,
    StreamEnd,
    decode,
    decode_jpeg,
    decode_map,
    encode,
    encode_end,
    encode_map,
)


def _pair(zctx):
    pub = zctx.socket(zmq.PUB)
    pub.setsockopt(zmq.LINGER, 0)
    port = pub.bind_to_random_port("tcp://127.0.0.1")
    sub = zctx.socket(zmq.SUB)
    sub.setsockopt(zmq.LINGER, 0)
    sub.setsockopt(zmq.SUBSCRIBE, b"")
    sub.connect(f"tcp://127.0.0.1:{port}")
    return pub, sub


def _send_until_received(pub, sub, frames, timeout_ms=5000):
    # PUB/SUB joins asynchronously: resend until the subscriber has the message (no sleeps).
    waited = 0
    while waited < timeout_ms:
        pub.send_multipart(frames, copy=False)
        if sub.poll(50):
            return sub.recv_multipart(copy=False)
        waited += 50
    raise AssertionError("no message crossed the loopback socket")


def _camera():
    rng = np.random.default_rng(0)
    img = rng.integers(0, 255, (48, 64, 3), dtype=np.uint8)
    return CameraFrame("cam0", 7, 1_000_000_000, 1_000_100_000, img, run_id=42)


def _radar(n=5):
    pts = np.arange(n * 6, dtype=np.float32).reshape(n, 6) / 10
    return RadarPoints("radar0", 3, 2_000_000_000, 2_000_000_500, pts, frame_number=209, has_side_info=True)


def _audio():
    s = np.sin(np.linspace(0, 20, 320)).astype(np.float32)
    return AudioChunk("mic0", 11, 3_000_000_000, 3_000_020_000, s, 16000)


def test_camera_round_trip_over_loopback_socket(zctx):
    pub, sub = _pair(zctx)
    msg = _camera()
    got = decode(_send_until_received(pub, sub, encode(msg)))
    assert isinstance(got, CameraFrame)
    assert (got.sensor_id, got.seq, got.run_id, got.t_capture_ns, got.t_publish_ns) == ("cam0", 7, 42, 10**9, 1_000_100_000)
    np.testing.assert_array_equal(got.image, msg.image)


def test_radar_and_audio_round_trip_over_loopback_socket(zctx):
    pub, sub = _pair(zctx)
    r = decode(_send_until_received(pub, sub, encode(_radar())))
    assert isinstance(r, RadarPoints) and r.frame_number == 209 and r.has_side_info
    np.testing.assert_array_equal(r.points, _radar().points)
    a = decode(_send_until_received(pub, sub, encode(_audio())))
    assert isinstance(a, AudioChunk) and a.sample_rate_hz == 16000
    np.testing.assert_array_equal(a.samples, _audio().samples)
    assert a.duration_ns == 20_000_000


def test_jpeg_camera_frames_decode_to_the_declared_size():
    msg = _camera()
    yy, xx = np.mgrid[0:48, 0:64]
    msg.image = np.stack([xx * 4, yy * 5, xx + yy], axis=-1).astype(np.uint8)  # smooth: JPEG keeps it
    ok, buf = cv2.imencode(".jpg", msg.image, [cv2.IMWRITE_JPEG_QUALITY, 95])
    msg.encoding, msg.jpeg = "jpeg", buf.tobytes()
    got = decode(encode(msg))
    assert isinstance(got, CameraFrame) and got.image is None  # checked, not decoded yet
    assert decode_jpeg(got) is None and got.image.shape == (48, 64, 3)
    assert np.abs(got.image.astype(int) - msg.image.astype(int)).mean() < 4


def test_payload_is_sent_without_copying():
    msg = _radar()
    frames = encode(msg)
    assert isinstance(frames[2], memoryview)
    assert np.shares_memory(np.frombuffer(frames[2], dtype=np.float32), msg.points)


def test_empty_radar_frame_is_valid():
    got = decode(encode(_radar(0)))
    assert isinstance(got, RadarPoints) and got.points.shape == (0, 6)


def test_publish_time_is_stamped_at_encode():
    head = msgpack.unpackb(encode(_audio(), t_publish_ns=123)[1])
    assert head["t_publish_ns"] == 123 and head["schema"] == 1

def test_stream_end_round_trip_over_loopback_socket(zctx):
    pub, sub = _pair(zctx)
    end = StreamEnd("radar0", 12, 2_000_000_000, 0, "radar", "source_ended", run_id=42)
    got = decode(_send_until_received(pub, sub, encode_end(end, t_publish_ns=2_000_000_900)))
    assert got == StreamEnd("radar0", 12, 2_000_000_000, 2_000_000_900, "radar", "source_ended", run_id=42)


@pytest.mark.parametrize("reason,make", [
    ("bad_header", lambda f: _with_header(f, end_reason="crashed")),
    ("bad_header", lambda f: _with_header(f, end_reason=1)),
    ("payload_size", lambda f: [f[0], f[1], b"\x00" * 4]),
    ("payload_size", lambda f: _with_header(f, payload_bytes=4)),
    ("payload_size", lambda f: _with_header(f, shm={"ring": "x", "slot": 0})),
    ("bad_header", lambda f: _with_header(f, run_id=-1)),
])
def test_malformed_stream_ends_are_rejected_by_reason(reason, make):
    frames = encode_end(StreamEnd("mic0", 3, 10**9, 10**9, "audio", "stopped", run_id=7))
    got = decode(make(frames))
    assert isinstance(got, Rejection) and got.reason == reason, got


def test_a_stream_end_must_name_a_sensor_topic_and_a_known_reason():
    with pytest.raises(ValueError):
        encode_end(StreamEnd("mic0", 3, 10**9, 10**9, "fused", "stopped"))
    with pytest.raises(ValueError):
        encode_end(StreamEnd("mic0", 3, 10**9, 10**9, "audio", "crashed"))


def _header(frames):
    return msgpack.unpackb(frames[1], raw=False)


def _with_header(frames, **changes):
    head = _header(frames)
    for k, v in changes.items():
        if v is _DELETE:
            head.pop(k)
        else:
            head[k] = v
    return [frames[0], msgpack.packb(head), bytes(frames[2])]


_DELETE = object()


@pytest.mark.parametrize("reason,make", [
    ("multipart_shape", lambda f: f[:2]),
    ("multipart_shape", lambda f: [*f, b"extra"]),
    ("multipart_shape", lambda f: []),
    ("unknown_topic", lambda f: [b"lidar", *f[1:]]),
    ("unknown_topic", lambda f: [b"\xff\xfe", *f[1:]]),
    ("bad_msgpack", lambda f: [f[0], b"\xc1\xc1garbage", f[2]]),
    ("bad_msgpack", lambda f: [f[0], msgpack.packb([1, 2, 3]), f[2]]),
    ("schema_version", lambda f: _with_header(f, schema=99)),
    ("bad_header", lambda f: _with_header(f, sensor_id=_DELETE)),
    ("bad_header", lambda f: _with_header(f, seq="seven")),
    ("bad_header", lambda f: _with_header(f, seq=-1)),
    ("bad_header", lambda f: _with_header(f, t_capture_ns=1.5)),
    ("bad_header", lambda f: _with_header(f, num_points=10**7)),
    ("bad_header", lambda f: _with_header(f, point_fields=["x", "y"])),
    ("bad_header", lambda f: _with_header(f, sensor_id="")),
    ("payload_size", lambda f: [f[0], f[1], bytes(f[2])[:-4]]),
    ("payload_size", lambda f: _with_header(f, num_points=4)),
])
def test_malformed_radar_messages_are_rejected_by_reason(reason, make):
    got = decode(make(encode(_radar())))
    assert isinstance(got, Rejection), got
    assert got.reason == reason, got
    assert got.reason in REJECT_REASONS


def test_non_finite_payloads_are_rejected():
    bad = _radar()
    bad.points = bad.points.copy()
    bad.points[2, 1] = np.nan
    assert decode(encode(bad)).reason == "non_finite"
    a = _audio()
    a.samples = a.samples.copy()
    a.samples[5] = np.inf
    got = decode(encode(a))
    assert got.reason == "non_finite" and got.sensor_id == "mic0"


def test_camera_size_mismatch_and_corrupt_jpeg_are_rejected():
    frames = encode(_camera())
    assert decode(_with_header(frames, width_px=65, payload_bytes=65 * 48 * 3)).reason == "payload_size"
    junk = b"\xff\xd8not a jpeg at all"
    head = _header(frames)
    head.update(encoding="jpeg", payload_bytes=len(junk))
    assert decode([b"camera", msgpack.packb(head), junk]).reason == "bad_payload"
    head.update(encoding="png")
    assert decode([b"camera", msgpack.packb(head), junk]).reason == "bad_header"


def test_audio_header_checks():
    frames = encode(_audio())
    assert decode(_with_header(frames, sample_format="s16le")).reason == "bad_header"
    assert decode(_with_header(frames, channels=2)).reason == "bad_header"
    assert decode(_with_header(frames, sample_rate_hz=10)).reason == "bad_header"


def test_rejection_names_topic_and_sensor():
    got = decode(_with_header(encode(_radar()), num_points=4))
    assert (got.topic, got.sensor_id) == ("radar", "radar0")
    assert "radar0" in got.detail


def test_header_only_topics_round_trip():
    topic, body = decode_map(encode_map("fused", {"seq": 1, "labels": []}))
    assert topic == "fused" and body == {"seq": 1, "labels": []}
    with pytest.raises(ValueError):
        decode_map([b"fused", b"\x93\x01\x02\x03"])


def test_every_declared_reason_is_documented():
    doc = (__import__("pathlib").Path(__file__).resolve().parents[1] / "docs" / "wire.md").read_text()
    for reason in REJECT_REASONS:
        assert f"`{reason}`" in doc, reason
