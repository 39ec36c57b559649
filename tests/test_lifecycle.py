"""Event lifecycle: fused records in, start/update/end and alerts out, on injected time."""

from __future__ import annotations

from fusion_node.config import LifecycleConfig
from fusion_node.lifecycle import Lifecycle

MS = 1_000_000
T0 = 50_000 * MS
WALL0 = 1_790_000_000 * 10**9  # 2026-09-21


def _rec(seq, t_ms, labels=None, scores=None, alerts=(), mods=("camera", "radar"), rig="r1"):
    labels = labels or {}
    return {"rig": rig, "seq": seq, "t_ref_ns": T0 + t_ms * MS,
            "labels": [{"label": k, "score": v} for k, v in sorted(labels.items(), key=lambda kv: -kv[1])],
            "scores": {**labels, **(scores or {})},
            "modalities": {m: {"sensor_id": m + "0", "present": m in mods, "weight": 0.5 if m in mods else 0.0}
                           for m in ("camera", "radar", "audio")},
            "alerts": list(alerts), "members": []}


class Feed:
    """Records at 100 ms steps; node time 10 ms after each reference time, wall time in step."""

    def __init__(self, **cfg):
        self.lc = Lifecycle(LifecycleConfig(**cfg), run_id=0xAB, thresholds={"person": 0.5, "dog": 0.5},
                            t_start_ns=T0)
        self.seq = 0

    def __call__(self, t_ms, labels=None, **kw):
        self.seq += 1
        now = T0 + (t_ms + 10) * MS
        return self.lc.observe(_rec(self.seq, t_ms, labels, **kw), now, WALL0 + now - T0)

    def tick(self, t_ms):
        now = T0 + t_ms * MS
        return self.lc.tick(now, WALL0 + now - T0)


def _types(events):
    return [(e["type"], e["label"]) for e in events]


def test_an_occurrence_starts_after_the_minimum_duration_and_ends_when_gone():
    f = Feed(min_duration_s=0.3, max_gap_s=0.5, update_interval_s=10)
    out = []
    for i in range(0, 400, 100):  # 0, 100, 200, 300 ms: start once 300 ms have held
        out.append(f(i, {"person": 0.9}))
    assert [_types(o) for o in out] == [[], [], [], [("start", "person")]]
    start = out[-1][0]
    assert start["id"] == "r1:person:000000ab:1" and start["kind"] == "detection"
    assert start["start_ns"] == T0 and start["duration_s"] == 0.3 and start["records"] == 4
    assert start["start_utc"].endswith("Z") and start["t_utc"].startswith("2026-")
    assert start["modalities"] == ["camera", "radar"] and start["end_ns"] is None
    ended = []
    for i in range(400, 1000, 100):  # nothing for 600 ms > max_gap 0.5 s
        ended += f(i, {})
    assert _types(ended) == [("end", "person")]
    end = ended[0]
    assert end["id"] == start["id"] and end["reason"] == "gone"
    assert end["end_ns"] == T0 + 300 * MS and end["duration_s"] == 0.3 and end["top_score"] == 0.9


def test_a_short_blip_never_starts():
    f = Feed(min_duration_s=0.5, max_gap_s=0.3)
    events = f(0, {"person": 0.9}) + f(100, {"person": 0.8})
    for i in range(200, 800, 100):
        events += f(i, {})
    assert events == [] and f.lc.open == {}


def test_hysteresis_keeps_an_occurrence_just_below_the_threshold():
    f = Feed(min_duration_s=0.0, hysteresis=0.1, max_gap_s=0.25, update_interval_s=10)
    assert _types(f(0, {"person": 0.7})) == [("start", "person")]
    out = []
    for i in range(100, 1100, 100):  # 0.45: under the 0.5 threshold, over threshold - hysteresis
        out += f(i, scores={"person": 0.45})
    assert out == []
    out = f(1100, scores={"person": 0.35}) + f(1200, scores={"person": 0.35}) + f(1300, scores={"person": 0.35})
    assert _types(out) == [("end", "person")]
    assert out[0]["end_ns"] == T0 + 1000 * MS  # the last supported record


def test_updates_on_material_change_are_rate_limited():
    f = Feed(min_duration_s=0.0, update_interval_s=0.5, update_score_delta=0.05)
    assert _types(f(0, {"person": 0.6})) == [("start", "person")]
    assert f(100, {"person": 0.62}) == []  # a rise of 0.02 is not material
    assert f(200, {"person": 0.8}) == []  # material, but 0.5 s have not passed since the start
    assert f(300, {"person": 0.9}) == []
    up = f(500, {"person": 0.85})  # due now: one update carries the top so far
    assert _types(up) == [("update", "person")] and up[0]["top_score"] == 0.9 and up[0]["score"] == 0.85
    assert up[0]["top_ns"] == T0 + 300 * MS
    assert f(1200, {"person": 0.86}) == []  # nothing new to say
    up = f(1300, {"person": 0.86}, mods=("camera", "radar", "audio"))  # a modality joined
    assert _types(up) == [("update", "person")] and up[0]["modalities"] == ["audio", "camera", "radar"]


def test_a_pending_update_goes_out_on_tick_without_new_records():
    f = Feed(min_duration_s=0.0, update_interval_s=0.5, end_timeout_s=5)
    f(0, {"person": 0.6})
    f(100, {"person": 0.9})
    assert f.tick(300) == []
    due = f.lc.next_due_ns()
    assert due == T0 + 510 * MS
    assert _types(f.tick(510)) == [("update", "person")]


def test_a_stalled_stream_ends_occurrences_by_timeout():
    f = Feed(min_duration_s=0.0, end_timeout_s=2.0, max_gap_s=10)
    f(0, {"person": 0.9, "dog": 0.7})
    assert f.tick(2000) == []
    out = f.tick(2011)
    assert sorted(_types(out)) == [("end", "dog"), ("end", "person")]
    assert {e["reason"] for e in out} == {"timeout"}


def test_labels_are_kept_apart_per_rig():
    f = Feed(min_duration_s=0.0)
    a = f(0, {"person": 0.9}, rig="a")
    b = f(0, {"person": 0.9}, rig="b")
    assert a[0]["id"] != b[0]["id"] and (a[0]["rig"], b[0]["rig"]) == ("a", "b")


def test_record_alerts_start_at_once_and_end_after_the_timeout():
    f = Feed(min_duration_s=0.5, end_timeout_s=1.0)
    out = f(0, alerts=["sensor_failed:mic0", "modalities_disagree"])
    assert _types(out) == [("start", "modalities_disagree"), ("start", "sensor_failed:mic0")]
    failed = out[1]
    assert failed["kind"] == "alert" and failed["sensor_id"] == "mic0"
    assert f(500, alerts=["sensor_failed:mic0"]) == []
    out = f.tick(1100) + f.tick(1600)
    assert _types(out) == [("end", "modalities_disagree"), ("end", "sensor_failed:mic0")]
    assert out[1]["id"] == failed["id"] and out[1]["end_ns"] == T0 + 510 * MS


def test_stats_raise_failed_faulty_and_drifting_sensors():
    f = Feed(sensor_grace_s=5.0, drift_alert_ppm=100)

    def stats(t_ms, **sensors):
        now = T0 + t_ms * MS
        return f.lc.observe_stats({"rig": "r1", "sensors": sensors}, now, WALL0 + now - T0)

    quiet = {"alive": False, "last_seen_ms": None, "rejected": {}, "clock": {"drift_ppm": None}}
    ok = {"alive": True, "last_seen_ms": 3.0, "rejected": {}, "clock_jumps": 0, "clock": {"drift_ppm": 2.0}}
    assert stats(1000, cam0=ok, mic0=quiet) == []  # never heard, still within the grace period
    assert _types(stats(5000, cam0=ok, mic0=quiet)) == [("start", "sensor_failed:mic0")]
    bad = {**ok, "rejected": {"bad_payload": 3}, "clock": {"drift_ppm": 250.0}}
    out = stats(6000, cam0=bad, mic0=quiet)
    assert _types(out) == [("start", "sensor_fault:cam0"), ("start", "clock_drift:cam0")]
    assert stats(7000, cam0=bad, mic0=quiet) == []  # no new rejections: the fault is not seen again...
    ended = f.tick(7100)  # ...and after end_timeout (3 s) without it, it ends
    assert ended == [] and _types(f.tick(9100)) == [("end", "sensor_fault:cam0")]


def test_stats_of_a_sensor_that_ended_its_stream_raise_nothing():
    f = Feed(sensor_grace_s=5.0)
    silent = {"alive": False, "last_seen_ms": 900.0, "rejected": {}, "clock": {"drift_ppm": None}}
    stats = {"rig": "r1", "sensors": {"cam0": {**silent, "ended": "source_ended"}, "mic0": {**silent, "ended": None}}}
    assert _types(f.lc.observe_stats(stats, T0 + 6000 * MS, WALL0 + 6000 * MS)) == [("start", "sensor_failed:mic0")]


def test_close_ends_what_started_and_drops_candidates():
    f = Feed(min_duration_s=0.2)
    f(0, {"person": 0.9})
    f(100, {"person": 0.9})
    f(200, {"person": 0.9, "dog": 0.8})
    out = f.lc.close(T0 + 300 * MS, WALL0 + 300 * MS)
    assert _types(out) == [("end", "person")] and out[0]["reason"] == "node_stopped"
    assert f.lc.open == {}
