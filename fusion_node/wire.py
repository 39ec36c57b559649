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

import math
from dataclasses import dataclass, field
from typing import Any, Callable, Union

import msgpack
import numpy as np

__all__ = [
    "SCHEMA_VERSION",
    "Topic",
    "TOPICS",
    "SENSOR_TOPICS",
    "CameraFrame",
    "RadarPoints",
    "AudioChunk",
    "SensorMessage",
    "Rejection",
    "REJECT_REASONS",
    "encode",
    "decode",
    "encode_map",
    "decode_map",
    "RADAR_POINT_FIELDS",
]

SCHEMA_VERSION = 1

# Radar point columns, in payload order. Matches sensors.ti_mmwave.POINT_FIELDS.
RADAR_POINT_FIELDS = ("x_m", "y_m", "z_m", "doppler_mps", "snr_db", "noise_db")

# Upper bounds that keep a hostile header from making the decoder allocate or index wildly.
MAX_IMAGE_SIDE_PX = 8192
MAX_RADAR_POINTS = 10_000
MAX_AUDIO_SAMPLES = 192_000
MAX_ID_CHARS = 64

REJECT_REASONS = (
    "multipart_shape",  # wrong number of frames for the topic
    "unknown_topic",
    "bad_msgpack",  # header frame is not a msgpack map
    "bad_header",  # a field missing, of the wrong type, or out of range
    "schema_version",  # header written for another wire schema version
    "payload_size",  # payload length does not match what the header declares
    "bad_payload",  # payload cannot be decoded (corrupt JPEG)
    "non_finite",  # NaN or infinity in a float payload
    "unknown_sensor",  # a sensor_id the rig config does not name
    "out_of_order",  # seq or capture time not increasing within one publisher run
    "timestamp_past",  # capture time older than the node accepts
    "timestamp_future",  # capture time ahead of the node's clock
    "bad_handle",  # a shared-memory payload handle that is malformed or names no mappable ring slot
    "shm_overwritten",  # the shared-memory slot was reused by its writer before the reader was done with it
)


@dataclass(frozen=True)
class Rejection:
    """A message that failed validation: why, and on which topic/sensor when known."""

    reason: str
    detail: str
    topic: str = ""
    sensor_id: str = ""


@dataclass
class CameraFrame:
    """One camera image. ``image`` is BGR uint8 (height, width, 3) once decoded."""

    sensor_id: str
    seq: int
    t_capture_ns: int
    t_publish_ns: int
    image: np.ndarray
    encoding: str = "bgr8"  # "bgr8" raw, or "jpeg" on the wire (decoded on receipt)
    run_id: int = 0
    jpeg: bytes | None = None  # the compressed bytes when sending with encoding="jpeg"

    topic = "camera"


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
    sample_rate_hz: int = 16000
    run_id: int = 0

    topic = "audio"

    @property
    def duration_ns(self) -> int:
        return int(round(len(self.samples) * 1e9 / self.sample_rate_hz))


SensorMessage = Union[CameraFrame, RadarPoints, AudioChunk]


@dataclass(frozen=True)
class Topic:
    """One topic of the registry: its wire name, message type, nominal rate and queue bound.

    The socket high-water marks, the node's per-sensor buffers and liveness checks, and the
    benchmark's expected rates all derive from these entries.
    """

    name: str
    message: str
    nominal_rate_hz: float
    queue_bound: int
    recorded: bool
    payload_frames: int = field(default=1)

    @property
    def period_ns(self) -> int:
        return int(1e9 / self.nominal_rate_hz)

    @property
    def name_bytes(self) -> bytes:
        return self.name.encode("ascii")


TOPICS: dict[str, Topic] = {
    t.name: t
    for t in (
        Topic("camera", "CameraFrame", nominal_rate_hz=30.0, queue_bound=8, recorded=True),
        Topic("radar", "RadarPoints", nominal_rate_hz=20.0, queue_bound=16, recorded=True),
        Topic("audio", "AudioChunk", nominal_rate_hz=50.0, queue_bound=256, recorded=True),
        Topic("fused", "FusedEvent", nominal_rate_hz=30.0, queue_bound=256, recorded=True, payload_frames=0),
        Topic("stats", "NodeStats", nominal_rate_hz=1.0, queue_bound=16, recorded=False, payload_frames=0),
        # Occurrences start, update and end: a few per occurrence, far below the fused rate.
        Topic("lifecycle", "LifecycleEvent", nominal_rate_hz=1.0, queue_bound=256, recorded=True, payload_frames=0),
    )
}
SENSOR_TOPICS = ("camera", "radar", "audio")


def _envelope(msg: SensorMessage, t_publish_ns: int | None) -> dict[str, Any]:
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


def encode(msg: SensorMessage, t_publish_ns: int | None = None,
           payload_sink: Callable[[memoryview], dict | None] | None = None) -> list:
    """Build the multipart frames for a sensor message; the payload is a zero-copy buffer.

    Pass ``t_publish_ns`` to stamp the publish time at the moment of sending. ``payload_sink``
    (the shared-memory path, :mod:`fusion_node.shm`) may take the payload and return a handle:
    the handle goes into the header under ``shm`` and frame 2 is sent empty.
    """
    head = _envelope(msg, t_publish_ns)
    if isinstance(msg, CameraFrame):
        h, w = msg.image.shape[:2]
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
                    payload_bytes=len(payload))
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


class _Bad(Exception):
    def __init__(self, reason: str, detail: str):
        super().__init__(detail)
        self.reason = reason
        self.detail = detail


def _field(head: dict, key: str, kind: type, lo: float | None = None, hi: float | None = None) -> Any:
    if key not in head:
        raise _Bad("bad_header", f"missing field '{key}'")
    val = head[key]
    if kind is int:
        ok = isinstance(val, int) and not isinstance(val, bool)
    elif kind is float:
        ok = isinstance(val, (int, float)) and not isinstance(val, bool)
    else:
        ok = isinstance(val, kind)
    if not ok:
        raise _Bad("bad_header", f"field '{key}' must be {kind.__name__}, got {type(val).__name__}")
    if kind in (int, float):
        if isinstance(val, float) and not math.isfinite(val):
            raise _Bad("non_finite", f"field '{key}' is {val}")
        if lo is not None and val < lo or hi is not None and val > hi:
            raise _Bad("bad_header", f"field '{key}'={val} outside [{lo}, {hi}]")
    return val


def decode(frames: list, shm: Any = None) -> SensorMessage | Rejection:
    """Decode and validate one sensor multipart message; never raises on bad input.

    ``shm`` resolves shared-memory payload handles: a :class:`fusion_node.shm.ShmReader`, None
    for this process's shared reader, or False to reject every handle as ``bad_handle``. A
    message whose payload lives in shared memory gets a ``shm_lease`` attribute: its bytes are
    the writer's ring slot, so check ``lease.valid()`` after use and copy what you keep.
    """
    topic = ""
    sensor_id = ""
    try:
        if len(frames) < 1:
            raise _Bad("multipart_shape", "empty message")
        try:
            topic = bytes(_buf(frames[0])).decode("ascii")
        except UnicodeDecodeError:
            raise _Bad("unknown_topic", "topic frame is not ASCII") from None
        if topic not in SENSOR_TOPICS:
            raise _Bad("unknown_topic", f"topic {topic[:32]!r} is not a sensor topic")
        if len(frames) != 3:
            raise _Bad("multipart_shape", f"{topic}: expected 3 frames, got {len(frames)}")
        try:
            head = msgpack.unpackb(_buf(frames[1]), raw=False, strict_map_key=False)
        except Exception as exc:  # msgpack raises several unrelated types on garbage
            raise _Bad("bad_msgpack", f"{topic}: header is not msgpack ({type(exc).__name__})") from None
        if not isinstance(head, dict):
            raise _Bad("bad_msgpack", f"{topic}: header is not a msgpack map")
        if head.get("schema") != SCHEMA_VERSION:
            raise _Bad("schema_version", f"{topic}: schema {head.get('schema')!r}, expected {SCHEMA_VERSION}")
        sensor_id = _field(head, "sensor_id", str)
        if not 0 < len(sensor_id) <= MAX_ID_CHARS:
            raise _Bad("bad_header", f"{topic}: sensor_id must be 1..{MAX_ID_CHARS} characters")
        env = dict(
            sensor_id=sensor_id,
            run_id=_field(head, "run_id", int, 0, 2**64 - 1),
            seq=_field(head, "seq", int, 0, 2**64 - 1),
            t_capture_ns=_field(head, "t_capture_ns", int, 0, 2**63 - 1),
            t_publish_ns=_field(head, "t_publish_ns", int, 0, 2**63 - 1),
        )
        payload = _buf(frames[2])
        nbytes = payload.nbytes if isinstance(payload, memoryview) else len(payload)
        declared = _field(head, "payload_bytes", int, 0, 2**31)
        lease = None
        if "shm" in head:
            if nbytes != 0:
                raise _Bad("payload_size", f"{topic}/{sensor_id}: frame 2 must be empty with a shm handle")
            if shm is False:
                raise _Bad("bad_handle", f"{topic}/{sensor_id}: shared-memory handle, but this reader maps none")
            if shm is None:
                from .shm import default_reader

                shm = default_reader()
            try:
                payload, lease = shm.resolve(sensor_id, head["shm"], declared)
            except ValueError as exc:  # fusion_node.shm.HandleError names its reason
                raise _Bad(getattr(exc, "reason", "bad_handle"), f"{topic}/{sensor_id}: {exc}") from None
            nbytes = declared
        elif declared != nbytes:
            raise _Bad("payload_size", f"{topic}/{sensor_id}: payload is {nbytes} bytes, header says {declared}")
        if topic == "camera":
            msg = _decode_camera(head, env, payload, nbytes)
        elif topic == "radar":
            msg = _decode_radar(head, env, payload, nbytes)
        else:
            msg = _decode_audio(head, env, payload, nbytes)
        if lease is not None:
            msg.shm_lease = lease
        return msg
    except _Bad as bad:
        return Rejection(bad.reason, bad.detail, topic, sensor_id)


def _decode_camera(head: dict, env: dict, payload: Any, nbytes: int) -> CameraFrame | Rejection:
    w = _field(head, "width_px", int, 1, MAX_IMAGE_SIDE_PX)
    h = _field(head, "height_px", int, 1, MAX_IMAGE_SIDE_PX)
    ch = _field(head, "channels", int, 3, 3)
    enc = _field(head, "encoding", str)
    if enc == "bgr8":
        if nbytes != w * h * ch:
            raise _Bad("payload_size", f"camera/{env['sensor_id']}: {nbytes} bytes for {w}x{h}x{ch}")
        image = np.frombuffer(payload, dtype=np.uint8).reshape(h, w, ch)
    elif enc == "jpeg":
        import cv2  # only JPEG links need the codec

        image = cv2.imdecode(np.frombuffer(payload, dtype=np.uint8), cv2.IMREAD_COLOR)
        if image is None:
            raise _Bad("bad_payload", f"camera/{env['sensor_id']}: JPEG does not decode")
        if image.shape[:2] != (h, w):
            raise _Bad("bad_payload", f"camera/{env['sensor_id']}: JPEG is {image.shape[1]}x{image.shape[0]}, "
                                      f"header says {w}x{h}")
    else:
        raise _Bad("bad_header", f"camera/{env['sensor_id']}: unknown encoding {enc[:16]!r}")
    return CameraFrame(image=image, encoding=enc, **env)


def _decode_radar(head: dict, env: dict, payload: Any, nbytes: int) -> RadarPoints | Rejection:
    n = _field(head, "num_points", int, 0, MAX_RADAR_POINTS)
    fields = _field(head, "point_fields", list)
    if tuple(fields) != RADAR_POINT_FIELDS:
        raise _Bad("bad_header", f"radar/{env['sensor_id']}: point_fields {fields!r} != {list(RADAR_POINT_FIELDS)}")
    if nbytes != n * len(RADAR_POINT_FIELDS) * 4:
        raise _Bad("payload_size", f"radar/{env['sensor_id']}: {nbytes} bytes for {n} points")
    pts = np.frombuffer(payload, dtype="<f4").reshape(n, len(RADAR_POINT_FIELDS))
    if not np.isfinite(pts).all():
        raise _Bad("non_finite", f"radar/{env['sensor_id']}: NaN or inf in points")
    return RadarPoints(points=pts, frame_number=_field(head, "frame_number", int, 0, 2**64 - 1),
                       has_side_info=_field(head, "has_side_info", bool), **env)


def _decode_audio(head: dict, env: dict, payload: Any, nbytes: int) -> AudioChunk | Rejection:
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
