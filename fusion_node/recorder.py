"""``fusion record``: a rig's sensor topics (and its node's topics) into an MCAP recording.

The recorder is a passive listener (:mod:`fusion_node.tap`): it subscribes to every sensor
endpoint of the rig config and to the node's publish endpoint, and writes what arrives with
:class:`fusion_node.recording.RecordingWriter`. It prints one JSON line when it starts and one
when the file is complete, and a progress line on stderr meanwhile. SIGINT or SIGTERM (Ctrl-C,
or the end of ``--duration``) closes the file properly: summary, indexes and footer written, so
it opens seekably. Messages that never reached the file show as sequence gaps, counted per
sensor (``lost``); those the recorder itself dropped are also counted by reason.

``fusion record --info run.mcap`` prints what a recording holds, in the layout of ``mcap info``.
"""

from __future__ import annotations

import argparse
import json
import queue
import sys
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Callable, Sequence

import zmq

from .config import RigConfig, load_rigs, read_yaml, rigs_from_dict
from .errors import ConfigError
from .recording import Recording, RecordingWriter
from .rig import load_rig
from .tap import Tap, TapMessage, TapSource, connectable, stop_on_signals
from .wire import Rejection

__all__ = ["Recorder", "add_parser", "run"]

PROGRESS_INTERVAL_S = 0.5
PROGRESS_LINE_INTERVAL_S = 5.0  # when stderr is not a terminal: a plain line this often


class Recorder:
    """Listens to one or more rigs (and their node) and writes everything into one recording.

    A receiving thread takes messages off the sockets as they come, copying shared-memory
    payloads out of the writers' rings at once (a ring holds only a few frames), and queues them
    for :meth:`step`, which writes them; the queue is bounded by ``max_queue_bytes`` (what does
    not fit is dropped and counted). A busy writer thus delays the file, not the listening.
    """

    def __init__(self, cfgs: Sequence[RigConfig], out: str | Path, *, node: bool = True, derived: bool = True,
                 raw_images: bool = False, chunk_size: int = 1 << 20, compression: str = "zstd",
                 command: str = "", max_queue_bytes: int = 256 << 20, context: zmq.Context | None = None,
                 clock: Callable[[], int] = time.monotonic_ns, as_written: Sequence[RigConfig] | None = None):
        self.cfgs = list(cfgs)
        self.clock = clock
        calibrations = {c.rig: load_rig(c.calibration_file) for c in self.cfgs if c.calibration_file}
        sources = [TapSource(connectable(s.endpoint), s.id, s.kind, c.rig) for c in self.cfgs for s in c.sensors]
        if node:
            sources.append(TapSource(connectable(self.cfgs[0].node.publish_endpoint)))
        # The file keeps the configs as their author wrote them (paths relative to the config file),
        # not as resolved on the recording host.
        self.writer = RecordingWriter(out, list(as_written or self.cfgs), calibrations, derived=derived, raw_images=raw_images,
                                      chunk_size=chunk_size, compression=compression, command=command,
                                      t_start_ns=clock())
        self.tap = Tap(sources, context=context, clock=clock, shm_dir=self.cfgs[0].node.shm_dir)
        self.received: Counter = Counter()  # sensor id or node topic -> messages
        self.invalid: Counter = Counter()  # sensor id -> messages that fail the wire checks (kept raw)
        self.seq_gaps: Counter = Counter()  # sensor id -> messages that never reached the recording
        self.overflow: Counter = Counter()  # sensor id or endpoint -> dropped because the queue was full
        self._last: dict[str, tuple[int, int]] = {}  # sensor id -> (run_id, seq) of its last message
        self.t_start_ns = clock()
        self.max_queue_bytes = max_queue_bytes
        self._queue: queue.SimpleQueue[TapMessage] = queue.SimpleQueue()
        self._queued_bytes = 0
        self._lock = threading.Lock()
        self._receiving = threading.Event()
        self._receiving.set()
        self._thread = threading.Thread(target=self._receive, name="recorder-receive", daemon=True)
        self._thread.start()

    def _receive(self) -> None:
        while self._receiving.is_set():
            for m in self.tap.poll(50):
                size = sum(len(f) for f in m.frames)
                with self._lock:
                    if self._queued_bytes + size > self.max_queue_bytes:
                        self.overflow[m.source.sensor_id or m.source.endpoint] += 1
                        continue
                    self._queued_bytes += size
                self._queue.put(m)

    def _write(self, m: TapMessage) -> None:
        with self._lock:
            self._queued_bytes -= sum(len(f) for f in m.frames)
        sid = m.source.sensor_id
        if sid is None:
            if self.writer.add_node_message(m.frames, m.t_recv_ns):
                self.received[m.topic] += 1
            return
        self.received[sid] += 1
        msg = self.writer.add_sensor_message(sid, m.frames, m.t_recv_ns)
        if isinstance(msg, Rejection):
            self.invalid[sid] += 1
            return
        last = self._last.get(sid)
        if last is not None and last[0] == msg.run_id and msg.seq > last[1] + 1:
            self.seq_gaps[sid] += msg.seq - last[1] - 1
        self._last[sid] = (msg.run_id, msg.seq)

    def step(self, timeout_ms: int) -> int:
        """Write what has been received, waiting up to ``timeout_ms`` for something; returns how many."""
        n = 0
        try:
            self._write(self._queue.get(timeout=timeout_ms / 1e3))
            n += 1
            while True:
                self._write(self._queue.get_nowait())
                n += 1
        except queue.Empty:
            return n

    def lost(self) -> dict[str, int]:
        """Messages per sensor that never reached the recording (sequence gaps)."""
        return {k: v for k, v in self.seq_gaps.items() if v}

    def dropped_here(self) -> dict[str, int]:
        """Of those, the ones the recorder itself dropped, by sensor and reason."""
        out = {f"{sid}:{reason}": n for (sid, reason), n in self.tap.dropped.items()}
        out.update({f"{sid}:queue_full": n for sid, n in self.overflow.items()})
        return out

    def progress(self) -> str:
        elapsed = (self.clock() - self.t_start_ns) / 1e9
        size = self.writer.path.stat().st_size if self.writer.path.exists() else 0
        parts = [f"{k} {v}" for k, v in self.received.items()]
        lost = self.lost()
        tail = f"  lost {lost}" if lost else ""
        return (f"recording {self.writer.path.name}: {elapsed:6.1f} s  {size / 2**20:7.2f} MiB  "
                f"{'  '.join(parts) or 'waiting for messages'}{tail}")

    def close(self) -> dict:
        """Stop listening, write what is queued, finish the file; returns what was recorded."""
        self._receiving.clear()
        self._thread.join()
        while self.step(0):
            pass
        self.tap.close()
        self.writer.close()
        return {"out": str(self.writer.path), "seconds": round((self.clock() - self.t_start_ns) / 1e9, 3),
                "bytes": self.writer.path.stat().st_size, "received": dict(self.received),
                "invalid": dict(self.invalid), "lost": self.lost(), "dropped_by_recorder": self.dropped_here(),
                "channels": dict(self.writer.counts)}


def add_parser(sub: argparse._SubParsersAction) -> None:
    """The ``record`` subcommand."""
    r = sub.add_parser("record", help="record a rig's sensor topics and the node's topics into MCAP",
                       description="Subscribe to every sensor of the rig config (and the node's publish endpoint) "
                                   "and write what arrives into an MCAP file: the wire messages byte for byte, "
                                   "Foxglove views of them, the rig config and calibration. Ctrl-C finishes the "
                                   "file. See docs/recording.md.")
    r.add_argument("--config", help="rig config YAML (either form) naming the endpoints to record")
    r.add_argument("--out", metavar="FILE.mcap", help="the recording to write")
    r.add_argument("--duration", type=float, default=None, metavar="S", help="stop after S seconds")
    r.add_argument("--no-node", action="store_true", help="do not subscribe to the node's publish endpoint")
    r.add_argument("--wire-only", action="store_true",
                   help="leave out the Foxglove views (images, point clouds, audio): a smaller file, which replay "
                        "reads just the same")
    r.add_argument("--raw-images", action="store_true",
                   help="view raw camera frames as foxglove.RawImage (exact, large) instead of JPEG "
                        "foxglove.CompressedImage; the wire channel is exact either way")
    r.add_argument("--compression", default="zstd", choices=["zstd", "lz4", "none"], help="chunk compression")
    r.add_argument("--chunk-mib", type=float, default=1.0, help="chunk size in MiB (default 1)")
    r.add_argument("--quiet", action="store_true", help="no progress line")
    r.add_argument("--info", metavar="FILE.mcap", help="print what a recording holds (like `mcap info`) and exit")
    r.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """``fusion record``."""
    if args.info:
        with Recording(args.info) as rec:
            print(rec.info())
        return 0
    if not args.config or not args.out:
        raise ConfigError("fusion record: --config RIG.yaml and --out FILE.mcap are required (or --info FILE.mcap)")
    if args.chunk_mib <= 0:
        raise ConfigError("fusion record: --chunk-mib must be positive")
    cfgs = load_rigs(args.config)
    as_written = rigs_from_dict(read_yaml(args.config), str(args.config))
    stop = stop_on_signals()
    rec = Recorder(cfgs, args.out, node=not args.no_node, derived=not args.wire_only, raw_images=args.raw_images,
                   chunk_size=int(args.chunk_mib * 2**20), compression=args.compression,
                   command=" ".join(["fusion", *sys.argv[1:]]), as_written=as_written)
    print(json.dumps({"event": "recording", "out": str(rec.writer.path),
                      "sensors": [s.sensor_id for s in rec.writer.sensors.values()],
                      "node": None if args.no_node else connectable(cfgs[0].node.publish_endpoint)}), flush=True)
    tty = sys.stderr.isatty()
    t_end = None if args.duration is None else time.monotonic() + args.duration
    next_progress = time.monotonic() + (PROGRESS_INTERVAL_S if tty else PROGRESS_LINE_INTERVAL_S)
    try:
        while not stop() and (t_end is None or time.monotonic() < t_end):
            rec.step(100)
            if not args.quiet and time.monotonic() >= next_progress:
                print(("\r" if tty else "") + rec.progress(), end="" if tty else "\n", file=sys.stderr, flush=True)
                next_progress = time.monotonic() + (PROGRESS_INTERVAL_S if tty else PROGRESS_LINE_INTERVAL_S)
    finally:
        done = rec.close()
    if not args.quiet:
        print(("\r" if tty else "") + rec.progress(), file=sys.stderr, flush=True)
    print(json.dumps({"event": "recorded", **done}), flush=True)
    return 0
