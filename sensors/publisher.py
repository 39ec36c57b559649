"""The publishing half every sensor process shares: an XPUB socket, the envelope, pacing.

The socket is XPUB rather than PUB so a sensor can see subscriptions arrive and, when asked,
wait for the node before it starts playing a file (otherwise the first frames of a recording
would be sent before anyone listens). Its send high-water mark comes from the topic registry.

On an ``ipc://`` endpoint (same host) payloads of ``SHM_MIN_BYTES`` or more (raw camera
frames) are written once into a shared-memory ring and only a handle travels over ZeroMQ
(:mod:`fusion_node.shm`); across hosts (``tcp://``) everything goes as plain frames. Every
sensor command takes ``--no-shm`` (always plain frames) and ``--shm-dir`` (where rings go; it
must be the node's ``node.shm_dir``).

Across hosts the socket is a CURVE server (:mod:`fusion_node.security`): ``--secret-key`` is
the sensor's key pair and ``--allow`` the public keys of the nodes that may subscribe, checked
through ZAP. A network endpoint without keys is refused unless ``--insecure``.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import time
from pathlib import Path
from typing import Callable

import zmq

from fusion_node import security, shm
from fusion_node.errors import SensorError
from fusion_node.wire import TOPICS, SensorMessage, StreamEnd, encode, encode_end

__all__ = ["SensorPublisher", "Pacer", "sleep_until", "install_stop_handler", "add_shm_arguments", "shm_options",
           "add_security_arguments", "security_options"]


def add_shm_arguments(p: argparse.ArgumentParser) -> None:
    """The shared-memory options every sensor command takes."""
    p.add_argument("--no-shm", action="store_true",
                   help="send large payloads as ZeroMQ frames even on ipc:// endpoints")
    p.add_argument("--shm-dir", default=None, metavar="DIR",
                   help="folder for the shared-memory ring (default /dev/shm; the node's node.shm_dir)")


def shm_options(args: argparse.Namespace) -> dict:
    """SensorPublisher keyword arguments from :func:`add_shm_arguments`'s options."""
    return {"use_shm": False if args.no_shm else None, "shm_dir": args.shm_dir}


def sleep_until(t_ns: int, stop: Callable[[], bool] | None = None,
                clock: Callable[[], int] = time.monotonic_ns) -> None:
    """Sleep until ``clock()`` reaches ``t_ns``, waking early when ``stop()`` turns true."""
    while True:
        delay = t_ns - clock()
        if delay <= 0 or (stop is not None and stop()):
            return
        time.sleep(min(delay / 1e9, 0.05))


class SensorPublisher:
    """Binds one endpoint and publishes one sensor's messages with a fresh ``run_id``."""

    def __init__(self, topic: str, endpoint: str, sensor_id: str, *, context: zmq.Context | None = None,
                 clock: Callable[[], int] = time.monotonic_ns, use_shm: bool | None = None,
                 shm_min_bytes: int = shm.SHM_MIN_BYTES, shm_dir: str | None = None,
                 curve: security.ServerSecurity | None = None, insecure: bool = False):
        if topic not in TOPICS:
            raise SensorError(f"{sensor_id}: unknown topic {topic!r}")
        security.require_secure(endpoint, curve is not None, insecure, f"{topic} {sensor_id}",
                                "give --secret-key and --allow")
        self.topic = TOPICS[topic]
        self.sensor_id = sensor_id
        self.clock = clock
        # A new run_id per process start lets the node tell a restart from an out-of-order message.
        self.run_id = int.from_bytes(os.urandom(4), "little")
        self.seq = 0
        self._ctx = context or zmq.Context.instance()
        self.socket = self._ctx.socket(zmq.XPUB)
        self.socket.setsockopt(zmq.SNDHWM, self.topic.queue_bound)
        self.socket.setsockopt(zmq.LINGER, 500)
        self._zap = security.serve_curve(self.socket, curve, f"fusion.sensor.{sensor_id}.{id(self):x}",
                                         f"{topic} {sensor_id}") if curve is not None else None
        try:
            self.socket.bind(endpoint)
        except zmq.ZMQError as exc:
            self.close()
            raise SensorError(f"{sensor_id}: cannot bind {endpoint}: {exc} "
                              f"(is another process using it? pick another endpoint)") from None
        self.endpoint = self.socket.getsockopt_string(zmq.LAST_ENDPOINT)
        self.sent = 0
        self.last_capture_ns: int | None = None
        # Shared-memory ring for large payloads: auto (None) means "on for ipc:// endpoints".
        self.use_shm = shm.shm_wanted(endpoint) if use_shm is None else bool(use_shm)
        self.shm_min_bytes = int(shm_min_bytes)
        self.shm_dir = Path(shm_dir) if shm_dir else shm.default_shm_dir()
        self.ring: shm.ShmRingWriter | None = None
        self._rings_made = 0
        if self.use_shm:
            shm.remove_stale_rings(self.shm_dir)

    def _to_ring(self, payload) -> dict | None:
        """payload_sink for :func:`encode`: large payloads go into the ring, small ones stay inline."""
        nbytes = payload.nbytes if isinstance(payload, memoryview) else len(payload)
        if nbytes < self.shm_min_bytes:
            return None
        if self.ring is None or nbytes > self.ring.slot_bytes:
            if self.ring is not None:
                self.ring.close()  # frames grew: a new ring; readers re-map from the handle's name
            # Two queue bounds of slots: a slot is reused only after that many newer frames.
            self.ring = shm.ShmRingWriter(shm.ring_name(self.sensor_id, self.run_id, self._rings_made),
                                          2 * self.topic.queue_bound, nbytes, run_id=self.run_id,
                                          directory=self.shm_dir)
            self._rings_made += 1
        return self.ring.write(payload, self.seq)
    def wait_for_subscriber(self, timeout_s: float) -> bool:
        """Block until a subscription arrives (True) or the timeout passes (False)."""
        if self.socket.poll(int(timeout_s * 1000), zmq.POLLIN):
            self.socket.recv()  # the subscription message itself
            return True
        return False

    def _drain_subscriptions(self) -> None:
        while self.socket.poll(0, zmq.POLLIN):
            self.socket.recv()

    def publish(self, msg: SensorMessage) -> None:
        """Stamp ``seq``, ``run_id`` and the publish time, then send without copying the payload."""
        msg.seq = self.seq
        msg.run_id = self.run_id
        msg.sensor_id = self.sensor_id
        frames = encode(msg, t_publish_ns=self.clock(), payload_sink=self._to_ring if self.use_shm else None)
        self.socket.send_multipart(frames, copy=False)
        self.last_capture_ns = msg.t_capture_ns
        self.seq += 1
        self.sent += 1
        if self.sent % 256 == 0:
            self._drain_subscriptions()  # XPUB queues subscription messages; keep that queue short

    def end(self, stopped: bool) -> None:
        """Tell subscribers this run ends on purpose: ``stopped`` (a signal, the launcher) or its
        source ran out (``source_ended``).

        Without it the node cannot tell a finished recording or an operator's stop from a dead
        sensor, and raises ``sensor_failed``. The socket's linger delivers it before ``close``.
        """
        t_now = self.clock()
        end = StreamEnd(self.sensor_id, self.seq, t_now if self.last_capture_ns is None else self.last_capture_ns,
                        0, self.topic.name, "stopped" if stopped else "source_ended", self.run_id)
        self.socket.send_multipart(encode_end(end, t_publish_ns=t_now))
        self.seq += 1

    @property
    def refused(self) -> int:
        """Subscribers refused by the allow-list so far."""
        return self._zap.refused if self._zap is not None else 0

    def close(self) -> None:
        self.socket.close()
        security.release_server(self.socket, self._zap)
        self._zap = None
        if getattr(self, "ring", None) is not None:
            self.ring.close()
            self.ring = None


def add_security_arguments(p: argparse.ArgumentParser) -> None:
    """``--secret-key``, ``--allow`` and ``--insecure``: the options of a sensor's binding socket."""
    p.add_argument("--secret-key", default=None, metavar="FILE",
                   help="this sensor's CURVE key pair (NAME.key_secret from `fusion keys new`): the socket "
                        "encrypts and admits only the keys of --allow")
    p.add_argument("--allow", action="extend", nargs="+", default=None, metavar="KEY",
                   help="with --secret-key: public key files (NAME.key) or folders of them, of the nodes "
                        "allowed to subscribe")
    p.add_argument("--insecure", action="store_true",
                   help="allow a plain (unencrypted, unauthenticated) endpoint reachable from the network")


def security_options(args: argparse.Namespace) -> dict:
    """:class:`SensorPublisher` keyword arguments from :func:`add_security_arguments`' options."""
    what = f"sensor {args.sensor_id}"
    if args.allow and not args.secret_key:
        raise SensorError(f"{what}: --allow needs --secret-key, this sensor's key pair")
    if not args.secret_key:
        return {"curve": None, "insecure": args.insecure}
    if not args.allow:
        raise SensorError(f"{what}: --secret-key needs --allow with the public keys of the nodes that may "
                          f"subscribe")
    keys = security.load_key_pair(args.secret_key, f"{what} --secret-key")
    return {"curve": security.ServerSecurity(keys, security.load_allow_list(args.allow, f"{what} --allow")),
            "insecure": args.insecure}


class Pacer:
    """Keeps a fixed schedule (t0 + i * period) whatever each iteration costs."""

    def __init__(self, period_ns: int, clock: Callable[[], int] = time.monotonic_ns):
        self.period_ns = int(period_ns)
        self.clock = clock
        self.t0 = clock()
        self.i = 0

    def next_time(self) -> int:
        return self.t0 + self.i * self.period_ns

    def wait(self, stop: Callable[[], bool] | None = None) -> int:
        """Sleep until the next slot, return its scheduled time (the intended capture time)."""
        due = self.next_time()
        sleep_until(due, stop, self.clock)
        self.i += 1
        return due


class _StopFlag:
    def __init__(self) -> None:
        self.stopped = False

    def __call__(self) -> bool:
        return self.stopped


def install_stop_handler() -> _StopFlag:
    """SIGINT/SIGTERM set a flag the sensor loop checks, so it exits cleanly between frames."""
    flag = _StopFlag()

    def handler(signum, frame):  # noqa: ARG001 - signal handler signature
        if flag.stopped:
            sys.exit(130)
        flag.stopped = True

    signal.signal(signal.SIGINT, handler)
    signal.signal(signal.SIGTERM, handler)
    return flag
