"""The wire format, declared once: every topic, every message type, and their codec.

A message on the wire is a ZeroMQ multipart message::

    frame 0   topic name, ASCII (b"camera", b"radar", b"audio", b"fused", b"stats")
    frame 1   msgpack map: the envelope plus the typed fields of the message
    frame 2   payload bytes (sensor topics only): image, points or samples, sent without copying

The envelope shared by every sensor message is ``schema`` (wire schema version), ``sensor_id``,
``run_id`` (random per publisher start, so a restarted sensor re-bases its ``seq``), ``seq``,
``t_capture_ns`` and ``t_publish_ns``. Typed fields carry their unit in their name. The byte
layout of every payload is written out in ``docs/wire.md``; this module is its executable form.

Decoding never raises on bad input: :func:`decode` returns either a message or a
:class:`Rejection` naming the reason, which callers count.
"""

from __future__ import annotations

import reprlib
import struct
from dataclasses import dataclass, field
from typing import Any, Callable, Union

import msgpack
import numpy as np

from .shm import HandleError, ShmReader, default_reader
from .vocabulary import RADAR_POINT_FIELDS, WIRE_AUDIO_RATE_HZ

__all__ = [
    "SCHEMA_VERSION",
    "Topic",
    "TOPICS",
    "SENSOR_TOPICS",
    "CameraFrame",
    "RadarPoints",
    "AudioChunk",
    "SensorMessage",
    "StreamEnd",
    "END_REASONS",
    "Rejection",
    "REJECT_REASONS",
    "encode",
    "decode",
    "decode_jpeg",
    "jpeg_frame_size",
    "encode_map",
    "decode_map",
    "RADAR_POINT_FIELDS",
    "MAX_HEADER_BYTES",
    "MAX_HEADER_DEPTH",
]

SCHEMA_VERSION = 1

# Upper bounds that keep a hostile header from making the decoder allocate or index wildly.
MAX_IMAGE_SIDE_PX = 8192
MAX_RADAR_POINTS = 10_000
MAX_AUDIO_SAMPLES = 192_000
MAX_ID_CHARS = 64
# The header (frame 1) is checked against these before a single object is built from it: a
# legal header is a map of about a dozen scalars, one short array and one small map.
MAX_HEADER_BYTES = 4096
MAX_HEADER_DEPTH = 4  # the top-level map is depth 1; `shm` and `point_fields` are depth 2
MAX_HEADER_ITEMS = 64  # entries in any one map or array of the header
MAX_HEADER_STR_BYTES = 256
MAX_TOPIC_BYTES = 16
# A Huffman-coded JPEG spends at least one bit on every 8x8 block of its first component, so
# one byte cannot describe more than 512 pixels: a smaller file declaring a large image is a
# decompression bomb or truncated, and is refused before it is decoded.
JPEG_MAX_PIXELS_PER_BYTE = 512

REJECT_REASONS = (
    "multipart_shape",  # wrong number of frames for the topic
    "unknown_topic",
    "bad_msgpack",  # header frame is not a msgpack map, or breaks the size/nesting/length limits
    "bad_header",  # a field missing, of the wrong type, or out of range
    "schema_version",  # header written for another wire schema version
    "payload_size",  # payload length does not match what the header declares
    "bad_payload",  # payload cannot be decoded (corrupt JPEG, or one whose own header disagrees)
    "non_finite",  # NaN or infinity in a float payload
    "unknown_sensor",  # a sensor_id the rig config does not name, or not the one of its endpoint
    "out_of_order",  # seq or capture time not increasing within one publisher run
    "timestamp_past",  # capture time older than the node accepts
    "timestamp_future",  # capture time ahead of the node's clock
    "bad_handle",  # a shared-memory payload handle that is malformed or names no mappable ring slot
    "shm_overwritten",  # the shared-memory slot was reused by its writer before the reader was done with it
)

# Rejection details quote what arrived, shortened: never the whole of a hostile value.
_SHORT = reprlib.Repr()
_SHORT.maxlevel, _SHORT.maxstring, _SHORT.maxother, _SHORT.maxlist, _SHORT.maxdict = 1, 40, 40, 6, 6


def _show(value: Any) -> str:
    return _SHORT.repr(value)


@dataclass(frozen=True)
class Rejection:
    """A message that failed validation: why, and on which topic/sensor when known."""

    reason: str
    detail: str
    topic: str = ""
    sensor_id: str = ""


@dataclass
class CameraFrame:
    """One camera image. ``image`` is BGR uint8 (height, width, 3) once decoded.

    A frame received as JPEG carries its compressed bytes in ``jpeg`` and ``image=None`` until
    the core has admitted it and :func:`decode_jpeg` has run: a frame that is rejected or
    dropped costs no decode.
    """

    sensor_id: str
    seq: int
    t_capture_ns: int
    t_publish_ns: int
    image: np.ndarray | None
    encoding: str = "bgr8"  # "bgr8" raw, or "jpeg" on the wire
    run_id: int = 0
    jpeg: Any = None  # the compressed bytes (any buffer) when encoding="jpeg"
    width_px: int = 0  # as declared in the header (received frames)
    height_px: int = 0

    topic = "camera"

    @property
    def size_px(self) -> tuple[int, int]:
        """(width, height): of the image when there is one, else as declared."""
        if self.image is not None:
            return int(self.image.shape[1]), int(self.image.shape[0])
        return self.width_px, self.height_px


@dataclass
class RadarPoints:
    """One radar frame's detections: float32 (N, 6) in RADAR_POINT_FIELDS order, radar frame."""

    sensor_id: str
    seq: int
    t_capture_ns: int
    t_publish_ns: int
    points: np.ndarray
    frame_number: int = 0
    has_side_info: bool = False  # snr_db/noise_db columns are real (else zeros)
    run_id: int = 0

    topic = "radar"


@dataclass
class AudioChunk:
    """A run of mono float32 samples; ``t_capture_ns`` is the capture time of the first sample."""

    sensor_id: str
    seq: int
    t_capture_ns: int
    t_publish_ns: int
    samples: np.ndarray
    sample_rate_hz: int = WIRE_AUDIO_RATE_HZ
    run_id: int = 0

    topic = "audio"

    @property
    def duration_ns(self) -> int:
        return int(round(len(self.samples) * 1e9 / self.sample_rate_hz))


SensorMessage = Union[CameraFrame, RadarPoints, AudioChunk]

# Why a publisher ended its stream: its source ran out (a recording, --max-frames) or it was
# asked to stop (a signal, the launcher). A sensor that dies says nothing: that is a failure.
END_REASONS = ("source_ended", "stopped")


@dataclass
class StreamEnd:
    """A sensor's last message of a run: it stops publishing on purpose, not by failing.

    Sent on the sensor's own topic with the envelope (``seq`` continues the run, ``t_capture_ns``
    is the last capture) and an empty payload, so the node can tell a finished recording or an
    operator's stop from a dead sensor.
    """

    sensor_id: str
    seq: int
    t_capture_ns: int
    t_publish_ns: int
    topic: str
    reason: str = "stopped"
    run_id: int = 0


@dataclass(frozen=True)
class Topic:
    """One topic of the registry: its wire name, message type, nominal rate and queue bound.

    The socket high-water marks, the node's per-sensor buffers and liveness checks, the
    benchmark's expected rates and the largest message the node takes (``ZMQ_MAXMSGSIZE`` of
    its sockets) all derive from these entries.
    """

    name: str
    message: str
    nominal_rate_hz: float
    queue_bound: int
    recorded: bool
    payload_frames: int = field(default=1)
    max_payload_bytes: int = field(default=0)  # the largest legal frame 2, from the MAX_* bounds

    @property
    def period_ns(self) -> int:
        return int(1e9 / self.nominal_rate_hz)

    @property
    def name_bytes(self) -> bytes:
        return self.name.encode("ascii")

    @property
    def max_frame_bytes(self) -> int:
        """The largest legal frame of a message on this topic (header or payload)."""
        return max(self.max_payload_bytes, MAX_HEADER_BYTES)


TOPICS: dict[str, Topic] = {
    t.name: t
    for t in (
        Topic("camera", "CameraFrame", nominal_rate_hz=30.0, queue_bound=8, recorded=True,
              max_payload_bytes=MAX_IMAGE_SIDE_PX * MAX_IMAGE_SIDE_PX * 3),
        Topic("radar", "RadarPoints", nominal_rate_hz=20.0, queue_bound=16, recorded=True,
              max_payload_bytes=MAX_RADAR_POINTS * len(RADAR_POINT_FIELDS) * 4),
        Topic("audio", "AudioChunk", nominal_rate_hz=50.0, queue_bound=256, recorded=True,
              max_payload_bytes=MAX_AUDIO_SAMPLES * 4),
        Topic("fused", "FusedEvent", nominal_rate_hz=30.0, queue_bound=256, recorded=True, payload_frames=0),
        Topic("stats", "NodeStats", nominal_rate_hz=1.0, queue_bound=16, recorded=False, payload_frames=0),
        # Occurrences start, update and end: a few per occurrence, far below the fused rate.
        Topic("lifecycle", "LifecycleEvent", nominal_rate_hz=1.0, queue_bound=256, recorded=True, payload_frames=0),
    )
}
SENSOR_TOPICS = ("camera", "radar", "audio")


def _envelope(msg: SensorMessage | StreamEnd, t_publish_ns: int | None) -> dict[str, Any]:
    return {
        "schema": SCHEMA_VERSION,
        "sensor_id": msg.sensor_id,
        "run_id": int(msg.run_id),
        "seq": int(msg.seq),
        "t_capture_ns": int(msg.t_capture_ns),
        "t_publish_ns": int(msg.t_publish_ns if t_publish_ns is None else t_publish_ns),
    }


def _bytes_view(arr: np.ndarray) -> memoryview:
    # A flat byte view of a contiguous array: ZeroMQ sends it from the array's own memory.
    return memoryview(arr.reshape(-1).view(np.uint8))


def encode_end(end: StreamEnd, t_publish_ns: int | None = None) -> list:
    """The frames of a :class:`StreamEnd`: the envelope, ``end_reason`` and an empty payload."""
    if end.topic not in SENSOR_TOPICS or end.reason not in END_REASONS:
        raise ValueError(f"{end.sensor_id}: a stream end needs a sensor topic and a reason in {END_REASONS}")
    head = _envelope(end, t_publish_ns)
    head.update(end_reason=end.reason, payload_bytes=0)
    return [end.topic.encode("ascii"), msgpack.packb(head, use_bin_type=True), b""]


def encode(msg: SensorMessage, t_publish_ns: int | None = None,
           payload_sink: Callable[[memoryview], dict | None] | None = None) -> list:
    """Build the multipart frames for a sensor message; the payload is a zero-copy buffer.

    Pass ``t_publish_ns`` to stamp the publish time at the moment of sending. ``payload_sink``
    (the shared-memory path, :mod:`fusion_node.shm`) may take the payload and return a handle:
    the handle goes into the header under ``shm`` and frame 2 is sent empty.
    """
    head = _envelope(msg, t_publish_ns)
    if isinstance(msg, CameraFrame):
        w, h = msg.size_px
        if msg.encoding == "jpeg":
            if msg.jpeg is None:
                raise ValueError(f"camera {msg.sensor_id}: encoding='jpeg' needs the jpeg bytes")
            payload: Any = msg.jpeg
        elif msg.encoding == "bgr8":
            img = np.ascontiguousarray(msg.image, dtype=np.uint8)
            if img.ndim != 3 or img.shape[2] != 3:
                raise ValueError(f"camera {msg.sensor_id}: image must be (H, W, 3) uint8, got {img.shape}")
            payload = _bytes_view(img)
        else:
            raise ValueError(f"camera {msg.sensor_id}: unknown encoding {msg.encoding!r}")
        head.update(width_px=int(w), height_px=int(h), channels=3, encoding=msg.encoding,
                    payload_bytes=memoryview(payload).nbytes)
    elif isinstance(msg, RadarPoints):
        pts = np.ascontiguousarray(msg.points, dtype="<f4").reshape(-1, len(RADAR_POINT_FIELDS))
        payload = _bytes_view(pts)
        head.update(frame_number=int(msg.frame_number), num_points=int(pts.shape[0]),
                    point_fields=list(RADAR_POINT_FIELDS), has_side_info=bool(msg.has_side_info),
                    payload_bytes=len(payload))
    elif isinstance(msg, AudioChunk):
        s = np.ascontiguousarray(msg.samples, dtype="<f4").reshape(-1)
        payload = _bytes_view(s)
        head.update(sample_rate_hz=int(msg.sample_rate_hz), num_samples=int(s.shape[0]), channels=1,
                    sample_format="f32le", payload_bytes=len(payload))
    else:
        raise TypeError(f"not a sensor message: {type(msg).__name__}")
    if payload_sink is not None:
        handle = payload_sink(payload)
        if handle is not None:
            head["shm"] = handle
            payload = b""
    return [msg.topic.encode("ascii"), msgpack.packb(head, use_bin_type=True), payload]


def encode_map(topic: str, body: dict) -> list[bytes]:
    """Frames for a header-only topic (fused events, stats, lifecycle): ``[topic, msgpack map]``."""
    return [topic.encode("ascii"), msgpack.packb(body, use_bin_type=True)]


def decode_map(frames: list) -> tuple[str, dict]:
    """Decode a header-only message (fused, stats). Raises ValueError on malformed input."""
    if len(frames) != 2:
        raise ValueError(f"expected 2 frames, got {len(frames)}")
    topic = bytes(_buf(frames[0])).decode("ascii", "replace")
    body = msgpack.unpackb(_buf(frames[1]), raw=False, strict_map_key=False)
    if not isinstance(body, dict):
        raise ValueError("body is not a msgpack map")
    return topic, body


def _buf(frame: Any) -> Any:
    # zmq.Frame exposes .buffer (a memoryview onto ZeroMQ's own memory, no copy)
    return frame.buffer if hasattr(frame, "buffer") else frame


def _nbytes(buf: Any) -> int:
    return buf.nbytes if isinstance(buf, memoryview) else len(buf)


class _Bad(Exception):
    def __init__(self, reason: str, detail: str):
        super().__init__(detail)
        self.reason = reason
        self.detail = detail


# msgpack type bytes -> bytes that follow before the next item: fixed-size scalars...
_FIXED = {0xC0: 0, 0xC2: 0, 0xC3: 0, 0xCA: 4, 0xCB: 8, 0xCC: 1, 0xCD: 2, 0xCE: 4, 0xCF: 8,
          0xD0: 1, 0xD1: 2, 0xD2: 4, 0xD3: 8, 0xD4: 2, 0xD5: 3, 0xD6: 5, 0xD7: 9, 0xD8: 17}
# ...length-prefixed blobs (str, bin, ext): width of the length, extra type byte of ext...
_BLOB = {0xD9: (1, 0), 0xDA: (2, 0), 0xDB: (4, 0), 0xC4: (1, 0), 0xC5: (2, 0), 0xC6: (4, 0),
         0xC7: (1, 1), 0xC8: (2, 1), 0xC9: (4, 1)}
# ...and containers: width of the count, items per count (a map entry is a key and a value).
_CONTAINER = {0xDC: (2, 1), 0xDD: (4, 1), 0xDE: (2, 2), 0xDF: (4, 2)}
_UINT = {1: struct.Struct(">B"), 2: struct.Struct(">H"), 4: struct.Struct(">I")}


def _check_nesting(buf: Any, max_depth: int) -> None:
    """Walk msgpack bytes without building anything; refuse nesting deeper than ``max_depth``.

    Work is linear in the length of ``buf`` (every item takes at least one byte), so a header
    nested a thousand levels deep costs the same as any other 4 KiB and never reaches the
    unpacker or a recursive ``repr``.
    """
    data = memoryview(buf).cast("B") if isinstance(buf, memoryview) else memoryview(buf)
    n = len(data)
    pos = 0
    pending = [1]  # items still to read at each open level
    while pending:
        if pending[-1] == 0:
            pending.pop()
            continue
        pending[-1] -= 1
        if pos >= n:
            raise _Bad("bad_msgpack", "header is truncated")
        b = data[pos]
        pos += 1
        count = 0
        if b <= 0x7F or b >= 0xE0:
            continue  # fixint
        if 0x80 <= b <= 0x8F:
            count = (b & 0x0F) * 2
        elif 0x90 <= b <= 0x9F:
            count = b & 0x0F
        elif 0xA0 <= b <= 0xBF:
            pos += b & 0x1F
            continue
        elif b in _FIXED:
            pos += _FIXED[b]
            continue
        elif b in _BLOB or b in _CONTAINER:
            width, per = _BLOB.get(b) or _CONTAINER[b]
            if pos + width > n:
                raise _Bad("bad_msgpack", "header is truncated")
            length = _UINT[width].unpack_from(data, pos)[0]
            pos += width
            if b in _BLOB:
                pos += length + per
                continue
            count = length * per
        else:
            raise _Bad("bad_msgpack", f"header holds the reserved msgpack byte 0x{b:02x}")
        if len(pending) > max_depth:
            raise _Bad("bad_msgpack", f"header nested deeper than {max_depth} levels")
        if count > n - pos:  # every item takes a byte at least
            raise _Bad("bad_msgpack", "header is truncated")
        pending.append(count)


def _unpack_header(topic: str, frame: Any) -> dict:
    """Frame 1 as a dict, within the header limits; raises _Bad before building anything big."""
    size = _nbytes(frame)
    if size > MAX_HEADER_BYTES:
        raise _Bad("bad_msgpack", f"{topic}: header of {size} bytes, limit {MAX_HEADER_BYTES}")
    _check_nesting(frame, MAX_HEADER_DEPTH)
    try:
        head = msgpack.unpackb(frame, raw=False, strict_map_key=True, use_list=True,
                               max_str_len=MAX_HEADER_STR_BYTES, max_bin_len=0, max_ext_len=0,
                               max_array_len=MAX_HEADER_ITEMS, max_map_len=MAX_HEADER_ITEMS)
    except Exception as exc:  # msgpack raises several unrelated types on garbage
        raise _Bad("bad_msgpack", f"{topic}: header is not msgpack within the limits ({type(exc).__name__})") from None
    if type(head) is not dict:
        raise _Bad("bad_msgpack", f"{topic}: header is not a msgpack map")
    return head


def _field(head: dict, key: str, kind: type, lo: int | None = None, hi: int | None = None) -> Any:
    """A header field of exactly ``kind`` (a bool is not an int) within [lo, hi]."""
    if key not in head:
        raise _Bad("bad_header", f"missing field '{key}'")
    val = head[key]
    if type(val) is not kind:
        raise _Bad("bad_header", f"field '{key}' must be {kind.__name__}, got {type(val).__name__}")
    if kind is int and (lo is not None and val < lo or hi is not None and val > hi):
        raise _Bad("bad_header", f"field '{key}'={_show(val)} outside [{lo}, {hi}]")
    return val


UINT32_MAX = 2**32 - 1
UINT64_MAX = 2**64 - 1
INT64_MAX = 2**63 - 1


def decode(frames: list, shm: ShmReader | None | bool = None) -> SensorMessage | StreamEnd | Rejection:
    """Decode and validate one sensor multipart message; never raises on bad input.

    A header with ``end_reason`` is a :class:`StreamEnd` (empty payload, no other typed field).

    ``shm`` resolves shared-memory payload handles: a :class:`fusion_node.shm.ShmReader`, None
    for this process's shared reader, or False to reject every handle as ``bad_handle``. The
    reader copies the slot out, so the message owns its bytes. A JPEG camera frame comes back
    with its size checked against the JPEG's own frame header but not yet decoded: call
    :func:`decode_jpeg` once the frame is admitted.
    """
    topic = ""
    sensor_id = ""
    try:
        if len(frames) < 1:
            raise _Bad("multipart_shape", "empty message")
        first = _buf(frames[0])
        if _nbytes(first) > MAX_TOPIC_BYTES:
            raise _Bad("unknown_topic", f"topic frame of {_nbytes(first)} bytes is not a sensor topic")
        try:
            topic = bytes(first).decode("ascii")
        except UnicodeDecodeError:
            raise _Bad("unknown_topic", "topic frame is not ASCII") from None
        if topic not in SENSOR_TOPICS:
            raise _Bad("unknown_topic", f"topic {topic!r} is not a sensor topic")
        if len(frames) != 3:
            raise _Bad("multipart_shape", f"{topic}: expected 3 frames, got {len(frames)}")
        spec = TOPICS[topic]
        payload = _buf(frames[2])
        nbytes = _nbytes(payload)
        if nbytes > spec.max_payload_bytes:
            raise _Bad("payload_size", f"{topic}: payload of {nbytes} bytes, limit {spec.max_payload_bytes}")
        head = _unpack_header(topic, _buf(frames[1]))
        schema = head.get("schema")
        if type(schema) is not int or schema != SCHEMA_VERSION:
            raise _Bad("schema_version", f"{topic}: schema {_show(schema)}, expected the integer {SCHEMA_VERSION}")
        sensor_id = _field(head, "sensor_id", str)
        if not 0 < len(sensor_id) <= MAX_ID_CHARS:
            sensor_id = ""
            raise _Bad("bad_header", f"{topic}: sensor_id must be 1..{MAX_ID_CHARS} characters")
        env = dict(
            sensor_id=sensor_id,
            run_id=_field(head, "run_id", int, 0, UINT32_MAX),
            seq=_field(head, "seq", int, 0, UINT64_MAX),
            t_capture_ns=_field(head, "t_capture_ns", int, 0, INT64_MAX),
            t_publish_ns=_field(head, "t_publish_ns", int, 0, INT64_MAX),
        )
        declared = _field(head, "payload_bytes", int, 0, spec.max_payload_bytes)
        if "end_reason" in head:
            reason = _field(head, "end_reason", str)
            if reason not in END_REASONS:
                raise _Bad("bad_header", f"{topic}/{sensor_id}: end_reason {_show(reason)} is not one of {END_REASONS}")
            if declared != 0 or nbytes != 0 or "shm" in head:
                raise _Bad("payload_size", f"{topic}/{sensor_id}: a stream end carries no payload")
            return StreamEnd(topic=topic, reason=reason, **env)
        if "shm" in head:
            if nbytes != 0:
                raise _Bad("payload_size", f"{topic}/{sensor_id}: frame 2 must be empty with a shm handle")
            if shm is False:
                raise _Bad("bad_handle", f"{topic}/{sensor_id}: shared-memory handle, but this reader maps none")
            reader = default_reader() if shm is None or shm is True else shm
            try:
                payload = reader.read(sensor_id, head["shm"], declared)
            except HandleError as exc:
                raise _Bad(exc.reason, f"{topic}/{sensor_id}: {exc}") from None
            nbytes = declared
        elif declared != nbytes:
            raise _Bad("payload_size", f"{topic}/{sensor_id}: payload is {nbytes} bytes, header says {declared}")
        if topic == "camera":
            return _decode_camera(head, env, payload, nbytes)
        if topic == "radar":
            return _decode_radar(head, env, payload, nbytes)
        return _decode_audio(head, env, payload, nbytes)
    except _Bad as bad:
        return Rejection(bad.reason, bad.detail, topic, sensor_id)


_SOF_HUFFMAN = (0xC0, 0xC1, 0xC2)  # baseline, extended sequential, progressive
_NOT_SOF = (0xC4, 0xC8, 0xCC)  # DHT, JPG, DAC share the 0xCn range


def jpeg_frame_size(data: Any) -> tuple[int, int, int]:
    """(height, width, components) from a JPEG's frame header (SOF), reading markers only.

    Raises ValueError for anything that is not a baseline or progressive Huffman JPEG with its
    frame header before the first scan.
    """
    buf = memoryview(data).cast("B") if isinstance(data, memoryview) else memoryview(data)
    n = len(buf)
    if n < 4 or buf[0] != 0xFF or buf[1] != 0xD8:
        raise ValueError("not a JPEG (no start-of-image marker)")
    pos = 2
    while pos < n:
        if buf[pos] != 0xFF:
            raise ValueError(f"no marker at byte {pos}")
        while pos < n and buf[pos] == 0xFF:  # fill bytes
            pos += 1
        if pos >= n:
            break
        marker = buf[pos]
        pos += 1
        if marker == 0x01 or 0xD0 <= marker <= 0xD7:
            continue  # stand-alone markers
        if marker in (0xD8, 0xD9, 0xDA):
            raise ValueError("no frame header before the image data")
        if pos + 2 > n:
            break
        length = (buf[pos] << 8) | buf[pos + 1]
        if length < 2 or pos + length > n:
            raise ValueError(f"segment 0x{marker:02x} runs past the end of the file")
        if 0xC0 <= marker <= 0xCF and marker not in _NOT_SOF:
            if marker not in _SOF_HUFFMAN:
                raise ValueError(f"JPEG process 0x{marker:02x} is not baseline or progressive")
            if length < 8:
                raise ValueError("frame header is too short")
            height = (buf[pos + 3] << 8) | buf[pos + 4]
            width = (buf[pos + 5] << 8) | buf[pos + 6]
            return height, width, buf[pos + 7]
        pos += length
    raise ValueError("the file ends before its frame header")


def decode_jpeg(frame: CameraFrame) -> str | None:
    """Decode an admitted JPEG frame in place; returns None, or why it is a ``bad_payload``."""
    if frame.image is not None or frame.jpeg is None:
        return None
    import cv2  # only JPEG links need the codec

    flags = cv2.IMREAD_COLOR | cv2.IMREAD_IGNORE_ORIENTATION  # the frame header's size, unrotated
    image = cv2.imdecode(np.frombuffer(frame.jpeg, dtype=np.uint8), flags)
    if image is None:
        return "JPEG does not decode"
    if image.shape != (frame.height_px, frame.width_px, 3):
        return f"JPEG decodes to {image.shape[1]}x{image.shape[0]}, header says {frame.width_px}x{frame.height_px}"
    frame.image = image
    frame.jpeg = None
    return None


def _decode_camera(head: dict, env: dict, payload: Any, nbytes: int) -> CameraFrame:
    sid = env["sensor_id"]
    w = _field(head, "width_px", int, 1, MAX_IMAGE_SIDE_PX)
    h = _field(head, "height_px", int, 1, MAX_IMAGE_SIDE_PX)
    ch = _field(head, "channels", int, 3, 3)
    enc = _field(head, "encoding", str)
    if enc == "bgr8":
        if nbytes != w * h * ch:
            raise _Bad("payload_size", f"camera/{sid}: {nbytes} bytes for {w}x{h}x{ch}")
        image = np.frombuffer(payload, dtype=np.uint8).reshape(h, w, ch)
        return CameraFrame(image=image, encoding=enc, width_px=w, height_px=h, **env)
    if enc != "jpeg":
        raise _Bad("bad_header", f"camera/{sid}: unknown encoding {enc[:16]!r}")
    if nbytes * JPEG_MAX_PIXELS_PER_BYTE < w * h:
        raise _Bad("bad_payload", f"camera/{sid}: a JPEG of {nbytes} bytes cannot hold {w}x{h} pixels")
    try:
        jh, jw, comps = jpeg_frame_size(payload)
    except ValueError as exc:
        raise _Bad("bad_payload", f"camera/{sid}: {exc}") from None
    if (jh, jw, comps) != (h, w, ch):
        raise _Bad("bad_payload", f"camera/{sid}: JPEG frame header says {jw}x{jh} with {comps} components, "
                                  f"message header says {w}x{h}x{ch}")
    return CameraFrame(image=None, encoding=enc, jpeg=payload, width_px=w, height_px=h, **env)


def _decode_radar(head: dict, env: dict, payload: Any, nbytes: int) -> RadarPoints:
    n = _field(head, "num_points", int, 0, MAX_RADAR_POINTS)
    fields = _field(head, "point_fields", list)
    if tuple(fields) != RADAR_POINT_FIELDS:
        raise _Bad("bad_header", f"radar/{env['sensor_id']}: point_fields {_show(fields)} != {list(RADAR_POINT_FIELDS)}")
    frame_number = _field(head, "frame_number", int, 0, UINT64_MAX)
    side_info = _field(head, "has_side_info", bool)
    if nbytes != n * len(RADAR_POINT_FIELDS) * 4:
        raise _Bad("payload_size", f"radar/{env['sensor_id']}: {nbytes} bytes for {n} points")
    pts = np.frombuffer(payload, dtype="<f4").reshape(n, len(RADAR_POINT_FIELDS))
    if not np.isfinite(pts).all():
        raise _Bad("non_finite", f"radar/{env['sensor_id']}: NaN or inf in points")
    return RadarPoints(points=pts, frame_number=frame_number, has_side_info=side_info, **env)


def _decode_audio(head: dict, env: dict, payload: Any, nbytes: int) -> AudioChunk:
    rate = _field(head, "sample_rate_hz", int, 1000, 384_000)
    n = _field(head, "num_samples", int, 1, MAX_AUDIO_SAMPLES)
    _field(head, "channels", int, 1, 1)
    if _field(head, "sample_format", str) != "f32le":
        raise _Bad("bad_header", f"audio/{env['sensor_id']}: sample_format must be 'f32le'")
    if nbytes != n * 4:
        raise _Bad("payload_size", f"audio/{env['sensor_id']}: {nbytes} bytes for {n} samples")
    samples = np.frombuffer(payload, dtype="<f4")
    if not np.isfinite(samples).all():
        raise _Bad("non_finite", f"audio/{env['sensor_id']}: NaN or inf in samples")
    return AudioChunk(samples=samples, sample_rate_hz=rate, **env)
