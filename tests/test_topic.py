"""``fusion topic hz|echo`` against real sensor processes."""

from __future__ import annotations

import json
import re
import subprocess
import sys

import pytest

from .conftest import ROOT


def _topic(*args: str) -> subprocess.CompletedProcess:
    proc = subprocess.run([sys.executable, "-m", "fusion_node", "topic", *args, "--timeout", "60"], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc


def test_hz_reports_the_rate_of_an_audio_reader(ipc_dir, spawn):
    endpoint = f"ipc://{ipc_dir}/mic0"
    spawn("sensor", "audio", "--endpoint", endpoint, "--loop")
    out = _topic("hz", "audio", "--endpoint", endpoint, "--count", "2").stdout
    rates = [float(r) for r in re.findall(r"average rate: ([0-9.]+)", out)]
    assert len(rates) == 2, out
    assert rates[-1] == pytest.approx(50.0, rel=0.2)  # 20 ms chunks
    assert re.search(r"min: [0-9.]+s max: [0-9.]+s std dev: [0-9.]+s window: \d+", out)


def test_echo_prints_headers_and_payloads_of_radar_and_shared_memory_camera_frames(ipc_dir, spawn):
    radar, camera = f"ipc://{ipc_dir}/radar0", f"ipc://{ipc_dir}/cam0"
    spawn("sensor", "radar", "--endpoint", radar, "--loop")
    spawn("sensor", "camera", "--endpoint", camera, "--loop")  # raw frames over ipc: shared memory
    lines = [json.loads(x) for x in _topic("echo", "radar", "--endpoint", radar, "--count", "3").stdout.splitlines()]
    assert len(lines) == 3
    assert [m["seq"] for m in lines] == list(range(lines[0]["seq"], lines[0]["seq"] + 3))
    for m in lines:
        assert m["topic"] == "radar" and m["sensor_id"] == "radar0"
        assert len(m["payload"]["points"]) == m["num_points"] and m["payload"]["bytes"] == 24 * m["num_points"]
    frames = [json.loads(x) for x in _topic("echo", "camera", "--endpoint", camera, "--count", "2").stdout.splitlines()]
    for m in frames:
        assert "shm" not in m and m["encoding"] == "bgr8"
        assert m["payload"]["bytes"] == m["width_px"] * m["height_px"] * 3 and len(m["payload"]["mean_bgr"]) == 3


def test_a_silent_endpoint_times_out_with_status_1(ipc_dir):
    proc = subprocess.run([sys.executable, "-m", "fusion_node", "topic", "echo", "camera", "--endpoint",
                           f"ipc://{ipc_dir}/nobody", "--timeout", "0.5"], cwd=ROOT, capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 1 and "nothing on 'camera'" in proc.stderr
