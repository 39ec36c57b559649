"""The live view's server: a ZeroMQ listener, an HTTP server and Server-Sent Events between them.

A :class:`fusion_node.tap.Tap` subscribes to every sensor of the rig config and to the node's
publish endpoint, so the view follows a live rig and a ``fusion replay`` alike. The
:class:`Hub` turns each message into a small JSON update for the page:

* ``frame``: the camera picture as JPEG (passed through when the camera sends JPEG, encoded
  once otherwise), at most ``max_fps`` a second;
* ``radar``: the radar points, and when the rig calibration file gives the camera's intrinsics
  and both sensors' extrinsics, the same points projected into the camera picture;
* ``audio``: the level (RMS, dBFS) and spectrogram columns (64 log-spaced bands, 100 Hz - 8 kHz);
* ``fused``: labels, alerts, consistency, missing sensors and per-stage latency of each event;
* ``timeline``: a label or alert that starts, or ends (absent for a second), with a snapshot
  of the camera at that moment (served at ``/snapshot/<id>.jpg``), and any node topic other
  than fused/stats;
* ``stats``: per-sensor rates and drops, latency percentiles per stage.

The page (``static/``) is plain HTML, JavaScript and CSS shipped with the package: nothing is
fetched from the internet. Each browser gets its own bounded queue; a slow browser loses
updates, never slows the listener.
"""

from __future__ import annotations

import argparse
import base64
import json
import queue
import threading
import time
from collections import OrderedDict, deque
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib import resources
from typing import Any, Callable, Sequence

import cv2
import numpy as np

from ..config import RigConfig, load_rigs
from ..radar_projection import RadarProjection
from ..rig import Rig, load_rig
from ..tap import Tap, TapMessage, TapSource, connectable, stop_on_signals
from ..vocabulary import WIRE_AUDIO_RATE_HZ
from ..wire import AudioChunk, CameraFrame, RadarPoints, Rejection, decode, decode_map

__all__ = ["RadarProjector", "AudioMeter", "Hub", "make_server", "add_parser", "run"]

STATIC = ("index.html", "view.js", "view.css")
CONTENT_TYPES = {".html": "text/html; charset=utf-8", ".js": "text/javascript; charset=utf-8",
                 ".css": "text/css; charset=utf-8"}
CLIENT_QUEUE = 256  # updates waiting for one browser before the oldest are dropped
TIMELINE_KEPT = 50  # timeline items (and snapshots) a newly opened page gets
TIMELINE_HOLD_NS = 1_000_000_000  # a label or alert absent this long has ended
FRAME_MAX_WIDTH = 800  # pictures wider than this are scaled down before they go to the page
SPECTRO_BANDS = 64
SPECTRO_FFT = 1024
SPECTRO_HOP = 400  # 25 ms at 16 kHz: 40 columns a second
SPECTRO_FLOOR_DB, SPECTRO_CEIL_DB = -100.0, -20.0


class RadarProjector:
    """The view's use of :class:`fusion_node.radar_projection.RadarProjection`: the pixels of the
    radar points inside the calibrated picture, and which points they are."""

    def __init__(self, rig: Rig, camera_id: str, radar_id: str):
        projection = RadarProjection.from_rig(rig, camera_id, radar_id)
        if projection is None:
            raise ValueError(f"rig {rig.rig!r}: projecting {radar_id} into {camera_id} needs the camera's "
                             f"intrinsics and both sensors' extrinsics")
        self.projection = projection
        self.size = projection.size  # the calibrated picture's (width, height)

    def project(self, points: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Pixels (M, 2) of the points in front of the camera and inside the picture, and their indices."""
        px, inside = self.projection.project(np.asarray(points).reshape(-1, 3), self.projection.size)
        idx = np.flatnonzero(inside)
        return px[idx], idx


class AudioMeter:
    """Level of each chunk and spectrogram columns of the running signal."""

    def __init__(self, sample_rate_hz: int = WIRE_AUDIO_RATE_HZ):
        self.rate = sample_rate_hz
        self.buffer = np.zeros(0, dtype=np.float32)
        self.window = np.hanning(SPECTRO_FFT).astype(np.float32)
        freqs = np.fft.rfftfreq(SPECTRO_FFT, 1.0 / sample_rate_hz)
        edges = np.geomspace(100.0, min(8000.0, sample_rate_hz / 2), SPECTRO_BANDS + 1)
        # Each band averages the FFT bins between its edges (at least the one nearest its centre).
        self.bands = []
        for lo, hi in zip(edges[:-1], edges[1:]):
            idx = np.flatnonzero((freqs >= lo) & (freqs < hi))
            self.bands.append(idx if idx.size else np.array([int(np.argmin(np.abs(freqs - (lo + hi) / 2)))]))

    def feed(self, samples: np.ndarray) -> tuple[float, float, list[list[int]]]:
        """(level in dBFS, peak, new spectrogram columns as 0-255 values) after one chunk."""
        s = np.asarray(samples, dtype=np.float32)
        rms = float(np.sqrt(np.mean(s.astype(np.float64) ** 2))) if s.size else 0.0
        level = 20 * np.log10(max(rms, 1e-6))
        self.buffer = np.concatenate([self.buffer, s])
        columns = []
        while self.buffer.size >= SPECTRO_FFT:
            spec = np.abs(np.fft.rfft(self.buffer[:SPECTRO_FFT] * self.window)) / (SPECTRO_FFT / 4)
            db = 20 * np.log10(np.maximum([spec[idx].mean() for idx in self.bands], 1e-9))
            scaled = (db - SPECTRO_FLOOR_DB) / (SPECTRO_CEIL_DB - SPECTRO_FLOOR_DB)
            columns.append([int(v) for v in np.clip(scaled * 255, 0, 255)])
            self.buffer = self.buffer[SPECTRO_HOP:]
        return round(level, 1), round(float(np.abs(s).max()) if s.size else 0.0, 4), columns


def _jpeg(image: np.ndarray) -> bytes:
    h, w = image.shape[:2]
    if w > FRAME_MAX_WIDTH:
        image = cv2.resize(image, (FRAME_MAX_WIDTH, int(round(h * FRAME_MAX_WIDTH / w))), interpolation=cv2.INTER_AREA)
    ok, buf = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, 80])
    return buf.tobytes() if ok else b""


class Hub:
    """Turns tapped messages into page updates and hands them to every connected browser."""

    def __init__(self, cfgs: Sequence[RigConfig], calibrations: dict[str, Rig] | None = None, *,
                 max_fps: float = 10.0, clock: Callable[[], int] = time.monotonic_ns):
        self.cfgs = list(cfgs)
        self.clock = clock
        self.min_frame_gap_ns = int(1e9 / max_fps) if max_fps > 0 else 0
        self.kind = {s.id: s.kind for c in self.cfgs for s in c.sensors}
        self.projectors: dict[str, tuple[str, RadarProjector]] = {}  # radar id -> (camera id, projector)
        for cfg in self.cfgs:
            rig = (calibrations or {}).get(cfg.rig)
            cams = [s.id for s in cfg.sensors if s.kind == "camera"]
            for radar in (s.id for s in cfg.sensors if s.kind == "radar"):
                if rig is not None and cams and rig.has(cams[0]) and rig.has(radar):
                    try:
                        self.projectors[radar] = (cams[0], RadarProjector(rig, cams[0], radar))
                    except ValueError:
                        pass  # not calibrated enough: the page shows the radar from above only
        self.audio = {s.id: AudioMeter() for c in self.cfgs for s in c.sensors if s.kind == "audio"}
        self._last_frame_ns: dict[str, int] = {}
        self._last_jpeg: dict[str, bytes] = {}
        self._active: dict[str, dict[str, int]] = {}  # rig -> label or alert -> when last seen (t_ref)
        self.snapshots: OrderedDict[int, bytes] = OrderedDict()
        self.timeline: deque[dict] = deque(maxlen=TIMELINE_KEPT)
        self.counts: dict[str, int] = {}
        self._clients: list[queue.Queue] = []
        self._lock = threading.Lock()
        self._next_snapshot = 1

    # -- fan-out --------------------------------------------------------------------------------

    def hello(self) -> dict:
        """What a newly opened page gets first: the rigs, what can be drawn, the recent timeline."""
        return {"rigs": [{"rig": c.rig, "sensors": [{"id": s.id, "kind": s.kind} for s in c.sensors]}
                         for c in self.cfgs],
                "projection": {radar: cam for radar, (cam, _) in self.projectors.items()},
                "timeline": list(self.timeline)}

    def subscribe(self) -> queue.Queue:
        q: queue.Queue = queue.Queue(maxsize=CLIENT_QUEUE)
        with self._lock:
            self._clients.append(q)
        q.put(("hello", self.hello()))
        for sid, jpeg in list(self._last_jpeg.items()):  # the listener may add a camera meanwhile
            q.put(("frame", {"sensor_id": sid, "jpeg": base64.b64encode(jpeg).decode("ascii")}))
        return q

    def unsubscribe(self, q: queue.Queue) -> None:
        with self._lock:
            if q in self._clients:
                self._clients.remove(q)

    def publish(self, name: str, data: dict) -> None:
        self.counts[name] = self.counts.get(name, 0) + 1
        with self._lock:
            clients = list(self._clients)
        for q in clients:
            while True:
                try:
                    q.put_nowait((name, data))
                    break
                except queue.Full:
                    try:
                        q.get_nowait()  # this browser is behind: its oldest update goes
                    except queue.Empty:
                        pass

    # -- messages -------------------------------------------------------------------------------

    def handle(self, m: TapMessage) -> None:
        """Turn one tapped message into updates."""
        if m.source.sensor_id is None:
            self._node(m.frames)
            return
        msg = decode(m.frames, shm=False)
        if isinstance(msg, Rejection):
            return
        if isinstance(msg, CameraFrame):
            self._frame(msg, m.frames[2], m.t_recv_ns)
        elif isinstance(msg, RadarPoints):
            self._radar(msg)
        elif isinstance(msg, AudioChunk) and msg.sensor_id in self.audio:
            level, peak, columns = self.audio[msg.sensor_id].feed(msg.samples)
            self.publish("audio", {"sensor_id": msg.sensor_id, "level_db": level, "peak": peak, "columns": columns})

    def _frame(self, msg: CameraFrame, payload: bytes, t_recv_ns: int) -> None:
        last = self._last_frame_ns.get(msg.sensor_id)
        if last is not None and t_recv_ns - last < self.min_frame_gap_ns:
            return
        self._last_frame_ns[msg.sensor_id] = t_recv_ns
        h, w = msg.image.shape[:2]
        jpeg = bytes(payload) if msg.encoding == "jpeg" and w <= FRAME_MAX_WIDTH else _jpeg(msg.image)
        self._last_jpeg[msg.sensor_id] = jpeg
        self.publish("frame", {"sensor_id": msg.sensor_id, "seq": msg.seq, "t_capture_ns": msg.t_capture_ns,
                               "width": w, "height": h, "jpeg": base64.b64encode(jpeg).decode("ascii")})

    def _radar(self, msg: RadarPoints) -> None:
        pts = np.asarray(msg.points, dtype=np.float64)
        rng = np.linalg.norm(pts[:, :3], axis=1) if pts.size else np.zeros(0)
        out: dict[str, Any] = {"sensor_id": msg.sensor_id, "seq": msg.seq,
                               "points": np.round(np.column_stack([pts[:, 0], pts[:, 1], pts[:, 3]]), 3).tolist()
                               if pts.size else []}
        proj = self.projectors.get(msg.sensor_id)
        if proj is not None:
            cam, projector = proj
            px, idx = projector.project(pts[:, :3]) if pts.size else (np.zeros((0, 2)), np.zeros(0, dtype=int))
            out["projected"] = {"camera": cam, "image_size": list(projector.size),
                                "points": np.round(np.column_stack([px, rng[idx], pts[idx, 3]]), 2).tolist()
                                if idx.size else []}
        self.publish("radar", out)

    def _snapshot(self) -> int | None:
        jpeg = next(iter(self._last_jpeg.values()), None)
        if jpeg is None:
            return None
        sid = self._next_snapshot
        self._next_snapshot += 1
        self.snapshots[sid] = jpeg
        while len(self.snapshots) > TIMELINE_KEPT:
            self.snapshots.popitem(last=False)
        return sid

    def _timeline(self, item: dict) -> None:
        self.timeline.append(item)
        self.publish("timeline", item)

    def _node(self, frames: list[bytes]) -> None:
        try:
            topic, body = decode_map(frames)
        except ValueError:
            return
        if topic == "fused":
            self._fused(body)
        elif topic == "stats":
            self.publish("stats", {
                "rig": body.get("rig"),
                "sensors": {sid: {"kind": s.get("kind"), "alive": s.get("alive"), "ended": s.get("ended"),
                                  "rate_hz": s.get("rate_hz"), "dropped": s.get("dropped"),
                                  "rejected": sum((s.get("rejected") or {}).values())}
                            for sid, s in (body.get("sensors") or {}).items()},
                "latency_ms": {k: {"p50": v.get("p50"), "p99": v.get("p99")}
                               for k, v in (body.get("latency_ms") or {}).items()}})
        else:
            snapshot = None
            for key in ("snapshot", "snapshot_jpeg"):
                if isinstance(body.get(key), (bytes, bytearray)):
                    snapshot = self._next_snapshot
                    self._next_snapshot += 1
                    self.snapshots[snapshot] = bytes(body[key])
            summary = {k: v for k, v in body.items() if isinstance(v, (str, int, float, bool)) and k != "snapshot"}
            self._timeline({"t_ns": body.get("t_ref_ns", body.get("t_ns")), "rig": body.get("rig"),
                            "kind": topic, "what": json.dumps(summary)[:160], "snapshot": snapshot})

    def _fused(self, ev: dict) -> None:
        rig = ev.get("rig", "")
        t_ref = int(ev.get("t_ref_ns") or 0)
        alerts = sorted(set(ev.get("alerts") or []))
        self.publish("fused", {
            "rig": rig, "seq": ev.get("seq"), "t_ref_ns": t_ref, "labels": ev.get("labels") or [],
            "alerts": alerts, "consistency": ev.get("consistency"), "missing": ev.get("missing") or [],
            "present": {k: bool(m.get("present")) for k, m in (ev.get("modalities") or {}).items()},
            "latency_ms": ev.get("latency_ms") or {}})
        # A label or alert starts when it first shows and ends once absent for TIMELINE_HOLD_NS,
        # so one that flickers around its threshold makes one entry, not one per event.
        current = {d["label"]: d["score"] for d in ev.get("labels") or []}
        current.update({f"alert {a}": None for a in alerts})
        active = self._active.setdefault(rig, {})
        changes = [("start", name, score) for name, score in current.items() if name not in active]
        for name in list(active):
            if name not in current and t_ref - active[name] > TIMELINE_HOLD_NS:
                del active[name]
                changes.append(("end", name, None))
        active.update({name: t_ref for name in current})
        if changes:
            snapshot = self._snapshot()
            for kind, what, score in changes:
                self._timeline({"t_ns": t_ref, "rig": rig, "kind": kind, "what": what, "score": score,
                                "snapshot": snapshot})


class _Handler(BaseHTTPRequestHandler):
    """Serves the page, its assets, snapshots, the state and the event stream."""

    hub: Hub
    stopping: threading.Event

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the base class's name
        return  # the terminal is for the view's own lines

    def _send(self, code: int, body: bytes, content_type: str) -> None:
        self.send_response(code)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self) -> None:  # noqa: N802 - the base class's name
        path = self.path.split("?", 1)[0]
        name = "index.html" if path in ("/", "") else path.lstrip("/")
        if name in STATIC:
            body = resources.files("fusion_node.view").joinpath("static", name).read_bytes()
            self._send(200, body, CONTENT_TYPES["." + name.rsplit(".", 1)[1]])
        elif path == "/events":
            self._events()
        elif path.startswith("/snapshot/") and path.endswith(".jpg"):
            try:
                jpeg = self.hub.snapshots.get(int(path[len("/snapshot/"):-4]))
            except ValueError:
                jpeg = None
            if jpeg is None:
                self._send(404, b"no such snapshot\n", "text/plain")
            else:
                self._send(200, jpeg, "image/jpeg")
        elif path == "/state":
            self._send(200, json.dumps({**self.hub.hello(), "updates": self.hub.counts}).encode(),
                       "application/json")
        else:
            self._send(404, b"not found\n", "text/plain")

    def _events(self) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Cache-Control", "no-store")
        self.end_headers()
        q = self.hub.subscribe()
        try:
            while not self.stopping.is_set():
                try:
                    name, data = q.get(timeout=1.0)
                except queue.Empty:
                    self.wfile.write(b": keep-alive\n\n")  # also tells a closed connection apart
                else:
                    self.wfile.write(f"event: {name}\ndata: {json.dumps(data)}\n\n".encode())
                self.wfile.flush()
        except (BrokenPipeError, ConnectionResetError):
            pass
        finally:
            self.hub.unsubscribe(q)


def make_server(hub: Hub, host: str = "127.0.0.1", port: int = 0) -> tuple[ThreadingHTTPServer, threading.Event]:
    """An HTTP server for ``hub`` (port 0: a free one) and the event that ends its streams."""
    stopping = threading.Event()
    handler = type("ViewHandler", (_Handler,), {"hub": hub, "stopping": stopping})
    server = ThreadingHTTPServer((host, port), handler)
    server.daemon_threads = True
    return server, stopping


def add_parser(sub: argparse._SubParsersAction) -> None:
    """The ``view`` subcommand."""
    v = sub.add_parser("view", help="a live page of a rig in the browser (camera, radar, audio, events)",
                       description="Serve a local page that follows a rig (live or a fusion replay): the camera "
                                   "with the radar points projected through the calibration and the labels, the "
                                   "audio level and spectrogram, alerts, a timeline of events with snapshots, "
                                   "per-stage latency. Everything is served from the package: no internet needed.")
    v.add_argument("--config", required=True, help="rig config YAML (either form): the endpoints to follow")
    v.add_argument("--host", default="127.0.0.1", help="address to serve on (default 127.0.0.1)")
    v.add_argument("--port", type=int, default=8090, help="port (default 8090; 0 picks a free one)")
    v.add_argument("--publish", default=None, metavar="ENDPOINT", help="override the node's publish endpoint")
    v.add_argument("--max-fps", type=float, default=10.0, help="camera pictures sent to the page per second")
    v.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """``fusion view``: serve until Ctrl-C."""
    cfgs = load_rigs(args.config)
    calibrations = {c.rig: load_rig(c.calibration_file) for c in cfgs if c.calibration_file}
    hub = Hub(cfgs, calibrations, max_fps=args.max_fps)
    node = connectable(args.publish or cfgs[0].node.publish_endpoint)
    tap = Tap([*(TapSource(connectable(s.endpoint), s.id, s.kind, c.rig) for c in cfgs for s in c.sensors),
               TapSource(node)], shm_dir=cfgs[0].node.shm_dir)
    server, stopping = make_server(hub, args.host, args.port)
    threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.2}, daemon=True).start()
    stop = stop_on_signals()
    host, port = server.server_address[:2]
    print(json.dumps({"event": "view_ready", "url": f"http://{host}:{port}/", "node": node,
                      "projection": sorted(hub.projectors)}), flush=True)
    try:
        while not stop():
            for m in tap.poll(100):
                hub.handle(m)
    finally:
        stopping.set()  # ends the open event streams
        server.shutdown()
        server.server_close()
        tap.close()
    print(json.dumps({"event": "view_stopped", "updates": hub.counts}), flush=True)
    return 0
