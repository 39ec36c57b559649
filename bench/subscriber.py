"""The benchmark's independent event subscriber: timestamps every fused event on arrival.

It subscribes to ``fused`` and ``stats`` on the node's publish endpoint and prints
``{"event": "ready"}`` once the first stats message arrived (so its subscription is known to be
in place: nothing is lost to ZeroMQ's late-joiner window after that). Each event becomes one
JSON line in ``--out``: arrival time (CLOCK_MONOTONIC, the clock every sensor on this host
stamps with), rig, seq, the driver camera's and the newest member's capture times, missing
sensors and the node's ``latency_ms``. SIGINT/SIGTERM end it; it prints
``{"event": "done", "events": N, "last_stats": {rig: stats}}``.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import time

import msgpack
import zmq


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.subscriber")
    p.add_argument("--endpoint", required=True)
    p.add_argument("--out", required=True)
    args = p.parse_args(argv)
    stopped = {"flag": False}

    def on_signal(signum, frame):  # noqa: ARG001
        stopped["flag"] = True

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    ctx = zmq.Context()
    sub = ctx.socket(zmq.SUB)
    sub.setsockopt(zmq.LINGER, 0)
    sub.setsockopt(zmq.RCVHWM, 100_000)
    sub.setsockopt(zmq.SUBSCRIBE, b"fused")
    sub.setsockopt(zmq.SUBSCRIBE, b"stats")
    sub.connect(args.endpoint)
    ready = False
    n = 0
    last_stats: dict = {}
    with open(args.out, "w") as out:
        while not stopped["flag"]:
            if not sub.poll(100):
                continue
            while True:
                try:
                    topic, body = sub.recv_multipart(zmq.NOBLOCK)
                except zmq.Again:
                    break
                t_arrival = time.monotonic_ns()  # first thing after the bytes are in
                msg = msgpack.unpackb(body, raw=False, strict_map_key=False)
                if topic == b"stats":
                    last_stats[msg.get("rig", "?")] = msg
                    if not ready:
                        ready = True
                        print(json.dumps({"event": "ready"}), flush=True)
                    continue
                members = msg.get("members", [])
                cam = [m["t_capture_ns"] for m in members if m["topic"] == "camera"]
                rec = {
                    "t_arrival_ns": t_arrival,
                    "rig": msg["rig"],
                    "seq": msg["seq"],
                    "t_ref_ns": msg["t_ref_ns"],
                    "t_camera_ns": cam[0] if cam else None,
                    "t_newest_ns": max((m["t_capture_ns"] for m in members), default=msg["t_ref_ns"]),
                    "t_publish_ns": msg["t_publish_ns"],
                    "missing": msg.get("missing", []),
                    "latency_ms": msg.get("latency_ms", {}),
                }
                out.write(json.dumps(rec, separators=(",", ":")) + "\n")
                n += 1
    sub.close()
    ctx.term()
    print(json.dumps({"event": "done", "events": n, "last_stats": last_stats}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
