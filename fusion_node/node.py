"""The fusion node process: the ZeroMQ loop around :class:`fusion_node.core.FusionCore`.

One SUB socket connects to every sensor endpoint of the rig; messages are received without
copying, decoded and validated, and handed with their arrival times to the core. Fused events
and periodic stats go out on one PUB socket under the ``fused`` and ``stats`` topics. The node
prints one JSON line when ready (its endpoints and execution provider) and one with the final
stats when it stops (SIGINT or SIGTERM).
"""

from __future__ import annotations

import json
import logging
import os
import signal
import sys
import time
from typing import Callable

import zmq

from .config import RigConfig
from .core import FusionCore
from .wire import TOPICS, decode, encode_map

__all__ = ["FusionNode", "load_runtime", "main_loop"]

log = logging.getLogger("fusion.node")

# Messages taken from the socket per loop turn before fusing: bounds the time one turn can take
# while a flood (valid or not) is arriving.
RECV_BUDGET = 4096


def load_runtime(cfg: RigConfig):
    """The model runtime named by the config, or None to run synchronisation only."""
    if not cfg.node.models:
        return None
    from .inference import ModelRuntime, load_manifest

    runtime = ModelRuntime(load_manifest(cfg.node.models), provider=cfg.node.provider,
                           intra_op_threads=cfg.node.intra_op_threads)
    log.info("models %s on %s%s", runtime.name, runtime.provider,
             f" ({runtime.provider_note})" if runtime.provider_note else "")
    return runtime


class FusionNode:
    """Owns the sockets of one node serving one rig, and the loop that drives the core."""

    def __init__(self, cfg: RigConfig, runtime=None, *, context: zmq.Context | None = None,
                 clock: Callable[[], int] = time.monotonic_ns):
        self.cfg = cfg
        self.clock = clock
        self.core = FusionCore(cfg, runtime, timer=clock, run_id=int.from_bytes(os.urandom(4), "little"))
        self.ctx = context or zmq.Context.instance()
        self.sub = self.ctx.socket(zmq.SUB)
        self.sub.setsockopt(zmq.RCVHWM, sum(TOPICS[s.kind].queue_bound for s in cfg.sensors) * 4)
        self.sub.setsockopt(zmq.LINGER, 0)
        for s in cfg.sensors:
            self.sub.setsockopt(zmq.SUBSCRIBE, s.kind.encode("ascii"))
        for s in cfg.sensors:
            self.sub.connect(s.endpoint)
        self.pub = self.ctx.socket(zmq.PUB)
        self.pub.setsockopt(zmq.SNDHWM, TOPICS["fused"].queue_bound)
        self.pub.setsockopt(zmq.LINGER, 1000)
        self.pub.bind(cfg.node.publish_endpoint)
        self.publish_endpoint = self.pub.getsockopt_string(zmq.LAST_ENDPOINT)
        self.stats_interval_ns = int(cfg.node.stats_interval_s * 1e9)

    def _receive(self, timeout_ms: int) -> list:
        batch = []
        if not self.sub.poll(timeout_ms, zmq.POLLIN):
            return batch
        for _ in range(RECV_BUDGET):
            try:
                frames = self.sub.recv_multipart(zmq.NOBLOCK, copy=False)
            except zmq.Again:
                break
            batch.append((self.clock(), decode(frames)))
        return batch

    def _publish_events(self, events: list[dict]) -> None:
        for ev in events:
            self.core.finish_event(ev, self.clock())
            self.pub.send_multipart(encode_map("fused", ev))

    def publish_stats(self, now_ns: int, interval_s: float) -> dict:
        stats = self.core.stats(now_ns, interval_s)
        self.pub.send_multipart(encode_map("stats", stats))
        return stats

    def run(self, stop: Callable[[], bool]) -> dict:
        """Serve until ``stop()`` is true; returns the final stats."""
        next_stats = self.clock() + self.stats_interval_ns
        last_stats = self.clock()
        while not stop():
            now = self.clock()
            wake = min(next_stats, now + 50_000_000)
            deadline = self.core.next_deadline_ns()
            if deadline is not None:
                wake = min(wake, deadline)
            batch = self._receive(max(0, (wake - now) // 1_000_000))
            now = self.clock()
            self._publish_events(self.core.step(now, batch))
            if now >= next_stats:
                self.publish_stats(now, (now - last_stats) / 1e9)
                last_stats = now
                next_stats = now + self.stats_interval_ns
        now = self.clock()
        return self.publish_stats(now, max(1e-9, (now - last_stats) / 1e9))

    def close(self) -> None:
        self.sub.close(0)
        self.pub.close()


def main_loop(cfg: RigConfig, out=sys.stdout) -> int:
    """Run a node until SIGINT/SIGTERM: ready line, serve, final-stats line."""
    stopped = {"flag": False}

    def on_signal(signum, frame):  # noqa: ARG001 - signal handler signature
        stopped["flag"] = True

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    runtime = load_runtime(cfg)
    node = FusionNode(cfg, runtime)
    ready = {"event": "ready", "rig": cfg.rig, "publish_endpoint": node.publish_endpoint, "pid": os.getpid(),
             "policy": cfg.sync.policy, "sensors": [s.id for s in cfg.sensors],
             "provider": None if runtime is None else runtime.provider,
             "provider_note": None if runtime is None else runtime.provider_note,
             "models": None if runtime is None else runtime.name,
             "trained": None if runtime is None else runtime.trained}
    print(json.dumps(ready), file=out, flush=True)
    try:
        final = node.run(lambda: stopped["flag"])
    finally:
        node.close()
    print(json.dumps({"event": "final_stats", **final}), file=out, flush=True)
    return 0
