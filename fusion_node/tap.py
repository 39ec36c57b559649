"""A passive listener on a rig: one SUB socket per sensor endpoint, one on the node's endpoint.

The recorder, the live view and ``fusion topic`` all listen to a rig without taking part in it.
A :class:`Tap` gives them every message as it arrived, as plain bytes, with its receive time
(``time.monotonic_ns``, the clock sensors on the same host stamp with) and the configured
sensor it came from: one socket per endpoint is what tells a message's origin apart from what
its header claims, so a garbled header is still filed under the right sensor.

Payloads that travelled in shared memory (``docs/wire.md``, same-host ``ipc://`` endpoints) are
copied out of the writer's ring and put back in frame 2, with the header re-packed without its
``shm`` key: the message as it would have crossed a ``tcp://`` link. A slot that the writer
reused before the copy was complete is dropped and counted (``shm_overwritten``); so is a
handle that cannot be resolved (``bad_handle``).

Also here, for the commands built on a tap: :func:`connectable` (a bind address as one to
connect to) and :func:`stop_on_signals` (SIGINT/SIGTERM end their loops cleanly).
"""

from __future__ import annotations

import signal
import time
from collections import Counter
from dataclasses import dataclass
from typing import Callable, Sequence

import msgpack
import zmq

from .shm import HandleError, ShmReader
from .wire import TOPICS

__all__ = ["TapSource", "TapMessage", "Tap", "inline_payload", "connectable", "stop_on_signals"]

# Messages taken from one socket per poll before moving to the next: a flood on one sensor
# cannot starve the others or the node's topics.
RECV_BUDGET = 256
# Reconnect quickly to endpoints that are not bound yet: a listener started before the sensors
# then subscribes within a few milliseconds of their start.
RECONNECT_IVL_MS = 10


def connectable(endpoint: str) -> str:
    """An endpoint to connect to: a bind-all address (``tcp://*:5560``) becomes loopback."""
    return endpoint.replace("://*:", "://127.0.0.1:").replace("://0.0.0.0:", "://127.0.0.1:")


def stop_on_signals() -> Callable[[], bool]:
    """SIGINT and SIGTERM make the returned function true: the listeners' loops end cleanly."""
    stopped = {"flag": False}

    def on_signal(signum, frame):  # noqa: ARG001 - signal handler signature
        stopped["flag"] = True

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    return lambda: stopped["flag"]


@dataclass(frozen=True)
class TapSource:
    """One endpoint a tap listens to: a configured sensor, or the node (``sensor_id`` None)."""

    endpoint: str
    sensor_id: str | None = None
    kind: str | None = None  # the sensor's modality, which is also its wire topic
    rig: str | None = None


@dataclass
class TapMessage:
    """One message as received: its source, its frames as bytes, and when it arrived."""

    source: TapSource
    frames: list[bytes]
    t_recv_ns: int

    @property
    def topic(self) -> str:
        return self.frames[0].decode("ascii", "replace") if self.frames else ""


def inline_payload(frames: list[bytes], reader: ShmReader, sensor_id: str | None = None) -> list[bytes]:
    """Frames with a shared-memory payload copied into frame 2 and ``shm`` removed from the header.

    Frames without a handle come back unchanged. The ring must belong to ``sensor_id`` (by
    default the header's own). Raises :class:`fusion_node.shm.HandleError` (``bad_handle`` or
    ``shm_overwritten``) when the payload cannot be had intact.
    """
    if len(frames) != 3 or frames[2]:
        return frames
    try:
        head = msgpack.unpackb(frames[1], raw=False, strict_map_key=False)
    except Exception:  # msgpack raises several unrelated types on garbage; the node will reject it
        return frames
    if not isinstance(head, dict) or "shm" not in head:
        return frames
    owner = sensor_id if sensor_id is not None else str(head.get("sensor_id", ""))
    payload = reader.read(owner, head.pop("shm"), head.get("payload_bytes", -1)).tobytes()  # a checked copy
    return [frames[0], msgpack.packb(head, use_bin_type=True), payload]


class Tap:
    """Subscribes to each source's topic (``kind``), or to every topic when it names none."""

    def __init__(self, sources: Sequence[TapSource], *, context: zmq.Context | None = None,
                 clock: Callable[[], int] = time.monotonic_ns, hwm_scale: int = 16,
                 shm_dir: str | None = None):
        self.sources = list(sources)
        self.clock = clock
        self.ctx = context or zmq.Context.instance()
        self.shm = ShmReader(shm_dir)  # where the sensors put their rings (the node's node.shm_dir)
        self.dropped: Counter = Counter()  # (sensor_id, reason) -> messages lost before recording
        self.poller = zmq.Poller()
        self._sockets: list[tuple[zmq.Socket, TapSource]] = []
        for src in self.sources:
            sock = self.ctx.socket(zmq.SUB)
            sock.setsockopt(zmq.LINGER, 0)
            sock.setsockopt(zmq.RECONNECT_IVL, RECONNECT_IVL_MS)
            # Deeper than the node's queues: a listener that falls behind for a moment catches up
            # instead of losing messages (still bounded, so memory is too).
            bound = TOPICS[src.kind].queue_bound if src.kind in TOPICS else TOPICS["fused"].queue_bound
            sock.setsockopt(zmq.RCVHWM, bound * hwm_scale)
            sock.setsockopt(zmq.SUBSCRIBE, src.kind.encode("ascii") if src.kind else b"")
            sock.connect(src.endpoint)
            self.poller.register(sock, zmq.POLLIN)
            self._sockets.append((sock, src))

    def poll(self, timeout_ms: int) -> list[TapMessage]:
        """Messages that arrived, waiting up to ``timeout_ms`` for the first one."""
        ready = dict(self.poller.poll(timeout_ms))
        out: list[TapMessage] = []
        for sock, src in self._sockets:
            if sock not in ready:
                continue
            for _ in range(RECV_BUDGET):
                try:
                    frames = sock.recv_multipart(zmq.NOBLOCK)
                except zmq.Again:
                    break
                t_recv = self.clock()
                try:
                    frames = inline_payload(frames, self.shm, src.sensor_id)
                except HandleError as exc:
                    self.dropped[(src.sensor_id or src.endpoint, exc.reason)] += 1
                    continue
                out.append(TapMessage(src, frames, t_recv))
        return out

    def close(self) -> None:
        for sock, _ in self._sockets:
            self.poller.unregister(sock)
            sock.close(0)
        self._sockets.clear()
        self.shm.close()
