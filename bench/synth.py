"""Synthetic sensor publishers for the benchmark: one process per modality, one publisher per rig.

Each publisher is the real :class:`sensors.publisher.SensorPublisher` (so the shared-memory path
is used on ``ipc://`` endpoints exactly as a real camera process would use it) fed from
precomputed content: camera frames (``--size``, default 640x480 BGR at 30 Hz), radar frames of
up to ``--points`` points (20 Hz) and 20 ms audio chunks at 16 kHz (50 Hz).

Open loop: every message is stamped with its *intended* capture time ``t0 + phase + i *
period`` and sent as soon as possible after it, whatever the node does; a publisher that falls
behind catches up without skipping, so the lateness shows in the measured latency instead of
being hidden (no coordinated omission). The rigs' schedules are spread over one period so
that N rigs do not all send in the same instant.

Protocol on stdout (JSON lines): ``{"event": "ready"}`` once every publisher has a subscriber,
then ``{"event": "done", "sent": {...}, "t_first_ns": ..., "behind_max_ms": ...}``.
"""

from __future__ import annotations

import argparse
import heapq
import json
import sys
import time

import numpy as np

from fusion_node.vocabulary import MODALITIES, WIRE_AUDIO_RATE_HZ
from fusion_node.wire import TOPICS, AudioChunk, CameraFrame, RadarPoints
from sensors.publisher import SensorPublisher, install_stop_handler, sleep_until

# Publishers run at the topics' nominal rates (camera 30 Hz, radar 20 Hz, audio 50 Hz).
PERIOD_NS = {kind: TOPICS[kind].period_ns for kind in MODALITIES}
AUDIO_CHUNK = WIRE_AUDIO_RATE_HZ * PERIOD_NS["audio"] // 1_000_000_000  # samples per chunk (320)


def camera_frames(width: int, height: int, count: int = 4, seed: int = 0) -> list[np.ndarray]:
    """A few textured frames with a bright moving square: cheap to cycle, not compressible noise."""
    rng = np.random.default_rng(seed)
    base = rng.integers(0, 255, (height, width, 3), dtype=np.uint8)
    frames = []
    for k in range(count):
        f = base.copy()
        s = max(8, min(width, height) // 6)
        x = (k * width // count) % max(1, width - s)
        y = (k * height // (2 * count)) % max(1, height - s)
        f[y:y + s, x:x + s] = 255
        frames.append(f)
    return frames


def radar_frames(max_points: int, count: int = 16, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed + 1)
    out = []
    for _ in range(count):
        n = int(rng.integers(max_points // 2, max_points + 1))
        pts = np.empty((n, 6), dtype=np.float32)
        pts[:, 0] = rng.uniform(-5, 5, n)
        pts[:, 1] = rng.uniform(0.5, 12, n)
        pts[:, 2] = rng.uniform(-1, 2, n)
        pts[:, 3] = rng.normal(0, 1.5, n)
        pts[:, 4] = rng.uniform(5, 40, n)
        pts[:, 5] = rng.uniform(-80, -60, n)
        out.append(pts)
    return out


def audio_signal(seconds: float = 2.0, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed + 2)
    t = np.arange(int(WIRE_AUDIO_RATE_HZ * seconds)) / WIRE_AUDIO_RATE_HZ
    x = 0.2 * np.sin(2 * np.pi * 440.0 * t) + 0.05 * rng.standard_normal(t.size)
    return x.astype(np.float32)


def _parse_size(text: str) -> tuple[int, int]:
    w, h = (int(v) for v in text.lower().split("x"))
    return w, h


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.synth", description=__doc__.splitlines()[0])
    p.add_argument("--kind", required=True, choices=sorted(PERIOD_NS))
    p.add_argument("--sensor", action="append", required=True, metavar="ID=ENDPOINT",
                   help="one per rig: the sensor id and the endpoint to bind")
    p.add_argument("--seconds", type=float, required=True, help="how long to publish")
    p.add_argument("--size", type=_parse_size, default=(640, 480), metavar="WxH")
    p.add_argument("--points", type=int, default=256, help="radar: largest number of points per frame")
    p.add_argument("--wait-subscriber", type=float, default=60.0, metavar="S")
    p.add_argument("--no-shm", action="store_true", help="never use the shared-memory path")
    args = p.parse_args(argv)
    stop = install_stop_handler()

    pubs = []
    for spec in args.sensor:
        sid, _, endpoint = spec.partition("=")
        pubs.append(SensorPublisher(args.kind, endpoint, sid, use_shm=False if args.no_shm else None))
    try:
        for pub in pubs:
            if not pub.wait_for_subscriber(args.wait_subscriber):
                print(json.dumps({"event": "error", "error": f"{pub.sensor_id}: no subscriber"}), flush=True)
                return 1
        print(json.dumps({"event": "ready", "kind": args.kind, "sensors": [p.sensor_id for p in pubs]}), flush=True)

        if args.kind == "camera":
            content = camera_frames(*args.size)
        elif args.kind == "radar":
            content = radar_frames(args.points)
        else:
            content = audio_signal()
        period = PERIOD_NS[args.kind]
        n = len(pubs)
        # Start on a 100 ms boundary (a common multiple of the three periods) so the three
        # modality processes of a rig start in step; rig i is shifted by i/n of a camera period.
        t0 = (time.monotonic_ns() // 100_000_000 + 2) * 100_000_000
        end = t0 + int(args.seconds * 1e9)
        queue = [(t0 + (i * PERIOD_NS["camera"]) // n, i, 0) for i in range(n)]
        heapq.heapify(queue)
        behind_max = 0
        sent = [0] * n
        while queue and not stop():
            due, i, k = heapq.heappop(queue)
            if due >= end:
                continue
            sleep_until(due, stop)
            behind_max = max(behind_max, time.monotonic_ns() - due)
            pub = pubs[i]
            if args.kind == "camera":
                msg = CameraFrame(pub.sensor_id, 0, due, 0, content[k % len(content)])
            elif args.kind == "radar":
                msg = RadarPoints(pub.sensor_id, 0, due, 0, content[k % len(content)], frame_number=k,
                                  has_side_info=True)
            else:
                off = (k * AUDIO_CHUNK) % (len(content) - AUDIO_CHUNK)
                # An audio chunk is stamped with its first sample and can only leave once its last
                # sample exists: the schedule is the chunk's end.
                msg = AudioChunk(pub.sensor_id, 0, due - period, 0, content[off:off + AUDIO_CHUNK],
                                   WIRE_AUDIO_RATE_HZ)
            pub.publish(msg)
            sent[i] += 1
            heapq.heappush(queue, (due + period, i, k + 1))
        print(json.dumps({"event": "done", "kind": args.kind, "t0_ns": t0,
                          "sent": {p.sensor_id: s for p, s in zip(pubs, sent)},
                          "shm": any(p.ring is not None for p in pubs),
                          "behind_max_ms": round(behind_max / 1e6, 3)}), flush=True)
    finally:
        for pub in pubs:
            pub.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
