"""Radar sensor process: a TI mmWave radar running the out-of-box demo, live or replayed.

Live: the chirp config file is sent over the CLI port first (each command must answer
``Done``), then the binary frames are read from the data port and parsed as they arrive.
Replay: a ``.dat`` capture of the data UART is parsed and its frames are published at the frame
period (from ``--frame-period-ms`` or the config file's ``frameCfg``). Either way the parser
resynchronises on the magic word and counts garbage and truncated frames instead of failing.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

from fusion_node.errors import SensorError
from fusion_node.wire import RadarPoints

from .publisher import (
    Pacer,
    SensorPublisher,
    add_security_arguments,
    add_shm_arguments,
    install_stop_handler,
    security_options,
    shm_options,
)
from .samples import DEFAULT_RADAR
from .ti_mmwave import (
    RadarFrame,
    TIStreamParser,
    iter_capture,
    open_cli_port,
    open_data_port,
    parse_chirp_config,
    send_chirp_config,
)

__all__ = ["add_arguments", "run"]


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--source", default=str(DEFAULT_RADAR),
                   help="a .dat capture of the data UART, or serial:DEVICE for a live radar "
                        "(default: bundled TI IWR6843 capture)")
    p.add_argument("--cli-port", default=None, help="live: the radar's CLI serial device (e.g. /dev/ttyUSB0)")
    p.add_argument("--cfg", default=None, help="chirp config (.cfg) to send first (live), or to read the "
                                              "frame period from (replay)")
    p.add_argument("--baud", type=int, default=921600, help="live: data port baud rate (default 921600)")
    p.add_argument("--frame-period-ms", type=float, default=None,
                   help="replay: frame period (default: from --cfg, else 100 ms, the sample's rate)")
    p.add_argument("--sensor-id", default="radar0", help="sensor_id to publish under (default: radar0)")
    p.add_argument("--endpoint", required=True, help="ZeroMQ endpoint to bind")
    p.add_argument("--loop", action="store_true", help="replay: start the capture again at its end")
    p.add_argument("--max-frames", type=int, default=None, help="stop after this many frames")
    p.add_argument("--wait-subscriber", type=float, default=0.0, metavar="S",
                   help="wait up to S seconds for a subscriber before the first frame")
    add_shm_arguments(p)
    add_security_arguments(p)


def _message(sensor_id: str, frame: RadarFrame, t_capture_ns: int) -> RadarPoints:
    return RadarPoints(sensor_id, 0, t_capture_ns, 0, np.asarray(frame.points, dtype=np.float32),
                       frame_number=frame.frame_number, has_side_info=frame.has_side_info)


def _report(sensor_id: str, parser: TIStreamParser) -> None:
    bad = {k: v for k, v in parser.counters.items() if k.startswith("rejected") or k == "resync_bytes_skipped"}
    if any(bad.values()):
        print(f"radar {sensor_id}: parser counters {dict(parser.counters)}", file=sys.stderr)


def _replay(args, pub: SensorPublisher, stop) -> None:
    path = Path(args.source)
    if not path.exists():
        raise SensorError(f"radar {args.sensor_id}: no such capture file {args.source!r}")
    period_ms = args.frame_period_ms
    if period_ms is None and args.cfg:
        period_ms = parse_chirp_config(Path(args.cfg).read_text()).frame_period_ms
    pacer = Pacer(int((period_ms or 100.0) * 1e6))
    sent = 0
    while not stop():
        parser = TIStreamParser()
        try:
            for frame in iter_capture(path, parser=parser):
                if stop() or (args.max_frames is not None and sent >= args.max_frames):
                    return
                t_capture = pacer.wait(stop)
                pub.publish(_message(args.sensor_id, frame, t_capture))
                sent += 1
        except ValueError as exc:  # the capture holds no valid frame at all
            raise SensorError(f"radar {args.sensor_id}: {exc}") from None
        _report(args.sensor_id, parser)
        if not args.loop:
            return


def _live(args, pub: SensorPublisher, stop) -> None:
    device = args.source.split(":", 1)[1]
    if args.cfg:
        if not args.cli_port:
            raise SensorError(f"radar {args.sensor_id}: --cfg on a live radar needs --cli-port")
        cfg = parse_chirp_config(Path(args.cfg).read_text())
        with open_cli_port(args.cli_port) as cli:
            send_chirp_config(cli, cfg)
    try:
        port = open_data_port(device, args.baud)
    except Exception as exc:  # pyserial raises SerialException or OSError
        raise SensorError(f"radar {args.sensor_id}: cannot open data port {device}: {exc}") from None
    parser = TIStreamParser()
    sent = 0
    last_data = time.monotonic()
    try:
        while not stop() and (args.max_frames is None or sent < args.max_frames):
            chunk = port.read(4096)
            now = time.monotonic_ns()
            if chunk:
                last_data = time.monotonic()
            elif time.monotonic() - last_data > 5.0:
                raise SensorError(f"radar {args.sensor_id}: no data on {device} for 5 s "
                                  f"(is the radar running? send a config with --cfg)")
            for frame in parser.feed(chunk):
                # Stamped when the frame's last byte arrived: the UART transfer time is the
                # sensor's latency and belongs in its clock_offset_ns.
                pub.publish(_message(args.sensor_id, frame, now))
                sent += 1
    finally:
        port.close()
        _report(args.sensor_id, parser)


def run(args: argparse.Namespace) -> int:
    secure = security_options(args)  # a bad key or allow-list fails before the source opens
    stop = install_stop_handler()
    pub = SensorPublisher("radar", args.endpoint, args.sensor_id, **shm_options(args), **secure)
    try:
        if args.wait_subscriber > 0:
            pub.wait_for_subscriber(args.wait_subscriber)
        if args.source.startswith("serial:"):
            _live(args, pub, stop)
        else:
            _replay(args, pub, stop)
        pub.end(stopped=stop())
    finally:
        pub.close()
    return 0
