"""The ``fusion`` command: demo, node, sensor readers, the event printer and the benchmark.

Every subcommand has ``--help``. Errors raised on purpose (:class:`fusion_node.errors.FusionError`)
are printed as one clear message and exit with status 2 (configuration) or 1 (everything else).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys

import zmq

from bench.cli import add_parser as add_bench_parser
from calibration.cli import add_parser as add_calibrate_parser
from models.cli import add_parsers as add_model_parsers
from sensors import audio, camera, radar, sim

from . import demo
from .config import config_schema, load_rigs
from .errors import ConfigError, FusionError
from .node import main_loop
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
    if updates:
        cfgs = [c.model_copy(update={"node": c.node.model_copy(update=updates)}) for c in cfgs]
    return main_loop(cfgs)


def _cmd_sensor(args: argparse.Namespace) -> int:
    return args.sensor_module.run(args)


def _cmd_events(args: argparse.Namespace) -> int:
    ctx = zmq.Context.instance()
    sub = ctx.socket(zmq.SUB)
    sub.setsockopt(zmq.LINGER, 0)
    sub.setsockopt(zmq.SUBSCRIBE, b"fused")
    if args.stats:
        sub.setsockopt(zmq.SUBSCRIBE, b"stats")
    sub.connect(args.endpoint)
    n = 0
    try:
        while args.count is None or n < args.count:
            if not sub.poll(int(args.timeout * 1000) if args.timeout else -1):
                print(f"fusion events: nothing from {args.endpoint} for {args.timeout} s", file=sys.stderr)
                return 1
            try:
                topic, body = decode_map(sub.recv_multipart())
            except ValueError as exc:
                print(f"fusion events: skipped a malformed message: {exc}", file=sys.stderr)
                continue
            print(json.dumps(body if topic == "fused" else {"stats": body}), flush=True)
            if topic == "fused":
                n += 1
    except KeyboardInterrupt:
        pass
    finally:
        sub.close(0)
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

    e = sub.add_parser("events", help="print fused events as JSON lines",
                       description="Subscribe to a node's event stream and print each event as one JSON line.")
    e.add_argument("--endpoint", required=True, help="the node's publish endpoint")
    e.add_argument("--stats", action="store_true", help="also print stats messages, as {\"stats\": ...}")
    e.add_argument("--count", type=int, default=None, help="exit after this many events")
    e.add_argument("--timeout", type=float, default=None, help="exit with status 1 after S seconds of silence")
    e.set_defaults(func=_cmd_events)

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


if __name__ == "__main__":
    sys.exit(main())
