"""The benchmark: a short real `fusion bench` run, its JSON keys and report; the search and histogram logic."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from bench.hist import LatencyHistogram
from bench.report import render
from bench.run import FRAME_PERIOD_MS, _expected_frames, find_max_rigs

from .conftest import ROOT

STAGES = ("transport", "sync_wait", "preprocess", "encode_camera", "encode_radar", "encode_audio", "head", "publish",
          "deliver")


def _check_result(res: dict, rigs: int) -> None:
    for k in ("p50", "p90", "p99", "p999", "max"):
        assert isinstance(res["e2e_ms"][k], float) and res["e2e_ms"][k] > 0, (k, res["e2e_ms"])
    assert res["e2e_ms"]["p50"] <= res["e2e_ms"]["p99"] <= res["e2e_ms"]["max"]
    for stage in STAGES:
        s = res["stages_ms"][stage]
        assert s["n"] > 0 and s["p50"] is not None and s["p99"] is not None, stage
    # A drop is an expected frame with no event: the count agrees with its own detail and with the
    # misses the latency histogram counted as infinitely late.
    detail = res["drops_detail"]
    assert res["drops"] == detail["missed"] == detail["frames_expected"] - detail["events_in_window"]
    assert res["e2e_with_misses_ms"]["misses"] == res["drops"]
    assert res["rigs"] == rigs
    assert "max_rigs_realtime" in res
    assert res["baselines"]["ort_step_ms"] > 0 and res["baselines"]["torch_step_ms"] > 0
    assert res["baselines"]["max_abs_diff"] < 1e-4  # same weights on both sides
    for name in ("zmq_copy", "zmq_zerocopy", "shm", "shm_inplace", "ecal", "zenoh"):
        entry = res["transport"][name]
        if entry.get("available") is False:
            assert name in ("ecal", "zenoh") and entry["reason"]
            continue
        for size in ("640x480", "1920x1080"):
            assert entry[size]["p50_ms"] > 0 and entry[size]["p99_ms"] >= entry[size]["p50_ms"], (name, size)
    m = res["machine"]
    assert m["cpu"] and m["cores"] >= 1
    assert "onnxruntime-gpu" in m["versions"] or "onnxruntime" in m["versions"]
    assert res["provider"] == "CPUExecutionProvider"
    assert res["cold_start"]["node_ready_ms"] > 0 and res["cold_start"]["first_event_ms"] > 0
    assert res["drops_detail"]["frames_expected"] >= rigs * 30 * 2  # ~3 s of 30 Hz per rig
    assert res["publishers"]["camera"]["shm"] is True  # ipc endpoints: frames went through the ring
    assert set(res["targets"]) >= {"e2e_p50_ms", "e2e_p99_ms", "ort_speedup_over_torch"}


def test_fusion_bench_two_rigs_writes_json_and_report(tmp_path):
    out = tmp_path / "out.json"
    report = tmp_path / "report"
    proc = subprocess.run([sys.executable, "-m", "fusion_node", "bench", "--duration", "3", "--rigs", "2",
                           "--warmup", "1", "--json", str(out), "--report", str(report), "--transport-frames", "12",
                           "--quiet"], cwd=ROOT, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    res = json.loads(out.read_text())
    _check_result(res, rigs=2)
    assert res["events_total"] >= res["drops_detail"]["events_in_window"] > 0
    page = (report / "index.html").read_text()
    assert page.count("<svg") >= 3 and "latency" in page and "<script" not in page and "http" not in page.split(
        "xmlns=")[0]
    assert "e2e" in proc.stdout  # the summary


@pytest.mark.slow
def test_fusion_bench_finds_max_rigs(tmp_path):
    out = tmp_path / "out.json"
    proc = subprocess.run([sys.executable, "-m", "fusion_node", "bench", "--duration", "2", "--warmup", "1",
                           "--find-max-rigs", "--max-rigs-limit", "4", "--no-transports", "--json", str(out),
                           "--quiet"], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    res = json.loads(out.read_text())
    trials = res["max_rigs_search"]["trials"]
    assert [t["rigs"] for t in trials][:1] == [1]
    # The answer is the largest rig count whose trial ran in real time (0 if none did).
    assert res["max_rigs_realtime"] == max((t["rigs"] for t in trials if t["realtime"]), default=0) <= 4


def _fake(limit_ok: int):
    calls = []

    def run(n: int) -> dict:
        calls.append(n)
        p99 = 5.0 if n <= limit_ok else FRAME_PERIOD_MS * 2
        return {"e2e_with_misses_ms": {"p99": p99}, "e2e_ms": {"p50": 1.0}, "drops": 0}

    return run, calls


@pytest.mark.parametrize("limit_ok, expected_calls", [
    (5, [1, 2, 4, 8, 6, 5]),
    (1, [1, 2]),
    (8, [1, 2, 4, 8, 16, 12, 10, 9]),
    (0, [1]),
])
def test_max_rigs_search_doubles_then_bisects(limit_ok, expected_calls):
    run, calls = _fake(limit_ok)
    found = find_max_rigs(run, limit=64, log=lambda s: None)
    assert found["max_rigs_realtime"] == limit_ok
    assert calls == expected_calls


def test_max_rigs_search_stops_at_the_limit():
    run, calls = _fake(1000)
    assert find_max_rigs(run, limit=16, log=lambda s: None)["max_rigs_realtime"] == 16
    assert calls == [1, 2, 4, 8, 16]


def test_a_miss_is_infinitely_late():
    h = LatencyHistogram()
    for v in range(1, 100):
        h.record(v / 10)
    assert h.summary()["p99"] == pytest.approx(9.8, rel=0.01)
    h.record_miss(2)  # 2 of 101 frames never produced an event: p99 is not a number any more
    s = h.summary()
    assert s["p99"] is None and s["max"] is None and s["misses"] == 2 and s["p50"] == pytest.approx(5.1, rel=0.01)
    assert h.cdf()[-1][0] == pytest.approx(9.9, rel=0.01)  # misses are not drawn


def test_expected_frames_follow_each_rigs_schedule():
    period = 1_000_000_000 // 30
    exp = _expected_frames(2, 0, period * 3, period * 6, period * 10)
    assert sorted(exp["rig0"]) == [period * k for k in (3, 4, 5)]
    assert sorted(exp["rig1"]) == [period // 2 + period * k for k in (3, 4, 5)]


def test_report_renders_without_measurements():
    page = render({"config": {}, "machine": {}, "e2e_ms": {}, "stages_ms": {}, "targets": {}})
    assert page.startswith("<!doctype html>") and "not measured" in page
