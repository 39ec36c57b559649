"""The fusion node process: the ZeroMQ loop around one :class:`fusion_node.core.FusionCore` per rig.

One SUB socket connects to every sensor endpoint of every rig the node serves; messages are
received without copying, decoded and validated, routed to the core of the rig that owns their
``sensor_id``, and handed to it with their arrival times. Fused events and periodic stats (one
stats message per rig) go out on one PUB socket under the ``fused`` and ``stats`` topics. The
node prints one JSON line when ready (its endpoints, rigs, execution provider and model load
time) and one with the final stats when it stops (SIGINT or SIGTERM).

Large payloads published on ``ipc://`` endpoints arrive as shared-memory handles
(:mod:`fusion_node.shm`): the decoder maps them without copying, and after a set is fused the
node checks that no slot it used was overwritten meanwhile; an event computed from an
overwritten slot is not published and counts as ``shm_overwritten`` for that sensor.

Cross-rig batching: all rigs share one model runtime and each loop turn steps every core in
turn, so the sets released in one turn are the natural batch. The cores fuse one set at a time
today (``FusionCore.step`` runs preprocess, encoders and head inline); batching the encoders
across rigs needs the core to hand out released sets and take their embeddings back (see
``docs/bench.md``).
"""

from __future__ import annotations

import ctypes
import json
import logging
import os
import signal
import sys
import time
from collections import Counter, OrderedDict
from pathlib import Path
from typing import Callable, Sequence

import cv2
import zmq

from .config import RigConfig
from .core import FusionCore
from .gpu_runtime import GpuRuntime
from .inference import ModelError, ModelRuntime, load_manifest
from .rig import load_rig
from .security import NodeSecurity
from .shm import ShmReader
from .wire import TOPICS, Rejection, decode, encode_map

__all__ = ["FusionNode", "RigRouter", "load_runtime", "main_loop", "limit_threads"]

log = logging.getLogger("fusion.node")

# Messages taken from the socket per loop turn before fusing: bounds the time one turn can take
# while a flood (valid or not) is arriving.
RECV_BUDGET = 4096
# Shared-memory leases kept for the after-use check (far more than any ring holds slots).
MAX_LEASES = 4096


def load_runtime(cfg: RigConfig):
    """The model runtime named by the config, or None to run synchronisation only.

    With a GPU provider and ``node.io_binding`` the node runs the IO-binding runtime
    (:mod:`fusion_node.gpu_runtime`: device buffers, CUDA graphs, TensorRT engine cache), falling
    back to the plain runtime when no GPU is usable.
    """
    if not cfg.node.models:
        return None
    if cfg.node.provider in ("cuda", "tensorrt") and cfg.node.io_binding:
        try:
            runtime = GpuRuntime(load_manifest(cfg.node.models), provider=cfg.node.provider,
                                 batched=cfg.node.batched_models)
            log.info("models %s on %s (%s)", runtime.name, runtime.provider, runtime.provider_note)
            return runtime
        except ModelError as exc:
            log.warning("GPU IO-binding runtime unavailable (%s); using the plain runtime", exc)

    runtime = ModelRuntime(load_manifest(cfg.node.models), provider=cfg.node.provider,
                           intra_op_threads=cfg.node.intra_op_threads)
    log.info("models %s on %s%s", runtime.name, runtime.provider,
             f" ({runtime.provider_note})" if runtime.provider_note else "")
    return runtime


class RigRouter:
    """sensor_id -> index of the rig that owns it (sensor ids are unique across a node's rigs)."""

    def __init__(self, cfgs: Sequence[RigConfig]):
        self.index = {s.id: i for i, cfg in enumerate(cfgs) for s in cfg.sensors}

    def __call__(self, sensor_id: str) -> int | None:
        return self.index.get(sensor_id)


class FusionNode:
    """Owns the sockets of one node serving one or more rigs, and the loop that drives their cores."""

    def __init__(self, cfg: RigConfig | Sequence[RigConfig], runtime=None, *, context: zmq.Context | None = None,
                 clock: Callable[[], int] = time.monotonic_ns):
        self.cfgs: list[RigConfig] = [cfg] if isinstance(cfg, RigConfig) else list(cfg)
        if not self.cfgs:
            raise ValueError("a node serves at least one rig")
        self.cfg = self.cfgs[0]  # node settings are shared by every rig
        self.clock = clock
        self.cores = [FusionCore(c, runtime, timer=clock, run_id=int.from_bytes(os.urandom(4), "little"),
                                 calibration=load_rig(c.calibration_file) if c.calibration_file else None)
                      for c in self.cfgs]
        self.core = self.cores[0]
        self.route = RigRouter(self.cfgs)
        # Messages no rig can claim. With one rig they are that rig's (as a single-rig node
        # always counted them); with several they are the node's, reported in every rig's stats.
        self.unattributed: Counter = Counter()
        self.shm = ShmReader()
        self._leases: OrderedDict[tuple[str, int], object] = OrderedDict()
        self.shm_overwritten = 0
        sensors = [s for c in self.cfgs for s in c.sensors]
        # Keys, allow-lists and the plain-endpoint rule, checked before any socket exists.
        self.security = NodeSecurity(self.cfg.node, sensors)
        self.ctx = context or zmq.Context.instance()
        self.sub = self.ctx.socket(zmq.SUB)
        self.sub.setsockopt(zmq.RCVHWM, sum(TOPICS[s.kind].queue_bound for s in sensors) * 4)
        self.sub.setsockopt(zmq.LINGER, 0)
        for kind in sorted({s.kind for s in sensors}):
            self.sub.setsockopt(zmq.SUBSCRIBE, kind.encode("ascii"))
        self.security.connect(self.sub, sensors)
        self.pub = self.ctx.socket(zmq.PUB)
        self.pub.setsockopt(zmq.SNDHWM, TOPICS["fused"].queue_bound * len(self.cfgs))
        self.pub.setsockopt(zmq.LINGER, 1000)
        self.security.serve(self.pub)
        self.pub.bind(self.cfg.node.publish_endpoint)
        self.publish_endpoint = self.pub.getsockopt_string(zmq.LAST_ENDPOINT)
        self.stats_interval_ns = int(self.cfg.node.stats_interval_s * 1e9)

    # -- receive and route ------------------------------------------------------------------

    def _receive(self, timeout_ms: int) -> list[list]:
        """Per core, the ``(t_recv_ns, decoded)`` pairs received this turn."""
        batches: list[list] = [[] for _ in self.cores]
        if not self.sub.poll(timeout_ms, zmq.POLLIN):
            return batches
        single = len(self.cores) == 1
        for _ in range(RECV_BUDGET):
            try:
                frames = self.sub.recv_multipart(zmq.NOBLOCK, copy=False)
            except zmq.Again:
                break
            t_recv = self.clock()
            msg = decode(frames, self.shm)
            idx = self.route(msg.sensor_id)
            if idx is None:
                if single:
                    idx = 0  # the core counts it as unattributed, as it always has
                else:
                    self.unattributed[msg.reason if isinstance(msg, Rejection) and msg.reason != "unknown_sensor"
                                      else "unknown_sensor"] += 1
                    continue
            lease = getattr(msg, "shm_lease", None)
            if lease is not None:
                self._leases[(msg.sensor_id, msg.seq)] = lease
                if len(self._leases) > MAX_LEASES:
                    self._leases.popitem(last=False)
            batches[idx].append((t_recv, msg))
        return batches

    def _intact(self, core: FusionCore, event: dict) -> bool:
        """False if a shared-memory slot an event's members came from was overwritten while in use."""
        ok = True
        for m in event["members"]:
            lease = self._leases.get((m["sensor_id"], m["seq"]))
            if lease is not None and not lease.valid():
                ok = False
                self.shm_overwritten += 1
                core.reject(Rejection("shm_overwritten", "slot overwritten while in use", m["topic"], m["sensor_id"]))
        return ok

    def _publish_events(self, core: FusionCore, events: list[dict]) -> None:
        for ev in events:
            if self._leases and not self._intact(core, ev):
                continue
            core.finish_event(ev, self.clock())
            self.pub.send_multipart(encode_map("fused", ev))

    # -- stats --------------------------------------------------------------------------------

    def _rig_stats(self, core: FusionCore, now_ns: int, interval_s: float) -> dict:
        stats = core.stats(now_ns, interval_s)
        if self.unattributed:
            merged = Counter(stats["rejected_unattributed"])
            merged.update(self.unattributed)
            stats["rejected_unattributed"] = dict(merged)
        stats["security"] = self.security.stats(s.id for s in core.cfg.sensors)
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
            if now >= next_stats:
                self.publish_stats(now, (now - last_stats) / 1e9)
                last_stats = now
                next_stats = now + self.stats_interval_ns
        now = self.clock()
        return self.publish_stats(now, max(1e-9, (now - last_stats) / 1e9))

    def close(self) -> None:
        self.sub.close(0)
        self.pub.close()
        self.security.close(self.pub)
        self._leases.clear()
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
    cv2.setNumThreads(int(threads))
    done: dict = {"opencv": int(threads)}
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
