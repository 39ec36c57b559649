"""Recordings of a rig in MCAP: the wire messages byte for byte, plus Foxglove views of them.

The file format is MCAP (https://mcap.dev), written and read with the ``mcap`` library: chunked,
compressed (zstd), indexed, readable from C++, Go, Rust, TypeScript and Foxglove. Every time in
a recording is in nanoseconds on the recording host's ``CLOCK_MONOTONIC`` (the clock sensors on
one host stamp with); the wall-clock time of the start is in the ``fusion.recording`` metadata.

Channels (``docs/recording.md`` describes each field):

* ``/<sensor_id>/wire``: every message the sensor published, as received: a msgpack array of
  its ZeroMQ frames ``[topic, header, payload]`` (schema ``fusion.wire.v1.Multipart``). A
  payload that travelled in shared memory is stored in frame 2 with ``shm`` removed from the
  header (the message as it crosses a ``tcp://`` link). Log time: arrival at the recorder;
  publish time: the header's ``t_publish_ns``. Replay reads these.
* Foxglove well-known schemas (JSON encoding), one per valid message, for viewers:
  ``/<camera>/image`` (``foxglove.CompressedImage``; with ``raw_images``, ``foxglove.RawImage``
  for raw bgr8 frames),
  ``/<radar>/points`` (``foxglove.PointCloud`` in the radar frame, fields x, y, z, doppler_mps,
  snr_db, noise_db as float32), ``/<microphone>/audio`` (``foxglove.RawAudio``, pcm-s16);
  ``/tf`` (``foxglove.FrameTransform``, each sensor's pose in the rig frame) and
  ``/<camera>/calibration`` (``foxglove.CameraCalibration``) when the rig has a calibration file.
* The node's topics, when a node runs: ``/fused``, ``/stats`` and any other, as JSON.
* Metadata: ``fusion.recording`` (clock, start, command), ``fusion.rig_config`` (each rig's
  config, YAML) and ``fusion.calibration`` (each rig's calibration file, YAML).

Memory stays bounded: messages go into one chunk (``chunk_size``) at a time, which is
compressed and written out when full.
"""

from __future__ import annotations

import base64
import datetime as _dt
import heapq
import json
import socket
import struct
import time
from dataclasses import dataclass
from importlib import metadata as _metadata
from pathlib import Path
from typing import Any, Iterator, Sequence

import cv2
import msgpack
import numpy as np
import yaml
import zstandard
from mcap.exceptions import McapError
from mcap.reader import NonSeekingReader, make_reader
from mcap.records import Channel, Message, Metadata, Schema
from mcap.stream_reader import StreamReader
from mcap.writer import LIBRARY_IDENTIFIER, CompressionType, Writer

from .config import RigConfig, config_from_dict
from .errors import FusionError
from .rig import Rig, rig_from_dict
from .vocabulary import RADAR_POINT_FIELDS
from .wire import AudioChunk, CameraFrame, RadarPoints, Rejection, SensorMessage, StreamEnd, decode

__all__ = ["RecordingError", "RecordingWriter", "Recording", "WireMessage", "SensorChannel", "SCHEMAS",
           "WIRE_SCHEMA", "wire_topic", "rotation_quaternion"]

WIRE_SCHEMA = "fusion.wire.v1.Multipart"
NODE_TOPICS = {"fused": "fusion.FusedEvent", "stats": "fusion.NodeStats"}
RECORDING_FORMAT = "1"
VIEW_JPEG_QUALITY = 90
# How far apart arrival and sending may be for messages to be put back in sending order.
REORDER_WINDOW_NS = 1_000_000_000
# What reading the unfinished tail of a file (a recorder that was killed) can raise: a record
# cut short, a chunk whose compressed data ends early.
_TRUNCATED = (McapError, ValueError, EOFError, struct.error, zstandard.ZstdError, RuntimeError)


class RecordingError(FusionError):
    """A recording that cannot be written or read."""


def _package_version() -> str:
    try:
        return _metadata.version("fusion-node")
    except _metadata.PackageNotFoundError:
        return "unknown"


# -- schemas ------------------------------------------------------------------------------------

def _obj(properties: dict[str, Any], description: str) -> dict[str, Any]:
    return {"type": "object", "description": description, "properties": properties, "required": list(properties)}


def _num(description: str = "") -> dict[str, Any]:
    return {"type": "number", "description": description}


def _int(description: str = "") -> dict[str, Any]:
    return {"type": "integer", "minimum": 0, "description": description}


def _str(description: str = "") -> dict[str, Any]:
    return {"type": "string", "description": description}


def _b64(description: str) -> dict[str, Any]:
    return {"type": "string", "contentEncoding": "base64", "description": description}


def _numbers(n: int | None, description: str) -> dict[str, Any]:
    out: dict[str, Any] = {"type": "array", "items": {"type": "number"}, "description": description}
    if n is not None:
        out.update(minItems=n, maxItems=n)
    return out


_TIME = _obj({"sec": _int("seconds"), "nsec": {"type": "integer", "minimum": 0, "maximum": 999_999_999}},
             "capture time on the recording host's CLOCK_MONOTONIC")
_VEC3 = _obj({"x": _num(), "y": _num(), "z": _num()}, "vector, metres")
_QUAT = _obj({"x": _num(), "y": _num(), "z": _num(), "w": _num()}, "rotation quaternion")

SCHEMAS: dict[str, dict[str, Any]] = {
    WIRE_SCHEMA: {
        "type": "array", "minItems": 1, "maxItems": 3,
        "description": "the ZeroMQ frames of one wire message as received (docs/wire.md), msgpack array of "
                       "bin: frame 0 the topic (ASCII), frame 1 the msgpack header, frame 2 the payload "
                       "(stored inline when it travelled in shared memory, the header then without 'shm')",
    },
    "foxglove.CompressedImage": _obj({
        "timestamp": _TIME, "frame_id": _str("sensor id of the camera"),
        "data": _b64("the compressed image"), "format": _str("image format: jpeg"),
    }, "a compressed camera frame"),
    "foxglove.RawImage": _obj({
        "timestamp": _TIME, "frame_id": _str("sensor id of the camera"), "width": _int("pixels"),
        "height": _int("pixels"), "encoding": _str("pixel layout: bgr8"), "step": _int("bytes per row"),
        "data": _b64("pixels, rows top to bottom"),
    }, "an uncompressed camera frame"),
    "foxglove.PointCloud": _obj({
        "timestamp": _TIME, "frame_id": _str("sensor id of the radar (TI frame: x right, y forward, z up)"),
        "pose": _obj({"position": _VEC3, "orientation": _QUAT}, "origin of the points in frame_id"),
        "point_stride": _int("bytes per point"),
        "fields": {"type": "array", "description": "point fields", "items": _obj(
            {"name": _str(), "offset": _int("byte offset in a point"), "type": _int("7 = float32")}, "a field")},
        "data": _b64("points, little-endian"),
    }, "radar detections in the radar frame"),
    "foxglove.RawAudio": _obj({
        "timestamp": _TIME, "data": _b64("samples, interleaved, little-endian"),
        "format": _str("pcm-s16"), "sample_rate": _int("Hz"), "number_of_channels": _int(),
    }, "a chunk of microphone samples (the wire carries float32; this view is 16-bit)"),
    "foxglove.FrameTransform": _obj({
        "timestamp": _TIME, "parent_frame_id": _str("the rig frame (named after the rig)"),
        "child_frame_id": _str("sensor id"), "translation": _VEC3, "rotation": _QUAT,
    }, "a sensor's pose in the rig frame (extrinsics from the rig calibration file)"),
    "foxglove.CameraCalibration": _obj({
        "timestamp": _TIME, "frame_id": _str("sensor id of the camera"), "width": _int(), "height": _int(),
        "distortion_model": _str("plumb_bob"), "D": _numbers(None, "k1, k2, p1, p2, k3"),
        "K": _numbers(9, "camera matrix, row-major"), "R": _numbers(9, "rectification: identity"),
        "P": _numbers(12, "projection matrix, row-major"),
    }, "a camera's intrinsics (rig calibration file)"),
    "fusion.FusedEvent": {"type": "object", "description": "a fused event, keys as in docs/wire.md (FusedEvent)"},
    "fusion.NodeStats": {"type": "object", "description": "node statistics, keys as in docs/wire.md (NodeStats)"},
    "fusion.NodeMessage": {"type": "object", "description": "a message the node published on another topic"},
}

# Radar points as foxglove.PointCloud fields: Foxglove places points by fields named x, y, z.
_POINT_FIELDS = [{"name": name, "offset": 4 * i, "type": 7}
                 for i, name in enumerate(("x", "y", "z", *RADAR_POINT_FIELDS[3:]))]


def wire_topic(sensor_id: str) -> str:
    """The channel topic of a sensor's wire messages."""
    return f"/{sensor_id}/wire"


def _stamp(t_ns: int) -> dict[str, int]:
    return {"sec": int(t_ns) // 1_000_000_000, "nsec": int(t_ns) % 1_000_000_000}


def rotation_quaternion(rvec: Sequence[float]) -> dict[str, float]:
    """A rotation vector (axis times angle, radians) as a unit quaternion {x, y, z, w}."""
    r = np.asarray(rvec, dtype=np.float64)
    angle = float(np.linalg.norm(r))
    if angle < 1e-12:
        return {"x": 0.0, "y": 0.0, "z": 0.0, "w": 1.0}
    axis = r / angle * np.sin(angle / 2)
    return {"x": float(axis[0]), "y": float(axis[1]), "z": float(axis[2]), "w": float(np.cos(angle / 2))}


# -- writing ------------------------------------------------------------------------------------

class RecordingWriter:
    """Writes one recording: wire messages of a rig's sensors, node topics, calibration.

    Every configured sensor gets its wire channel at once, so a sensor that never published
    still shows in the recording (with 0 messages). ``derived=False`` leaves out the Foxglove
    views (replay needs only the wire channels). Raw camera frames are viewed as JPEG
    (``foxglove.CompressedImage``) unless ``raw_images``: the exact pixels are in the wire
    channel, and encoding a frame costs less than writing it out a second time in base64.
    """

    def __init__(self, path: str | Path, rigs: Sequence[RigConfig], calibrations: dict[str, Rig] | None = None, *,
                 derived: bool = True, raw_images: bool = False, chunk_size: int = 1 << 20,
                 compression: str = "zstd", command: str = "", t_start_ns: int | None = None):
        self.path = Path(path)
        try:
            self._fh = open(self.path, "wb")
        except OSError as exc:
            raise RecordingError(f"{self.path}: cannot write the recording ({exc.strerror})") from None
        kinds = {"zstd": CompressionType.ZSTD, "lz4": CompressionType.LZ4, "none": CompressionType.NONE}
        if compression not in kinds:
            raise RecordingError(f"compression must be one of {sorted(kinds)}, got {compression!r}")
        self._writer = Writer(self._fh, chunk_size=chunk_size, compression=kinds[compression])
        self._writer.start(profile="", library=f"fusion-node {_package_version()}; {LIBRARY_IDENTIFIER}")
        self.derived = derived
        self.raw_images = raw_images
        self._schemas: dict[str, int] = {}
        self._channels: dict[tuple[str, str], int] = {}
        self.counts: dict[str, int] = {}  # channel topic -> messages written
        self.bytes_in = 0
        self.closed = False
        t0 = time.monotonic_ns() if t_start_ns is None else t_start_ns
        self._writer.add_metadata("fusion.recording", {
            "format": RECORDING_FORMAT, "clock": "CLOCK_MONOTONIC of the recording host, nanoseconds",
            "start_monotonic_ns": str(t0), "start_wall_ns": str(time.time_ns()),
            "start_wall_utc": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="milliseconds"),
            "host": socket.gethostname(), "command": command, "fusion_node": _package_version()})
        self._writer.add_metadata("fusion.rig_config", {
            cfg.rig: yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False) for cfg in rigs})
        self.sensors: dict[str, SensorChannel] = {}
        for cfg in rigs:
            for s in cfg.sensors:
                self.sensors[s.id] = SensorChannel(s.id, s.kind, s.endpoint, cfg.rig)
                self._channel(wire_topic(s.id), WIRE_SCHEMA, "msgpack",
                              {"sensor_id": s.id, "kind": s.kind, "endpoint": s.endpoint, "rig": cfg.rig})
        calibrations = calibrations or {}
        if calibrations:
            self._writer.add_metadata("fusion.calibration", {
                name: yaml.safe_dump(rig.model_dump(mode="json", exclude_none=True), sort_keys=False)
                for name, rig in calibrations.items()})
            for name, rig in calibrations.items():
                self._write_calibration(name, rig, t0)

    def _channel(self, topic: str, schema: str, encoding: str = "json", meta: dict[str, str] | None = None) -> int:
        key = (topic, schema)
        cid = self._channels.get(key)
        if cid is None:
            sid = self._schemas.get(schema)
            if sid is None:
                sid = self._writer.register_schema(schema, "jsonschema",
                                                   json.dumps({"title": schema, **SCHEMAS[schema]}).encode())
                self._schemas[schema] = sid
            cid = self._writer.register_channel(topic, encoding, sid, meta or {})
            self._channels[key] = cid
            self.counts.setdefault(topic, 0)
        return cid

    def _add(self, topic: str, schema: str, data: bytes, log_time_ns: int, publish_time_ns: int,
             sequence: int = 0, encoding: str = "json") -> None:
        cid = self._channel(topic, schema, encoding)
        self._writer.add_message(cid, log_time=int(log_time_ns), data=data, publish_time=int(publish_time_ns),
                                 sequence=int(sequence) & 0xFFFFFFFF)
        self.counts[topic] += 1
        self.bytes_in += len(data)

    def _json(self, topic: str, schema: str, body: dict, log_time_ns: int, publish_time_ns: int) -> None:
        self._add(topic, schema, json.dumps(body, separators=(",", ":")).encode(), log_time_ns, publish_time_ns)

    def _write_calibration(self, rig_name: str, rig: Rig, t_ns: int) -> None:
        for s in rig.sensors:
            if s.extrinsics is not None:
                t = s.extrinsics.translation_m
                self._json("/tf", "foxglove.FrameTransform", {
                    "timestamp": _stamp(t_ns), "parent_frame_id": rig_name, "child_frame_id": s.id,
                    "translation": {"x": t[0], "y": t[1], "z": t[2]},
                    "rotation": rotation_quaternion(s.extrinsics.rotation_rvec_rad)}, t_ns, t_ns)
            if s.intrinsics is not None:
                k = s.intrinsics.camera_matrix
                p = np.hstack([k, np.zeros((3, 1))])
                self._json(f"/{s.id}/calibration", "foxglove.CameraCalibration", {
                    "timestamp": _stamp(t_ns), "frame_id": s.id, "width": s.intrinsics.width_px,
                    "height": s.intrinsics.height_px, "distortion_model": "plumb_bob",
                    "D": s.intrinsics.dist_coeffs.tolist(), "K": k.reshape(-1).tolist(),
                    "R": np.eye(3).reshape(-1).tolist(), "P": p.reshape(-1).tolist()}, t_ns, t_ns)

    def add_sensor_message(self, sensor_id: str, frames: Sequence[bytes],
                           log_time_ns: int) -> SensorMessage | StreamEnd | Rejection:
        """Record one message received from a sensor's endpoint; returns it decoded, or why it is invalid.

        Invalid messages are kept on the wire channel too (a replay then reproduces them), but
        get no Foxglove view; so is a stream end (a replay then ends the sensor where it ended).
        """
        frames = [bytes(f) for f in frames]
        msg = decode(frames, shm=False)
        valid = isinstance(msg, (CameraFrame, RadarPoints, AudioChunk))
        stamped = valid or isinstance(msg, StreamEnd)
        publish = msg.t_publish_ns if stamped else log_time_ns
        self._add(wire_topic(sensor_id), WIRE_SCHEMA, msgpack.packb(frames, use_bin_type=True), log_time_ns,
                  publish, msg.seq if stamped else 0, encoding="msgpack")
        if valid and self.derived:
            self._derived(sensor_id, msg, frames[2], log_time_ns)
        return msg

    def _derived(self, sensor_id: str, msg: Any, payload: bytes, log_time_ns: int) -> None:
        stamp = _stamp(msg.t_capture_ns)
        if isinstance(msg, CameraFrame):
            if msg.encoding == "jpeg" or not self.raw_images:
                if msg.encoding != "jpeg":  # a raw frame's view: JPEG, a twentieth of the bytes
                    quality = [cv2.IMWRITE_JPEG_QUALITY, VIEW_JPEG_QUALITY]
                    payload = cv2.imencode(".jpg", msg.image, quality)[1].tobytes()
                body = {"timestamp": stamp, "frame_id": sensor_id, "format": "jpeg",
                        "data": base64.b64encode(payload).decode("ascii")}
                schema = "foxglove.CompressedImage"
            else:
                h, w = msg.image.shape[:2]
                body = {"timestamp": stamp, "frame_id": sensor_id, "width": w, "height": h, "encoding": "bgr8",
                        "step": 3 * w, "data": base64.b64encode(payload).decode("ascii")}
                schema = "foxglove.RawImage"
            self._json(f"/{sensor_id}/image", schema, body, log_time_ns, msg.t_publish_ns)
        elif isinstance(msg, RadarPoints):
            self._json(f"/{sensor_id}/points", "foxglove.PointCloud", {
                "timestamp": stamp, "frame_id": sensor_id,
                "pose": {"position": {"x": 0.0, "y": 0.0, "z": 0.0},
                         "orientation": {"x": 0.0, "y": 0.0, "z": 0.0, "w": 1.0}},
                "point_stride": 4 * len(RADAR_POINT_FIELDS), "fields": _POINT_FIELDS,
                "data": base64.b64encode(payload).decode("ascii")}, log_time_ns, msg.t_publish_ns)
        else:
            pcm = np.round(np.clip(msg.samples, -1.0, 1.0) * 32767.0).astype("<i2")
            self._json(f"/{sensor_id}/audio", "foxglove.RawAudio", {
                "timestamp": stamp, "data": base64.b64encode(pcm.tobytes()).decode("ascii"), "format": "pcm-s16",
                "sample_rate": int(msg.sample_rate_hz), "number_of_channels": 1}, log_time_ns, msg.t_publish_ns)

    def add_node_message(self, frames: Sequence[bytes], log_time_ns: int) -> bool:
        """Record one message the node published (``[topic, msgpack map]``); False if malformed."""
        if len(frames) != 2:
            return False
        topic = bytes(frames[0]).decode("ascii", "replace")
        try:
            body = msgpack.unpackb(bytes(frames[1]), raw=False, strict_map_key=False)
        except Exception:  # msgpack raises several unrelated types on garbage
            return False
        if not isinstance(body, dict):
            return False
        publish = body.get("t_publish_ns", body.get("t_ns", log_time_ns))
        publish = publish if isinstance(publish, int) and publish >= 0 else log_time_ns
        self._json(f"/{topic}", NODE_TOPICS.get(topic, "fusion.NodeMessage"),
                   json.loads(json.dumps(body, default=_jsonable)), log_time_ns, publish)
        return True

    def close(self) -> None:
        """Write the summary and indexes: the file is complete and seekable after this."""
        if self.closed:
            return
        self.closed = True
        try:
            self._writer.finish()
        finally:
            self._fh.close()

    def __enter__(self) -> "RecordingWriter":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def _jsonable(value: Any) -> Any:
    if isinstance(value, (bytes, bytearray, memoryview)):
        return base64.b64encode(bytes(value)).decode("ascii")
    raise TypeError(f"cannot record a {type(value).__name__} as JSON")


# -- reading ------------------------------------------------------------------------------------

@dataclass(frozen=True)
class SensorChannel:
    """A sensor as the recording knows it: id, modality, the endpoint it published on, its rig."""

    sensor_id: str
    kind: str
    endpoint: str
    rig: str


@dataclass
class WireMessage:
    """One recorded sensor message: its frames as received and when."""

    sensor_id: str
    kind: str
    frames: list[bytes]
    log_time_ns: int
    publish_time_ns: int


class Recording:
    """A recording opened for reading. Works on unfinalised files too (recorder killed): then
    it reads through the file from the start, up to the last complete chunk."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        try:
            self._fh = open(self.path, "rb")
        except OSError as exc:
            raise RecordingError(f"{self.path}: cannot open the recording ({exc.strerror})") from None
        try:
            self._reader = make_reader(self._fh)
            self.header = self._reader.get_header()
        except _TRUNCATED as exc:
            self._fh.close()
            raise RecordingError(f"{self.path}: not an MCAP recording ({exc})") from None
        try:
            self.summary = self._reader.get_summary()
        except _TRUNCATED:
            self.summary = None  # no footer: the writer never finished
        self.finalised = self.summary is not None
        self._scan_cache: tuple[dict, dict, dict, list] | None = None
        self.metadata = {m.name: dict(m.metadata) for m in self._metadata_records()}

    # The mcap reader needs the summary to seek; without it everything comes from one pass.
    def _metadata_records(self) -> list:
        if self.finalised:
            return list(self._reader.iter_metadata())
        return self._scan()[3]

    def _scan(self) -> tuple[dict, dict, dict, list]:
        """Channels, schemas, per-channel counts and metadata of an unfinalised file, in one pass."""
        if self._scan_cache is None:
            channels: dict = {}
            schemas: dict = {}
            counts: dict = {}
            metas: list = []
            self._fh.seek(0)
            try:
                for record in StreamReader(self._fh).records:  # chunks come broken up into their records
                    if isinstance(record, Schema):
                        schemas[record.id] = record
                    elif isinstance(record, Channel):
                        channels[record.id] = record
                    elif isinstance(record, Message):
                        counts[record.channel_id] = counts.get(record.channel_id, 0) + 1
                    elif isinstance(record, Metadata):
                        metas.append(record)
            except _TRUNCATED:
                pass  # the tail the writer never finished: keep what was complete
            self._scan_cache = (channels, schemas, counts, metas)
        return self._scan_cache

    def close(self) -> None:
        self._fh.close()

    def __enter__(self) -> "Recording":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    # -- what is in it --------------------------------------------------------------------------

    @property
    def channels(self) -> dict:
        return self.summary.channels if self.finalised else self._scan()[0]

    @property
    def schemas(self) -> dict:
        return self.summary.schemas if self.finalised else self._scan()[1]

    def message_counts(self) -> dict[int, int]:
        """Messages per channel id (0 for a channel without any)."""
        if self.finalised and self.summary.statistics is not None:
            counts = self.summary.statistics.channel_message_counts
        else:
            counts = self._scan()[2]
        return {cid: counts.get(cid, 0) for cid in self.channels}

    @property
    def sensors(self) -> list[SensorChannel]:
        """Every sensor recorded, in the order of the rig config."""
        out = []
        for ch in sorted(self.channels.values(), key=lambda c: c.id):
            meta = ch.metadata
            if ch.message_encoding == "msgpack" and "sensor_id" in meta:
                out.append(SensorChannel(meta["sensor_id"], meta.get("kind", ""), meta.get("endpoint", ""),
                                         meta.get("rig", "")))
        return out

    def rigs(self) -> list[RigConfig]:
        """The rig configs the recording was made with."""
        texts = self.metadata.get("fusion.rig_config", {})
        return [config_from_dict(yaml.safe_load(text), f"{self.path} (rig {name})") for name, text in texts.items()]

    def calibration(self, rig: str) -> Rig | None:
        """The rig calibration file recorded for ``rig``, if there was one."""
        text = self.metadata.get("fusion.calibration", {}).get(rig)
        return None if text is None else rig_from_dict(yaml.safe_load(text), f"{self.path} (calibration {rig})")

    @property
    def start_monotonic_ns(self) -> int | None:
        value = self.metadata.get("fusion.recording", {}).get("start_monotonic_ns")
        return int(value) if value is not None else None

    # -- messages ------------------------------------------------------------------------------

    def _iter(self, topics: list[str] | None) -> Iterator[tuple[Any, Any, Any]]:
        if self.finalised:
            yield from self._reader.iter_messages(topics=topics, log_time_order=True)
            return
        self._fh.seek(0)
        try:
            yield from NonSeekingReader(self._fh).iter_messages(topics=topics, log_time_order=False)
        except _TRUNCATED:
            return  # the tail the writer never finished

    def wire_messages(self, sensors: Sequence[str] | None = None, *, by_publish_time: bool = True,
                      window_ns: int = REORDER_WINDOW_NS) -> Iterator[WireMessage]:
        """Recorded sensor messages (optionally only some sensors), in the order they were sent.

        The recorder stamps arrival when it gets round to a message, which on a busy machine
        can be long after the sensor sent it; the publish time is when the sensor did. Messages
        are re-ordered by publish time within ``window_ns`` of arrival (bounded memory); with
        ``by_publish_time=False`` they come in arrival order.
        """
        wanted = [s for s in self.sensors if sensors is None or s.sensor_id in sensors]
        kinds = {s.sensor_id: s.kind for s in wanted}
        pending: list[tuple[int, int, WireMessage]] = []
        for n, (_, channel, message) in enumerate(self._iter([wire_topic(s.sensor_id) for s in wanted])):
            sid = channel.metadata["sensor_id"]
            msg = WireMessage(sid, kinds[sid], [bytes(f) for f in msgpack.unpackb(message.data, raw=False)],
                              message.log_time, message.publish_time)
            if not by_publish_time:
                yield msg
                continue
            heapq.heappush(pending, (msg.publish_time_ns, n, msg))
            while pending and pending[0][0] < message.log_time - window_ns:
                yield heapq.heappop(pending)[2]
        while pending:
            yield heapq.heappop(pending)[2]

    def node_messages(self, topic: str) -> Iterator[tuple[int, dict]]:
        """``(log_time_ns, body)`` of a node topic (``fused``, ``stats``, ...), in arrival order."""
        for _, _, message in self._iter([f"/{topic}"]):
            yield message.log_time, json.loads(message.data)

    # -- the mcap CLI's info --------------------------------------------------------------------

    def info(self) -> str:
        """A summary in the layout of ``mcap info``: library, counts, duration, chunks, channels."""
        counts = self.message_counts()
        lines = [f"library:     {self.header.library}", f"profile:     {self.header.profile}"]
        total = sum(counts.values())
        lines.append(f"messages:    {total}")
        stats = self.summary.statistics if self.finalised else None
        start = stats.message_start_time if stats else None
        end = stats.message_end_time if stats else None
        rec = self.metadata.get("fusion.recording", {})
        if start is not None and end is not None and total:
            duration_s = (end - start) / 1e9
            lines.append(f"duration:    {duration_s:.9f}s")
            lines.append(f"start:       {self._wall(start, rec)} ({start / 1e9:.9f} monotonic)")
            lines.append(f"end:         {self._wall(end, rec)} ({end / 1e9:.9f} monotonic)")
        else:
            duration_s = 0.0
        if self.finalised:
            by_kind: dict[str, list[int]] = {}
            for ci in self.summary.chunk_indexes:
                entry = by_kind.setdefault(ci.compression or "none", [0, 0, 0])
                entry[0] += 1
                entry[1] += ci.uncompressed_size
                entry[2] += ci.compressed_size
            n_chunks = len(self.summary.chunk_indexes)
            lines.append("compression:")
            for kind, (n, raw, packed) in sorted(by_kind.items()):
                saved = 100.0 * (1 - packed / raw) if raw else 0.0
                rate = f" [{_size(packed / duration_s)}/sec]" if duration_s > 0 else ""
                lines.append(f"\t{kind}: [{n}/{n_chunks} chunks] [{_size(raw)}/{_size(packed)} ({saved:.2f}%)]{rate}")
        else:
            lines.append("compression: (not finalised: the recorder did not finish the file; counts from a scan)")
        lines.append("channels:")
        width = max((len(c.topic) for c in self.channels.values()), default=0)
        for ch in sorted(self.channels.values(), key=lambda c: c.id):
            n = counts.get(ch.id, 0)
            rate = f" ({n / duration_s:.2f} Hz)" if duration_s > 0 else ""
            schema = self.schemas.get(ch.schema_id)
            kind = f"{schema.name} [{schema.encoding}]" if schema else f"(no schema) [{ch.message_encoding}]"
            lines.append(f"\t({ch.id}) {ch.topic:<{width}}  {n:6d} msgs{rate:<12} : {kind}")
        n_attach = stats.attachment_count if stats else 0
        lines.append(f"attachments: {n_attach}")
        lines.append(f"metadata:    {len(self.metadata)}")
        return "\n".join(lines)

    @staticmethod
    def _wall(t_mono_ns: int, rec: dict) -> str:
        try:
            wall = int(rec["start_wall_ns"]) + t_mono_ns - int(rec["start_monotonic_ns"])
        except (KeyError, ValueError):
            return "?"
        return _dt.datetime.fromtimestamp(wall / 1e9, _dt.timezone.utc).isoformat(timespec="microseconds")


def _size(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.2f} {unit}"
        n /= 1024
    return f"{n:.2f} GiB"
