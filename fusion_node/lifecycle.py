"""Event lifecycle: per-set fused records in, ``start`` / ``update`` / ``end`` events out. Pure code.

A fused record arrives for every synchronised set (about ten a second) and says which labels
pass their thresholds right now. Consumers want occurrences instead: "a person, from 14:03:07
to 14:03:19, top score 0.97 at 14:03:11, seen by camera and radar". :class:`Lifecycle` turns the
one into the other, with no clock of its own: every call passes the node's monotonic time and
the wall time read with it.

Occurrence keys. The fusion head gives one score per class for the whole scene; fused records
carry no track or box. An occurrence is therefore keyed by rig and label (one person occurrence
per rig at a time, however many people are in view); a record that localised its detections
would key them per track instead, and nothing else here would change.

Rules, for a detection (label) of one rig:

* it becomes a candidate when a record lists the label (its score passed the threshold);
* the candidate **starts** once the label has held for ``min_duration_s`` of reference time
  (gaps up to ``max_gap_s`` allowed); a candidate that misses ``max_gap_s`` is dropped unseen;
* a started occurrence is supported by every record whose score for the label is at least the
  threshold minus ``hysteresis`` (hysteresis: it does not flicker off at the threshold);
* it **updates** on a material change (the top score rose by ``update_score_delta``, another
  modality or alert joined), at most once per ``update_interval_s`` of node time;
* it **ends** when records go on without support for more than ``max_gap_s`` of reference time
  (reason ``gone``), when no record at all arrives for ``end_timeout_s`` of node time (reason
  ``timeout``: the driver sensor or the node stalled), or when the node stops (``node_stopped``).

Alerts are occurrences too, keyed by rig and alert (``sensor_failed:mic0``): from the records'
alerts (``sensor_failed:<id>``, ``modalities_disagree``, ``drift``) and from the node's stats
(``sensor_failed:<id>`` also when the driver camera itself is silent and no record comes,
``sensor_fault:<id>`` while a sensor's messages are being rejected or its clock jumps (and, from
the records, ``sensor_fault:<id>:<kind>`` while it is alive but faulty: ``fusion_node.faults``),
``clock_drift:<id>`` while its tracked drift exceeds ``drift_alert_ppm``). An alert starts at
once and ends after ``end_timeout_s`` of node time without its condition.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from .config import LifecycleConfig
from .walltime import mono_to_wall_ns, utc_iso

__all__ = ["Lifecycle", "Occurrence", "EVENT_TYPES"]

EVENT_TYPES = ("start", "update", "end")


@dataclass
class Occurrence:
    """One occurrence of a label (or an alert) on one rig, from its first sight to its end."""

    id: str
    rig: str
    label: str
    kind: str  # "detection" or "alert"
    sensor_id: str | None
    first_ns: int
    first_utc: str
    last_ns: int
    last_utc: str
    last_seen_node_ns: int
    score: float | None = None
    top_score: float | None = None
    top_ns: int | None = None
    top_utc: str | None = None
    top_seq: int | None = None  # the fused record at the top score
    top_record: dict | None = field(default=None, repr=False)
    modalities: set = field(default_factory=set)
    alerts: set = field(default_factory=set)
    records: int = 0
    started: bool = False
    last_emit_node_ns: int = 0
    emitted: tuple = ()  # (top score, modalities, alerts) as last told
    update_pending: bool = False

    def material(self, delta: float) -> bool:
        """Whether what consumers were last told differs enough to tell them again."""
        if not self.emitted:
            return True
        top, modalities, alerts = self.emitted
        rose = self.top_score is not None and (top is None or self.top_score - top >= delta - 1e-12)
        return rose or modalities != frozenset(self.modalities) or alerts != frozenset(self.alerts)


class Lifecycle:
    """Occurrences of every rig a node serves; feed it records, stats and the time."""

    def __init__(self, cfg: LifecycleConfig, run_id: int = 0, thresholds: dict[str, float] | None = None,
                 t_start_ns: int = 0):
        self.cfg = cfg
        self.run_id = run_id
        self.thresholds = dict(thresholds or {})
        self.t_start_ns = t_start_ns
        self.open: dict[tuple[str, str], Occurrence] = {}
        self._n = 0
        self._last_record_node_ns: dict[str, int] = {}
        self._last_stats: dict[str, dict] = {}

    # -- inputs -------------------------------------------------------------------------------

    def observe(self, record: dict, now_ns: int, wall_ns: int) -> list[dict]:
        """One fused record (as published, with ``t_ref_utc``); returns the events it causes."""
        rig = record["rig"]
        self._last_record_node_ns[rig] = now_ns
        t_ref = int(record["t_ref_ns"])
        t_utc = record.get("t_ref_utc") or utc_iso(mono_to_wall_ns(t_ref, now_ns, wall_ns))
        listed = {d["label"]: float(d["score"]) for d in record.get("labels", [])}
        scores = record.get("scores") or {}
        modalities = {k for k, m in record.get("modalities", {}).items()
                      if m.get("present") and m.get("weight", 1.0) > 0}
        alerts = set(record.get("alerts", []))
        out: list[dict] = []
        gap = _ns(self.cfg.max_gap_s)
        for occ in [o for o in self.open.values() if o.rig == rig and o.kind == "detection"]:
            if t_ref - occ.last_ns > gap:
                out += self._end(occ, now_ns, wall_ns, "gone")
        held = {label for (r, label), o in self.open.items() if r == rig and o.kind == "detection"}
        for label in sorted(set(listed) | held):
            occ = self.open.get((rig, label))
            score = listed.get(label, scores.get(label))
            keep = score is not None and label in self.thresholds and \
                score >= self.thresholds[label] - self.cfg.hysteresis
            if not (label in listed or (occ is not None and occ.started and keep)):
                continue
            if occ is None:
                occ = self._new(rig, label, "detection", None, t_ref, t_utc, now_ns)
            self._support(occ, t_ref, t_utc, now_ns, score, record, modalities, alerts)
            if not occ.started and occ.last_ns - occ.first_ns >= _ns(self.cfg.min_duration_s):
                occ.started = True
                out.append(self._emit(occ, "start", now_ns, wall_ns))
        out += self._alerts(rig, {a: _alert_sensor(a) for a in sorted(alerts)}, now_ns, wall_ns)
        out += self._pending_updates(now_ns, wall_ns)
        return out

    def observe_stats(self, stats: dict, now_ns: int, wall_ns: int) -> list[dict]:
        """One rig's stats message: alerts about its sensors (failed, faulty, drifting)."""
        rig = stats["rig"]
        before = self._last_stats.get(rig, {})
        self._last_stats[rig] = stats.get("sensors", {})
        found: dict[str, str] = {}
        for sid, s in stats.get("sensors", {}).items():
            heard = s.get("last_seen_ms") is not None
            silent = not s.get("alive", True) and not s.get("ended")  # an ended stream is not a failure
            if silent and (heard or now_ns - self.t_start_ns >= _ns(self.cfg.sensor_grace_s)):
                found[f"sensor_failed:{sid}"] = sid
            prev = before.get(sid)
            if prev is not None and (sum(s.get("rejected", {}).values()) > sum(prev.get("rejected", {}).values())
                                     or s.get("clock_jumps", 0) > prev.get("clock_jumps", 0)):
                found[f"sensor_fault:{sid}"] = sid
            drift = (s.get("clock") or {}).get("drift_ppm")
            if drift is not None and abs(drift) > self.cfg.drift_alert_ppm:
                found[f"clock_drift:{sid}"] = sid
        return self._alerts(rig, found, now_ns, wall_ns)

    def tick(self, now_ns: int, wall_ns: int) -> list[dict]:
        """Ends by timeout and rate-limited updates now due; call it when no record came."""
        out: list[dict] = []
        timeout = _ns(self.cfg.end_timeout_s)
        for occ in list(self.open.values()):
            if occ.kind == "detection":
                silent = now_ns - self._last_record_node_ns.get(occ.rig, now_ns) > timeout
            else:
                silent = now_ns - occ.last_seen_node_ns > timeout
            if silent:
                out += self._end(occ, now_ns, wall_ns, "timeout")
        return out + self._pending_updates(now_ns, wall_ns)

    def close(self, now_ns: int, wall_ns: int, reason: str = "node_stopped") -> list[dict]:
        """End every started occurrence (the node is stopping)."""
        out: list[dict] = []
        for occ in list(self.open.values()):
            out += self._end(occ, now_ns, wall_ns, reason)
        return out

    def next_due_ns(self) -> int | None:
        """Earliest node time at which :meth:`tick` may have something to say."""
        due = []
        timeout = _ns(self.cfg.end_timeout_s)
        for occ in self.open.values():
            base = self._last_record_node_ns.get(occ.rig, occ.last_seen_node_ns) if occ.kind == "detection" \
                else occ.last_seen_node_ns
            due.append(base + timeout + 1)
            if occ.update_pending:
                due.append(occ.last_emit_node_ns + _ns(self.cfg.update_interval_s))
        return min(due) if due else None

    # -- internals ----------------------------------------------------------------------------

    def _new(self, rig: str, label: str, kind: str, sensor_id: str | None, t_ns: int, t_utc: str,
             now_ns: int) -> Occurrence:
        self._n += 1
        occ = Occurrence(f"{rig}:{label}:{self.run_id:08x}:{self._n}", rig, label, kind, sensor_id,
                         t_ns, t_utc, t_ns, t_utc, now_ns)
        self.open[(rig, label)] = occ
        return occ

    def _support(self, occ: Occurrence, t_ref: int, t_utc: str, now_ns: int, score: float | None,
                 record: dict, modalities: set, alerts: set) -> None:
        occ.last_ns, occ.last_utc, occ.last_seen_node_ns = t_ref, t_utc, now_ns
        occ.records += 1
        occ.score = score
        occ.modalities |= modalities
        occ.alerts |= alerts
        if score is not None and (occ.top_score is None or score > occ.top_score):
            occ.top_score, occ.top_ns, occ.top_utc = score, t_ref, t_utc
            occ.top_seq, occ.top_record = record.get("seq"), record
        if occ.started and occ.material(self.cfg.update_score_delta):
            occ.update_pending = True

    def _alerts(self, rig: str, found: dict[str, str | None], now_ns: int, wall_ns: int) -> list[dict]:
        out = []
        utc = utc_iso(wall_ns)
        for alert, sensor_id in found.items():
            occ = self.open.get((rig, alert))
            if occ is None:
                occ = self._new(rig, alert, "alert", sensor_id, now_ns, utc, now_ns)
                occ.started = True
                occ.records = 1
                out.append(self._emit(occ, "start", now_ns, wall_ns))
            else:
                occ.last_ns, occ.last_utc, occ.last_seen_node_ns = now_ns, utc, now_ns
                occ.records += 1
        return out

    def _pending_updates(self, now_ns: int, wall_ns: int) -> list[dict]:
        out = []
        gap = _ns(self.cfg.update_interval_s)
        for occ in self.open.values():
            if occ.update_pending and now_ns - occ.last_emit_node_ns >= gap:
                out.append(self._emit(occ, "update", now_ns, wall_ns))
        return out

    def _end(self, occ: Occurrence, now_ns: int, wall_ns: int, reason: str) -> list[dict]:
        del self.open[(occ.rig, occ.label)]
        return [self._emit(occ, "end", now_ns, wall_ns, reason)] if occ.started else []

    def _emit(self, occ: Occurrence, kind: str, now_ns: int, wall_ns: int, reason: str | None = None) -> dict:
        occ.last_emit_node_ns = now_ns
        occ.update_pending = False
        occ.emitted = (occ.top_score, frozenset(occ.modalities), frozenset(occ.alerts))
        ended = kind == "end"
        event: dict[str, Any] = {
            "type": kind, "kind": occ.kind, "id": occ.id, "rig": occ.rig, "label": occ.label,
            "sensor_id": occ.sensor_id, "score": occ.score, "top_score": occ.top_score,
            "top_ns": occ.top_ns, "top_utc": occ.top_utc, "top_fused_seq": occ.top_seq,
            "start_ns": occ.first_ns, "start_utc": occ.first_utc,
            "end_ns": occ.last_ns if ended else None, "end_utc": occ.last_utc if ended else None,
            "duration_s": round((occ.last_ns - occ.first_ns) / 1e9, 3),
            "modalities": sorted(occ.modalities), "alerts": sorted(occ.alerts), "records": occ.records,
            "reason": reason, "snapshot": None,
            "t_ns": int(now_ns), "t_utc": utc_iso(wall_ns),
        }
        return event


def _ns(seconds: float) -> int:
    return int(seconds * 1e9)


def _alert_sensor(alert: str) -> str | None:
    """The sensor an alert names (``sensor_failed:mic0``, ``sensor_fault:cam0:frozen`` -> the id), or None."""
    return alert.split(":")[1] if ":" in alert else None
