"""The live view: its projection and audio meter, its timeline, and the page in a real headless
Chromium against a running rig (real sensor processes, node with the shipped models, view)."""

from __future__ import annotations

import json
import os
import urllib.request

import cv2
import numpy as np
import pytest
import yaml

from calibration.projection import RadarCameraProjection
from fusion_node.config import config_from_dict
from fusion_node.rig import load_rig
from fusion_node.tap import TapMessage, TapSource
from fusion_node.view.server import TIMELINE_HOLD_NS, AudioMeter, Hub, RadarProjector
from fusion_node.wire import encode_map

from sensors.samples import DEFAULT_CAMERA

from .browser import Browser, chromium
from .conftest import ROOT

CALIBRATION = ROOT / "examples" / "rig_calibration.yaml"
SHIPPED = ROOT / "models" / "default" / "manifest.json"



def _video_width(path) -> int:
    cap = cv2.VideoCapture(str(path))
    try:
        return int(cap.get(cv2.CAP_PROP_FRAME_WIDTH))
    finally:
        cap.release()

def test_radar_points_land_where_the_calibration_package_projects_them():
    rig = load_rig(CALIBRATION)
    rng = np.random.default_rng(1)
    points = np.column_stack([rng.uniform(-3, 3, 200), rng.uniform(0.5, 12, 200), rng.uniform(-1, 1, 200)])
    px, idx = RadarProjector(rig, "cam0", "radar0").project(points)
    reference, visible = RadarCameraProjection.from_rig(rig, "radar0", "cam0").project(points)
    assert 20 < idx.size < 200
    assert set(idx) <= set(np.flatnonzero(visible))
    np.testing.assert_allclose(px, reference[idx], atol=1e-6)


def test_audio_meter_level_and_spectrogram_peak():
    meter = AudioMeter()
    t = np.arange(16000) / 16000
    level, peak, columns = meter.feed((0.5 * np.sin(2 * np.pi * 1000 * t)).astype(np.float32))
    assert level == pytest.approx(20 * np.log10(0.5 / np.sqrt(2)), abs=0.1) and peak == pytest.approx(0.5, abs=1e-3)
    assert 35 <= len(columns) <= 40  # 40 columns a second
    peak_band = int(np.argmax(np.mean(columns, axis=0)))
    edges = np.geomspace(100.0, 8000.0, 65)
    assert edges[peak_band] <= 1000 * 1.05 and edges[peak_band + 1] >= 1000 / 1.05


def test_timeline_marks_a_label_when_it_starts_and_once_it_has_been_gone_for_a_while():
    cfg = config_from_dict({"rig": "r", "sensors": [{"id": "cam0", "kind": "camera", "endpoint": "ipc:///x"}]})
    hub = Hub([cfg])
    q = hub.subscribe()
    node = TapSource("ipc:///events")

    def event(seq, labels):
        body = {"rig": "r", "seq": seq, "t_ref_ns": seq * 100_000_000, "alerts": [], "missing": [],
                "labels": [{"label": name, "score": 0.9} for name in labels], "latency_ms": {"e2e": 1.0}}
        hub.handle(TapMessage(node, encode_map("fused", body), 0))

    event(1, ["person"])
    for seq in range(2, 6):
        event(seq, [] if seq % 2 else ["person"])  # flickers: still one entry
    for seq in range(6, 6 + TIMELINE_HOLD_NS // 100_000_000 + 2):
        event(seq, [])
    items = []
    while not q.empty():
        name, data = q.get_nowait()
        if name == "timeline":
            items.append((data["kind"], data["what"]))
    assert items == [("start", "person"), ("end", "person")]


def _rig(ipc_dir):
    cfg = {"rig": "lab-rig-1", "calibration_file": str(CALIBRATION),
           "sensors": [{"id": sid, "kind": kind, "endpoint": f"ipc://{ipc_dir}/{sid}"}
                       for sid, kind in (("cam0", "camera"), ("radar0", "radar"), ("mic0", "audio"))],
           "node": {"publish_endpoint": f"ipc://{ipc_dir}/events", "models": str(SHIPPED), "provider": "cpu",
                    "stats_interval_s": 0.5, "max_age_s": 30.0}}
    path = ipc_dir / "rig.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


PAGE_READY = """(() => {
  const n = (id, key) => Number(document.getElementById(id).dataset[key]);
  return n("camera", "frames") >= 5 && n("radar-top", "frames") >= 3 && n("spectrogram", "columns") >= 40
    && document.querySelectorAll("#labels li").length > 0
    && document.querySelector('#latency tr[data-stage="e2e"]') !== null
    && document.querySelectorAll("#sensors tr").length === 3
    && document.querySelectorAll("#timeline li img").length > 0
    && document.getElementById("radar-info").textContent.includes("in the picture");
})()"""

PAGE_STATE = """JSON.stringify({
  status: document.getElementById("status").textContent,
  frames: Number(document.getElementById("camera").dataset.frames),
  width: document.getElementById("camera").width,
  labels: [...document.querySelectorAll("#labels li")].map((li) => li.textContent),
  stages: [...document.querySelectorAll("#latency tr")].map((tr) => tr.dataset.stage),
  snapshots: [...document.querySelectorAll("#timeline li img")].map((img) => img.complete && img.naturalWidth),
  sensors: [...document.querySelectorAll("#sensors tr")].map((tr) => tr.firstChild.textContent),
  rig: document.getElementById("rig").textContent,
})"""


MIC_ENDED = """[...document.querySelectorAll("#sensors tr")].some(
  (tr) => tr.firstChild.textContent === "mic0" && tr.lastChild.textContent === "ended (stopped)"
    && !tr.classList.contains("dead"))"""


@pytest.mark.skipif(chromium() is None, reason="chromium is not installed (make test installs it: apt-get install "
                                               "chromium)")
def test_the_page_in_a_headless_browser_against_a_running_rig(ipc_dir, spawn, tmp_path):
    cfg = _rig(ipc_dir)
    node = spawn("node", "--config", str(cfg))
    node.json_line("event", "ready")
    view = spawn("view", "--config", str(cfg), "--port", "0")
    url = view.json_line("event", "view_ready")["url"]
    sensors = {sid: spawn("sensor", kind, "--sensor-id", sid, "--endpoint", f"ipc://{ipc_dir}/{sid}", "--loop")
               for kind, sid in (("camera", "cam0"), ("radar", "radar0"), ("audio", "mic0"))}
    with urllib.request.urlopen(url + "view.js", timeout=10) as resp:  # the assets come from the package
        assert resp.status == 200 and b"EventSource" in resp.read()
    target = os.environ.get("FUSION_VIEW_SCREENSHOT")  # set it to refresh docs/img/view.jpg
    browser = Browser(1280, 1000)
    try:
        browser.goto(url)
        browser.wait_for(PAGE_READY, timeout=120)
        state = json.loads(browser.evaluate(PAGE_STATE))
        shot = browser.screenshot(tmp_path / "view.png")
        if target:  # for the picture: a fuller spectrogram, and radar points on the frame as it is taken
            full = ('Number(document.getElementById("spectrogram").dataset.columns) >= 500 && '
                    'Number(document.getElementById("camera").dataset.radarPoints) > 1')
            for _ in range(20):
                browser.wait_for(full, timeout=120)
                browser.screenshot(target)
                if browser.evaluate(full):
                    break
        # A microphone stopped on purpose is shown as ended, not dead.
        assert sensors["mic0"].stop() == 0
        browser.wait_for(MIC_ENDED, timeout=30)
    finally:
        browser.close()
    assert state["status"] == "live" and state["width"] == _video_width(DEFAULT_CAMERA)
    assert any(label.startswith("person") for label in state["labels"]), state
    assert {"receive", "sync_wait", "preprocess", "encode_camera", "head", "e2e"} <= set(state["stages"])
    assert all(w and w > 0 for w in state["snapshots"])  # every snapshot image loaded
    assert state["sensors"] == ["cam0", "radar0", "mic0"] and "lab-rig-1" in state["rig"]
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and shot.stat().st_size > 50_000
