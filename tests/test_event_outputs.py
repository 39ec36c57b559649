"""Lifecycle events end to end with real processes: node, sensors, mosquitto, /metrics, the log.

One run of the real node on the bundled recordings with the shipped models, an MQTT sink to a
real mosquitto and a real paho subscriber, a real HTTP scrape of /metrics, a consumer of
``fusion events --since`` killed and restarted, and the node itself killed mid-stream and
restarted: every logged event reaches the consumer exactly once, in order.
"""

from __future__ import annotations

import json
import queue
import time
import urllib.request

import cv2
import numpy as np
import yaml
from prometheus_client.parser import text_string_to_metric_families

from fusion_node.eventlog import EventLog
from fusion_node.paths import SHIPPED_MODELS

from .test_pipeline import AUDIO, RADAR, VIDEO, _documented_keys, _sensor


def _config(ipc_dir, log_path, broker_url):
    cfg = {
        "rig": "outputs-rig",
        "sensors": [{"id": "cam0", "kind": "camera", "endpoint": f"ipc://{ipc_dir}/cam0"},
                    {"id": "radar0", "kind": "radar", "endpoint": f"ipc://{ipc_dir}/radar0"},
                    {"id": "mic0", "kind": "audio", "endpoint": f"ipc://{ipc_dir}/mic0"}],
        "node": {"publish_endpoint": f"ipc://{ipc_dir}/events", "models": str(SHIPPED_MODELS), "provider": "cpu",
                 "stats_interval_s": 0.5},
        # Every record is a material change, so events flow at the record rate (about 10 per second).
        "lifecycle": {"min_duration_s": 0.0, "update_interval_s": 0.0, "update_score_delta": 0.0,
                      "max_gap_s": 0.5, "end_timeout_s": 1.0},
        "event_log": {"path": str(log_path)},
        "sinks": {"mqtt": {"url": broker_url, "topic_prefix": "ft", "stats_interval_s": 0.5}},
    }
    path = ipc_dir / "rig.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def _read_json(proc, until, timeout=60.0) -> list[dict]:
    """JSON lines from a process until ``until(lines)`` holds."""
    got: list[dict] = []
    deadline = time.monotonic() + timeout
    while not until(got):
        assert time.monotonic() < deadline, f"timed out; got {len(got)} lines; stderr:\n{proc.stderr()}"
        try:
            line = proc.lines.get(timeout=0.2)
        except queue.Empty:
            continue
        assert line is not None, f"{proc.args} ended early; stderr:\n{proc.stderr()}"
        try:
            got.append(json.loads(line))
        except json.JSONDecodeError:
            continue  # a line cut short when the process was killed
    return got


def _drain(proc) -> list[dict]:
    """The JSON lines a killed process had written, up to the end of its output."""
    got = []
    while (line := proc.lines.get(timeout=10)) is not None:
        try:
            got.append(json.loads(line))
        except json.JSONDecodeError:
            continue  # a line cut short by the kill: the consumer never had that event
    return got


def _scrape(port: int) -> dict[str, list]:
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
    return {f.name: f.samples for f in text_string_to_metric_families(text)}


def _received(metrics: dict[str, list]) -> dict[str, float]:
    return {s.labels["sensor"]: s.value for s in metrics["fusion_sensor_received"] if s.name.endswith("_total")}


def _scrape_until(port: int, until, timeout: float = 60.0) -> dict[str, list]:
    """Scrapes /metrics until ``until(metrics)`` holds: a sensor process may start after the first events."""
    deadline = time.monotonic() + timeout
    while not until(metrics := _scrape(port)):
        assert time.monotonic() < deadline, f"metrics never satisfied the condition; last: {_received(metrics)}"
        time.sleep(0.1)  # a poll interval, not a synchronisation: the condition is checked on every scrape
    return metrics


def test_lifecycle_log_mqtt_and_metrics_survive_a_killed_node_and_a_killed_consumer(
        ipc_dir, tmp_path, spawn, mosquitto, mqtt_recorder):
    log_path = tmp_path / "events.sqlite"
    cfg = _config(ipc_dir, log_path, mosquitto.url)
    mqtt = mqtt_recorder(mosquitto.port, "#")
    node = spawn("node", "--config", str(cfg), "--metrics-port", "0")
    ready = node.json_line("event", "ready")
    assert ready["event_log"] == str(log_path) and ready["metrics_port"] > 0
    for kind, sid, src in (("camera", "cam0", VIDEO), ("radar", "radar0", RADAR), ("audio", "mic0", AUDIO)):
        _sensor(spawn, kind, sid, ipc_dir, src)

    # A consumer follows the log from the start, and is killed after 15 events.
    first = spawn("events", "--log", str(log_path), "--since", "0")
    seen_a = _read_json(first, lambda got: len(got) >= 15)
    first.kill()
    seen_a += _drain(first)

    # Live metrics over real HTTP while events flow.
    # Events can flow from radar and audio before the camera's process has decoded its first frame.
    m = _scrape_until(ready["metrics_port"], lambda m: _received(m).get("cam0", 0) > 0)
    assert set(_received(m)) == {"cam0", "radar0", "mic0"}
    e2e = [s for s in m["fusion_stage_latency_seconds"] if s.name.endswith("_count") and s.labels["stage"] == "e2e"]
    assert e2e and e2e[0].value > 0
    assert sum(s.value for s in m["fusion_lifecycle_events"] if s.name.endswith("_total")) > 0
    assert m["process_resident_memory_bytes"][0].value > 10e6 and "process_cpu_seconds" in m
    assert {s.labels["sink"] for s in m["fusion_sink_queue_depth"]} == {"mqtt"}
    assert m["fusion_sink_connected"][0].value == 1.0 and m["fusion_eventlog_last_seq"][0].value >= 15

    # The node dies mid-stream: the broker says so (last will), and a new node continues the log.
    node.kill()
    assert mqtt.wait_for(lambda msgs: mqtt.on("ft/available")[-1:] == [b"offline"])
    node = spawn("node", "--config", str(cfg))
    node.json_line("event", "ready")
    assert mqtt.wait_for(lambda msgs: mqtt.on("ft/available")[-1:] == [b"online"])

    # A second consumer resumes after the last event the first one printed.
    last_a = seen_a[-1]["seq"]
    second = spawn("events", "--log", str(log_path), "--since", str(last_a))
    run_a = seen_a[0]["id"].split(":")[-2]
    seen_b = _read_json(second, lambda got: any(e["id"].split(":")[-2] != run_a and e["type"] == "update"
                                                for e in got))
    assert node.stop() == 0  # a clean stop ends what is open (node_stopped)
    reader = EventLog(log_path, reader=True)
    logged = list(reader.iter_after(0))
    more = _read_json(second, lambda got: (seen_b + got)[-1]["seq"] == logged[-1]["seq"], timeout=30)
    seen = seen_a + seen_b + more
    assert [e["seq"] for e in logged] == list(range(1, len(logged) + 1))
    assert seen == logged  # every logged event exactly once, in order, across both consumers and both nodes
    assert all(set(e) == _documented_keys("lifecycle") for e in logged)
    assert {"node_restarted", "node_stopped"} <= {e["reason"] for e in logged if e["type"] == "end"}
    assert all(e["id"].split(":")[-2] == run_a for e in logged if e["reason"] == "node_restarted")
    run_b = logged[-1]["id"].split(":")[-2]
    assert run_b != run_a

    # MQTT saw the discovery, the events of both runs and the availability changes.
    assert mqtt.wait_for(lambda msgs: mqtt.on("ft/available")[-1:] == [b"offline"])
    assert mqtt.on("homeassistant/binary_sensor/ft/outputs-rig_person/config")
    payloads = [json.loads(p) for p in mqtt.on("ft/events")]
    assert {p["type"] for p in payloads} == {"new", "update", "end"}
    assert {p["after"]["seq"] for p in payloads} <= {e["seq"] for e in logged}
    assert {p["after"]["id"].split(":")[-2] for p in payloads} == {run_a, run_b}

    # The best snapshot of an occurrence, out of the log.
    with_snapshot = [e for e in logged if e["snapshot"]]
    assert with_snapshot, "no event referenced a snapshot"
    out = tmp_path / "snap.jpg"
    snap = spawn("events", "--log", str(log_path), "--snapshot", with_snapshot[-1]["snapshot"], "--out", str(out))
    assert snap.p.wait(30) == 0
    img = cv2.imdecode(np.frombuffer(out.read_bytes(), np.uint8), cv2.IMREAD_COLOR)
    assert img is not None and img.shape[2] == 3 and img.shape[0] > 100
    reader.close()


def test_metrics_tell_an_ended_sensor_from_a_dead_one():
    from prometheus_client import generate_latest

    from fusion_node.metrics import NodeMetrics

    sensor = {"kind": "camera", "received": 10, "rejected": {}, "clock": {}}
    snap = {"stats": {"r1": {"sensors": {"cam0": {**sensor, "alive": False, "ended": "source_ended"},
                                         "cam1": {**sensor, "alive": False, "ended": None},
                                         "cam2": {**sensor, "alive": True, "ended": None}}}}}
    families = {f.name: f.samples for f in text_string_to_metric_families(
        generate_latest(NodeMetrics(lambda: snap).registry).decode())}
    ended = {s.labels["sensor"]: s.value for s in families["fusion_sensor_ended"]}
    alive = {s.labels["sensor"]: s.value for s in families["fusion_sensor_alive"]}
    assert ended == {"cam0": 1.0, "cam1": 0.0, "cam2": 0.0} and alive == {"cam0": 0.0, "cam1": 0.0, "cam2": 1.0}
