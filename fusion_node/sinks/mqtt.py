"""The MQTT sink: lifecycle events, states, availability and Home Assistant discovery (paho-mqtt).

Topics, with ``P`` the configured prefix (``fusion``) and every payload JSON unless noted:

* ``P/available``: ``online`` / ``offline`` (plain text, retained; ``offline`` is also the last
  will, so the broker says it when the node vanishes);
* ``P/events``: detections, Frigate's shape ``{"type": "new"|"update"|"end", "before", "after"}``
  where ``after`` is the lifecycle event as logged (with its ``seq``), ``before`` the previous one
  of the same occurrence (for ``new``, the same event);
* ``P/alerts``: alerts (``sensor_failed``, ``sensor_fault``, ``clock_drift``,
  ``modalities_disagree``, ``drift``) in the same shape;
* ``P/<rig>/<label>``: number of open occurrences (retained), ``P/<rig>/<label>/state``:
  ``ON`` / ``OFF`` (retained), ``P/<rig>/<label>/attributes``: the last event (retained);
* ``P/<rig>/<sensor>/problem``: ``ON`` while the sensor has an alert open (retained),
  ``.../problem/attributes``: ``{"alerts": [...]}``;
* ``P/<rig>/stats``: rates, latency, counts and this sink's queue (retained, every
  ``stats_interval_s``);
* ``<discovery prefix>/{binary_sensor,sensor}/<node>/<object>/config``: Home Assistant MQTT
  discovery (retained), a binary sensor per rig and label, a problem sensor per sensor, and
  diagnostic sensors (per-sensor rate, e2e latency p50/p99, queue depth); re-sent on every
  connect and when Home Assistant announces ``online`` on ``<discovery prefix>/status``.

Events and alerts go out with the configured QoS. While the broker is unreachable they wait in
a bounded queue: when it is full the oldest is dropped and counted (``dropped``); on reconnect
the queue drains in order. Messages already handed to the client when the connection broke are
kept and re-sent by paho (QoS 1: at least once; a repeat carries the same ``seq``). States,
availability and discovery are retained and simply re-published on connect, never queued.
"""

from __future__ import annotations

import json
import logging
import os
import re
import threading
from collections import deque
from typing import Iterable
from urllib.parse import unquote, urlsplit

import paho.mqtt.client as mqtt

from ..config import MqttConfig
from ..errors import ConfigError
from ..vocabulary import CLASSES

__all__ = ["MqttSink", "parse_url", "LABEL_DEVICE_CLASS"]

log = logging.getLogger("fusion.mqtt")

# Home Assistant binary_sensor device classes for the event classes.
LABEL_DEVICE_CLASS = {"person": "occupancy", "vehicle": "motion", "dog": "motion", "glass_break": "safety",
                      "speech": "sound", "alarm": "sound"}


def parse_url(url: str) -> tuple[str, int, bool, str | None, str | None]:
    """``mqtt[s]://[user[:password]@]host[:port]`` -> (host, port, tls, user, password)."""
    parts = urlsplit(url)
    if parts.scheme not in ("mqtt", "mqtts") or not parts.hostname:
        raise ConfigError(f"sinks.mqtt.url: expected mqtt://HOST[:PORT] or mqtts://HOST[:PORT], got {url!r}")
    tls = parts.scheme == "mqtts"
    try:
        port = parts.port or (8883 if tls else 1883)
    except ValueError:
        raise ConfigError(f"sinks.mqtt.url: bad port in {url!r}") from None
    user = unquote(parts.username) if parts.username else None
    password = unquote(parts.password) if parts.password else None
    return parts.hostname, port, tls, user, password


def _slug(text: str) -> str:
    """A topic level / Home Assistant object id: letters, digits, '_' and '-' only."""
    return re.sub(r"[^A-Za-z0-9_-]", "_", text)


class MqttSink:
    """One MQTT connection for every rig of a node."""

    name = "mqtt"

    def __init__(self, cfg: MqttConfig, rigs: dict[str, list[str]], *, labels: Iterable[str] = CLASSES):
        self.cfg = cfg
        self.rigs = {rig: list(sensors) for rig, sensors in rigs.items()}
        self.labels = list(labels)
        self.prefix = cfg.topic_prefix.rstrip("/")
        self.node_id = _slug(self.prefix)
        host, port, tls, user, password = parse_url(cfg.url)
        self.host, self.port = host, port
        user = cfg.username or user
        if cfg.password_env:
            if cfg.password_env not in os.environ:
                raise ConfigError(f"sinks.mqtt.password_env: the environment has no {cfg.password_env}")
            password = os.environ[cfg.password_env]
        password = cfg.password or password
        first = next(iter(self.rigs), "node")
        client_id = cfg.client_id or f"fusion-{self.node_id}-{_slug(first)}"
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id, clean_session=True)
        if user is not None:
            self.client.username_pw_set(user, password)
        if tls or cfg.tls is not None:
            t = cfg.tls
            self.client.tls_set(ca_certs=t.ca_file if t else None, certfile=t.cert_file if t else None,
                                keyfile=t.key_file if t else None)
            if t is not None and t.insecure:
                self.client.tls_insecure_set(True)
        self.t_available = f"{self.prefix}/available"
        self.client.will_set(self.t_available, "offline", qos=1, retain=True)
        self.client.reconnect_delay_set(min_delay=1, max_delay=2)
        self.client.max_queued_messages_set(0)  # our own queue bounds what waits; paho keeps what it was handed
        self.client.on_connect = self._on_connect
        self.client.on_disconnect = self._on_disconnect
        self.client.on_publish = self._on_publish
        self.client.on_message = self._on_message
        # Held while handing messages to paho, so events leave in order; paho's callbacks that
        # do not publish (on_publish, on_disconnect) never take it.
        self._send_lock = threading.RLock()
        self._acked = threading.Condition()
        self._queue: deque = deque()
        self.connected = False
        self.connects = 0
        self.dropped = 0
        self.handed = 0
        self.acked = 0
        self._before: dict[str, dict] = {}
        self._open: dict[tuple[str, str], set[str]] = {}  # (rig, label) -> open detection ids
        self._problems: dict[tuple[str, str], set[str]] = {}  # (rig, sensor) -> open alert labels
        self._last_event: dict[tuple[str, str], dict] = {}
        self._stats: dict[str, dict] = {}
        self._stats_sent_ns: dict[str, int] = {}
        self._closed = False

    # -- life -------------------------------------------------------------------------------------

    def start(self) -> "MqttSink":
        """Connect in the background; the client reconnects by itself for as long as the sink lives."""
        self.client.connect_async(self.host, self.port, keepalive=self.cfg.keepalive_s)
        self.client.loop_start()
        return self

    def close(self, timeout_s: float = 3.0) -> None:
        """Say ``offline``, let what is in flight be acknowledged (up to ``timeout_s``), disconnect."""
        if self._closed:
            return
        self._closed = True
        if self.connected:
            with self._send_lock:
                info = self.client.publish(self.t_available, "offline", qos=1, retain=True)
                self.handed += 1
            with self._acked:
                self._acked.wait_for(lambda: self.acked >= self.handed or not self.connected, timeout_s)
            del info
        self.client.disconnect()
        self.client.loop_stop()

    # -- inputs -----------------------------------------------------------------------------------

    def publish_event(self, event: dict) -> None:
        """A logged lifecycle event (with ``seq``): onto ``P/events`` or ``P/alerts`` and the states."""
        eid = event["id"]
        before = self._before.get(eid, event)
        kind = {"start": "new", "update": "update", "end": "end"}[event["type"]]
        if event["type"] == "end":
            self._before.pop(eid, None)
        else:
            self._before[eid] = event
        topic = f"{self.prefix}/{'events' if event['kind'] == 'detection' else 'alerts'}"
        payload = json.dumps({"type": kind, "before": before, "after": event}, separators=(",", ":"))
        with self._send_lock:
            if len(self._queue) >= self.cfg.queue_size:
                self._queue.popleft()
                self.dropped += 1
            self._queue.append((topic, payload))
            states = self._track(event)
            if self.connected:
                self._drain()
                for t, p in states:
                    self._send(t, p, retain=True)

    def update_stats(self, stats: dict, now_ns: int) -> None:
        """A rig's stats message; ``P/<rig>/stats`` goes out at most every ``stats_interval_s``."""
        rig = stats.get("rig")
        if rig not in self.rigs:
            return
        lat = stats.get("latency_ms", {}).get("e2e", {})
        self._stats[rig] = {
            "events": stats.get("events"),
            "sensors": {sid: {"alive": s.get("alive"), "ended": s.get("ended"), "rate_hz": s.get("rate_hz"),
                              "dropped": s.get("dropped"), "rejected": sum(s.get("rejected", {}).values())}
                        for sid, s in stats.get("sensors", {}).items()},
            "latency_ms": {"e2e_p50": lat.get("p50"), "e2e_p99": lat.get("p99")},
        }
        last = self._stats_sent_ns.get(rig)
        if self.connected and (last is None or now_ns - last >= self.cfg.stats_interval_s * 1e9):
            self._stats_sent_ns[rig] = now_ns
            with self._send_lock:
                self._send(f"{self.prefix}/{_slug(rig)}/stats", self._stats_payload(rig), retain=True)

    def wait_connected(self, connected: bool = True, timeout_s: float = 10.0) -> bool:
        """Block until the connection is up (or down); False if ``timeout_s`` passed first."""
        with self._acked:
            return self._acked.wait_for(lambda: self.connected == connected, timeout_s)

    def wait_idle(self, timeout_s: float = 10.0) -> bool:
        """Block until nothing waits and the broker acknowledged all it was handed; False on timeout."""
        with self._acked:
            return self._acked.wait_for(lambda: not self._queue and self.acked >= self.handed, timeout_s)

    def counters(self) -> dict:
        """Queue depth (waiting here plus handed but not yet acknowledged), drops, and connection state."""
        return {"queue_depth": len(self._queue) + max(0, self.handed - self.acked), "dropped": self.dropped,
                "published": self.acked, "connected": self.connected, "connects": self.connects}

    # -- paho callbacks (its network thread) ------------------------------------------------------

    def _on_connect(self, client, userdata, flags, reason_code, properties) -> None:  # noqa: ARG002
        if reason_code.is_failure:
            log.warning("MQTT broker %s:%d refused the connection: %s", self.host, self.port, reason_code)
            return
        log.info("MQTT connected to %s:%d", self.host, self.port)
        with self._send_lock:
            self.connected = True
            self.connects += 1
            self._send(self.t_available, "online", retain=True)
            if self.cfg.discovery:
                client.subscribe(f"{self.cfg.discovery_prefix}/status", qos=1)
                self._announce()
            self._republish_states()
            self._drain()
        with self._acked:
            self._acked.notify_all()

    def _on_disconnect(self, client, userdata, flags, reason_code, properties) -> None:  # noqa: ARG002
        self.connected = False
        if not self._closed:
            log.warning("MQTT connection to %s:%d lost (%s); reconnecting, events queue meanwhile",
                        self.host, self.port, reason_code)
        with self._acked:
            self._acked.notify_all()

    def _on_publish(self, client, userdata, mid, reason_code, properties) -> None:  # noqa: ARG002
        with self._acked:
            self.acked += 1
            self._acked.notify_all()

    def _on_message(self, client, userdata, msg) -> None:  # noqa: ARG002
        # Home Assistant restarted: it forgets entities it did not keep, so announce again.
        if msg.topic == f"{self.cfg.discovery_prefix}/status" and msg.payload == b"online":
            with self._send_lock:
                self._announce()
                self._republish_states()

    # -- internals (callers hold _send_lock) --------------------------------------------------------

    def _send(self, topic: str, payload: str, *, qos: int | None = None, retain: bool = False) -> None:
        self.client.publish(topic, payload, qos=self.cfg.qos if qos is None else qos, retain=retain)
        self.handed += 1

    def _drain(self) -> None:
        while self.connected and self._queue:
            topic, payload = self._queue.popleft()
            self._send(topic, payload)

    def _track(self, event: dict) -> list[tuple[str, str]]:
        """Update the per-rig states an event changes; returns the retained messages to send."""
        rig, label = event["rig"], event["label"]
        out: list[tuple[str, str]] = []
        if event["kind"] == "detection":
            ids = self._open.setdefault((rig, label), set())
            (ids.discard if event["type"] == "end" else ids.add)(event["id"])
            self._last_event[(rig, label)] = event
            out += self._label_states(rig, label)
        elif event.get("sensor_id"):
            sid = event["sensor_id"]
            alerts = self._problems.setdefault((rig, sid), set())
            (alerts.discard if event["type"] == "end" else alerts.add)(label.split(":", 1)[0])
            out += self._problem_states(rig, sid)
        return out

    def _label_states(self, rig: str, label: str) -> list[tuple[str, str]]:
        base = f"{self.prefix}/{_slug(rig)}/{_slug(label)}"
        n = len(self._open.get((rig, label), ()))
        out = [(base, str(n)), (f"{base}/state", "ON" if n else "OFF")]
        last = self._last_event.get((rig, label))
        if last is not None:
            out.append((f"{base}/attributes", json.dumps(last, separators=(",", ":"))))
        return out

    def _problem_states(self, rig: str, sid: str) -> list[tuple[str, str]]:
        alerts = sorted(self._problems.get((rig, sid), ()))
        base = f"{self.prefix}/{_slug(rig)}/{_slug(sid)}/problem"
        return [(base, "ON" if alerts else "OFF"), (f"{base}/attributes", json.dumps({"alerts": alerts}))]

    def _republish_states(self) -> None:
        for rig, sensors in self.rigs.items():
            for label in self.labels:
                for t, p in self._label_states(rig, label):
                    self._send(t, p, retain=True)
            for sid in sensors:
                for t, p in self._problem_states(rig, sid):
                    self._send(t, p, retain=True)
            if rig in self._stats:
                self._send(f"{self.prefix}/{_slug(rig)}/stats", self._stats_payload(rig), retain=True)

    def _stats_payload(self, rig: str) -> str:
        return json.dumps({**self._stats[rig], "sink": self.counters()}, separators=(",", ":"))

    def _announce(self) -> None:
        for topic, config in self.discovery_configs():
            self._send(topic, json.dumps(config, separators=(",", ":")), qos=1, retain=True)

    def discovery_configs(self) -> list[tuple[str, dict]]:
        """Every Home Assistant discovery (topic, config) this sink announces."""
        dp, node = self.cfg.discovery_prefix, self.node_id
        avail = {"availability_topic": self.t_available, "payload_available": "online",
                 "payload_not_available": "offline"}
        out = []
        for rig, sensors in self.rigs.items():
            r = _slug(rig)
            device = {"identifiers": [f"{node}_{r}"], "name": f"Fusion rig {rig}", "manufacturer": "fusion-node",
                      "model": "camera, radar and audio fusion"}
            stats_topic = f"{self.prefix}/{r}/stats"

            def entity(component: str, obj: str, name: str, **extra) -> None:
                uid = f"{node}_{r}_{obj}"
                out.append((f"{dp}/{component}/{node}/{r}_{obj}/config",
                            {"name": name, "unique_id": uid, "object_id": uid, "device": device, **avail, **extra}))

            for label in self.labels:
                base = f"{self.prefix}/{r}/{_slug(label)}"
                entity("binary_sensor", _slug(label), label.replace("_", " "), state_topic=f"{base}/state",
                       payload_on="ON", payload_off="OFF", device_class=LABEL_DEVICE_CLASS.get(label),
                       json_attributes_topic=f"{base}/attributes")
            for sid in sensors:
                base = f"{self.prefix}/{r}/{_slug(sid)}/problem"
                entity("binary_sensor", f"{_slug(sid)}_problem", f"{sid} problem", state_topic=base,
                       payload_on="ON", payload_off="OFF", device_class="problem", entity_category="diagnostic",
                       json_attributes_topic=f"{base}/attributes")
                entity("sensor", f"{_slug(sid)}_rate", f"{sid} rate", state_topic=stats_topic,
                       value_template=f"{{{{ value_json.sensors['{sid}'].rate_hz }}}}", unit_of_measurement="Hz",
                       state_class="measurement", entity_category="diagnostic")
            for q in ("p50", "p99"):
                entity("sensor", f"e2e_{q}", f"end-to-end latency {q}", state_topic=stats_topic,
                       value_template=f"{{{{ value_json.latency_ms.e2e_{q} }}}}", unit_of_measurement="ms",
                       device_class="duration", state_class="measurement", entity_category="diagnostic")
            entity("sensor", "mqtt_queue", "MQTT queue", state_topic=stats_topic,
                   value_template="{{ value_json.sink.queue_depth }}", state_class="measurement",
                   entity_category="diagnostic")
        return out
