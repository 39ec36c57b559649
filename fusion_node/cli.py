"""The ``fusion`` command: demo, node, sensor readers, the event printer and the benchmark.

Every subcommand has ``--help``. Errors raised on purpose (:class:`fusion_node.errors.FusionError`)
are printed as one clear message and exit with status 2 (configuration) or 1 (everything else).
"""

from __future__ import annotations

import argparse
import json
import logging
import re
import signal
import sys
import threading
import time
from pathlib import Path

import zmq

from bench.cli import add_parser as add_bench_parser
from calibration.cli import add_parser as add_calibrate_parser
from models.cli import add_parsers as add_model_parsers
from sensors import audio, camera, radar
from sensors.sim import live as sim

from . import demo
from .config import config_schema, endpoint_problem, load_rigs
from .errors import ConfigError, FusionError
from .eventlog import EventLog
from .node import main_loop
from .outputs import LIFECYCLE_TOPIC, default_log_path
from .security import client_keys, connect_client, new_key_pair
from .tap import stop_on_signals
from .walltime import parse_utc_ns
from .tools import add_parsers as add_recording_parsers
from .wire import decode_map

__all__ = ["main", "build_parser"]


def _cmd_node(args: argparse.Namespace) -> int:
    if args.print_config_schema:
        print(json.dumps(config_schema(), indent=2))
        return 0
    if not args.config:
        raise ConfigError("fusion node: --config FILE is required (see docs/wire.md and examples/rig.yaml)")
    cfgs = load_rigs(args.config)  # the single-rig form or a rigs: list
    updates = {}
    if args.models is not None:
        updates["models"] = None if args.models == "none" else args.models
    if args.provider is not None:
        updates["provider"] = args.provider
    if args.publish is not None:
        updates["publish_endpoint"] = args.publish
    if args.metrics_port is not None:
        updates["metrics_port"] = args.metrics_port
    if updates:
        cfgs = [c.model_copy(update={"node": c.node.model_copy(update=updates)}) for c in cfgs]
    if args.event_log is not None:
        cfgs = [c.model_copy(update={"event_log": c.event_log.model_copy(update={"path": args.event_log})})
                for c in cfgs]
    return main_loop(cfgs)


def _cmd_sensor(args: argparse.Namespace) -> int:
    return args.sensor_module.run(args)


def _log_path(args: argparse.Namespace) -> Path:
    if args.log:
        return Path(args.log)
    if args.config:
        first = load_rigs(args.config)[0]
        return Path(first.event_log.path) if first.event_log.path else default_log_path(first.rig)
    raise ConfigError("fusion events: --since and --snapshot read the event log: give --log FILE or --config FILE")


def _replay(args: argparse.Namespace) -> int:
    """Events from the log after a seq (or from a UTC time), then those logged while we watch."""
    elog = EventLog(_log_path(args), reader=True)
    since = args.since.strip()
    if since.isdigit():
        after = int(since)
    else:
        try:
            first = elog.first_seq_at(parse_utc_ns(since))
        except ValueError:
            raise ConfigError(f"fusion events: --since wants a seq or an ISO 8601 UTC time, got {since!r}") from None
        after = elog.last_seq() if first is None else first - 1
    n = 0
    idle = threading.Event()
    quiet_s = 0.0
    try:
        while args.count is None or n < args.count:
            batch = elog.after(after, limit=1000 if args.count is None else min(1000, args.count - n))
            for ev in batch:
                print(json.dumps(ev), flush=True)
                after = ev["seq"]
                n += 1
            if batch:
                quiet_s = 0.0
                continue
            if not args.follow or (args.timeout is not None and quiet_s >= args.timeout):
                break
            idle.wait(args.poll)  # the node commits each event on its own; polling the WAL file is cheap
            quiet_s += args.poll
    except KeyboardInterrupt:
        pass
    finally:
        elog.close()
    return 0


def _snapshot(args: argparse.Namespace) -> int:
    elog = EventLog(_log_path(args), reader=True)
    try:
        jpeg = elog.snapshot(args.snapshot)
    finally:
        elog.close()
    if jpeg is None:
        raise FusionError(f"fusion events: no snapshot {args.snapshot!r} in the log (ids are the events' "
                          f"'snapshot' values; retention may have removed it)")
    out = Path(args.out or re.sub(r"[^A-Za-z0-9_.-]", "_", args.snapshot) + ".jpg")
    out.write_bytes(jpeg)
    print(json.dumps({"snapshot": args.snapshot, "file": str(out), "bytes": len(jpeg)}))
    return 0


def _cmd_events(args: argparse.Namespace) -> int:
    if args.snapshot is not None:
        return _snapshot(args)
    if args.since is not None:
        return _replay(args)
    if not args.endpoint:
        raise ConfigError("fusion events: give --endpoint (live), or --since/--snapshot with --log or --config")
    problem = endpoint_problem(args.endpoint)
    if problem:
        raise ConfigError(f"fusion events: --endpoint {problem}")
    ctx = zmq.Context.instance()
    sub = ctx.socket(zmq.SUB)
    sub.setsockopt(zmq.LINGER, 0)
    sub.setsockopt(zmq.SUBSCRIBE, LIFECYCLE_TOPIC.encode() if args.lifecycle else b"fused")
    if args.stats:
        sub.setsockopt(zmq.SUBSCRIBE, b"stats")
    keys, server_key = client_keys(args.endpoint, args.server_key, args.secret_key, args.insecure, "fusion events")
    connect_client(sub, args.endpoint, keys, server_key)
    n = 0
    quiet = _Silence(args.endpoint, args.timeout)
    # SIGINT and SIGTERM end the loop cleanly, also when this process was started with SIGINT
    # ignored (a background job of a shell script inherits that); polls are bounded to see them.
    stopped = stop_on_signals()
    try:
        while (args.count is None or n < args.count) and not stopped():
            wait = quiet.wait_ms()
            if not sub.poll(STOP_CHECK_MS if wait < 0 else min(wait, STOP_CHECK_MS)):
                if quiet.over():
                    print(f"fusion events: nothing from {args.endpoint} for {args.timeout} s", file=sys.stderr)
                    return 1
                continue
            quiet.heard()
            try:
                topic, body = decode_map(sub.recv_multipart())
            except ValueError as exc:
                print(f"fusion events: skipped a malformed message: {exc}", file=sys.stderr)
                continue
            print(json.dumps({"stats": body} if topic == "stats" else body), flush=True)
            if topic != "stats":
                n += 1
    except KeyboardInterrupt:
        pass
    finally:
        sub.close(0)
    return 0


STOP_CHECK_MS = 200  # how often a waiting `fusion events` looks for a stop request


class _Silence:
    """Silence on a live subscription: one notice after ``NOTICE_S``, the end after ``--timeout``."""

    NOTICE_S = 5.0

    def __init__(self, endpoint: str, timeout_s: float | None):
        self.endpoint = endpoint
        self.timeout_s = timeout_s
        self.since = time.monotonic()
        self.noticed = False

    def wait_ms(self) -> int:
        """How long the next poll may wait: until the notice is due, or the timeout, or forever."""
        due = [self.timeout_s] if self.timeout_s else []
        if not self.noticed:
            due.append(self.NOTICE_S)
        if not due:
            return -1
        return max(1, int((min(due) - (time.monotonic() - self.since)) * 1000))

    def over(self) -> bool:
        """Called when a poll found nothing: says so once, and whether the timeout has passed."""
        quiet_s = time.monotonic() - self.since
        if not self.noticed and quiet_s >= self.NOTICE_S:
            self.noticed = True
            print(f"fusion events: nothing from {self.endpoint} yet after {self.NOTICE_S:.0f} s (is a node "
                  f"publishing there?); still waiting{'' if self.timeout_s else ', Ctrl-C to stop'}",
                  file=sys.stderr, flush=True)
        return bool(self.timeout_s) and quiet_s >= self.timeout_s

    def heard(self) -> None:
        self.since = time.monotonic()
        self.noticed = True  # it answers: a later pause is the node's own, not worth a notice


def _cmd_keys(args: argparse.Namespace) -> int:
    public_path, secret_path, public = new_key_pair(args.name, args.dir)
    # The secret never reaches the terminal: only where it is.
    print(f"public key {public.decode('ascii')}\n"
          f"  {public_path}: give it to the peers that must trust {args.name}\n"
          f"  {secret_path}: the key pair, mode 0600; keep it on this host only")
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    return demo.run(args)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="fusion", description="Streaming camera/radar/audio fusion over ZeroMQ.")
    p.add_argument("-v", "--verbose", action="store_true", help="log more")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    d = sub.add_parser("demo", help="run sensors, node and a subscriber on the bundled recordings",
                       description="Start the sensor processes and the node, play the bundled sample "
                                   "recordings once through the pipeline, print events and a summary.")
    demo.add_arguments(d)
    d.set_defaults(func=_cmd_demo)

    n = sub.add_parser("node", help="run a fusion node for one rig (or several: a rigs: config)",
                       description="Subscribe to the rig's sensors, synchronise, fuse, publish events and stats.")
    n.add_argument("--config", help="rig config YAML")
    n.add_argument("--models", default=None, help="override node.models (manifest.json, or 'none')")
    n.add_argument("--provider", default=None, choices=["auto", "tensorrt", "cuda", "cpu"],
                   help="override node.provider")
    n.add_argument("--publish", default=None, metavar="ENDPOINT", help="override node.publish_endpoint")
    n.add_argument("--metrics-port", type=int, default=None, metavar="PORT",
                   help="serve Prometheus metrics on PORT at /metrics (override node.metrics_port; 0: any free port)")
    n.add_argument("--event-log", default=None, metavar="FILE", help="override event_log.path (SQLite file)")
    n.add_argument("--print-config-schema", action="store_true",
                   help="print the JSON schema of the rig config (every key, described) and exit")
    n.set_defaults(func=_cmd_node)

    s = sub.add_parser("sensor", help="run one sensor reader process",
                       description="Read a camera, radar or microphone (or a recording) and publish it.")
    kinds = s.add_subparsers(dest="kind", required=True, metavar="KIND")
    for name, module, text in (("camera", camera, "OpenCV camera: device index, video file or URL"),
                               ("radar", radar, "TI mmWave radar: serial port or .dat capture"),
                               ("audio", audio, "microphone (PortAudio) or WAV/OGG/FLAC file"),
                               ("sim", sim, "simulated camera, radar and microphone of one world (three sockets)")):
        k = kinds.add_parser(name, help=text, description=text)
        module.add_arguments(k)
        k.set_defaults(func=_cmd_sensor, sensor_module=module)

    add_model_parsers(sub)

    e = sub.add_parser("events", help="print fused records or lifecycle events as JSON lines",
                       description="Live: subscribe to a node's fused records (or, with --lifecycle, its lifecycle "
                                   "events) and print each as one JSON line. From the event log: --since SEQ|TIME "
                                   "prints every logged lifecycle event after SEQ (or from an ISO 8601 UTC time), "
                                   "then follows new ones; --snapshot ID writes an occurrence's JPEG.")
    e.add_argument("--endpoint", default=None, help="the node's publish endpoint (live mode)")
    e.add_argument("--lifecycle", action="store_true", help="live: lifecycle events instead of fused records")
    e.add_argument("--stats", action="store_true", help="also print stats messages, as {\"stats\": ...}")
    e.add_argument("--since", default=None, metavar="SEQ|TIME",
                   help="replay the log after this seq (0: from the start) or from this UTC time "
                        "(2026-11-22T14:03:00Z), then follow")
    e.add_argument("--snapshot", default=None, metavar="ID", help="write this occurrence's snapshot JPEG")
    e.add_argument("--out", default=None, metavar="FILE", help="with --snapshot: where (default ID.jpg)")
    e.add_argument("--log", default=None, metavar="FILE", help="the node's event log (SQLite)")
    e.add_argument("--config", default=None, metavar="FILE", help="the node's config, to find its event log")
    e.add_argument("--no-follow", dest="follow", action="store_false",
                   help="with --since: stop at the end of the log instead of waiting for new events")
    e.add_argument("--poll", type=float, default=0.2, metavar="S", help="with --since: log poll period")
    e.add_argument("--count", type=int, default=None, help="exit after this many events")
    e.add_argument("--timeout", type=float, default=None,
                   help="live: exit with status 1 after S seconds of silence; --since: stop following after S "
                        "seconds without a new event")
    e.add_argument("--server-key", default=None, metavar="FILE",
                   help="the node's CURVE public key (NAME.key): connect with CURVE; needs --secret-key")
    e.add_argument("--secret-key", default=None, metavar="FILE",
                   help="this subscriber's key pair (NAME.key_secret), listed in the node's allow_subscribers")
    e.add_argument("--insecure", action="store_true",
                   help="allow a plain connection to an endpoint reachable from the network")
    e.set_defaults(func=_cmd_events)

    k = sub.add_parser("keys", help="CURVE key pairs for network hops",
                       description="Make CURVE key pairs for sensors, nodes and subscribers (docs/wire.md, "
                                   "'Security').")
    kinds_k = k.add_subparsers(dest="keys_command", required=True, metavar="ACTION")
    kn = kinds_k.add_parser("new", help="make a key pair: NAME.key (public) and NAME.key_secret (0600)",
                            description="Write NAME.key (the public key, to hand to peers) and NAME.key_secret "
                                        "(the key pair, mode 0600, never printed). Refuses to overwrite.")
    kn.add_argument("name", metavar="NAME", help="key name, e.g. cam0 or node")
    kn.add_argument("--dir", default=".", help="folder to write into (created 0700 if missing; default: .)")
    kn.set_defaults(func=_cmd_keys)

    add_bench_parser(sub)
    add_calibrate_parser(sub)
    add_recording_parsers(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(name)s: %(message)s", stream=sys.stderr)
    try:
        return args.func(args)
    except ConfigError as exc:
        print(f"fusion: error: {exc}", file=sys.stderr)
        return 2
    except FusionError as exc:
        print(f"fusion: error: {exc}", file=sys.stderr)
        return 1
    except zmq.ZMQError as exc:  # a socket the command could not open: say which error, in one line
        print(f"fusion: error: {exc}", file=sys.stderr)
        return 1
    finally:
        # The command is over. A stop request (the launcher's SIGINT) that arrives while the
        # interpreter shuts down would otherwise meet the default action, which Python restores
        # for its own handlers at exit, and turn a clean exit into death by signal.
        signal.signal(signal.SIGINT, signal.SIG_IGN)


if __name__ == "__main__":
    sys.exit(main())
