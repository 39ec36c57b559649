"""The fusion core: ``step(now_ns, messages) -> events``, with no sockets, clocks or environment.

The node process owns the ZeroMQ loop and passes in decoded messages with their arrival times
and the current time; replay, tests and benchmarks drive this same core. Stage durations are
measured with an injected timer (``time.perf_counter_ns`` in the node).

Per step the core:

1. admits each message (known sensor, right topic, increasing seq and capture time within a
   publisher run, capture time inside the accepted window) or counts its rejection by reason;
   a new ``run_id`` from a sensor means it restarted: its history is re-based, not rejected;
2. keeps bounded per-sensor buffers (drop-oldest, counted) and per-sensor liveness;
3. feeds the set assembler (the configured sync policy) and audio rings;
4. shows each admitted message once to the fault detectors (:mod:`fusion_node.faults`): a sensor
   that is alive but faulty (covered, frozen, repeating, silent...) is left out of the fusion
   like a missing one, and named in the event's ``faults`` and alerts;
5. for each released set runs preprocessing, the encoders and the fusion head, and builds the
   fused event with member ages, missing modalities and the latency of every stage.
"""

from __future__ import annotations

import time
from collections import Counter, deque
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np

from .alerts import DisagreementMonitor
from .assembly import Member, SetAssembler, SyncSet
from .audio_ring import AudioRing
from .clock import ClockTracker
from .config import RigConfig
from .drift import DriftMonitor
from .labels import LabelSmoother
from .preprocess import pool_radar_frames
from .faults import FaultMonitor
from .radar_projection import RadarProjection
from .rig import Rig
from .runtime import HeadOutput, Runtime
from .stats import LatencyWindow
from .vocabulary import BOUND_PAIRS, MODALITIES, WIRE_AUDIO_RATE_HZ
from .walltime import mono_to_wall_ns, utc_iso
from .wire import (
    TOPICS,
    AudioChunk,
    CameraFrame,
    RadarPoints,
    Rejection,
    SensorMessage,
    StreamEnd,
    decode_jpeg,
)

__all__ = ["FusionCore", "SensorState"]

# An audio window less covered than this is treated as missing rather than fed to the encoder.
MIN_AUDIO_COVERAGE = 0.5
# Consecutive, mutually consistent out-of-order messages that re-base a sensor's timeline.
STEP_CONFIRM = 3
# Sets further apart than this (or going back in time) restart the label smoothing: the rig's
# sensors restarted or stalled, and what was seen before says nothing of the scene now.
LABEL_RESET_GAP_NS = 2_000_000_000
# A radar frame further back than this from a set's own frame is not pooled with it (for a model
# that reads several frames): the radar paused, and what it saw then is not where things are now.
RADAR_POOL_SPAN_NS = 1_000_000_000
# Frames of a radar kept beyond those pooled: a set may be fused after later frames have arrived.
RADAR_HISTORY_SLACK = 16


@dataclass
class SensorState:
    """What the core knows of one configured sensor."""

    sensor_id: str
    kind: str
    offset_ns: int
    liveness_ns: int
    buffer: deque
    run_id: int | None = None
    last_seq: int = -1
    last_t_rig_ns: int = -1
    last_seen_ns: int | None = None
    alive: bool = False
    ended: str | None = None  # the reason of the StreamEnd that closed its run, until it publishes again
    received: int = 0
    accepted: int = 0
    dropped: int = 0
    seq_gaps: int = 0
    restarts: int = 0
    deaths: int = 0
    clock_jumps: int = 0
    capture_after_arrival: int = 0  # rig-clock capture later than node arrival: the offset is not the node's clock
    drift_ppm: float = 0.0  # from the rig calibration file: t_rig = t + offset + drift * (t - epoch)
    clock_epoch_ns: int = 0
    rejected: Counter = field(default_factory=Counter)
    received_at_last_stats: int = 0
    # Out-of-order messages that agree with each other: STEP_CONFIRM of them in a row are a new
    # timeline (a clock stepped back, a seq the node was led past), not isolated stale frames.
    step_candidates: list = field(default_factory=list)
    resyncs: int = 0


class FusionCore:
    """Synchronises one rig's streams and fuses each released set into an event."""

    def __init__(self, cfg: RigConfig, runtime: Runtime | None = None,
                 timer: Callable[[], int] = time.perf_counter_ns, run_id: int = 0, *, calibration: Rig | None = None):
        self.cfg = cfg
        self.runtime = runtime
        self.timer = timer
        self.run_id = run_id
        self.sensors = {
            s.id: SensorState(s.id, s.kind, 0, s.liveness_timeout_ns, deque(maxlen=s.buffer_len))
            for s in cfg.sensors
        }
        if calibration is not None:
            self._apply_clocks(calibration)
        self.radar_projections = self._projections(cfg, calibration)
        # Online clock tracking per sensor: offset and drift against the node clock for the
        # stats topic, and detection of jumps (a looped file, a restarted device) to re-base.
        self.clocks = {s.id: ClockTracker(s.id, expected_period_ns=TOPICS[s.kind].period_ns) for s in cfg.sensors}
        # The audio encoder's window and sample rate are the model's (its manifest); without a
        # model, the config's window and the rate sensors publish by default. Audio at any other
        # rate is rejected (counted as bad_header): the rings and the encoder assume this one.
        self.audio_window_s = cfg.sync.audio_window_s if runtime is None else runtime.audio_window_s
        self.audio_rate_hz = WIRE_AUDIO_RATE_HZ if runtime is None else runtime.audio_sample_rate_hz
        ring_s = max(4.0, 2 * self.audio_window_s + cfg.sync.deadline_ms / 1e3)
        self.rings = {s.id: AudioRing(self.audio_rate_hz, ring_s) for s in cfg.sensors if s.kind == "audio"}
        self.assembler = SetAssembler(cfg, self.audio_window_s)
        # The radar encoder's window is the model's too: its set's frame and the frames before it.
        self.radar_frames = 1 if runtime is None else runtime.radar_frames
        self._radar_history = {s.id: deque(maxlen=self.radar_frames + RADAR_HISTORY_SLACK)
                               for s in cfg.sensors if s.kind == "radar" and self.radar_frames > 1}
        self.faults = FaultMonitor(cfg.faults, {s.id: s.kind for s in cfg.sensors}, self.audio_rate_hz) \
            if cfg.faults.enabled else None
        self.unattributed: Counter = Counter()
        self.events_out = 0
        self.latency = LatencyWindow()
        self.max_age_ns = int(cfg.node.max_age_s * 1e9)
        self.max_future_ns = int(cfg.node.max_future_s * 1e9)
        self._event_seq = 0
        # The first message admitted from any of the rig's sensors: one never heard from is failed
        # once its liveness timeout, and the start-up grace, have passed since then. Sensors started
        # together may come up seconds apart on a loaded host: that is no failure.
        self._t_first_ns: int | None = None
        self.grace_ns = int(cfg.lifecycle.sensor_grace_s * 1e9)
        self._now_ns = 0
        # Buffers are drained audio first so windows are ready when frames release sets; the
        # order is fixed by the config, so it is settled once here rather than sorted every step.
        self._drain_order = sorted(self.sensors.values(), key=lambda s: s.kind != "audio")
        # Per-rig state across sets: smoothed labels, and the alerts that need a condition to last.
        self.smoother = None if runtime is None else LabelSmoother(runtime.classes, runtime.thresholds, cfg.labels)
        self.disagreement = DisagreementMonitor(cfg.alerts)
        self.drift = DriftMonitor(BOUND_PAIRS, cfg.alerts)
        self._last_fused_ref_ns: int | None = None

    @staticmethod
    def _projections(cfg: RigConfig, calibration: Rig | None) -> dict[str, RadarProjection]:
        """Each radar's projection into the rig's first camera, where the calibration file gives one.
        A radar without one is fed through the bundle's nominal geometry."""
        if calibration is None:
            return {}
        cameras = [s.id for s in cfg.sensors if s.kind == "camera"]
        out = {}
        for s in cfg.sensors:
            if s.kind == "radar":
                proj = RadarProjection.into_first_camera(calibration, s.id, cameras)
                if proj is not None:
                    out[s.id] = proj
        return out

    def _apply_clocks(self, rig: Rig) -> None:
        """Each sensor's clock offset and drift against the rig clock, from the rig calibration file."""
        for cal in rig.sensors:
            st = self.sensors.get(cal.id)
            if st is not None:
                st.offset_ns = cal.clock.clock_offset_ns
                st.drift_ppm = cal.clock.clock_drift_ppm
                st.clock_epoch_ns = cal.clock.clock_epoch_ns

    def to_rig_ns(self, st: SensorState, t_capture_ns: int) -> int:
        """A sensor's capture time on the rig clock."""
        drift = int(st.drift_ppm * 1e-6 * (t_capture_ns - st.clock_epoch_ns)) if st.drift_ppm else 0
        return t_capture_ns + st.offset_ns + drift

    # -- admission -----------------------------------------------------------------------

    def reject(self, rej: Rejection) -> None:
        """Count a rejection against the configured sensor it names, else as unattributed."""
        st = self.sensors.get(rej.sensor_id)
        if st is not None:
            st.rejected[rej.reason] += 1
        else:
            self.unattributed[rej.reason] += 1

    def _refuse(self, st: SensorState, reason: str) -> None:
        st.rejected[reason] += 1

    def _admit(self, now_ns: int, t_recv_ns: int, msg: SensorMessage) -> Member | None:
        """Admit one decoded message or count why not.

        Every check runs before anything about the sensor changes: a rejected message moves
        no clock tracking, sequence or timeline, only counters (and the bounded step-candidate
        list, for out-of-order messages). JPEG frames are decoded here, last, once admitted.
        """
        st = self.sensors.get(msg.sensor_id)
        if st is None:
            self.unattributed["unknown_sensor"] += 1
            return None
        st.received += 1
        if msg.topic != st.kind:
            return self._refuse(st, "unknown_sensor")  # a sensor id published on another modality's topic
        if isinstance(msg, AudioChunk) and msg.sample_rate_hz != self.audio_rate_hz:
            return self._refuse(st, "bad_header")
        t_rig = self.to_rig_ns(st, msg.t_capture_ns)
        if t_rig < now_ns - self.max_age_ns:
            return self._refuse(st, "timestamp_past")
        if t_rig > now_ns + self.max_future_ns:
            return self._refuse(st, "timestamp_future")
        restart = msg.run_id != st.run_id
        resync = False
        if not restart and (msg.seq <= st.last_seq or t_rig <= st.last_t_rig_ns):
            if not self._confirms_step(st, msg, t_rig, t_recv_ns):
                return self._refuse(st, "out_of_order")
            resync = True
        if isinstance(msg, CameraFrame) and msg.image is None and decode_jpeg(msg) is not None:
            return self._refuse(st, "bad_payload")
        # Admitted: from here on the sensor's state follows this message.
        st.step_candidates.clear()
        clock = self.clocks[st.sensor_id]
        if restart:
            if st.run_id is not None:
                st.restarts += 1
                self.assembler.rebase(st.sensor_id)
            st.run_id = msg.run_id
            st.last_seq = msg.seq - 1
            clock.reset()
        elif resync:
            st.resyncs += 1
            st.last_seq = msg.seq - 1
            if t_rig <= st.last_t_rig_ns:
                self.assembler.rebase(st.sensor_id)  # the timeline went back: forget what came after
        if clock.observe(msg.t_capture_ns, t_recv_ns) == "jump" and not restart:
            # The sensor's clock leapt within one run: start its timeline afresh instead of
            # rejecting everything from now on as out of order, or stalling the synchroniser.
            st.clock_jumps += 1
            self.assembler.rebase(st.sensor_id)
        if msg.seq > st.last_seq + 1:
            st.seq_gaps += msg.seq - st.last_seq - 1
        st.last_seq = msg.seq
        st.last_t_rig_ns = t_rig
        st.last_seen_ns = t_recv_ns
        st.ended = None
        st.accepted += 1
        return Member(st.sensor_id, st.kind, msg, t_rig, t_recv_ns)

    def _end(self, t_recv_ns: int, end: StreamEnd) -> None:
        """A sensor ends its run on purpose: it is no longer waited for, and not failed.

        Only the run the node follows can be ended, in sequence: a stale or foreign end is
        refused like an out-of-order frame. The sensor's next frame (or a new run) revives it.
        """
        st = self.sensors.get(end.sensor_id)
        if st is None:
            self.unattributed["unknown_sensor"] += 1
            return
        st.received += 1
        if end.topic != st.kind:
            return self._refuse(st, "unknown_sensor")
        if st.run_id is not None and (end.run_id != st.run_id or end.seq <= st.last_seq):
            return self._refuse(st, "out_of_order")
        st.run_id, st.last_seq = end.run_id, end.seq
        st.ended = end.reason
        st.last_seen_ns = t_recv_ns
        if self._t_first_ns is None:
            self._t_first_ns = t_recv_ns

    def _confirms_step(self, st: SensorState, msg: SensorMessage, t_rig: int, t_recv_ns: int) -> bool:
        """Whether this out-of-order message is the STEP_CONFIRM-th in a row of one new timeline.

        Candidates must follow each other (seq and capture time increasing) with capture time
        advancing like receive time: a sensor whose clock stepped, or the real stream after a
        message that claimed a far-ahead seq. A lone stale or replayed frame never gets there.
        """
        cands = st.step_candidates
        d = t_recv_ns - msg.t_capture_ns
        if cands:
            seq0, t0, d0 = cands[-1]
            tolerance = self.clocks[st.sensor_id].threshold_ns // 2
            if not (msg.seq > seq0 and t_rig > t0 and abs(d - d0) <= tolerance):
                cands.clear()
        cands.append((msg.seq, t_rig, d))
        del cands[:-STEP_CONFIRM]
        return len(cands) >= STEP_CONFIRM

    # -- the step --------------------------------------------------------------------------

    def step(self, now_ns: int, messages: list[tuple[int, SensorMessage | Rejection]]) -> list[dict]:
        """Take ``(t_recv_ns, decoded message)`` pairs; return the fused events now due."""
        return self.fuse_sets(self.release(now_ns, messages))

    def fuse_sets(self, sets: list[SyncSet]) -> list[dict]:
        """Preprocess, encode and fuse released sets into events (one call per set here; a node
        serving many rigs can gather the sets of every core first and batch the encoders)."""
        return [self._fuse(s) for s in sets]

    def release(self, now_ns: int, messages: list[tuple[int, SensorMessage | Rejection]]) -> list[SyncSet]:
        """Admit messages and return the sets the synchroniser releases now, not yet fused."""
        self._now_ns = now_ns
        for t_recv, msg in messages:
            if isinstance(msg, Rejection):
                self.reject(msg)
                continue
            if isinstance(msg, StreamEnd):
                self._end(t_recv, msg)
                continue
            member = self._admit(now_ns, t_recv, msg)
            if member is None:
                continue
            if self._t_first_ns is None:
                self._t_first_ns = t_recv
            st = self.sensors[member.sensor_id]
            if len(st.buffer) == st.buffer.maxlen:
                st.dropped += 1  # the oldest falls out: the node is behind, fresh data wins
            st.buffer.append(member)
        # Buffers are drained in capture order per sensor, sensors in ``_drain_order``.
        for st in self._drain_order:
            while st.buffer:
                member = st.buffer.popleft()
                if self.faults is not None:
                    self._watch(member)
                if st.kind == "audio":
                    ring = self.rings[st.sensor_id]
                    if ring.write(member.t_rig_ns, member.msg.samples) == "rebase":
                        self.assembler.rebase(st.sensor_id)
                    self.assembler.audio_progress(st.sensor_id, ring.end_ns)
                else:
                    if st.sensor_id in self._radar_history:
                        self._radar_history[st.sensor_id].append(member)
                    self.assembler.add(member)
        self._update_liveness(now_ns)
        return self.assembler.poll(now_ns)

    def _watch(self, member: Member) -> None:
        """Show one admitted message to the fault detectors (its capture time on the rig clock)."""
        msg = member.msg
        data = msg.image if isinstance(msg, CameraFrame) else msg.points if isinstance(msg, RadarPoints) \
            else msg.samples
        self.faults.observe(member.sensor_id, msg.run_id, member.t_rig_ns, data)

    def _faulty(self) -> dict[str, list[str]]:
        """Sensor id -> active fault kinds, for live sensors (a silent one is failed, not faulty)."""
        if self.faults is None:
            return {}
        return {sid: kinds for sid, kinds in self.faults.active().items() if self.sensors[sid].alive}

    def _update_liveness(self, now_ns: int) -> None:
        for st in self.sensors.values():
            alive = st.ended is None and st.last_seen_ns is not None and now_ns - st.last_seen_ns <= st.liveness_ns
            if st.alive and not alive and st.ended is None:
                st.deaths += 1
            st.alive = alive
        # An ended sensor is not waited for and does not set reference times, like a failed one.
        self.assembler.set_liveness({s.sensor_id for s in self.sensors.values() if not s.alive},
                                    {s.sensor_id for s in self.sensors.values()
                                     if self._failed(s) or s.ended is not None})

    def _never_heard_timeout_ns(self, st: SensorState) -> int:
        return max(st.liveness_ns, self.grace_ns)

    def _failed(self, st: SensorState) -> bool:
        """Silent past its liveness timeout, or never heard from past the grace after the rig's first message."""
        if st.alive or st.ended is not None or self._t_first_ns is None:
            return False
        return st.last_seen_ns is not None or self._now_ns - self._t_first_ns > self._never_heard_timeout_ns(st)

    def next_deadline_ns(self) -> int | None:
        """Earliest time at which ``step`` may release a set, or a sensor fail, without new input."""
        due = [d for d in (self.assembler.next_deadline_ns(),) if d is not None]
        if self._t_first_ns is not None:
            for st in self.sensors.values():
                if st.alive:
                    due.append(st.last_seen_ns + st.liveness_ns + 1)
                elif st.last_seen_ns is None and not self._failed(st):
                    due.append(self._t_first_ns + self._never_heard_timeout_ns(st) + 1)
        return min(due, default=None)

    # -- fusion ----------------------------------------------------------------------------

    def _fuse(self, sset: SyncSet) -> dict:
        t0 = self.timer()
        members = dict(sset.members)
        missing = set(sset.missing)
        # A faulty sensor's data is no evidence: it is left out as if missing (zero weight in the head).
        faults = self._faulty()
        for sid in faults:
            members.pop(sid, None)
            missing.add(sid)
        embeddings: dict[str, np.ndarray | None] = {m: None for m in MODALITIES}
        stage_ms: dict[str, float] = {}
        audio_cov = {}
        inputs: dict[str, tuple] = {}
        options: dict[str, dict] = {}  # keyword arguments of a modality's preprocessing
        for aid in sset.audio_ids:
            win = self.rings[aid].window(sset.t_ref_ns, self.audio_window_s)
            audio_cov[aid] = win.coverage
            if win.coverage < MIN_AUDIO_COVERAGE or aid in faults:
                missing.add(aid)
            elif self.runtime is not None:
                inputs["audio"] = (win.samples,)
        if self.runtime is not None:
            for sid, m in members.items():
                if isinstance(m.msg, CameraFrame):
                    inputs["camera"] = (m.msg.image,)
                elif isinstance(m.msg, RadarPoints):
                    inputs["radar"] = (self._radar_window(m),)
                    options["radar"] = {"projection": self.radar_projections.get(sid)}
            tensors = {}
            for modality, args in inputs.items():
                tensors[modality] = self.runtime.preprocess(modality, *args, **options.get(modality, {}))
            t1 = self.timer()
            stage_ms["preprocess"] = (t1 - t0) / 1e6
            for modality in MODALITIES:
                if modality in tensors:
                    ta = self.timer()
                    embeddings[modality] = self.runtime.encode(modality, *tensors[modality])
                    stage_ms[f"encode_{modality}"] = (self.timer() - ta) / 1e6
            head = None
            if tensors:  # a tick set with nothing usable: the head's prior is not a detection
                th = self.timer()
                head = self.runtime.fuse(embeddings)
                stage_ms["head"] = (self.timer() - th) / 1e6
        else:
            head = None
        return self._event(sset, members, sorted(missing), audio_cov, head, stage_ms, embeddings, faults)

    def _radar_window(self, member: Member) -> np.ndarray:
        """A set's radar detections: its frame's, pooled with the frames of the same run before it
        (the model's ``radar_frames`` in all at most, none older than :data:`RADAR_POOL_SPAN_NS`)."""
        history = self._radar_history.get(member.sensor_id)
        if history is None:
            return member.msg.points
        earlier = sorted((m for m in history if m.msg.run_id == member.msg.run_id
                          and member.t_rig_ns - RADAR_POOL_SPAN_NS <= m.t_rig_ns < member.t_rig_ns),
                         key=lambda m: m.t_rig_ns)
        return pool_radar_frames([m.msg.points for m in earlier] + [member.msg.points], self.radar_frames)

    def _event(self, sset: SyncSet, members: dict[str, Member], missing: list[str], audio_cov: dict,
               head: HeadOutput | None, stage_ms: dict, embeddings: dict, faults: dict[str, list[str]]) -> dict:
        self._event_seq += 1
        runtime = self.runtime
        # An untrained model's outputs are noise: no scores, labels, certainties or disagreement.
        fused = head if head is not None and runtime.trained else None
        kinds = {st.sensor_id: st.kind for st in self.sensors.values()}
        modalities = {}
        for sid, kind in kinds.items():
            present = sid in members or (kind == "audio" and sid not in missing)
            entry: dict[str, Any] = {"sensor_id": sid, "present": present}
            if kind == "audio":
                entry["coverage"] = round(audio_cov.get(sid, 0.0), 3)
            if sid in faults:
                entry["faults"] = faults[sid]
            if fused is not None:
                idx = MODALITIES.index(kind)
                entry["certainty"] = round(float(fused.certainty[idx]), 4)
                entry["weight"] = round(float(fused.weights[idx]), 4)
            modalities[kind] = entry
        labels: list[dict] = []
        scores = smoothed = None
        consistency = None
        # Alerts for security consumers: a dead sensor; modalities that stopped agreeing (a swapped
        # or replayed feed, a sensor knocked out of alignment, a stale clock) or drifted apart.
        alerts = [f"sensor_failed:{st.sensor_id}" for st in self.sensors.values() if self._failed(st)]
        alerts += [f"sensor_fault:{sid}:{kind}" for sid, kinds in faults.items() for kind in kinds]
        if fused is not None:
            n_present = sum(1 for entry in modalities.values() if entry["present"])
            scores, smoothed, labels, cross = self._labels_and_alerts(sset.t_ref_ns, fused, n_present, embeddings)
            alerts += cross
            consistency = round(float(fused.consistency), 4)
        member_list = []
        node_capture = {sid: self._capture_on_node_clock(m) for sid, m in members.items()}
        for sid, m in members.items():
            member_list.append({"sensor_id": sid, "topic": m.kind, "seq": int(m.msg.seq),
                                "t_capture_ns": int(m.t_rig_ns),
                                "age_ms": round((sset.t_ref_ns - m.t_rig_ns) / 1e6, 3)})
        latency = {
            "receive": round(max((m.t_recv_ns - min(m.t_recv_ns, self.to_rig_ns(self.sensors[m.sensor_id],
                                                                                 m.msg.t_publish_ns))) / 1e6
                                 for m in members.values()), 3) if members else 0.0,
            "sync_wait": round(max(0, sset.t_release_ns - sset.t_ready_ns) / 1e6, 3),
        }
        latency.update({k: round(v, 3) for k, v in stage_ms.items()})
        return {
            "event_id": f"{self.cfg.rig}:{self.run_id:08x}:{self._event_seq}",
            "seq": self._event_seq,
            "rig": self.cfg.rig,
            "t_ref_ns": int(sset.t_ref_ns),
            "labels": labels,
            "scores": scores,
            "smoothed": smoothed,
            "model": None if runtime is None else {
                "name": runtime.name, "trained": runtime.trained, "provider": runtime.provider},
            "modalities": modalities,
            "members": member_list,
            "missing": missing,
            "faults": faults,
            "consistency": consistency,
            "alerts": alerts,
            "newest_capture_ns": max(node_capture.values(), default=sset.t_ref_ns),
            "latency_ms": latency,
            "_t_built_ns": self.timer(),
        }

    def _labels_and_alerts(self, t_ref_ns: int, fused: HeadOutput, n_present: int,
                           embeddings: dict) -> tuple[dict, dict, list[dict], list[str]]:
        """Raw and smoothed scores, the smoothed labels (highest first) and the sustained cross-modal alerts."""
        last = self._last_fused_ref_ns
        if last is not None and (t_ref_ns < last or t_ref_ns - last > LABEL_RESET_GAP_NS):
            self.smoother.reset()
        self._last_fused_ref_ns = t_ref_ns
        probabilities = fused.probabilities.tolist()
        scores = {c: round(p, 4) for c, p in zip(self.runtime.classes, probabilities)}
        smooth, on = self.smoother.update(probabilities)
        smoothed = {c: round(p, 4) for c, p in smooth.items()}
        labels = sorted(({"label": c, "score": smoothed[c]} for c in on), key=lambda d: -d["score"])
        alerts = []
        threshold = self.runtime.consistency_threshold
        if threshold is not None and self.disagreement.update(t_ref_ns, float(fused.consistency), threshold, n_present):
            alerts.append("modalities_disagree")
        if self.drift.update(t_ref_ns, embeddings):
            alerts.append("drift")
        return scores, smoothed, labels, alerts

    def _capture_on_node_clock(self, m: Member) -> int:
        """A member's capture time for latency: its rig-clock time, but never after it reached the node.

        A rig-clock time later than the arrival means the sensor's calibrated clock offset does not
        map it onto the node's clock: offsets from ``fusion calibrate time`` align every sensor to
        the reference camera's stamps, which lag the scene by that camera's own latency, and a
        sensor on another host may be stamped ahead. Taken as is, such a time made ``e2e`` (and
        ``receive``) negative; it is counted instead, and the arrival bounds the capture.
        """
        if m.t_rig_ns > m.t_recv_ns:
            self.sensors[m.sensor_id].capture_after_arrival += 1
            return m.t_recv_ns
        return m.t_rig_ns

    def finish_event(self, event: dict, t_publish_ns: int, wall_ns: int | None = None) -> dict:
        """Stamp publish time and end-to-end latency just before the event is sent.

        ``t_publish_ns`` must come from the same clock as the core's timer (the node uses
        ``time.monotonic_ns`` for both, the clock sensors on the same host stamp with);
        ``wall_ns``, the UTC wall clock (``time.time_ns``) read with it, adds ``t_publish_utc`` and
        ``t_ref_utc`` (ISO 8601). ``e2e`` is never negative: every time in it is on the node's clock.
        """
        lat = event["latency_ms"]
        lat["publish"] = round(max(0, t_publish_ns - event.pop("_t_built_ns")) / 1e6, 3)
        lat["e2e"] = round((t_publish_ns - event.pop("newest_capture_ns")) / 1e6, 3)
        event["t_publish_ns"] = int(t_publish_ns)
        if wall_ns is not None:
            event["t_publish_utc"] = utc_iso(wall_ns)
            event["t_ref_utc"] = utc_iso(mono_to_wall_ns(min(event["t_ref_ns"], t_publish_ns), t_publish_ns, wall_ns))
        for name, value in lat.items():
            self.latency.add(name, value)
        self.events_out += 1
        return event

    # -- stats -----------------------------------------------------------------------------

    def stats(self, now_ns: int, interval_s: float) -> dict:
        """A snapshot for the stats topic; rates are over the last ``interval_s``."""
        sensors = {}
        for st in self.sensors.values():
            recent = st.received - st.received_at_last_stats
            st.received_at_last_stats = st.received
            entry = {
                "kind": st.kind, "alive": st.alive, "ended": st.ended, "received": st.received, "accepted": st.accepted,
                "rate_hz": round(recent / interval_s, 2) if interval_s > 0 else 0.0,
                "dropped": st.dropped, "seq_gaps": st.seq_gaps, "restarts": st.restarts, "deaths": st.deaths,
                "clock_jumps": st.clock_jumps, "resyncs": st.resyncs, "clock": self.clocks[st.sensor_id].summary(),
                "capture_after_arrival": st.capture_after_arrival,
                "rejected": dict(st.rejected), "queue_depth": len(st.buffer),
                "last_seen_ms": None if st.last_seen_ns is None else round((now_ns - st.last_seen_ns) / 1e6, 1),
            }
            if st.kind == "audio":
                ring = self.rings[st.sensor_id]
                entry.update(audio_gaps=ring.gaps, audio_rebases=ring.rebases)
            if self.faults is not None:
                entry.update(faults=self.faults.onsets(st.sensor_id),
                             faulty=self.faults.sensors[st.sensor_id].active if st.alive else [])
            sensors[st.sensor_id] = entry
        return {
            "rig": self.cfg.rig,
            "t_ns": int(now_ns),
            "events": self.events_out,
            "sensors": sensors,
            "rejected_unattributed": dict(self.unattributed),
            "sync": {"policy": self.assembler.policy_name, **dict(self.assembler.counters),
                     **({} if self.assembler.reference is None else {"reference": self.assembler.reference})},
            "latency_ms": self.latency.summary(),
            "provider": None if self.runtime is None else self.runtime.provider,
            "alignment": self.drift.summary(),
        }
