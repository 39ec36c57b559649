"""``fusion topic hz|echo TOPIC --endpoint EP``: the rate and the content of a topic, as in ROS 2.

``hz`` prints, once a second, the average rate of the topic over the last ``--window``
messages with the shortest and longest interval and their standard deviation (from arrival
times, or with ``--capture-time`` from the headers' capture times). ``echo`` prints each
message as one JSON line: a sensor message's header with a summary of its payload (size;
radar: the points; audio: RMS and peak), or a node message's body. Both subscribe as any
consumer would (:mod:`fusion_node.tap`), so they disturb nothing.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections import deque

import msgpack
import numpy as np

from .tap import Tap, TapMessage, TapSource
from .wire import SENSOR_TOPICS, AudioChunk, CameraFrame, RadarPoints, Rejection, decode, decode_map

__all__ = ["RateMeter", "describe", "add_parser", "run"]


class RateMeter:
    """Intervals between the last ``window`` messages: average rate, min, max, std dev."""

    def __init__(self, window: int = 100):
        self.times: deque[int] = deque(maxlen=window + 1)

    def add(self, t_ns: int) -> None:
        self.times.append(int(t_ns))

    def report(self) -> dict | None:
        """None until two messages have arrived."""
        if len(self.times) < 2:
            return None
        gaps = np.diff(np.asarray(self.times, dtype=np.int64)) / 1e9
        mean = float(gaps.mean())
        return {"rate_hz": (1.0 / mean) if mean > 0 else float("inf"), "min_s": float(gaps.min()),
                "max_s": float(gaps.max()), "std_s": float(gaps.std()), "window": int(gaps.size)}


def describe(frames: list[bytes]) -> dict:
    """One message as a JSON-able map: a sensor message's header and payload summary, or a body."""
    topic = bytes(frames[0]).decode("ascii", "replace") if frames else ""
    if topic not in SENSOR_TOPICS:
        try:
            return decode_map(frames)[1]
        except (ValueError, msgpack.UnpackException) as exc:
            return {"topic": topic, "malformed": str(exc)}
    msg = decode(frames, shm=False)
    if isinstance(msg, Rejection):
        return {"topic": topic, "rejected": msg.reason, "detail": msg.detail}
    head = msgpack.unpackb(frames[1], raw=False, strict_map_key=False)
    payload: dict = {"bytes": len(frames[2])}
    if isinstance(msg, RadarPoints):
        payload["points"] = np.round(msg.points.astype(np.float64), 3).tolist()
    elif isinstance(msg, AudioChunk):
        s = msg.samples.astype(np.float64)
        payload.update(rms=round(float(np.sqrt(np.mean(s * s))) if s.size else 0.0, 5),
                       peak=round(float(np.abs(s).max()) if s.size else 0.0, 5))
    elif isinstance(msg, CameraFrame):
        payload["mean_bgr"] = [round(float(v), 1) for v in msg.image.reshape(-1, 3).mean(axis=0)]
    return {"topic": topic, **head, "payload": payload}


def add_parser(sub: argparse._SubParsersAction) -> None:
    """The ``topic`` subcommand with its ``hz`` and ``echo`` verbs."""
    t = sub.add_parser("topic", help="rate (hz) or content (echo) of a topic on an endpoint",
                       description="Subscribe to one topic (camera, radar, audio, fused, stats) on one endpoint "
                                   "and print its rate or its messages.")
    verbs = t.add_subparsers(dest="verb", required=True, metavar="VERB")
    for verb, text in (("hz", "print the topic's rate once a second"), ("echo", "print each message as JSON")):
        v = verbs.add_parser(verb, help=text, description=text)
        v.add_argument("topic", help="topic name: camera, radar, audio, fused, stats")
        v.add_argument("--endpoint", required=True, help="the publisher's endpoint, e.g. tcp://127.0.0.1:5551")
        v.add_argument("--timeout", type=float, default=None, metavar="S",
                       help="exit with status 1 after S seconds without a message")
        if verb == "hz":
            v.add_argument("--window", type=int, default=100, help="messages the statistics cover (default 100)")
            v.add_argument("--count", type=int, default=None, help="exit after this many reports")
            v.add_argument("--capture-time", action="store_true",
                           help="sensor topics: intervals between capture times instead of arrival times")
        else:
            v.add_argument("--count", type=int, default=None, help="exit after this many messages")
        v.set_defaults(func=run)


def _capture_time(m: TapMessage) -> int | None:
    try:
        head = msgpack.unpackb(m.frames[1], raw=False, strict_map_key=False)
        return int(head["t_capture_ns"])
    except Exception:  # a malformed header has no capture time: the message is not counted
        return None


def run(args: argparse.Namespace) -> int:
    """``fusion topic hz|echo``."""
    if args.verb == "hz" and args.window < 1:
        print("fusion topic: --window must be at least 1", file=sys.stderr)
        return 2
    tap = Tap([TapSource(args.endpoint, kind=args.topic)])
    meter = RateMeter(getattr(args, "window", 100))
    done = 0
    last_seen = time.monotonic()
    next_report = time.monotonic() + 1.0
    try:
        while args.count is None or done < args.count:
            batch = tap.poll(100)
            now = time.monotonic()
            if batch:
                last_seen = now
            elif args.timeout is not None and now - last_seen >= args.timeout:
                print(f"fusion topic: nothing on {args.topic!r} at {args.endpoint} for {args.timeout} s",
                      file=sys.stderr)
                return 1
            for m in batch:
                if m.topic != args.topic:
                    continue  # a longer topic sharing the prefix
                if args.verb == "echo":
                    print(json.dumps(describe(m.frames)), flush=True)
                    done += 1
                    if args.count is not None and done >= args.count:
                        break
                else:
                    t = _capture_time(m) if args.capture_time else m.t_recv_ns
                    if t is not None:
                        meter.add(t)
            if args.verb == "hz" and now >= next_report:
                next_report = now + 1.0
                rep = meter.report()
                if rep is None:
                    print("no new messages" if not batch else "waiting for a second message", flush=True)
                    continue
                print(f"average rate: {rep['rate_hz']:.3f}\n\tmin: {rep['min_s']:.3f}s max: {rep['max_s']:.3f}s "
                      f"std dev: {rep['std_s']:.5f}s window: {rep['window']}", flush=True)
                done += 1
    except KeyboardInterrupt:
        pass
    finally:
        tap.close()
    return 0
