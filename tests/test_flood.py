"""A real node process under a flood of hostile messages through real ZeroMQ sockets.

The test binds the three sensor endpoints itself and publishes valid camera (raw, JPEG and
shared-memory), radar and audio streams with malformed, mutated, forged and oversized messages
mixed in. No valid message may be lost, and every hostile one must be counted in the stats
topic under the reason the decoder gives it, against the sensor whose endpoint sent it.
"""

from __future__ import annotations

import os
import signal
import time
from collections import Counter

import cv2
import msgpack
import numpy as np
import yaml
import zmq

from fusion_node.config import config_from_dict
from fusion_node.node import FusionNode
from fusion_node.shm import ShmRingWriter, ring_name
from fusion_node.wire import (
    TOPICS,
    AudioChunk,
    CameraFrame,
    RadarPoints,
    Rejection,
    decode,
    decode_map,
    encode,
)

from .test_pipeline import _rig, _subscribe, _wait_event

KINDS = {"cam0": "camera", "radar0": "radar", "mic0": "audio"}


def _bind(zctx, ipc_dir, sid, hwm=1_000_000):
    pub = zctx.socket(zmq.XPUB)
    pub.setsockopt(zmq.SNDHWM, hwm)
    pub.setsockopt(zmq.LINGER, 0)
    pub.bind(f"ipc://{ipc_dir}/{sid}")
    return pub


def _valid(sid, seq, t, run, rng, jpeg=False):
    kind = KINDS[sid]
    if kind == "camera":
        img = rng.integers(0, 255, (48, 64, 3), dtype=np.uint8)
        if jpeg:
            return CameraFrame(sid, seq, t, t, img, encoding="jpeg", jpeg=cv2.imencode(".jpg", img)[1].tobytes(),
                               run_id=run)
        return CameraFrame(sid, seq, t, t, img, run_id=run)
    if kind == "radar":
        return RadarPoints(sid, seq, t, t, rng.normal(size=(5, 6)).astype(np.float32), 1, True, run_id=run)
    return AudioChunk(sid, seq, t, t, rng.uniform(-0.5, 0.5, 320).astype(np.float32), 16000, run_id=run)


def _deep(frames, depth=1000):
    head = msgpack.unpackb(frames[1], raw=False)
    head["schema"] = "\0deep\0"
    return [frames[0], msgpack.packb(head).replace(msgpack.packb("\0deep\0"), b"\x91" * depth + b"\xc0"), frames[2]]


BAD_VALUES = [True, False, 1.0, -1, 2**64 - 1, 2**32, "7", None, [1, 2], {"a": 1}, b"blob", float("nan")]


def _hostile(rng, sid, n):
    """``n`` hostile messages for the endpoint of ``sid`` and the reason each must be counted under."""
    out = []
    other = {"cam0": "radar0", "radar0": "mic0", "mic0": "cam0"}[sid]
    while len(out) < n:
        base = [bytes(f) for f in encode(_valid(sid, int(rng.integers(0, 1000)), 10**9, 5, rng))]
        kind = int(rng.integers(0, 12))
        if kind == 0:
            frames = [base[0], rng.bytes(int(rng.integers(0, 80))), rng.bytes(int(rng.integers(0, 80)))]
        elif kind == 1:
            head = msgpack.unpackb(base[1], raw=False)
            head[rng.choice(sorted(head))] = BAD_VALUES[int(rng.integers(0, len(BAD_VALUES)))]
            frames = [base[0], msgpack.packb(head, use_bin_type=True), base[2]]
        elif kind == 2:
            raw = bytearray(base[1])
            for _ in range(int(rng.integers(1, 4))):
                raw[int(rng.integers(0, len(raw)))] = int(rng.integers(0, 256))
            frames = [base[0], bytes(raw), base[2]]
        elif kind == 3:
            frames = [base[0], base[1], base[2][: int(rng.integers(0, max(1, len(base[2]))))] + b"\x01"]
        elif kind == 4:
            frames = base + [b""] * int(rng.integers(1, 60))
        elif kind == 5:
            frames = [rng.choice([b"lidar", b"fused", b"cameraX", b"\xff\xfe"]), base[1], base[2]]
        elif kind == 6:
            frames = _deep(base)
        elif kind == 7:
            frames = [base[0], msgpack.packb({"pad": "z" * 250, "more": ["y" * 200] * 30}), base[2]]
        elif kind == 8:  # a valid message naming another sensor: forged, counted against this endpoint
            out.append(([bytes(f) for f in encode(_valid(other, 1, time.monotonic_ns(), 9, rng))], "unknown_sensor"))
            continue
        elif kind == 9:  # valid but captured long ago, under a new run_id: must not reset anything
            out.append(([bytes(f) for f in encode(_valid(sid, 0, 1, int(rng.integers(10, 2**32)), rng))],
                        "timestamp_past"))
            continue
        elif kind == 10:
            head = msgpack.unpackb(base[1], raw=False)
            head["shm"] = {"ring": ring_name(sid, 3, int(rng.integers(0, 9))), "slot": 0, "gen": 2,
                           "size": head["payload_bytes"]}
            frames = [base[0], msgpack.packb(head), b""]
        else:
            if KINDS[sid] != "camera":
                continue
            bomb = bytearray(cv2.imencode(".jpg", np.zeros((16, 16, 3), np.uint8))[1].tobytes())
            sof = bomb.index(b"\xff\xc0")
            bomb[sof + 5:sof + 9] = (16384).to_bytes(2, "big") * 2
            frames = [bytes(f) for f in encode(CameraFrame(sid, 1, 1, 1, np.zeros((48, 64, 3), np.uint8),
                                                           encoding="jpeg", jpeg=bytes(bomb)))]
        got = decode(frames, False)
        if isinstance(got, Rejection):
            out.append((frames, got.reason))
    return out


def test_flood_through_real_sockets_loses_no_valid_message_and_counts_every_hostile_one(ipc_dir, spawn, zctx):
    cfg_path, _ = _rig(ipc_dir)
    node = spawn("node", "--config", str(cfg_path))
    ready = node.json_line("event", "ready")
    events = _subscribe(zctx, ready["publish_endpoint"], b"fused", b"stats")
    pubs = {sid: _bind(zctx, ipc_dir, sid) for sid in KINDS}
    for pub in pubs.values():
        assert pub.poll(20_000), "the node never subscribed"
        assert pub.recv() == b"\x01"  # subscribed to everything: nothing is filtered unseen
    rng = np.random.default_rng(11)
    hostile = {sid: _hostile(rng, sid, 4000) for sid in KINDS}
    expected = {sid: Counter(reason for _, reason in msgs) for sid, msgs in hostile.items()}
    sent_valid = Counter()
    ring = ShmRingWriter(ring_name("cam0", 77), 16, 240 * 320 * 3)
    seqs = Counter()
    n_events = 0
    try:
        t_next = time.monotonic_ns()
        for tick in range(150):  # 3 s: audio every 20 ms, camera and radar every 40 ms
            while time.monotonic_ns() < t_next:
                if events.poll(2):
                    topic, _ = decode_map(events.recv_multipart())
                    n_events += topic == "fused"
            t_next += 20_000_000
            due = ["mic0"] + (["cam0", "radar0"] if tick % 2 == 0 else [])
            for sid in due:
                now = time.monotonic_ns()
                msg = _valid(sid, seqs[sid], now, 77, rng, jpeg=tick % 6 == 2)
                sink = ring.write if sid == "cam0" and tick % 6 == 4 else None
                if sink is not None:  # a large frame through the shared-memory ring
                    msg.image = rng.integers(0, 255, (240, 320, 3), dtype=np.uint8)
                pubs[sid].send_multipart(encode(msg, payload_sink=sink), copy=False)
                seqs[sid] += 1
                sent_valid[sid] += 1
            for sid in KINDS:
                for frames, _ in hostile[sid][tick * 26:(tick + 1) * 26] if tick < 149 else hostile[sid][tick * 26:]:
                    pubs[sid].send_multipart(frames)

        def all_counted(topic, body):
            if topic != "stats":
                return False
            s = body["sensors"]
            return all(s[sid]["accepted"] == sent_valid[sid] and sum(s[sid]["rejected"].values()) ==
                       sum(expected[sid].values()) for sid in KINDS)

        _wait_event(events, all_counted, timeout=60, what="every message accounted for")
    finally:
        ring.close()
    node.stop()
    final = node.json_line("event", "final_stats")
    for sid in KINDS:
        s = final["sensors"][sid]
        assert s["accepted"] == sent_valid[sid], (sid, s)
        assert s["seq_gaps"] == 0 and s["dropped"] == 0 and s["restarts"] == 0 and s["resyncs"] == 0, (sid, s)
        assert s["clock_jumps"] == 0 and s["disconnects"] == 0, (sid, s)
        assert Counter(s["rejected"]) == expected[sid], (sid, s["rejected"], expected[sid])
    assert final["rejected_unattributed"] == {}
    assert final["shm"]["resolved"] == sent_valid["cam0"] // 3 and final["shm"]["rings_open"] == 1
    assert final["shm"]["refused"] == {"missing": sum(1 for sid in KINDS for f, r in hostile[sid]
                                                      if r == "bad_handle" and b"shm" in f[1])}
    assert final["loop"]["turns"] > 0 and "stalls" in final["loop"]
    assert n_events > 0
    total = sum(len(h) for h in hostile.values())
    kinds = Counter(r for h in hostile.values() for _, r in h)
    print(f"\nflood: {total} hostile + {sum(sent_valid.values())} valid messages, reasons {dict(kinds)}")


def _vm_hwm_kb(pid: int) -> int:
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    raise AssertionError("no VmHWM")


def test_a_frame_over_the_topic_limit_is_never_buffered_and_the_sensor_comes_back(ipc_dir, spawn, zctx):
    cfg_path, _ = _rig(ipc_dir)
    node = spawn("node", "--config", str(cfg_path))
    node.json_line("event", "ready")
    pub = _bind(zctx, ipc_dir, "radar0")
    assert pub.poll(20_000) and pub.recv() == b"\x01"
    rng = np.random.default_rng(3)
    before = _vm_hwm_kb(node.p.pid)
    frames = [bytes(f) for f in encode(_valid("radar0", 0, time.monotonic_ns(), 1, rng))]
    oversized = 64 << 20
    assert oversized > TOPICS["radar"].max_frame_bytes
    pub.send_multipart([frames[0], frames[1], bytes(oversized)], copy=False)
    # ZeroMQ drops the connection on the oversized frame; the node counts it and connects again.
    assert pub.poll(20_000) and pub.recv() == b"\x00"
    assert pub.poll(20_000) and pub.recv() == b"\x01"
    for seq in range(10):
        pub.send_multipart(encode(_valid("radar0", seq, time.monotonic_ns(), 2, rng)))
    parts = [frames[0], frames[1], frames[2]] + [b""] * 5000  # too many parts: read, dropped, counted
    pub.send_multipart(parts)
    sub = _subscribe(zctx, f"ipc://{ipc_dir}/events", b"stats")
    stats = _wait_event(sub, lambda t, b: b["sensors"]["radar0"]["accepted"] == 10 and
                        b["sensors"]["radar0"]["rejected"].get("multipart_shape") == 1, timeout=30,
                        what="radar back after the disconnect")
    grown_mb = (_vm_hwm_kb(node.p.pid) - before) / 1024
    assert stats["sensors"]["radar0"]["disconnects"] == 1
    assert grown_mb < 32, f"node peak memory grew {grown_mb:.0f} MB for a {oversized >> 20} MB frame"


def test_high_water_mark_drops_show_as_seq_gaps(ipc_dir, spawn, zctx):
    cfg_path, _ = _rig(ipc_dir)
    node = spawn("node", "--config", str(cfg_path))
    node.json_line("event", "ready")
    pub = _bind(zctx, ipc_dir, "mic0", hwm=TOPICS["audio"].queue_bound)  # a sensor's own send HWM
    assert pub.poll(20_000) and pub.recv() == b"\x01"
    rng = np.random.default_rng(5)
    os.kill(node.p.pid, signal.SIGSTOP)  # the node stalls: queues fill, the publisher drops
    try:
        t0 = time.monotonic_ns()
        for seq in range(20_000):
            pub.send_multipart(encode(_valid("mic0", seq, t0 + seq * 20_000, 1, rng)))
    finally:
        os.kill(node.p.pid, signal.SIGCONT)
    sub = _subscribe(zctx, f"ipc://{ipc_dir}/events", b"stats")
    last = _valid("mic0", 20_000, time.monotonic_ns(), 1, rng)
    stats = None
    deadline = time.monotonic() + 30
    while stats is None and time.monotonic() < deadline:
        pub.send_multipart(encode(last))  # the last one tells the node how many came before it
        last = _valid("mic0", last.seq + 1, time.monotonic_ns(), 1, rng)
        if sub.poll(300):
            topic, body = decode_map(sub.recv_multipart())
            m = body["sensors"]["mic0"]
            if m["accepted"] + m["seq_gaps"] + sum(m["rejected"].values()) == last.seq:
                stats = m
    assert stats is not None
    assert stats["seq_gaps"] > 1000, stats  # lost at the high-water marks, and said so


def test_turns_longer_than_the_bound_are_counted_as_stalls(ipc_dir):
    for stall_ms, stalled in ((1e-6, True), (60_000.0, False)):
        cfg = config_from_dict(yaml.safe_load(yaml.safe_dump({
            **_rig(ipc_dir)[1], "node": {"publish_endpoint": f"ipc://{ipc_dir}/ev", "stall_ms": stall_ms}})))
        node = FusionNode(cfg, context=zmq.Context())
        turns = iter(range(5))
        try:
            final = node.run(lambda: next(turns, None) is None)
        finally:
            node.close()
            node.ctx.term()
        assert final["loop"]["turns"] == 5 and final["loop"]["stall_ms"] == stall_ms
        assert final["loop"]["stalls"] == (5 if stalled else 0)
