"""Sensor reader processes, run for real, checked from a subscriber on their sockets."""

from __future__ import annotations

import subprocess
import sys
import time

import numpy as np
import zmq

from fusion_node.vocabulary import WIRE_AUDIO_RATE_HZ
from fusion_node.wire import AudioChunk, CameraFrame, RadarPoints, decode, decode_jpeg
from sensors.samples import DEFAULT_CAMERA, DEFAULT_RADAR
from sensors.ti_mmwave import read_capture

from .conftest import ROOT, SAMPLES


def _collect(zctx, endpoint, topic, until, timeout=30.0):
    sub = zctx.socket(zmq.SUB)
    sub.setsockopt(zmq.LINGER, 0)
    sub.setsockopt(zmq.SUBSCRIBE, topic)
    sub.connect(endpoint)
    got = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and not until(got):
        if sub.poll(100):
            got.append(decode(sub.recv_multipart()))
    sub.close()
    return got


def test_radar_replay_publishes_every_frame_of_the_bundled_capture(ipc_dir, spawn, zctx):
    frames = read_capture(DEFAULT_RADAR)  # the sensor's default source
    assert len(frames) == 100
    ep = f"ipc://{ipc_dir}/radar"
    proc = spawn("sensor", "radar", "--endpoint", ep, "--frame-period-ms", "5", "--wait-subscriber", "20")
    msgs = _collect(zctx, ep, b"radar", lambda g: len(g) == len(frames))
    assert proc.p.wait(30) == 0
    assert all(isinstance(m, RadarPoints) for m in msgs)
    assert [m.frame_number for m in msgs] == [f.frame_number for f in frames]
    assert all(np.array_equal(m.points, f.points) for m, f in zip(msgs, frames))
    assert [m.seq for m in msgs] == list(range(len(frames)))
    stamps = np.diff([m.t_capture_ns for m in msgs])
    assert np.all(stamps == 5_000_000)  # scheduled capture times: exactly the frame period


def test_camera_file_playback_raw_and_jpeg(ipc_dir, spawn, zctx):
    video = DEFAULT_CAMERA
    for extra in ([], ["--jpeg", "80", "--resize", "320x180"]):
        ep = f"ipc://{ipc_dir}/cam{len(extra)}"
        proc = spawn("sensor", "camera", "--source", str(video), "--endpoint", ep, "--max-frames", "5",
                     "--fps", "50", "--wait-subscriber", "20", *extra)
        msgs = _collect(zctx, ep, b"camera", lambda g: len(g) == 5)
        assert proc.p.wait(30) == 0
        assert all(isinstance(m, CameraFrame) for m in msgs)
        assert all(decode_jpeg(m) is None for m in msgs)  # JPEG frames are decoded once admitted
        assert msgs[0].image.shape == ((272, 640, 3) if not extra else (180, 320, 3))
        assert msgs[0].encoding == ("bgr8" if not extra else "jpeg")
        assert msgs[0].image.std() > 10  # a real picture, not a blank frame


def test_audio_file_is_resampled_to_16k_in_20ms_chunks(ipc_dir, spawn, zctx):
    clip = SAMPLES / "audio" / "glass_break02_ufoai.ogg"  # 48 kHz stereo, 4 s
    ep = f"ipc://{ipc_dir}/mic"
    proc = spawn("sensor", "audio", "--source", str(clip), "--endpoint", ep, "--max-chunks", "25",
                 "--wait-subscriber", "20")
    msgs = _collect(zctx, ep, b"audio", lambda g: len(g) == 25)
    assert proc.p.wait(30) == 0
    assert all(isinstance(m, AudioChunk) and m.sample_rate_hz == WIRE_AUDIO_RATE_HZ and len(m.samples) == 320
               for m in msgs)
    assert np.all(np.diff([m.t_capture_ns for m in msgs]) == 20_000_000)
    assert max(np.abs(m.samples).max() for m in msgs) > 0.05


def test_bad_sources_fail_with_a_message_naming_them(tmp_path):
    corrupt = tmp_path / "corrupt.wav"
    corrupt.write_bytes(b"RIFF\x00\x00\x00\x00WAVEjunkjunk")
    garbage = tmp_path / "garbage.dat"
    garbage.write_bytes(bytes(range(256)) * 40)
    for argv, needle in ((["camera", "--source", str(tmp_path / "none.mp4")], "none.mp4"),
                         (["audio", "--source", str(corrupt)], "corrupt.wav"),
                         (["radar", "--source", str(garbage)], "garbage.dat")):
        proc = subprocess.run([sys.executable, "-m", "fusion_node", "sensor", *argv, "--endpoint",
                               f"ipc://{tmp_path}/x"], cwd=ROOT, capture_output=True, text=True, timeout=60)
        assert proc.returncode == 1, (argv, proc.stderr)
        assert needle in proc.stderr and "Traceback" not in proc.stderr, proc.stderr


def test_every_command_has_help():
    for argv in ([], ["demo"], ["node"], ["sensor"], ["sensor", "camera"], ["sensor", "radar"],
                 ["sensor", "audio"], ["events"]):
        proc = subprocess.run([sys.executable, "-m", "fusion_node", *argv, "--help"], cwd=ROOT,
                              capture_output=True, text=True, timeout=60)
        assert proc.returncode == 0 and "usage: fusion" in proc.stdout, argv
