"""What happens to fused records after the node publishes them: lifecycle, snapshots, log, sinks, metrics.

:class:`EventOutputs` is the one object the node loop talks to. Per fused record it feeds the
:class:`~fusion_node.lifecycle.Lifecycle`, keeps a copy of the camera frame (and radar points)
of the record that holds an occurrence's top score, and sends each lifecycle event that comes
out through, in this order: the snapshot (rendered when the top changed since the last one),
the durable :class:`~fusion_node.eventlog.EventLog` (which assigns ``seq``), the node's own
``lifecycle`` topic, the sinks (MQTT) and the Prometheus counters. Writing the log first means
nothing is published that a restarted node or a consumer replaying with ``--since`` would not
find. Everything runs on the node's thread; lifecycle events are rare (a few per occurrence),
so the log's synchronous commit and a JPEG encode cost little there.
"""

from __future__ import annotations

import logging
import re
import time
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from .config import RigConfig
from .eventlog import EventLog
from .lifecycle import Lifecycle
from .metrics import NodeMetrics
from .paths import cache_dir
from .radar_projection import RadarProjection
from .rig import load_rig
from .sinks.mqtt import MqttSink
from .snapshot import render_snapshot
from .walltime import utc_iso
from .wire import CameraFrame, RadarPoints, encode_map

__all__ = ["EventOutputs", "default_log_path", "LIFECYCLE_TOPIC"]

log = logging.getLogger("fusion.outputs")

LIFECYCLE_TOPIC = "lifecycle"
# Camera frames and radar messages kept per sensor for snapshots: a set is fused within the sync
# deadline (200 ms by default, 6 frames at 30 Hz) of its newest frame. Raw frames are large, so
# the bound is per sensor and small.
FRAMES_PER_SENSOR = 8
LOG_MAINTAIN_S = 60.0


def default_log_path(rig: str) -> Path:
    """Where a node keeps its event log when the config names none."""
    return cache_dir("events", re.sub(r"[^A-Za-z0-9_.-]", "_", rig) + ".sqlite")


@dataclass
class _Best:
    """The frame at an occurrence's top score, copied out of the receive path."""

    fused_seq: int
    image: np.ndarray
    points: np.ndarray | None
    caption: str


class EventOutputs:
    """Lifecycle, snapshots, the event log, the lifecycle topic, sinks and metrics of one node."""

    def __init__(self, cfgs: Sequence[RigConfig], runtime=None, publish: Callable[[list], None] | None = None, *,
                 run_id: int = 0, clock: Callable[[], int] = time.monotonic_ns,
                 wall_clock: Callable[[], int] = time.time_ns):
        first = cfgs[0]
        self.cfg = first.lifecycle
        self.clock, self.wall_clock = clock, wall_clock
        self.publish = publish
        thresholds = dict(getattr(runtime, "thresholds", None) or {}) if runtime is not None else {}
        self.lifecycle = Lifecycle(first.lifecycle, run_id, thresholds, t_start_ns=clock())
        self.log_path = Path(first.event_log.path) if first.event_log.path else default_log_path(first.rig)
        self.log = EventLog(self.log_path, first.event_log.max_age_days, first.event_log.max_mb)
        self.sinks: list[MqttSink] = []
        if first.sinks.mqtt is not None:
            self.sinks.append(MqttSink(first.sinks.mqtt, {c.rig: [s.id for s in c.sensors] for c in cfgs}).start())
        self.metrics: NodeMetrics | None = None
        self._stats: dict[str, dict] = {}
        self._open: dict[tuple[str, str], int] = {}
        self._log_state = {"last_seq": self.log.last_seq(), "bytes": self.log.used_bytes()}
        if first.node.metrics_port is not None:
            self.metrics = NodeMetrics(self.snapshot)
            self.metrics.serve(first.node.metrics_port, first.node.metrics_address)
        self._frames: dict[str, OrderedDict[int, CameraFrame | RadarPoints]] = {}
        self._best: dict[str, _Best] = {}
        self._snapped: dict[str, int] = {}
        self._projection: dict[str, RadarProjection | None] = {c.rig: self._load_projection(c) for c in cfgs}
        self._next_maintain = 0
        now, wall = clock(), wall_clock()
        self.log.maintain(wall)
        self._emit(self._close_unfinished(now, wall), wall)

    @staticmethod
    def _load_projection(cfg: RigConfig) -> RadarProjection | None:
        cam = next((s.id for s in cfg.sensors if s.kind == "camera"), None)
        radar = next((s.id for s in cfg.sensors if s.kind == "radar"), None)
        if not cfg.calibration_file or cam is None or radar is None:
            return None
        return RadarProjection.from_rig(load_rig(cfg.calibration_file), cam, radar)

    @property
    def metrics_port(self) -> int | None:
        return None if self.metrics is None else self.metrics.port

    # -- inputs from the node loop ----------------------------------------------------------------

    def keep(self, msg) -> None:
        """A decoded sensor message: camera frames and radar points are kept briefly for snapshots."""
        if self.cfg.snapshots and isinstance(msg, (CameraFrame, RadarPoints)):
            frames = self._frames.setdefault(msg.sensor_id, OrderedDict())
            frames[msg.seq] = msg
            if len(frames) > FRAMES_PER_SENSOR:
                frames.popitem(last=False)

    def on_record(self, record: dict) -> None:
        """A fused record the node has just published."""
        now, wall = self.clock(), self.wall_clock()
        if self.metrics is not None:
            self.metrics.observe_record(record)
        events = self.lifecycle.observe(record, now, wall)
        if self.cfg.snapshots:
            for occ in self.lifecycle.open.values():
                if occ.kind == "detection" and occ.rig == record["rig"] and occ.top_seq == record["seq"]:
                    self._grab(occ, record)
        self._emit(events, wall)

    def on_stats(self, stats: dict) -> None:
        """A rig's stats message the node has just published."""
        now, wall = self.clock(), self.wall_clock()
        self._stats = {**self._stats, stats["rig"]: stats}
        for sink in self.sinks:
            sink.update_stats(stats, now)
        self._emit(self.lifecycle.observe_stats(stats, now, wall), wall)

    def tick(self) -> None:
        """Timeouts and rate-limited updates due now; the log's retention once a minute."""
        now, wall = self.clock(), self.wall_clock()
        self._emit(self.lifecycle.tick(now, wall), wall)
        if now >= self._next_maintain:
            self._next_maintain = now + int(LOG_MAINTAIN_S * 1e9)
            self.log.maintain(wall)
            self._log_state = {"last_seq": self.log.last_seq(), "bytes": self.log.used_bytes()}

    def next_due_ns(self) -> int | None:
        return self.lifecycle.next_due_ns()

    def close(self) -> None:
        """End open occurrences (``node_stopped``), flush the sinks, stop the metrics server, close the log."""
        now, wall = self.clock(), self.wall_clock()
        self._emit(self.lifecycle.close(now, wall), wall)
        for sink in self.sinks:
            sink.close()
        if self.metrics is not None:
            self.metrics.close()
        self.log.close()

    def snapshot(self) -> dict:
        """What the metrics server reads at a scrape (replaced whole, never mutated in place)."""
        return {"stats": self._stats, "sinks": {s.name: s.counters() for s in self.sinks},
                "log": self._log_state, "open": self._open}

    # -- internals --------------------------------------------------------------------------------

    def _grab(self, occ, record: dict) -> None:
        image = points = None
        for m in record.get("members", []):
            msg = self._frames.get(m["sensor_id"], {}).get(m["seq"])
            if isinstance(msg, CameraFrame):
                image = msg.image.copy()
                lease = getattr(msg, "shm_lease", None)
                if lease is not None and not lease.valid():
                    image = None  # its shared-memory slot was reused meanwhile: the copy may be torn
            elif isinstance(msg, RadarPoints):
                points = np.array(msg.points, dtype=np.float32)
        if image is not None:
            caption = f"{occ.rig}  {occ.label} {occ.top_score:.2f}  {occ.top_utc}"
            self._best[occ.id] = _Best(record["seq"], image, points, caption)

    def _close_unfinished(self, now: int, wall: int) -> list[dict]:
        """End events for occurrences a previous run of the node left open (it was killed)."""
        out = []
        for last in self.log.unfinished():
            ev = {k: v for k, v in last.items() if k != "seq"}
            ev.update(type="end", reason="node_restarted", end_ns=None, end_utc=utc_iso(wall), t_ns=now,
                      t_utc=utc_iso(wall))
            out.append(ev)
        return out

    def _emit(self, events: list[dict], wall: int) -> None:
        for ev in events:
            oid = ev["id"]
            best = self._best.get(oid)
            if best is not None and self._snapped.get(oid) != best.fused_seq:
                jpeg = render_snapshot(best.image, best.points, best.caption, self._projection.get(ev["rig"]),
                                       self.cfg.snapshot_quality)
                self.log.put_snapshot(oid, jpeg, wall)
                self._snapped[oid] = best.fused_seq
            if oid in self._snapped or (ev["type"] == "end" and ev.get("snapshot")):
                ev["snapshot"] = oid
            logged = self.log.append(ev, wall)
            if self.publish is not None:
                self.publish(encode_map(LIFECYCLE_TOPIC, logged))
            for sink in self.sinks:
                sink.publish_event(logged)
            if self.metrics is not None:
                self.metrics.observe_event(logged)
            if ev["type"] == "end":
                self._best.pop(oid, None)
                self._snapped.pop(oid, None)
        if events:
            counts: dict[tuple[str, str], int] = {}
            for occ in self.lifecycle.open.values():
                if occ.started:
                    counts[(occ.rig, occ.kind)] = counts.get((occ.rig, occ.kind), 0) + 1
            self._open = counts
            self._log_state = {"last_seq": self.log.last_seq(), "bytes": self._log_state["bytes"]}
