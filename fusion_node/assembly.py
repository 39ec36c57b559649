"""Set assembly: turns timestamped sensor messages into sets ready for fusion.

Three named policies, chosen in the rig config:

- ``reference`` (live default): :class:`ReferencePolicy`. One driver sensor (the camera) sets the
  reference time. Every other frame sensor contributes its message nearest to it within a
  tolerance; audio contributes the window of samples ending at it. A set is released as soon as
  it is complete, or at its deadline with the missing modalities marked, so a dead sensor never
  stalls the node. A failed driver hands the reference over to the next live frame sensor, or
  to a clock tick at the driver's nominal period when only audio is left, and takes it back
  when it returns: no single sensor can silence the node.
- ``approximate``/``epsilon``: message_filters' ApproximateTime/ApproximateEpsilonTime
  (:mod:`fusion_node.sync`) over the frame sensors; the set's reference time is its newest
  member, and it waits (up to the deadline) for audio to cover that time. With one frame sensor
  there is nothing to match: each of its messages is a set.

Any subset of modalities is a rig. A rig of microphones only, under any policy, has no frame to
set the time: :class:`AudioClockPolicy` cuts a set every hop of captured audio, on the audio's
own timeline (the ring's progress), so sets follow the recording, not the node's clock.

All times here are on the rig clock, in nanoseconds, and passed in: nothing reads a clock.
"""

from __future__ import annotations

import bisect
from collections import Counter, deque
from dataclasses import dataclass, field
from typing import Any

from .config import RigConfig
from .sync import ApproximateEpsilonPolicy, ApproximateTimePolicy
from .wire import TOPICS

__all__ = ["Member", "SyncSet", "ReferencePolicy", "AudioClockPolicy", "SetAssembler"]


@dataclass(frozen=True)
class Member:
    """One message admitted to the node, with its time on the rig clock and its arrival time."""

    sensor_id: str
    kind: str
    msg: Any
    t_rig_ns: int
    t_recv_ns: int


@dataclass
class SyncSet:
    """A released set: reference time, the frame members by sensor id, and what was missing."""

    t_ref_ns: int
    members: dict[str, Member]
    missing: list[str]
    t_release_ns: int
    t_ready_ns: int  # when the set's reference member (or newest member) reached the node
    audio_ids: list[str] = field(default_factory=list)


class ReferencePolicy:
    """Driver-referenced matching with a deadline, and a fallback reference when the driver fails.

    ``add`` takes frame messages; ``audio_end_ns`` is updated by the caller as audio arrives.
    ``poll(now_ns)`` releases, in reference-time order, every pending set that is complete or
    whose deadline (reference time + ``deadline_ns``) has passed.

    The reference is the driver while it has not failed. A driver in ``failed`` (the caller's
    verdict: silent past its liveness timeout, or never heard from that long) hands over to the
    first other frame sensor that is alive, and with none alive but some audio, to a clock tick
    every ``tick_period_ns`` (sets with no reference member, cut from the audio and whatever
    frames fall near the tick). The new reference takes over where the last set left off, from
    its own recent messages (at most ``max_pending``), so the stretch spent noticing the failure
    is covered too; the driver is the reference again as soon as it is no longer failed.
    """

    MIN_INTERVALS = 4  # intervals seen before the shortest one is trusted to predict the next message
    TICK = ""  # the reference id while sets are cut on the clock

    def __init__(self, driver: str, others: list[str], audio_ids: list[str], *, tolerance_ns: int,
                 deadline_ns: int, max_pending: int, history: int = 64, wait_for_audio: bool = True,
                 tick_period_ns: int = 33_333_333):
        self.driver = driver
        self.others = list(others)
        self.frame_ids = [driver, *self.others]  # in the order they take over as the reference
        self.audio_ids = list(audio_ids)
        self.tolerance_ns = int(tolerance_ns)
        self.deadline_ns = int(deadline_ns)
        self.max_pending = int(max_pending)
        self.wait_for_audio = wait_for_audio
        self.tick_period_ns = int(tick_period_ns)
        self._pending: deque[Member] = deque()
        self._hist: dict[str, list[Member]] = {s: [] for s in self.frame_ids}
        # The history's times, kept sorted alongside it: every add and every lookup bisects
        # this list instead of rebuilding it from the members.
        self._keys: dict[str, list[int]] = {s: [] for s in self.frame_ids}
        self._hist_len = history
        # Recent inter-message intervals per sensor: a lower bound on when the next message
        # can be stamped lets a set be released before that message arrives. Their minimum is
        # kept up to date on add (None until there are enough), since every poll reads it.
        self._intervals: dict[str, deque[int]] = {s: deque(maxlen=16) for s in self.frame_ids}
        self._min_interval: dict[str, int | None] = {s: None for s in self.frame_ids}
        self.audio_end_ns: dict[str, int | None] = {a: None for a in self.audio_ids}
        self.dead: set[str] = set()  # silent now: not waited for
        self.failed: set[str] = set()  # silent past their timeout: not the reference
        self.reference = driver
        self._last_ref_ns: int | None = None  # reference time of the last set released
        self._next_tick_ns: int | None = None
        self.counters: Counter = Counter()

    def next_deadline_ns(self) -> int | None:
        due = [self._pending[0].t_rig_ns + self.deadline_ns] if self._pending else []
        if self.reference == self.TICK and self._next_tick_ns is not None:
            due.append(self._next_tick_ns)
        return min(due, default=None)

    def _queue(self, member: Member) -> None:
        self._pending.append(member)
        if len(self._pending) > self.max_pending:
            self._pending.popleft()
            self.counters["reference_dropped"] += 1

    def add(self, member: Member) -> None:
        sid = member.sensor_id
        hist, keys = self._hist[sid], self._keys[sid]
        t = member.t_rig_ns
        if sid == self.reference:
            self._queue(member)
        if keys and t > keys[-1]:
            intervals = self._intervals[sid]
            intervals.append(t - keys[-1])
            self._min_interval[sid] = min(intervals) if len(intervals) >= self.MIN_INTERVALS else None
        i = bisect.bisect_right(keys, t)
        keys.insert(i, t)
        hist.insert(i, member)
        if len(hist) > self._hist_len:
            del hist[0], keys[0]

    def rebase(self, sensor_id: str) -> None:
        """Forget a sensor's history after its clock jumped (restart, looped file)."""
        if sensor_id in self._hist:
            if any(m.sensor_id == sensor_id for m in self._pending):
                self._pending = deque(m for m in self._pending if m.sensor_id != sensor_id)
            self._hist[sensor_id].clear()
            self._keys[sensor_id].clear()
            self._intervals[sensor_id].clear()
            self._min_interval[sensor_id] = None
        elif sensor_id in self.audio_end_ns:
            self.audio_end_ns[sensor_id] = None

    def _choose_reference(self) -> str:
        if self.driver not in self.failed:
            return self.driver
        for sid in self.others:
            if sid not in self.dead:
                return sid
        if any(a not in self.dead for a in self.audio_ids):
            return self.TICK
        return self.driver  # nothing is alive: nothing to cut sets from

    def _switch(self, reference: str, now_ns: int) -> None:
        """Make ``reference`` the reference, taking over after the last set released or pending."""
        self.reference = reference
        self.counters["reference_switches"] += 1
        times = [t for t in (self._last_ref_ns, self._pending[-1].t_rig_ns if self._pending else None)
                 if t is not None]
        after = max(times) if times else None
        if reference == self.TICK:
            first = now_ns if after is None else after + self.tick_period_ns
            self._next_tick_ns = self._skip_ticks(first, now_ns)
            return
        self._next_tick_ns = None
        # A message nearer the last set than the driver's next frame would have been belongs to
        # that set: the new reference starts after it.
        start = None if after is None else after + self.tick_period_ns // 2
        recent = [m for m in self._hist[reference] if start is None or m.t_rig_ns > start]
        for m in recent[-self.max_pending:]:
            self._queue(m)

    def _skip_ticks(self, first_ns: int, now_ns: int) -> int:
        """The first tick to cut: ``first_ns``, or later so no more than ``max_pending`` are due now."""
        behind = (now_ns - first_ns) // self.tick_period_ns + 1 - self.max_pending
        return first_ns + max(0, behind) * self.tick_period_ns

    def _tick(self, now_ns: int) -> None:
        self._next_tick_ns = self._skip_ticks(self._next_tick_ns, now_ns)
        while self._next_tick_ns <= now_ns:
            t = self._next_tick_ns
            self._queue(Member(self.TICK, "tick", None, t, t))
            self._next_tick_ns += self.tick_period_ns

    def _nearest(self, sensor_id: str, t_ref: int) -> tuple[Member | None, bool]:
        """Nearest message within tolerance, and whether it can no longer improve."""
        hist, keys = self._hist[sensor_id], self._keys[sensor_id]
        i = bisect.bisect_left(keys, t_ref)
        best = None
        for j in (i - 1, i):
            if 0 <= j < len(keys) and abs(keys[j] - t_ref) <= self.tolerance_ns:
                if best is None or abs(keys[j] - t_ref) < abs(best.t_rig_ns - t_ref):
                    best = hist[j]
        # Messages arrive in time order per sensor, so once one at or after t_ref has arrived
        # nothing later can be nearer.
        if i < len(keys):
            return best, True
        # Otherwise the next message comes no earlier than the newest plus the shortest recent
        # interval (less 10% for jitter): if even that is farther than what we hold, stop waiting.
        min_interval = self._min_interval[sensor_id]
        if not keys or min_interval is None:
            return best, False
        earliest_next = keys[-1] + int(0.9 * min_interval)
        if best is not None:
            return best, earliest_next - t_ref >= abs(best.t_rig_ns - t_ref)
        return best, earliest_next > t_ref + self.tolerance_ns

    def poll(self, now_ns: int) -> list[SyncSet]:
        reference = self._choose_reference()
        if reference != self.reference:
            self._switch(reference, now_ns)
        if self.reference == self.TICK:
            self._tick(now_ns)
        out: list[SyncSet] = []
        while self._pending:
            ref = self._pending[0]
            t_ref = ref.t_rig_ns
            members = {ref.sensor_id: ref} if ref.sensor_id != self.TICK else {}
            complete = True
            for sid in self.frame_ids:
                if sid == ref.sensor_id:
                    continue
                best, final = self._nearest(sid, t_ref)
                # A sensor known dead is not waited for: its modality is marked missing at once.
                complete &= final or (best is None and sid in self.dead)
                if best is not None:
                    members[sid] = best
            for aid in self.audio_ids:
                end = self.audio_end_ns[aid]
                complete &= (end is not None and (end >= t_ref or not self.wait_for_audio)) or aid in self.dead
            if not complete and now_ns < t_ref + self.deadline_ns:
                break  # earlier sets go first: later ones wait behind this one
            self._pending.popleft()
            self._last_ref_ns = t_ref
            missing = [s for s in self.frame_ids if s not in members]
            out.append(SyncSet(t_ref, members, missing, now_ns, ref.t_recv_ns, list(self.audio_ids)))
            self.counters["released_complete" if complete else "released_deadline"] += 1
            if ref.sensor_id == self.TICK:
                self.counters["released_on_tick"] += 1
        return out


class _MessageFiltersAdapter:
    """Runs a message_filters policy over the frame sensors, then waits for audio coverage."""

    def __init__(self, policy: Any, frame_ids: list[str], audio_ids: list[str], deadline_ns: int,
                 max_pending: int, wait_for_audio: bool = True):
        self.policy = policy
        self.frame_ids = frame_ids
        self._topic = {sid: i for i, sid in enumerate(frame_ids)}
        self.audio_ids = audio_ids
        self.deadline_ns = deadline_ns
        self.max_pending = max_pending
        self.wait_for_audio = wait_for_audio
        self.audio_end_ns: dict[str, int | None] = {a: None for a in audio_ids}
        self._ready: deque[SyncSet] = deque()
        self.dead: set[str] = set()
        self.failed: set[str] = set()  # no reference to hand over: every member is a peer
        self.reference: str | None = None
        self.counters: Counter = Counter()

    def next_deadline_ns(self) -> int | None:
        return self._ready[0].t_ref_ns + self.deadline_ns if self._ready else None

    def add(self, member: Member) -> None:
        for group in self.policy.add(self._topic[member.sensor_id], member.t_rig_ns, member):
            t_ref = max(m.t_rig_ns for m in group)
            ready = max(m.t_recv_ns for m in group)
            self._ready.append(SyncSet(t_ref, {m.sensor_id: m for m in group}, [], 0, ready, list(self.audio_ids)))
            if len(self._ready) > self.max_pending:
                self._ready.popleft()
                self.counters["reference_dropped"] += 1

    def rebase(self, sensor_id: str) -> None:
        if sensor_id in self.audio_end_ns:
            self.audio_end_ns[sensor_id] = None

    def poll(self, now_ns: int) -> list[SyncSet]:
        out = []
        while self._ready:
            s = self._ready[0]
            covered = all((e is not None and (e >= s.t_ref_ns or not self.wait_for_audio)) or a in self.dead
                          for a, e in self.audio_end_ns.items())
            if not covered and now_ns < s.t_ref_ns + self.deadline_ns:
                break
            self._ready.popleft()
            s.t_release_ns = now_ns
            out.append(s)
            self.counters["released_complete" if covered else "released_deadline"] += 1
        return out


class _EachMessage:
    """The one-stream case of a message_filters policy (which takes two or more): every message is a set."""

    def add(self, topic_index: int, stamp_ns: int, item: Any) -> list[tuple]:  # noqa: ARG002 - policy signature
        return [(item,)]


class AudioClockPolicy:
    """Sets for a rig of microphones only: one every ``hop_ns`` of captured audio.

    Reference times are ``hop_ns`` apart on the audio's timeline. The first lies half a window
    after the first audio seen (the window is then at least half covered, see the core's
    ``MIN_AUDIO_COVERAGE``); a set is released as soon as the audio covers its reference time,
    so it is always complete. A backlog of more than ``max_pending`` hops is skipped (counted as
    ``reference_dropped``): fresh audio wins. A rebased ring (restart, clock jump) starts the
    clock afresh from its new timeline; a silent microphone releases nothing.
    """

    def __init__(self, audio_ids: list[str], *, hop_ns: int, window_ns: int, max_pending: int):
        if hop_ns <= 0:
            raise ValueError("hop_ns must be positive")
        self.audio_ids = list(audio_ids)
        self.hop_ns = int(hop_ns)
        self.window_ns = int(window_ns)
        self.max_pending = int(max_pending)
        self.audio_end_ns: dict[str, int | None] = {a: None for a in self.audio_ids}
        self.dead: set[str] = set()
        self.failed: set[str] = set()
        self.reference: str | None = ReferencePolicy.TICK
        self._next_ns: int | None = None
        self.counters: Counter = Counter()

    def next_deadline_ns(self) -> int | None:
        return None  # sets come with audio, never from the passing of time

    def add(self, member: Member) -> None:
        raise ValueError(f"{member.sensor_id}: a rig of microphones only takes no frames")

    def rebase(self, sensor_id: str) -> None:
        if sensor_id in self.audio_end_ns:
            self.audio_end_ns[sensor_id] = None
            self._next_ns = None

    def poll(self, now_ns: int) -> list[SyncSet]:
        progress = max((e for e in self.audio_end_ns.values() if e is not None), default=None)
        if progress is None:
            return []
        if self._next_ns is None:
            self._next_ns = progress + self.window_ns // 2
        behind = (progress - self._next_ns) // self.hop_ns + 1 - self.max_pending
        if behind > 0:
            self._next_ns += behind * self.hop_ns
            self.counters["reference_dropped"] += behind
        out = []
        while self._next_ns <= progress:
            out.append(SyncSet(self._next_ns, {}, [], now_ns, now_ns, list(self.audio_ids)))
            self.counters["released_complete"] += 1
            self.counters["released_on_tick"] += 1
            self._next_ns += self.hop_ns
        return out


class SetAssembler:
    """Builds the configured policy for a rig and routes members and audio progress to it."""

    def __init__(self, cfg: RigConfig, audio_window_s: float | None = None):
        """``audio_window_s``: the audio window the core cuts (the model's); default the config's."""
        sync = cfg.sync
        frame_ids = [s.id for s in cfg.sensors if s.kind != "audio"]
        audio_ids = [s.id for s in cfg.sensors if s.kind == "audio"]
        deadline = int(sync.deadline_ms * 1e6)
        self.policy_name = sync.policy
        if not frame_ids:
            window_s = sync.audio_window_s if audio_window_s is None else audio_window_s
            hop_s = window_s / 4 if sync.audio_hop_s is None else sync.audio_hop_s
            self._impl: Any = AudioClockPolicy(audio_ids, hop_ns=int(hop_s * 1e9), window_ns=int(window_s * 1e9),
                                               max_pending=sync.queue_size)
        elif len(frame_ids) == 1 and sync.policy != "reference":
            self._impl = _MessageFiltersAdapter(_EachMessage(), frame_ids, audio_ids, deadline, sync.queue_size,
                                                sync.wait_for_audio)
        elif sync.policy == "reference":
            driver = cfg.driver.id  # a frame sensor: there is one
            self._impl = ReferencePolicy(
                driver, [f for f in frame_ids if f != driver], audio_ids,
                tolerance_ns=int(sync.tolerance_ms * 1e6), deadline_ns=deadline, max_pending=sync.queue_size,
                wait_for_audio=sync.wait_for_audio, tick_period_ns=TOPICS[cfg.driver.kind].period_ns)
        elif sync.policy == "approximate":
            bounds = sync.inter_message_lower_bounds_ms or {}
            inner = ApproximateTimePolicy(
                len(frame_ids), sync.queue_size, age_penalty=sync.age_penalty,
                max_interval_ns=None if sync.max_interval_ms is None else int(sync.max_interval_ms * 1e6),
                inter_message_lower_bounds_ns=[int(bounds.get(f, 0.0) * 1e6) for f in frame_ids])
            self._impl = _MessageFiltersAdapter(inner, frame_ids, audio_ids, deadline, sync.queue_size,
                                                sync.wait_for_audio)
        else:
            inner = ApproximateEpsilonPolicy(len(frame_ids), sync.queue_size, int(sync.epsilon_ms * 1e6))
            self._impl = _MessageFiltersAdapter(inner, frame_ids, audio_ids, deadline, sync.queue_size,
                                                sync.wait_for_audio)

    @property
    def counters(self) -> Counter:
        return self._impl.counters

    def add(self, member: Member) -> None:
        self._impl.add(member)

    def audio_progress(self, sensor_id: str, end_ns: int | None) -> None:
        self._impl.audio_end_ns[sensor_id] = end_ns

    def rebase(self, sensor_id: str) -> None:
        self._impl.rebase(sensor_id)

    def set_liveness(self, dead: set[str], failed: set[str]) -> None:
        """Sensors silent now (sets stop waiting for them) and those failed: silent past their
        liveness timeout, or never heard from that long (the reference policy hands over)."""
        self._impl.dead = dead
        self._impl.failed = failed

    @property
    def reference(self) -> str | None:
        """The sensor id setting reference times now, ``""`` for the clock tick, None without one."""
        return self._impl.reference

    def next_deadline_ns(self) -> int | None:
        return self._impl.next_deadline_ns()

    def poll(self, now_ns: int) -> list[SyncSet]:
        return self._impl.poll(now_ns)
