"""Reference policy: driver-referenced sets, nearest matches, deadlines, dead sensors never stall."""

from __future__ import annotations

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
