"""The fusion node process: the ZeroMQ loop around one :class:`fusion_node.core.FusionCore` per rig.

The node connects to every sensor endpoint of every rig it serves; messages are received without
copying, decoded and validated, and handed with their arrival times to the core of the rig
that owns the sensor. Fused events and periodic stats (one
stats message per rig) go out on one PUB socket under the ``fused`` and ``stats`` topics. The
node prints one JSON line when ready (its endpoints, rigs, execution provider and model load
time) and one with the final stats when it stops (SIGINT or SIGTERM).

Each sensor endpoint gets its own SUB socket, subscribed to everything it publishes (nothing is
filtered unseen: each message is accepted or counted), with ``ZMQ_MAXMSGSIZE`` set to the
largest legal frame of its topic (:class:`fusion_node.wire.Topic`): a larger frame is never
buffered, ZeroMQ drops the connection instead, and the node counts the disconnect and connects
again. A message is attributed to the sensor whose endpoint sent it: one that names another
sensor is rejected (``unknown_sensor``) and counted against the endpoint's own sensor, so no
publisher can move another sensor's state.

Large payloads published on ``ipc://`` endpoints arrive as shared-memory handles
(:mod:`fusion_node.shm`), taken only from sensors whose config allows it; the reader copies
each slot out and checks it was not overwritten meanwhile.

Cross-rig batching: all rigs share one model runtime and each loop turn steps every core in
turn, so the sets released in one turn are the natural batch. The cores fuse one set at a time
today (``FusionCore.step`` runs preprocess, encoders and head inline); batching the encoders
across rigs needs the core to hand out released sets and take their embeddings back (see
``docs/bench.md``).
"""

from __future__ import annotations

import json
import logging
import os
import signal
import sys
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import zmq
from zmq.utils.monitor import recv_monitor_message

from .config import RigConfig
from .core import FusionCore
from .shm import ShmReader
from .wire import TOPICS, Rejection, decode, encode_map

__all__ = ["FusionNode", "load_runtime", "main_loop", "limit_threads"]

log = logging.getLogger("fusion.node")

# Messages taken from the sockets per loop turn before fusing: bounds the time one turn can take
# while a flood (valid or not) is arriving.
RECV_BUDGET = 4096
# Messages taken from one sensor's socket before the next gets its turn: a flood on one
# endpoint cannot starve the others.
RECV_SLICE = 64
# A sensor message has 3 frames; parts beyond this are read and dropped, never kept.
MAX_PARTS = 4


def load_runtime(cfg: RigConfig):
    """The model runtime named by the config, or None to run synchronisation only.

    With a GPU provider and ``FUSION_GPU_IOBINDING=1`` in the environment the node runs the
    IO-binding runtime (:mod:`fusion_node.gpu_runtime`: device buffers, CUDA graphs, TensorRT
    engine cache), falling back to the plain runtime when no GPU is usable.
    """
    if not cfg.node.models:
        return None
    from .inference import ModelError, ModelRuntime, load_manifest

    if cfg.node.provider in ("cuda", "tensorrt") and os.environ.get("FUSION_GPU_IOBINDING") == "1":
        from .gpu_runtime import GpuRuntime

        try:
            runtime = GpuRuntime(load_manifest(cfg.node.models), provider=cfg.node.provider,
                                 batched=os.environ.get("FUSION_GPU_BATCHED") or None)
            log.info("models %s on %s (%s)", runtime.name, runtime.provider, runtime.provider_note)
            return runtime
        except ModelError as exc:
            log.warning("GPU IO-binding runtime unavailable (%s); using the plain runtime", exc)

    runtime = ModelRuntime(load_manifest(cfg.node.models), provider=cfg.node.provider,
                           intra_op_threads=cfg.node.intra_op_threads)
    log.info("models %s on %s%s", runtime.name, runtime.provider,
             f" ({runtime.provider_note})" if runtime.provider_note else "")
    return runtime


@dataclass
class Inlet:
    """One sensor endpoint: its SUB socket, the sensors publishing there (id -> rig index), losses."""

    endpoint: str
    max_frame_bytes: int
    rcvhwm: int
    sensors: dict[str, int]
    sock: zmq.Socket | None = None
    monitor: zmq.Socket | None = None
    disconnects: int = 0


class FusionNode:
    """Owns the sockets of one node serving one or more rigs, and the loop that drives their cores."""

    def __init__(self, cfg: RigConfig | Sequence[RigConfig], runtime=None, *, context: zmq.Context | None = None,
                 clock: Callable[[], int] = time.monotonic_ns):
        self.cfgs: list[RigConfig] = [cfg] if isinstance(cfg, RigConfig) else list(cfg)
        if not self.cfgs:
            raise ValueError("a node serves at least one rig")
        self.cfg = self.cfgs[0]  # node settings are shared by every rig
        self.clock = clock
        self.cores = [FusionCore(c, runtime, timer=clock, run_id=int.from_bytes(os.urandom(4), "little"))
                      for c in self.cfgs]
        self.core = self.cores[0]
        # Messages no rig can claim (an endpoint shared by several sensors, naming none of them).
        # With one rig they are that rig's; with several they are the node's, in every rig's stats.
        self.unattributed: Counter = Counter()
        sensors = [s for c in self.cfgs for s in c.sensors]
        self.shm = ShmReader(self.cfg.node.shm_dir, sensors=[s.id for s in sensors if s.shm_enabled])
        self.ctx = context or zmq.Context.instance()
        self.poller = zmq.Poller()
        self.inlets: list[Inlet] = []
        self._by_socket: dict[zmq.Socket, Inlet] = {}
        self._by_monitor: dict[zmq.Socket, Inlet] = {}
        by_endpoint: dict[str, dict[str, int]] = {}
        for idx, c in enumerate(self.cfgs):
            for s in c.sensors:
                by_endpoint.setdefault(s.endpoint, {})[s.id] = idx
        kinds = {s.id: s.kind for s in sensors}
        for endpoint, members in by_endpoint.items():
            topics = [TOPICS[kinds[sid]] for sid in members]
            inlet = Inlet(endpoint, max(t.max_frame_bytes for t in topics),
                          sum(t.queue_bound for t in topics) * 4, members)
            self.inlets.append(inlet)
            self._connect(inlet)
        self.pub = self.ctx.socket(zmq.PUB)
        self.pub.setsockopt(zmq.SNDHWM, TOPICS["fused"].queue_bound * len(self.cfgs))
        self.pub.setsockopt(zmq.LINGER, 1000)
        self.pub.bind(self.cfg.node.publish_endpoint)
        self.publish_endpoint = self.pub.getsockopt_string(zmq.LAST_ENDPOINT)
        self.stats_interval_ns = int(self.cfg.node.stats_interval_s * 1e9)
        self.stall_ns = int(self.cfg.node.stall_ms * 1e6)
        self.turns = 0
        self.stalls = 0
        self.longest_turn_ns = 0
        self._turn_start_ns = 0

    # -- sockets ------------------------------------------------------------------------------

    def _connect(self, inlet: Inlet) -> None:
        """A fresh SUB socket for an endpoint: everything subscribed, frames bounded, disconnects watched."""
        sub = self.ctx.socket(zmq.SUB)
        sub.setsockopt(zmq.MAXMSGSIZE, inlet.max_frame_bytes)
        sub.setsockopt(zmq.RCVHWM, inlet.rcvhwm)
        sub.setsockopt(zmq.LINGER, 0)
        sub.setsockopt(zmq.SUBSCRIBE, b"")
        inlet.monitor = sub.get_monitor_socket(zmq.EVENT_DISCONNECTED)
        sub.connect(inlet.endpoint)
        inlet.sock = sub
        self._by_socket[sub] = inlet
        self._by_monitor[inlet.monitor] = inlet
        self.poller.register(sub, zmq.POLLIN)
        self.poller.register(inlet.monitor, zmq.POLLIN)

    def _close(self, inlet: Inlet) -> None:
        for sock, index in ((inlet.sock, self._by_socket), (inlet.monitor, self._by_monitor)):
            self.poller.unregister(sock)
            del index[sock]
        inlet.sock.disable_monitor()
        inlet.monitor.close(0)
        inlet.sock.close(0)

    def _on_monitor(self, inlet: Inlet, batches: list[list]) -> None:
        """Count a dropped connection, take what it delivered, and connect a new socket.

        ZeroMQ reconnects by itself after a network error, but not after a protocol error such
        as a frame over ``ZMQ_MAXMSGSIZE``: without this the sensor would be lost for good. The
        socket is replaced rather than disconnected and connected again: libzmq aborts when a
        pipe is torn down while a multipart message is being read from it.
        """
        dropped = False
        while True:
            try:
                dropped |= recv_monitor_message(inlet.monitor, zmq.NOBLOCK)["event"] == zmq.EVENT_DISCONNECTED
            except zmq.Again:
                break
        if not dropped:
            return
        inlet.disconnects += 1
        while (frames := self._recv_message(inlet.sock)) is not None:
            self._route(inlet, self.clock(), decode(frames, self.shm), batches)
        self._close(inlet)
        self._connect(inlet)

    # -- receive and route ------------------------------------------------------------------

    def _receive(self, timeout_ms: int) -> list[list]:
        """Per core, the ``(t_recv_ns, decoded)`` pairs received this turn."""
        batches: list[list] = [[] for _ in self.cores]
        ready = dict(self.poller.poll(timeout_ms))
        self._turn_start_ns = self.clock()
        for sock in ready:
            if sock in self._by_monitor:
                self._on_monitor(self._by_monitor[sock], batches)
        inlets = [self._by_socket[sock] for sock in ready if sock in self._by_socket]
        budget = RECV_BUDGET
        while inlets and budget > 0:
            for inlet in list(inlets):
                for _ in range(min(RECV_SLICE, budget)):
                    frames = self._recv_message(inlet.sock)
                    if frames is None:
                        inlets.remove(inlet)
                        break
                    budget -= 1
                    self._route(inlet, self.clock(), decode(frames, self.shm), batches)
        return batches

    @staticmethod
    def _recv_message(sock: zmq.Socket) -> list | None:
        """One multipart message without copying, its parts past ``MAX_PARTS`` read and dropped."""
        try:
            part = sock.recv(zmq.NOBLOCK, copy=False)
        except zmq.Again:
            return None
        frames = [part]
        while part.more:  # the rest of a multipart message is already here: ZeroMQ delivers it whole
            part = sock.recv(copy=False)
            if len(frames) < MAX_PARTS:
                frames.append(part)
        return frames

    def _route(self, inlet: Inlet, t_recv: int, msg, batches: list[list]) -> None:
        """Hand a decoded message to the core of the sensor whose endpoint sent it."""
        idx = inlet.sensors.get(msg.sensor_id)
        if idx is None:
            reason = msg.reason if isinstance(msg, Rejection) else "unknown_sensor"
            detail = msg.detail if isinstance(msg, Rejection) else \
                f"sensor_id {msg.sensor_id[:64]!r} arrived on the endpoint {inlet.endpoint}"
            if len(inlet.sensors) == 1:  # attributed to the one sensor that publishes there
                owner, idx = next(iter(inlet.sensors.items()))
            elif len(self.cores) == 1:
                owner, idx = "", 0
            else:
                self.unattributed[reason] += 1
                return
            msg = Rejection(reason, detail, msg.topic, owner)
        batches[idx].append((t_recv, msg))

    def _publish_events(self, core: FusionCore, events: list[dict]) -> None:
        for ev in events:
            core.finish_event(ev, self.clock())
            self.pub.send_multipart(encode_map("fused", ev))

    # -- stats --------------------------------------------------------------------------------

    def _rig_stats(self, core: FusionCore, now_ns: int, interval_s: float) -> dict:
        stats = core.stats(now_ns, interval_s)
        if self.unattributed:
            merged = Counter(stats["rejected_unattributed"])
            merged.update(self.unattributed)
            stats["rejected_unattributed"] = dict(merged)
        for inlet in self.inlets:
            for sid in inlet.sensors:
                if sid in stats["sensors"]:
                    stats["sensors"][sid]["disconnects"] = inlet.disconnects
        stats["loop"] = {"turns": self.turns, "stalls": self.stalls, "stall_ms": self.cfg.node.stall_ms,
                         "longest_turn_ms": round(self.longest_turn_ns / 1e6, 3)}
        stats["shm"] = self.shm.summary()
        return stats

    def publish_stats(self, now_ns: int, interval_s: float) -> dict:
        """Publish one stats message per rig; returns the first rig's stats, or all rigs' by name."""
        per_rig = {}
        for core in self.cores:
            stats = self._rig_stats(core, now_ns, interval_s)
            self.pub.send_multipart(encode_map("stats", stats))
            per_rig[core.cfg.rig] = stats
        if len(self.cores) == 1:
            return next(iter(per_rig.values()))
        return {"rigs": per_rig, "rejected_unattributed": dict(self.unattributed),
                "events": sum(s["events"] for s in per_rig.values())}

    # -- the loop -----------------------------------------------------------------------------

    def next_deadline_ns(self) -> int | None:
        deadlines = [d for d in (c.next_deadline_ns() for c in self.cores) if d is not None]
        return min(deadlines) if deadlines else None

    def run(self, stop: Callable[[], bool]) -> dict:
        """Serve until ``stop()`` is true; returns the final stats."""
        next_stats = self.clock() + self.stats_interval_ns
        last_stats = self.clock()
        while not stop():
            now = self.clock()
            wake = min(next_stats, now + 50_000_000)
            deadline = self.next_deadline_ns()
            if deadline is not None:
                wake = min(wake, deadline)
            batches = self._receive(max(0, (wake - now) // 1_000_000))
            now = self.clock()
            for core, batch in zip(self.cores, batches):
                self._publish_events(core, core.step(now, batch))
            self._end_turn()
            if now >= next_stats:
                self.publish_stats(now, (now - last_stats) / 1e9)
                last_stats = now
                next_stats = now + self.stats_interval_ns
        now = self.clock()
        return self.publish_stats(now, max(1e-9, (now - last_stats) / 1e9))

    def _end_turn(self) -> None:
        """Count the turn, and a stall when receiving, admitting, fusing and publishing took too long."""
        took = self.clock() - self._turn_start_ns
        self.turns += 1
        self.longest_turn_ns = max(self.longest_turn_ns, took)
        if took > self.stall_ns:
            self.stalls += 1

    def close(self) -> None:
        for inlet in self.inlets:
            self._close(inlet)
        self.pub.close()
        self.shm.close()


_BLAS_SETTERS = ("openblas_set_num_threads", "scipy_openblas_set_num_threads64_",
                 "scipy_openblas_set_num_threads", "openblas_set_num_threads64_")


def limit_threads(threads: int) -> dict:
    """Give OpenCV's and OpenBLAS's thread pools the node's thread budget; returns what was set.

    Both fan each call out over every core by default. On a streaming node that shares its
    cores with the sensor processes that only adds hand-offs and, for OpenBLAS, worker threads
    that spin between frames. Measured on the 2-core bench machine at 30 calls/s: the audio
    log-mel (a small matrix product) took 10 ms p50 and 1.2 cores with OpenBLAS's default
    threads, 1 ms and 0.03 cores with one thread; OpenCV colour conversion and resize, 10 ms vs
    6 ms p50 under load.
    """
    done: dict = {}
    try:
        import cv2

        cv2.setNumThreads(int(threads))
        done["opencv"] = int(threads)
    except ImportError:
        pass
    import ctypes

    try:
        maps = Path("/proc/self/maps").read_text().splitlines()
    except OSError:
        return done
    libs = sorted({line.split()[-1] for line in maps if "openblas" in line.lower() and line.split()[-1].startswith("/")})
    for path in libs:
        try:
            lib = ctypes.CDLL(path)
        except OSError:
            continue
        for name in _BLAS_SETTERS:
            fn = getattr(lib, name, None)
            if fn is not None:
                fn(ctypes.c_int(int(threads)))
                done[Path(path).name] = int(threads)
                break
    return done


def main_loop(cfg: RigConfig | Sequence[RigConfig], out=sys.stdout) -> int:
    """Run a node until SIGINT/SIGTERM: ready line, serve, final-stats line."""
    cfgs = [cfg] if isinstance(cfg, RigConfig) else list(cfg)
    stopped = {"flag": False}

    def on_signal(signum, frame):  # noqa: ARG001 - signal handler signature
        stopped["flag"] = True

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    limit_threads(cfgs[0].node.intra_op_threads)
    t0 = time.perf_counter()
    runtime = load_runtime(cfgs[0])
    load_ms = (time.perf_counter() - t0) * 1e3
    node = FusionNode(cfgs, runtime)
    first = cfgs[0]
    ready = {"event": "ready", "rig": first.rig, "publish_endpoint": node.publish_endpoint, "pid": os.getpid(),
             "policy": first.sync.policy, "sensors": [s.id for s in first.sensors],
             "provider": None if runtime is None else runtime.provider,
             "provider_note": None if runtime is None else runtime.provider_note,
             "models": None if runtime is None else runtime.name,
             "trained": None if runtime is None else runtime.trained,
             "rigs": [c.rig for c in cfgs], "model_load_ms": round(load_ms, 1)}
    print(json.dumps(ready), file=out, flush=True)
    try:
        final = node.run(lambda: stopped["flag"])
    finally:
        node.close()
    print(json.dumps({"event": "final_stats", **final}), file=out, flush=True)
    return 0
