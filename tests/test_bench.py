"""The benchmark: a short real `fusion bench` run, its JSON keys and report; the search, histogram and
bundle-comparison logic."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from bench.compare import run_pairs, summarise
from bench.hist import LatencyHistogram
from bench.report import render
from bench.run import FRAME_PERIOD_MS, _expected_frames, find_max_rigs
from fusion_node.paths import SHIPPED_MODELS

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


def _pairs(candidate_over_baseline: list[float], baseline_ms: float = 5.0) -> list[dict]:
    rows = []
    for k, ratio in enumerate(candidate_over_baseline):
        for bundle, ms in (("baseline", baseline_ms), ("candidate", baseline_ms * ratio)):
            rows.append({"pair": k, "bundle": bundle, "e2e_p50_ms": ms, "e2e_p99_ms": ms * 3,
                         "e2e_excl_sync_wait_p50_ms": None})
    return rows


def test_compare_judges_each_figure_by_the_ratios_within_its_pairs():
    slower = summarise(_pairs([1.10, 1.12, 1.08, 1.20, 1.09, 1.11]), tolerance=0.05)["e2e_p50_ms"]
    assert slower["ratios"] == [1.1, 1.12, 1.08, 1.2, 1.09, 1.11]
    assert slower["median_ratio"] == pytest.approx(1.105) and slower["min_ratio"] == 1.08
    assert slower["pairs_slower"] == 6 and slower["sign_test_p"] == pytest.approx(1 / 64, abs=1e-4)
    assert slower["verdict"] == "worse"
    # The same slowdown in only three of six pairs: the load, not the bundle, may have done it.
    mixed = summarise(_pairs([1.10, 0.95, 1.12, 1.00, 1.09, 1.06]), tolerance=0.05)["e2e_p50_ms"]
    assert mixed["median_ratio"] == pytest.approx(1.075) and mixed["pairs_slower"] == 4
    assert mixed["sign_test_p"] == pytest.approx(22 / 64, abs=1e-4) and mixed["verdict"] == "not settled"
    same = summarise(_pairs([1.03, 0.97, 1.08, 0.99, 1.01]), tolerance=0.05)["e2e_p99_ms"]
    assert same["median_ratio"] == pytest.approx(1.01) and same["verdict"] == "no worse"
    # A figure no run measured is said to be so, not judged.
    assert summarise(_pairs([1.0]), tolerance=0.05)["e2e_excl_sync_wait_p50_ms"]["verdict"] == "not measured"


def test_compare_alternates_which_bundle_runs_first():
    calls = []

    def run(manifest, label):
        calls.append(manifest.name)
        return {"e2e_ms": {"p50": 4.0 if manifest.name == "old" else 5.0}, "drops": 0}

    rows = run_pairs(run, Path("old"), Path("new"), pairs=3)
    assert calls == ["old", "new", "new", "old", "old", "new"]
    assert [(r["pair"], r["position"], r["bundle"]) for r in rows][:4] == [
        (0, 0, "baseline"), (0, 1, "candidate"), (1, 0, "candidate"), (1, 1, "baseline")]
    assert summarise(rows, 0.05)["e2e_p50_ms"]["ratios"] == [1.25, 1.25, 1.25]


def test_fusion_bench_compare_times_two_real_bundles(tmp_path, untrained_models):
    out, report = tmp_path / "cmp.json", tmp_path / "report"
    proc = subprocess.run([sys.executable, "-m", "fusion_node", "bench", "--models", str(SHIPPED_MODELS),
                           "--compare", str(untrained_models), "--pairs", "2", "--duration", "1", "--warmup", "0.5",
                           "--json", str(out), "--report", str(report), "--quiet"],
                          cwd=ROOT, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    c = json.loads(out.read_text())["compare"]
    assert c["baseline"] == str(untrained_models) and c["candidate"] == str(SHIPPED_MODELS)
    assert [(r["pair"], r["bundle"]) for r in c["runs"]] == [(0, "baseline"), (0, "candidate"), (1, "candidate"),
                                                             (1, "baseline")]
    for name in ("e2e_p50_ms", "e2e_p99_ms", "e2e_excl_sync_wait_p50_ms"):
        runs = {(r["pair"], r["bundle"]): r[name] for r in c["runs"]}
        assert all(v > 0 for v in runs.values()), (name, runs)
        want = [round(runs[(k, "candidate")] / runs[(k, "baseline")], 4) for k in (0, 1)]
        assert c["figures"][name]["ratios"] == want
        assert c["figures"][name]["verdict"] in ("no worse", "worse", "not settled")
        assert f"{name}: candidate / baseline median" in proc.stdout
    stages = c["stage_p50_ratios"]
    assert set(stages) >= {"preprocess", "encode_camera", "encode_radar", "encode_audio", "head"}
    for stage in ("encode_camera", "head"):
        runs = {(r["pair"], r["bundle"]): r["stages_p50_ms"][stage] for r in c["runs"]}
        ratios = sorted(runs[(k, "candidate")] / runs[(k, "baseline")] for k in (0, 1))
        assert stages[stage] == pytest.approx(sum(ratios) / 2, abs=1e-4)  # the median of two
    page = (report / "index.html").read_text()
    assert "two bundles compared" in page and page.count("<tr>") == 1 + 3 + 1 + len(stages) + 1 + 4
    assert "{" not in page.split("</style>")[1]  # tables, not raw JSON


@pytest.mark.parametrize("argv, says", [
    (["--compare", "models/default/manifest.json"], "--compare needs --models"),
    (["--models", "models/default/manifest.json", "--compare", "no/such/manifest.json"], "no/such/manifest.json"),
])
def test_fusion_bench_compare_refuses_in_one_line(argv, says):
    proc = subprocess.run([sys.executable, "-m", "fusion_node", "bench", *argv, "--quiet"],
                          cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert proc.returncode != 0
    assert says in proc.stderr and len(proc.stderr.strip().splitlines()) == 1 and "Traceback" not in proc.stderr
