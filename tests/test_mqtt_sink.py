"""The MQTT sink against a real mosquitto: discovery, states, events, availability, broker outages."""

from __future__ import annotations

import json

import pytest

from fusion_node.config import MqttConfig
from fusion_node.errors import ConfigError
from fusion_node.sinks.mqtt import MqttSink, parse_url
from fusion_node.vocabulary import CLASSES

RIGS = {"r1": ["cam0", "radar0", "mic0"]}


def _event(seq, kind, label="person", eid=None, alert=False, sensor_id=None):
    return {"seq": seq, "type": kind, "kind": "alert" if alert else "detection", "rig": "r1", "label": label,
            "id": eid or f"r1:{label}:0:1", "sensor_id": sensor_id, "top_score": None if alert else 0.9}


def _sink(url, **cfg) -> MqttSink:
    return MqttSink(MqttConfig(url=url, **cfg), RIGS)


def test_url_forms():
    assert parse_url("mqtt://127.0.0.1:1884") == ("127.0.0.1", 1884, False, None, None)
    assert parse_url("mqtts://u%40x:p%3Aw@broker.lan") == ("broker.lan", 8883, True, "u@x", "p:w")
    with pytest.raises(ConfigError, match="sinks.mqtt.url"):
        parse_url("tcp://host:1883")


def test_discovery_states_events_and_availability_reach_a_real_subscriber(mosquitto, mqtt_recorder):
    rec = mqtt_recorder(mosquitto.port)
    sink = _sink(mosquitto.url, stats_interval_s=0.001).start()
    assert sink.wait_connected(True, 15)
    configs = [t for t in sink.discovery_configs()]
    assert len(configs) == len(CLASSES) + 3 * 2 + 3  # labels, problem + rate per sensor, p50, p99, queue
    assert rec.wait_for(lambda m: sum(t.startswith("homeassistant/") for t, _, _ in m) >= len(configs)
                        and rec.on("fusion/r1/mic0/problem/attributes"))  # the last state sent on connect
    person = json.loads(rec.on("homeassistant/binary_sensor/fusion/r1_person/config")[-1])
    assert person["state_topic"] == "fusion/r1/person/state" and person["device_class"] == "occupancy"
    assert person["availability_topic"] == "fusion/available" and person["unique_id"] == "fusion_r1_person"
    problem = json.loads(rec.on("homeassistant/binary_sensor/fusion/r1_mic0_problem/config")[-1])
    assert problem["device_class"] == "problem" and problem["entity_category"] == "diagnostic"
    rate = json.loads(rec.on("homeassistant/sensor/fusion/r1_cam0_rate/config")[-1])
    assert rate["value_template"] == "{{ value_json.sensors['cam0'].rate_hz }}" and rate["unit_of_measurement"] == "Hz"
    assert rec.on("fusion/available") == [b"online"] and rec.on("fusion/r1/person/state") == [b"OFF"]

    for ev in (_event(1, "start"), _event(2, "update"), _event(3, "start", "sensor_failed:mic0", "a1", True, "mic0"),
               _event(4, "end"), _event(5, "end", "sensor_failed:mic0", "a1", True, "mic0")):
        sink.publish_event(ev)
    sink.update_stats({"rig": "r1", "events": 42, "sensors": {"cam0": {"alive": True, "rate_hz": 10.0,
                                                                       "rejected": {"bad_payload": 2}}},
                       "latency_ms": {"e2e": {"p50": 9.5, "p99": 30.1}}}, now_ns=10**12)
    assert rec.wait_for(lambda m: len(rec.on("fusion/alerts")) == 2 and len(rec.on("fusion/events")) == 3
                        and len(rec.on("fusion/r1/mic0/problem")) == 3 and rec.on("fusion/r1/stats"))
    events = [json.loads(p) for p in rec.on("fusion/events")]
    assert [e["type"] for e in events] == ["new", "update", "end"]
    assert events[0]["before"] == events[0]["after"] and events[1]["before"]["seq"] == 1
    assert events[2]["after"]["seq"] == 4 and events[2]["before"]["seq"] == 2
    assert rec.on("fusion/r1/person/state")[-2:] == [b"ON", b"OFF"] and rec.on("fusion/r1/person")[-1] == b"0"
    assert [json.loads(p)["type"] for p in rec.on("fusion/alerts")] == ["new", "end"]
    assert rec.on("fusion/r1/mic0/problem") == [b"OFF", b"ON", b"OFF"]
    stats = json.loads(rec.on("fusion/r1/stats")[-1])
    assert stats["sensors"]["cam0"]["rejected"] == 2 and stats["latency_ms"]["e2e_p99"] == 30.1
    sink.close()
    assert rec.wait_for(lambda m: rec.on("fusion/available")[-1:] == [b"offline"])
    assert sink.counters()["dropped"] == 0


def test_broker_down_events_wait_in_a_bounded_queue_and_nothing_else_is_lost(mosquitto, mqtt_recorder):
    rec = mqtt_recorder(mosquitto.port, "fusion/events", client_id="outage-recorder")
    sink = _sink(mosquitto.url, queue_size=5).start()
    assert sink.wait_connected(True, 15)
    seq = 0
    for _ in range(10):
        seq += 1
        sink.publish_event(_event(seq, "update", eid=f"r1:person:0:{seq}"))
    assert rec.wait_for(lambda m: len(m) == 10)

    mosquitto.stop()  # SIGTERM: the broker keeps the recorder's session (persistence) for its restart
    assert sink.wait_connected(False, 15)
    for _ in range(12):
        seq += 1
        sink.publish_event(_event(seq, "update", eid=f"r1:person:0:{seq}"))
    c = sink.counters()
    assert c["dropped"] == 7 and c["queue_depth"] == 5 and not c["connected"]

    mosquitto.start()
    assert sink.wait_connected(True, 30)
    # QoS 1 is at least once: the recorder's restored session may bring events it had already had.
    def seqs(payloads):
        return {json.loads(p)["after"]["seq"] for p in payloads}

    # On a failure, say where the events stopped: the sink's counters and the broker's own log.
    assert rec.wait_for(lambda m: seqs(p for _, p, _ in m) >= set(range(18, 23)), timeout=30), (
        sorted(seqs(rec.on("fusion/events"))), sink.counters(), "".join(mosquitto.log[-40:]))
    # The 7 oldest of the outage were dropped, and counted; nothing else is missing.
    assert sorted(seqs(rec.on("fusion/events"))) == list(range(1, 11)) + list(range(18, 23))
    assert sink.wait_idle(15), sink.counters()
    assert sink.counters()["dropped"] == 7 and sink.counters()["queue_depth"] == 0
    sink.close()
