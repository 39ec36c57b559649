"""Prometheus metrics of a node (prometheus-client), served at ``http://ADDRESS:PORT/metrics``.

Families (labels in braces):

* per sensor, from the core's stats (refreshed every ``node.stats_interval_s``):
  ``fusion_sensor_{received,accepted,dropped,seq_gaps,restarts,deaths,clock_jumps}_total``
  ``{rig,sensor,kind}``, ``fusion_sensor_rejected_total{rig,sensor,reason}``, gauges
  ``fusion_sensor_alive``, ``fusion_sensor_ended``, ``fusion_sensor_rate_hz``, ``fusion_sensor_queue_depth``,
  ``fusion_sensor_clock_offset_seconds``, ``fusion_sensor_clock_drift_ppm``, and
  ``fusion_rejected_unattributed_total{rig,reason}``, ``fusion_sensor_faults_total{rig,sensor,kind}`` (times a
  fault was raised on an alive sensor: covered, frozen, repeating, empty, silent, clipped, stuck) and the gauge
  ``fusion_sensor_faulty{rig,sensor,kind}`` (1 while it lasts);
* per fused record: ``fusion_stage_latency_seconds{rig,stage}`` histograms (``receive``,
  ``sync_wait``, ``preprocess``, ``encode_*``, ``head``, ``publish``, ``e2e``) and
  ``fusion_fused_records_total{rig}``;
* lifecycle: ``fusion_lifecycle_events_total{rig,type,kind,label}``,
  ``fusion_occurrences_open{rig,kind}``;
* sinks: ``fusion_sink_queue_depth{sink}``, ``fusion_sink_dropped_total{sink}``,
  ``fusion_sink_published_total{sink}``, ``fusion_sink_connected{sink}``;
* the event log: ``fusion_eventlog_last_seq``, ``fusion_eventlog_bytes``;
* the process (prometheus-client's own collectors): ``process_resident_memory_bytes``,
  ``process_cpu_seconds_total``, open files, start time, and Python's GC and version.

The node thread records; the HTTP server thread reads the snapshot the node last handed over,
so a scrape never touches the node's working state.
"""

from __future__ import annotations

from typing import Callable

from prometheus_client import CollectorRegistry, Counter, Histogram, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.gc_collector import GCCollector
from prometheus_client.platform_collector import PlatformCollector
from prometheus_client.process_collector import ProcessCollector

__all__ = ["NodeMetrics", "LATENCY_BUCKETS_S"]

LATENCY_BUCKETS_S = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
_SENSOR_COUNTERS = ("received", "accepted", "dropped", "seq_gaps", "restarts", "deaths", "clock_jumps")
# (stats key, help, value of the stats entry as a gauge); ``ended`` holds a reason or None.
_SENSOR_GAUGES = (("alive", "1 while the sensor is heard within its liveness timeout", lambda v: float(v or 0)),
                  ("ended", "1 once the sensor ended its stream on purpose (its source ran out, it was stopped), "
                            "until it publishes again", lambda v: float(v is not None)),
                  ("rate_hz", "messages per second over the last stats interval", lambda v: float(v or 0)),
                  ("queue_depth", "messages waiting in the node's buffer for this sensor", lambda v: float(v or 0)))


class NodeMetrics:
    """The registry of one node and the calls that feed it."""

    def __init__(self, snapshot: Callable[[], dict]):
        self.registry = CollectorRegistry()
        ProcessCollector(registry=self.registry)
        PlatformCollector(registry=self.registry)
        GCCollector(registry=self.registry)
        self.stage = Histogram("fusion_stage_latency_seconds", "latency of each stage of a fused record",
                               ["rig", "stage"], buckets=LATENCY_BUCKETS_S, registry=self.registry)
        self.records = Counter("fusion_fused_records", "fused records published", ["rig"], registry=self.registry)
        self.events = Counter("fusion_lifecycle_events", "lifecycle events logged and published",
                              ["rig", "type", "kind", "label"], registry=self.registry)
        self.registry.register(_SnapshotCollector(snapshot))
        self.server = None
        self.port: int | None = None

    def observe_record(self, record: dict) -> None:
        rig = record["rig"]
        self.records.labels(rig).inc()
        for stage, ms in record.get("latency_ms", {}).items():
            self.stage.labels(rig, stage).observe(max(0.0, ms) / 1e3)

    def observe_event(self, event: dict) -> None:
        self.events.labels(event["rig"], event["type"], event["kind"], event["label"]).inc()

    def serve(self, port: int, address: str = "127.0.0.1") -> int:
        """Start the HTTP server (a daemon thread); returns the port it listens on."""
        self.server, _ = start_http_server(port, addr=address, registry=self.registry)
        self.port = int(self.server.server_port)
        return self.port

    def close(self) -> None:
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()
            self.server = None


class _SnapshotCollector:
    """Families built at scrape time from the node's last snapshot (stats, sinks, log, lifecycle)."""

    def __init__(self, snapshot: Callable[[], dict]):
        self.snapshot = snapshot

    def describe(self):
        return []  # built per scrape: no fixed description, and no scrape at registration

    def collect(self):
        snap = self.snapshot()
        fams = {name: CounterMetricFamily(f"fusion_sensor_{name}", f"sensor messages: {name.replace('_', ' ')}",
                                          labels=["rig", "sensor", "kind"]) for name in _SENSOR_COUNTERS}
        gauges = {name: GaugeMetricFamily(f"fusion_sensor_{name}", text, labels=["rig", "sensor", "kind"])
                  for name, text, _ in _SENSOR_GAUGES}
        offset = GaugeMetricFamily("fusion_sensor_clock_offset_seconds", "tracked offset: node receive clock minus "
                                   "sensor capture clock", labels=["rig", "sensor"])
        drift = GaugeMetricFamily("fusion_sensor_clock_drift_ppm", "tracked drift of the sensor clock",
                                  labels=["rig", "sensor"])
        rejected = CounterMetricFamily("fusion_sensor_rejected", "messages rejected, by reason",
                                       labels=["rig", "sensor", "reason"])
        unattributed = CounterMetricFamily("fusion_rejected_unattributed", "rejected messages naming no "
                                           "configured sensor", labels=["rig", "reason"])
        faults = CounterMetricFamily("fusion_sensor_faults", "faults raised on an alive sensor, by kind",
                                     labels=["rig", "sensor", "kind"])
        faulty = GaugeMetricFamily("fusion_sensor_faulty", "1 while the sensor has this fault",
                                   labels=["rig", "sensor", "kind"])
        for rig, stats in snap.get("stats", {}).items():
            for sid, s in stats.get("sensors", {}).items():
                key = [rig, sid, s.get("kind", "")]
                for name in _SENSOR_COUNTERS:
                    fams[name].add_metric(key, float(s.get(name, 0)))
                for name, _, value in _SENSOR_GAUGES:
                    gauges[name].add_metric(key, value(s.get(name)))
                clock = s.get("clock") or {}
                if clock.get("offset_ms") is not None:
                    offset.add_metric([rig, sid], clock["offset_ms"] / 1e3)
                if clock.get("drift_ppm") is not None:
                    drift.add_metric([rig, sid], clock["drift_ppm"])
                for reason, n in s.get("rejected", {}).items():
                    rejected.add_metric([rig, sid, reason], float(n))
                active = set(s.get("faulty", ()))
                for kind, n in s.get("faults", {}).items():
                    faults.add_metric([rig, sid, kind], float(n))
                    faulty.add_metric([rig, sid, kind], 1.0 if kind in active else 0.0)
            for reason, n in stats.get("rejected_unattributed", {}).items():
                unattributed.add_metric([rig, reason], float(n))
        yield from fams.values()
        yield from gauges.values()
        yield from (offset, drift, rejected, unattributed, faults, faulty)
        depth = GaugeMetricFamily("fusion_sink_queue_depth", "events waiting for the sink (queued or unacknowledged)",
                                  labels=["sink"])
        dropped = CounterMetricFamily("fusion_sink_dropped", "events dropped, oldest first, while the sink's queue "
                                      "was full", labels=["sink"])
        sent = CounterMetricFamily("fusion_sink_published", "messages the sink's broker acknowledged",
                                   labels=["sink"])
        up = GaugeMetricFamily("fusion_sink_connected", "1 while the sink is connected", labels=["sink"])
        for name, c in snap.get("sinks", {}).items():
            depth.add_metric([name], c["queue_depth"])
            dropped.add_metric([name], c["dropped"])
            sent.add_metric([name], c["published"])
            up.add_metric([name], 1.0 if c["connected"] else 0.0)
        yield from (depth, dropped, sent, up)
        log = snap.get("log")
        if log is not None:
            yield GaugeMetricFamily("fusion_eventlog_last_seq", "seq of the last logged event", value=log["last_seq"])
            yield GaugeMetricFamily("fusion_eventlog_bytes", "bytes of the event log's pages in use",
                                    value=log["bytes"])
        occ = GaugeMetricFamily("fusion_occurrences_open", "occurrences started and not yet ended",
                                labels=["rig", "kind"])
        for (rig, kind), n in snap.get("open", {}).items():
            occ.add_metric([rig, kind], n)
        yield occ
