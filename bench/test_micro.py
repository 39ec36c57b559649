"""Micro-benchmarks of the node's hot paths (pytest-benchmark): ``make bench``.

Run with ``pytest bench --benchmark-enable`` (``make bench``); under plain ``pytest`` the
benchmark fixture runs each body once, as a smoke test. Wire decode (inline and shared-memory
camera frames, radar, audio), synchronisation (one camera frame through the core's admission
and the reference policy), the audio ring (chunk writes, a window cut across the wrap-around),
the reference policy alone (add and poll at full history), preprocessing per modality (the
camera also without the runtime, at two frame sizes), each encoder and the fusion head.
"""

from __future__ import annotations

import time

import numpy as np
import pytest

from fusion_node.assembly import Member, ReferencePolicy
from fusion_node.audio_ring import AudioRing
from fusion_node.config import config_from_dict
from fusion_node.core import FusionCore
from fusion_node.cpu_runtime import ModelRuntime
from fusion_node.node import limit_threads
from fusion_node.preprocess import CameraPreprocess
from fusion_node.shm import ShmReader, ShmRingWriter, ring_name
from fusion_node.vocabulary import WIRE_AUDIO_RATE_HZ
from fusion_node.wire import AudioChunk, CameraFrame, RadarPoints, decode, encode

from .models import prepare, sample_inputs
from .synth import audio_signal, camera_frames, radar_frames


@pytest.fixture(scope="module")
def runtime():
    limit_threads(1)  # as the node runs: one OpenCV and one OpenBLAS thread

    manifest, _, _ = prepare()
    return ModelRuntime(manifest, provider="cpu", intra_op_threads=1)


@pytest.fixture(scope="module")
def raw():
    return {"camera": camera_frames(640, 480, count=1)[0], "radar": radar_frames(256, count=1)[0],
            "audio": audio_signal(1.0)}


def _frames(msg):
    # What a subscriber receives: plain bytes per frame (recv_multipart with copy=True).
    return [bytes(f) for f in encode(msg, t_publish_ns=msg.t_capture_ns)]


def test_decode_camera_640x480(benchmark, raw):
    frames = _frames(CameraFrame("cam0", 1, 10, 10, raw["camera"]))
    msg = benchmark(decode, frames)
    assert isinstance(msg, CameraFrame)


def test_decode_camera_shm_640x480(benchmark, raw, tmp_path):
    img = raw["camera"]
    with ShmRingWriter(ring_name("cam0", 1), 4, img.nbytes, directory=tmp_path) as ring:
        frames = encode(CameraFrame("cam0", 1, 10, 10, img), payload_sink=ring.write)
        reader = ShmReader(tmp_path)

        msg = benchmark(decode, frames, reader)
        assert isinstance(msg, CameraFrame) and np.array_equal(msg.image, img)


def test_decode_radar_256(benchmark, raw):
    frames = _frames(RadarPoints("radar0", 1, 10, 10, raw["radar"]))
    assert isinstance(benchmark(decode, frames), RadarPoints)


def test_decode_audio_20ms(benchmark, raw):
    frames = _frames(AudioChunk("mic0", 1, 10, 10, raw["audio"][:320]))
    assert isinstance(benchmark(decode, frames), AudioChunk)


def test_sync_add_camera_frame(benchmark, raw):
    """One camera frame through admission, buffering and the reference policy (no models)."""
    cfg = config_from_dict({"rig": "r", "sensors": [
        {"id": "cam0", "kind": "camera", "endpoint": "ipc:///x/c"},
        {"id": "radar0", "kind": "radar", "endpoint": "ipc:///x/r"}], "node": {"max_age_s": 1e6}})
    core = FusionCore(cfg)
    state = {"seq": 0, "t": time.monotonic_ns()}
    img = raw["camera"]

    def step():
        state["seq"] += 1
        state["t"] += 33_333_333
        msg = CameraFrame("cam0", state["seq"], state["t"], state["t"], img)
        return core.step(state["t"], [(state["t"], msg)])

    benchmark(step)
    assert core.sensors["cam0"].accepted >= 1


RING_RATE = WIRE_AUDIO_RATE_HZ
CHUNK = RING_RATE // 50  # 20 ms, as the sensors send
CHUNK_NS = 20_000_000


def test_audio_ring_write_20ms(benchmark, raw):
    ring = AudioRing(RING_RATE, 4.0)
    chunk = raw["audio"][:CHUNK]
    state = {"t": 0}

    def write():
        state["t"] += CHUNK_NS
        return ring.write(state["t"], chunk)

    assert benchmark(write) is None
    assert ring.gaps == 0


def test_audio_ring_window_1s_wrapped(benchmark, raw):
    """The model's one-second window, cut where it straddles the end of the ring's storage."""
    ring = AudioRing(RING_RATE, 4.0)
    signal = raw["audio"]
    for i in range(225):  # 4.5 s into a 4 s ring: the newest second wraps around
        ring.write(i * CHUNK_NS, signal[(i * CHUNK) % (len(signal) - CHUNK):][:CHUNK])
    assert (ring._written - RING_RATE) % ring.capacity > ring._written % ring.capacity  # wraps
    win = benchmark(ring.window, ring.end_ns, 1.0)
    assert win.coverage == 1.0 and len(win.samples) == RING_RATE


def test_reference_policy_add_poll(benchmark):
    """One radar (20 Hz) and one camera (30 Hz) message added and a poll, with full histories."""
    policy = ReferencePolicy("cam0", ["radar0", "radar1"], [], tolerance_ns=40_000_000,
                             deadline_ns=200_000_000, max_pending=8)
    state = {"t": 0, "seq": 0}

    def cycle():
        state["seq"] += 1
        t = state["t"] = state["t"] + 33_333_333
        for sid in ("radar0", "radar1"):
            policy.add(Member(sid, "radar", None, t - 50_000_000 + state["seq"] % 3, t))
        policy.add(Member("cam0", "camera", None, t, t))
        return policy.poll(t)

    for _ in range(100):  # histories full (64 each), intervals known
        cycle()
    benchmark(cycle)
    assert policy.counters["released_complete"] > 0


@pytest.mark.parametrize("size", [(640, 480), (1280, 720)])
def test_camera_preprocess(benchmark, size):
    pp = CameraPreprocess((96, 96))
    img = camera_frames(*size, count=1)[0]
    out = benchmark(pp, img)
    assert out.shape == (1, 3, 96, 96) and out.flags.c_contiguous


@pytest.mark.parametrize("modality", ["camera", "radar", "audio"])
def test_preprocess(benchmark, runtime, raw, modality):
    out = benchmark(runtime.preprocess, modality, raw[modality])
    assert all(isinstance(a, np.ndarray) for a in out)


@pytest.mark.parametrize("modality", ["camera", "radar", "audio"])
def test_encoder(benchmark, runtime, modality):
    inputs = sample_inputs(runtime)[modality]
    emb = benchmark(runtime.encode, modality, *inputs)
    assert emb.shape == (1, runtime.embedding_dim)


def test_fusion_head(benchmark, runtime):
    inputs = sample_inputs(runtime)
    emb = {m: runtime.encode(m, *inputs[m]) for m in inputs}
    out = benchmark(runtime.fuse, emb)
    assert out.probabilities.shape == (len(runtime.classes),)
