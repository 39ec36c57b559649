"""The decoder under hostile input: property-based and mutation fuzzing, deep nesting, JPEG bombs.

Whatever arrives, :func:`fusion_node.wire.decode` returns a message or a rejection with a
documented reason, never raises; every valid message is accepted; whatever is accepted meets
``docs/wire.md`` (checked here by an oracle written from the document, not from the decoder).
"""

from __future__ import annotations

import subprocess
import sys
import time

import cv2
import msgpack
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fusion_node.wire import (
    MAX_HEADER_BYTES,
    RADAR_POINT_FIELDS,
    REJECT_REASONS,
    TOPICS,
    AudioChunk,
    CameraFrame,
    RadarPoints,
    Rejection,
    decode,
    decode_jpeg,
    encode,
    jpeg_frame_size,
)

from .conftest import ROOT

FUZZ = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# -- valid messages ----------------------------------------------------------------------------

ids = st.from_regex(r"[A-Za-z0-9_.\-]{1,64}", fullmatch=True)
envelope = st.fixed_dictionaries({
    "sensor_id": ids,
    "seq": st.integers(0, 2**64 - 1),
    "t_capture_ns": st.integers(0, 2**63 - 1),
    "t_publish_ns": st.integers(0, 2**63 - 1),
    "run_id": st.integers(0, 2**32 - 1),
})
finite = st.floats(-1e6, 1e6, allow_nan=False, width=32)


@st.composite
def cameras(draw):
    h, w = draw(st.integers(1, 24)), draw(st.integers(1, 24))
    pixels = np.frombuffer(draw(st.binary(min_size=h * w * 3, max_size=h * w * 3)), np.uint8).reshape(h, w, 3)
    msg = CameraFrame(image=pixels.copy(), **draw(envelope))
    if draw(st.booleans()):
        msg.encoding, msg.jpeg = "jpeg", cv2.imencode(".jpg", msg.image)[1].tobytes()
    return msg


@st.composite
def radars(draw):
    n = draw(st.integers(0, 20))
    pts = np.array(draw(st.lists(finite, min_size=6 * n, max_size=6 * n)), np.float32).reshape(n, 6)
    return RadarPoints(points=pts, frame_number=draw(st.integers(0, 2**64 - 1)),
                       has_side_info=draw(st.booleans()), **draw(envelope))


@st.composite
def audios(draw):
    n = draw(st.integers(1, 400))
    samples = np.array(draw(st.lists(st.floats(-1, 1, width=32), min_size=n, max_size=n)), np.float32)
    return AudioChunk(samples=samples, sample_rate_hz=draw(st.integers(1000, 384_000)), **draw(envelope))


messages = st.one_of(cameras(), radars(), audios())

# Any msgpack value, nested a few levels: what a hostile header may hold anywhere.
values = st.recursive(
    st.none() | st.booleans() | st.integers(-2**63, 2**64 - 1) | st.floats() | st.text(max_size=12)
    | st.binary(max_size=12),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner, max_size=4),
    max_leaves=12)


# -- the oracle: docs/wire.md, field by field ---------------------------------------------------

def _is_int(v, lo, hi):
    return type(v) is int and lo <= v <= hi


ENVELOPE_SPEC = {"schema": (1, 1), "run_id": (0, 2**32 - 1), "seq": (0, 2**64 - 1),
                 "t_capture_ns": (0, 2**63 - 1), "t_publish_ns": (0, 2**63 - 1)}


def assert_within_spec(frames, got):
    """What the decoder accepted must be what docs/wire.md allows."""
    head = msgpack.unpackb(bytes(frames[1]), raw=False)
    for key, (lo, hi) in ENVELOPE_SPEC.items():
        assert _is_int(head[key], lo, hi), (key, head[key])
    assert type(head["sensor_id"]) is str and 1 <= len(head["sensor_id"]) <= 64
    payload = len(bytes(frames[2]))
    assert _is_int(head["payload_bytes"], 0, 2**31) and head["payload_bytes"] == payload
    if got.topic == "camera":
        w, h = head["width_px"], head["height_px"]
        assert _is_int(w, 1, 8192) and _is_int(h, 1, 8192) and _is_int(head["channels"], 3, 3)
        assert head["encoding"] in ("bgr8", "jpeg")
        if head["encoding"] == "bgr8":
            assert payload == w * h * 3
        else:
            assert jpeg_frame_size(bytes(frames[2])) == (h, w, 3)
    elif got.topic == "radar":
        assert _is_int(head["num_points"], 0, 10_000) and payload == 24 * head["num_points"]
        assert head["point_fields"] == list(RADAR_POINT_FIELDS) and type(head["has_side_info"]) is bool
        assert _is_int(head["frame_number"], 0, 2**64 - 1)
        assert np.isfinite(got.points).all()
    else:
        assert _is_int(head["num_samples"], 1, 192_000) and payload == 4 * head["num_samples"]
        assert _is_int(head["channels"], 1, 1) and head["sample_format"] == "f32le"
        assert np.isfinite(got.samples).all()


def _check(frames):
    """decode() must not raise, and must answer with a known reason or an in-spec message."""
    got = decode(frames, False)
    if isinstance(got, Rejection):
        assert got.reason in REJECT_REASONS, got
        assert len(str(got)) < 2000  # the detail quotes input shortened, never whole
    else:
        assert_within_spec(frames, got)
    return got


# -- properties -----------------------------------------------------------------------------------

@FUZZ
@given(messages)
def test_every_valid_message_is_accepted_as_sent(msg):
    frames = [bytes(f) for f in encode(msg)]
    got = _check(frames)
    assert type(got) is type(msg), got
    assert (got.sensor_id, got.seq, got.run_id, got.t_capture_ns, got.t_publish_ns) == \
        (msg.sensor_id, msg.seq, msg.run_id, msg.t_capture_ns, msg.t_publish_ns)
    if isinstance(msg, CameraFrame) and msg.encoding == "jpeg":
        assert got.image is None and decode_jpeg(got) is None and got.image.shape == msg.image.shape
    elif isinstance(msg, CameraFrame):
        np.testing.assert_array_equal(got.image, msg.image)


@FUZZ
@given(st.lists(st.binary(max_size=64), max_size=5),
       st.sampled_from([b"camera", b"radar", b"audio", b"fused", b"", b"\xff" * 40]))
def test_random_frames_are_rejected_never_raised(frames, topic):
    _check([topic, *frames[1:]] if frames else frames)


def _mutate_header(head: dict, data) -> dict:
    head = dict(head)
    op = data.draw(st.sampled_from(["replace", "delete", "add"]))
    key = data.draw(st.sampled_from(sorted(head)))
    if op == "replace":
        head[key] = data.draw(values)
    elif op == "delete":
        del head[key]
    else:
        head[data.draw(st.text(max_size=10))] = data.draw(values)
    return head


def _mutate_bytes(raw: bytes, data) -> bytes:
    buf = bytearray(raw)
    for _ in range(data.draw(st.integers(1, 4))):
        op = data.draw(st.sampled_from(["flip", "insert", "delete", "truncate"]))
        i = data.draw(st.integers(0, max(0, len(buf) - 1)))
        if op == "flip" and buf:
            buf[i] ^= data.draw(st.integers(1, 255))
        elif op == "insert":
            buf[i:i] = data.draw(st.binary(min_size=1, max_size=8))
        elif op == "delete" and buf:
            del buf[i]
        else:
            del buf[i:]
    return bytes(buf)


@FUZZ
@given(messages, st.data())
def test_mutated_messages_are_rejected_or_within_spec(msg, data):
    frames = [bytes(f) for f in encode(msg)]
    kind = data.draw(st.sampled_from(["header", "header_bytes", "payload", "frames", "topic"]))
    if kind == "header":
        head = _mutate_header(msgpack.unpackb(frames[1], raw=False), data)
        frames[1] = msgpack.packb(head, use_bin_type=True)
    elif kind == "header_bytes":
        frames[1] = _mutate_bytes(frames[1], data)
    elif kind == "payload":
        frames[2] = _mutate_bytes(frames[2], data) if frames[2] else data.draw(st.binary(min_size=1, max_size=16))
    elif kind == "frames":
        frames = data.draw(st.sampled_from([frames[:1], frames[:2], frames + [b""], frames + frames]))
    else:
        frames[0] = data.draw(st.sampled_from([b"radar", b"audio", b"camera", b"stats", b"cam"]))
    got = _check(frames)
    if isinstance(got, CameraFrame) and got.image is None:  # what admission would decode next
        why = decode_jpeg(got)
        assert why is None and got.image.shape == (got.height_px, got.width_px, 3) or isinstance(why, str)


# -- exact types and ranges ---------------------------------------------------------------------------

def _radar_frames():
    return encode(RadarPoints("radar0", 3, 2_000_000_000, 2_000_000_500, np.zeros((2, 6), np.float32), 9, True))


def _with(frames, **changes):
    head = msgpack.unpackb(frames[1], raw=False)
    head.update(changes)
    return [frames[0], msgpack.packb(head), bytes(frames[2])]


@pytest.mark.parametrize("changes, reason", [
    ({"schema": 1.0}, "schema_version"),
    ({"schema": True}, "schema_version"),
    ({"schema": "1"}, "schema_version"),
    ({"run_id": 2**32}, "bad_header"),
    ({"run_id": True}, "bad_header"),
    ({"seq": 3.0}, "bad_header"),
    ({"seq": False}, "bad_header"),
    ({"t_capture_ns": -1}, "bad_header"),
    ({"t_publish_ns": 2**63}, "bad_header"),
    ({"payload_bytes": 48.0}, "bad_header"),
    ({"num_points": True}, "bad_header"),
    ({"frame_number": -1}, "bad_header"),
    ({"has_side_info": 1}, "bad_header"),
    ({"point_fields": list(RADAR_POINT_FIELDS)[:5]}, "bad_header"),
    ({"sensor_id": b"radar0"}, "bad_msgpack"),  # byte blobs never appear in headers
    ({"sensor_id": "r" * 65}, "bad_header"),
])
def test_header_fields_have_exact_types_and_ranges(changes, reason):
    got = decode(_with(_radar_frames(), **changes))
    assert isinstance(got, Rejection) and got.reason == reason, got


def test_header_limits_apply_before_anything_is_built():
    frames = _radar_frames()
    big = _with(frames, note="x" * 200, more=list(range(60)))
    assert isinstance(decode(big), RadarPoints)  # unknown keys within the limits are ignored
    for changes in ({"note": "x" * 300}, {"more": list(range(65))}, {"k": {str(i): i for i in range(65)}},
                    {**{f"k{i}": i for i in range(70)}}):
        assert decode(_with(frames, **changes)).reason == "bad_msgpack", changes
    huge = [frames[0], msgpack.packb({"pad": ["y" * 250] * 20}), bytes(frames[2])]
    assert len(huge[1]) > MAX_HEADER_BYTES and decode(huge).reason == "bad_msgpack"
    over = [b"radar", frames[1], b"\0" * (TOPICS["radar"].max_payload_bytes + 24)]
    assert decode(over).reason == "payload_size"


# -- deep nesting ------------------------------------------------------------------------------------

DEEP = 1000
PLACEHOLDER = "\u0000deep\u0000"


def _deep_header(frames, path: list, depth: int = DEEP) -> bytes:
    """The header with the value at ``path`` replaced by a list nested ``depth`` levels deep."""
    head = msgpack.unpackb(frames[1], raw=False)
    node = head
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = PLACEHOLDER
    packed = msgpack.packb(head, use_bin_type=True)
    marker = msgpack.packb(PLACEHOLDER)
    assert packed.count(marker) == 1
    return packed.replace(marker, b"\x91" * depth + b"\xc0")


@pytest.mark.parametrize("path", [["schema"], ["point_fields", 2], ["shm", "slot"], ["unknown_key"], ["seq"]])
@pytest.mark.parametrize("depth", [DEEP, 3000])
def test_deeply_nested_values_are_a_counted_rejection(path, depth):
    frames = _radar_frames()
    head = msgpack.unpackb(frames[1], raw=False)
    head["shm"] = {"ring": "fusion-radar0-1-00000000-0", "slot": 0, "gen": 2, "size": 48}
    frames = [frames[0], msgpack.packb(head), b""]
    raw = _deep_header(frames, path, depth)
    got = decode([b"radar", raw, b""], False)
    assert isinstance(got, Rejection) and got.reason == "bad_msgpack", got
    assert "nested deeper" in got.detail
    assert len(repr(got)) < 500 and len(str(got)) < 500  # formatting the rejection is safe too


def test_a_deep_value_inside_the_limits_is_still_quoted_safely():
    # Four levels pass the structural check; the detail quoting it is shortened, not recursive.
    got = decode(_with(_radar_frames(), schema=[[[1] * 10] * 10] * 3))
    assert got.reason == "schema_version" and len(got.detail) < 200


# -- JPEG: the frame header is checked before anything is decoded -------------------------------

def _jpeg_declaring(height: int, width: int) -> bytes:
    """A small JPEG whose frame header (SOF0) claims ``height`` x ``width``."""
    raw = bytearray(cv2.imencode(".jpg", np.zeros((16, 16, 3), np.uint8))[1].tobytes())
    sof = raw.index(b"\xff\xc0")
    raw[sof + 5:sof + 7] = height.to_bytes(2, "big")
    raw[sof + 7:sof + 9] = width.to_bytes(2, "big")
    return bytes(raw)


def _jpeg_message(jpeg: bytes, w: int, h: int) -> list:
    msg = CameraFrame("cam0", 0, 1, 1, np.zeros((h, w, 3), np.uint8), encoding="jpeg", jpeg=jpeg)
    return encode(msg)


def test_jpeg_frame_header_is_read_from_its_markers():
    jpeg = cv2.imencode(".jpg", np.zeros((48, 64, 3), np.uint8))[1].tobytes()
    assert jpeg_frame_size(jpeg) == (48, 64, 3)
    progressive = cv2.imencode(".jpg", np.zeros((30, 20, 3), np.uint8), [cv2.IMWRITE_JPEG_PROGRESSIVE, 1])[1]
    assert jpeg_frame_size(progressive.tobytes()) == (30, 20, 3)
    for bad in (b"", b"\xff\xd8", b"\xff\xd8\xff\xda\x00\x02", jpeg[:20], b"GIF89a" + jpeg):
        with pytest.raises(ValueError):
            jpeg_frame_size(bad)


@pytest.mark.parametrize("declared", [(16384, 16384), (4096, 64), (48, 65)])
def test_a_jpeg_whose_frame_header_disagrees_is_rejected_before_decoding(declared):
    bomb = _jpeg_declaring(*declared)
    assert len(bomb) < 700
    t0 = time.perf_counter()
    got = decode(_jpeg_message(bomb, 64, 48))
    took = time.perf_counter() - t0
    assert isinstance(got, Rejection) and got.reason == "bad_payload" and "frame header" in got.detail, got
    assert took < 0.05, f"{took * 1e3:.0f} ms: the JPEG was decoded"


def test_a_small_jpeg_claiming_a_huge_image_on_both_sides_is_not_decoded():
    bomb = _jpeg_declaring(8192, 8192)  # message header and frame header agree: 201 MB when decoded
    got = decode(_jpeg_message(bomb, 8192, 8192))
    assert isinstance(got, Rejection) and got.reason == "bad_payload" and "cannot hold" in got.detail


def test_the_jpeg_bomb_costs_the_node_neither_memory_nor_time():
    # In a fresh process, so that its peak memory is this decode's alone.
    code = f"""
import resource, sys, time
sys.path.insert(0, {str(ROOT)!r})
from tests.test_wire_fuzz import _jpeg_declaring, _jpeg_message
from fusion_node.wire import decode
frames = _jpeg_message(_jpeg_declaring(16384, 16384), 64, 48)
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
t0 = time.perf_counter()
got = decode(frames)
print(got.reason, round((time.perf_counter() - t0) * 1e3, 1),
      (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) // 1024)
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert out.returncode == 0, out.stderr[-800:]
    reason, took_ms, grown_mb = out.stdout.split()
    assert reason == "bad_payload"
    assert float(took_ms) < 50 and int(grown_mb) < 50, out.stdout


def test_a_jpeg_that_passes_the_header_check_but_does_not_decode_is_bad_payload():
    jpeg = cv2.imencode(".jpg", np.full((48, 64, 3), 90, np.uint8))[1].tobytes()
    scan = jpeg.index(b"\xff\xda")
    broken = jpeg[:scan] + b"\xff\xd9"  # every table and the frame header, but no image data
    got = decode(_jpeg_message(broken + b"\0" * 64, 64, 48))
    assert isinstance(got, CameraFrame) and got.image is None  # it passes the wire checks...
    assert decode_jpeg(got) == "JPEG does not decode"  # ...and fails once admitted and decoded
