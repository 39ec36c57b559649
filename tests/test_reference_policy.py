"""Reference policy: driver-referenced sets, nearest matches, deadlines, dead sensors never stall."""

from __future__ import annotations

from hypothesis import example, given, settings
from hypothesis import strategies as st

from fusion_node.assembly import Member, ReferencePolicy

MS = 1_000_000


def _m(sid, t_ms, recv_ms=None):
    return Member(sid, "camera" if sid == "cam" else "radar", f"{sid}@{t_ms}", t_ms * MS,
                  (recv_ms if recv_ms is not None else t_ms) * MS)


def _policy(**kw):
    args = dict(tolerance_ns=40 * MS, deadline_ns=150 * MS, max_pending=10) | kw
    return ReferencePolicy("cam", ["radar"], [], **args)


def test_set_released_as_soon_as_a_later_radar_message_settles_the_nearest():
    p = _policy()
    p.add(_m("cam", 1000))
    p.add(_m("radar", 990))
    assert p.poll(1001 * MS) == []  # a nearer radar message may still come
    p.add(_m("radar", 1040))
    (s,) = p.poll(1041 * MS)
    assert s.t_ref_ns == 1000 * MS and s.members["radar"].msg == "radar@990" and s.missing == []
    assert p.counters["released_complete"] == 1


def test_nearest_within_tolerance_is_chosen_either_side():
    p = _policy()
    p.add(_m("cam", 1000))
    p.add(_m("radar", 970))
    p.add(_m("radar", 1010))
    (s,) = p.poll(1011 * MS)
    assert s.members["radar"].msg == "radar@1010"


def test_outside_tolerance_means_missing_not_a_wrong_match():
    p = _policy()
    p.add(_m("cam", 1000))
    p.add(_m("radar", 900))
    p.add(_m("radar", 1100))
    (s,) = p.poll(1100 * MS)
    assert "radar" not in s.members and s.missing == ["radar"]


def test_deadline_releases_an_incomplete_set_with_the_modality_marked_missing():
    p = _policy()
    p.add(_m("cam", 1000))
    assert p.poll(1149 * MS) == []
    (s,) = p.poll(1150 * MS)
    assert s.missing == ["radar"] and p.counters["released_deadline"] == 1


def test_dead_sensor_is_not_waited_for():
    p = _policy()
    p.dead = {"radar"}
    p.add(_m("cam", 1000))
    (s,) = p.poll(1000 * MS)
    assert s.missing == ["radar"]


def test_sets_come_out_in_reference_order():
    p = _policy()
    for t in (1000, 1033, 1066):
        p.add(_m("cam", t))
    p.add(_m("radar", 1050))
    assert [s.t_ref_ns // MS for s in p.poll(1051 * MS)] == [1000, 1033]
    p.add(_m("radar", 1100))
    assert [s.t_ref_ns // MS for s in p.poll(1101 * MS)] == [1066]


def test_known_frame_interval_releases_before_the_next_message():
    p = _policy()
    for t in range(0, 500, 100):  # radar every 100 ms
        p.add(_m("radar", t))
    p.add(_m("cam", 410))  # nearest is 400; the next radar cannot come before ~490
    (s,) = p.poll(411 * MS)
    assert s.members["radar"].msg == "radar@400"


def test_audio_coverage_gates_release():
    p = ReferencePolicy("cam", [], ["mic"], tolerance_ns=40 * MS, deadline_ns=150 * MS, max_pending=10)
    p.add(_m("cam", 1000))
    p.audio_end_ns["mic"] = 990 * MS
    assert p.poll(1000 * MS) == []
    p.audio_end_ns["mic"] = 1005 * MS
    (s,) = p.poll(1005 * MS)
    assert s.audio_ids == ["mic"]


def test_pending_references_are_bounded_and_drops_counted():
    p = _policy(max_pending=3)
    for t in range(0, 500, 100):
        p.add(_m("cam", t))
    assert p.counters["reference_dropped"] == 2
    assert [s.t_ref_ns // MS for s in p.poll(10_000 * MS)] == [200, 300, 400]


def test_rebase_forgets_a_restarted_sensor():
    p = _policy()
    p.add(_m("radar", 5000))
    p.rebase("radar")
    p.add(_m("cam", 1000))
    p.add(_m("radar", 1010))
    (s,) = p.poll(1010 * MS)
    assert s.members["radar"].msg == "radar@1010"


def test_without_waiting_for_audio_a_set_leaves_with_the_audio_received_so_far():
    p = ReferencePolicy("cam", [], ["mic"], tolerance_ns=40 * MS, deadline_ns=150 * MS, max_pending=10,
                        wait_for_audio=False)
    p.add(_m("cam", 1000))
    assert p.poll(1000 * MS) == []  # no audio at all yet: still waits (up to the deadline)
    p.audio_end_ns["mic"] = 990 * MS  # the chunk covering t_ref has not arrived
    (s,) = p.poll(1001 * MS)
    assert s.t_ref_ns == 1000 * MS


# -- the policy against a brute-force model ----------------------------------------------------

TOL, DEADLINE, HISTORY, PENDING = 40, 150, 8, 4  # ms, ms, messages, references


class _BruteForce:
    """The reference policy's rules with nothing maintained: every radar message since the last
    rebase is kept and each lookup searches all of them.

    The policy holds the ``HISTORY`` latest in (time, arrival) order; the nearest within the
    tolerance wins, ties going to the earlier time, then among equal times below the reference to
    the later arrival and at or above it to the earlier one (a sorted list's neighbours).
    """

    def __init__(self):
        self.radar: list[tuple[int, int, str]] = []  # (t_ms, arrival, msg)
        self.intervals: list[int] = []
        self.pending: list[tuple[int, str]] = []
        self.released: list[tuple[int, str | None, bool]] = []

    def add_radar(self, t, arrival, msg):
        if self.radar and t > max(r[0] for r in self.radar):
            self.intervals.append(t - max(r[0] for r in self.radar))
        self.radar.append((t, arrival, msg))

    def add_cam(self, t, msg):
        self.pending.append((t, msg))
        del self.pending[:-PENDING]

    def rebase_radar(self):
        self.radar, self.intervals = [], []

    def nearest(self, t_ref):
        kept = sorted(self.radar)[-HISTORY:]
        near = [r for r in kept if abs(r[0] - t_ref) <= TOL]
        best = min(near, key=lambda r: (abs(r[0] - t_ref), r[0], -r[1] if r[0] < t_ref else r[1]), default=None)
        if any(r[0] >= t_ref for r in kept):
            return best, True
        recent = self.intervals[-16:]
        if len(recent) < 4:
            return best, False
        earliest_next = kept[-1][0] * MS + int(0.9 * min(recent) * MS)
        if best is not None:
            return best, earliest_next - t_ref * MS >= abs(best[0] - t_ref) * MS
        return best, earliest_next > (t_ref + TOL) * MS

    def poll(self, now):
        while self.pending:
            t_ref, msg = self.pending[0]
            best, complete = self.nearest(t_ref)
            if not complete and now < t_ref + DEADLINE:
                break
            self.pending.pop(0)
            self.released.append((t_ref, msg, None if best is None else best[2], complete))


# Each operation happens ``dt`` ms (a multiple of 10, possibly negative: arrivals out of order)
# after the previous one, so equal times, equal distances either side and references just past
# the newest radar message are all common. A burst is a regular radar stream that teaches the
# policy the sensor's interval.
_dt = st.integers(-6, 6).map(lambda k: 10 * k)
_op = st.one_of(
    st.tuples(st.sampled_from(["radar", "radar", "cam", "poll"]), _dt),
    st.tuples(st.just("burst"), _dt, st.sampled_from([20, 30, 50]), st.integers(3, 8)),
    st.tuples(st.just("rebase"), st.just(0)),
)


@settings(max_examples=500, deadline=None)
@given(st.lists(_op, max_size=60))
@example([("burst", 0, 50, 6), ("rebase", 0), ("radar", 300), ("cam", 10), ("poll", 10)])  # rebase forgets intervals
@example([("burst", 0, 50, 4), ("cam", 10), ("poll", 0)])  # three intervals are too few to predict
@example([("radar", 100), ("radar", 40), ("cam", -20), ("poll", 200)])  # equal distances: the earlier wins
def test_matches_equal_a_brute_force_search_under_any_arrival_order(ops):
    """Radar messages in random order (duplicates, out of order, history overflowing, rebases),
    references and polls interleaved: every released set, its match and whether it was complete
    equal the brute-force model's."""
    policy = ReferencePolicy("cam", ["radar"], [], tolerance_ns=TOL * MS, deadline_ns=DEADLINE * MS,
                             max_pending=PENDING, history=HISTORY)
    model = _BruteForce()
    got = []
    t = 1000
    arrival = 0

    def radar(t_ms):
        nonlocal arrival
        arrival += 1
        policy.add(Member("radar", "radar", f"radar#{arrival}", t_ms * MS, t_ms * MS))
        model.add_radar(t_ms, arrival, f"radar#{arrival}")

    for op, dt, *burst in ops:
        t += dt
        if op == "burst":
            step, count = burst
            for k in range(count):
                radar(t + k * step)
            t += (count - 1) * step
        elif op == "radar":
            radar(t)
        elif op == "cam":
            arrival += 1
            policy.add(Member("cam", "camera", f"cam#{arrival}", t * MS, t * MS))
            model.add_cam(t, f"cam#{arrival}")
        elif op == "rebase":
            policy.rebase("radar")
            model.rebase_radar()
        else:
            got += [(s.t_ref_ns // MS, s.members["cam"].msg, s.members["radar"].msg if "radar" in s.members else None)
                    for s in policy.poll(t * MS)]
            model.poll(t)
    assert got == [r[:3] for r in model.released]
    assert policy.counters["released_complete"] == sum(1 for r in model.released if r[3])
    assert policy.counters["released_deadline"] == sum(1 for r in model.released if not r[3])
