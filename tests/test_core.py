"""The pure fusion core: admission, counted rejections, restarts, drops, liveness and events."""

from __future__ import annotations

import numpy as np
import pytest

from fusion_node.config import config_from_dict
from fusion_node.core import FusionCore
from fusion_node.rig import Clock as RigClock
from fusion_node.rig import Rig, SensorCalibration, load_rig, save_rig
from fusion_node.wire import AudioChunk, CameraFrame, RadarPoints, Rejection, StreamEnd

MS = 1_000_000
T0 = 10_000 * MS


def _cfg(**sync):
    return config_from_dict({
        "rig": "r1",
        "sensors": [{"id": "cam0", "kind": "camera", "endpoint": "inproc://c", "liveness_timeout_s": 0.5},
                    {"id": "radar0", "kind": "radar", "endpoint": "inproc://r", "liveness_timeout_s": 0.5},
                    {"id": "mic0", "kind": "audio", "endpoint": "inproc://a", "liveness_timeout_s": 0.5}],
        "sync": {"deadline_ms": 100, "audio_window_s": 0.2, **sync},
        # Blank frames, empty radar sets and a constant tone are what faulty sensors send: these tests
        # are about admission and synchronisation (tests/test_faults.py feeds real data).
        "faults": {"enabled": False},
    })


class Clock:
    def __init__(self):
        self.t = T0

    def __call__(self):
        return self.t


def _cam(seq, t, run=1):
    return CameraFrame("cam0", seq, t, t, np.zeros((8, 8, 3), np.uint8), run_id=run)


def _radar(seq, t, run=1):
    return RadarPoints("radar0", seq, t, t, np.zeros((2, 6), np.float32), run_id=run)


def _audio(seq, t, run=1):
    return AudioChunk("mic0", seq, t, t, np.full(320, 0.1, np.float32), 16000, run_id=run)


def _feed(core, clock, msgs, now=None):
    clock.t = now if now is not None else max(m.t_capture_ns for m in msgs) + MS
    return core.step(clock.t, [(clock.t, m) for m in msgs])


def _stream(core, clock, t_from, t_to, seq0=0, cam=True, radar=True, audio=True, run=1):
    """Real-time-ordered camera/radar at 100 ms and audio at 20 ms; returns events."""
    events = []
    for i, t in enumerate(range(t_from, t_to, 20 * MS)):
        msgs = [_audio(seq0 * 5 + i, t, run)] if audio else []
        if (t - t_from) % (100 * MS) == 0:
            k = seq0 + (t - t_from) // (100 * MS)
            msgs += ([_cam(k, t, run)] if cam else []) + ([_radar(k, t + 5 * MS, run)] if radar else [])
        if msgs:
            events += _feed(core, clock, msgs, now=t + 21 * MS)
    return events


def test_complete_sets_become_events_with_members_and_latencies():
    clock = Clock()
    core = FusionCore(_cfg(), None, timer=clock)
    events = _stream(core, clock, T0, T0 + 1000 * MS)
    assert len(events) >= 8
    ev = events[-1]
    assert ev["rig"] == "r1" and ev["missing"] == [] and ev["labels"] == [] and ev["model"] is None
    assert {m["sensor_id"] for m in ev["members"]} == {"cam0", "radar0"}
    assert all(m["present"] for m in ev["modalities"].values())
    assert {"receive", "sync_wait"} <= set(ev["latency_ms"])
    out = core.finish_event(ev, clock.t + 2 * MS)
    assert out["latency_ms"]["e2e"] > 0 and "t_publish_ns" in out


def test_each_admission_failure_is_counted_by_reason():
    clock = Clock()
    core = FusionCore(_cfg(), None, timer=clock)
    now = T0
    msgs = [
        _cam(0, now - 10_000 * MS),  # far in the past
        _cam(1, now + 5_000 * MS),  # far in the future
        _cam(2, now - 50 * MS),
        _cam(2, now - 40 * MS),  # repeated seq
        _cam(3, now - 60 * MS),  # capture time went backwards
        CameraFrame("ghost", 0, now, now, np.zeros((4, 4, 3), np.uint8)),
        RadarPoints("cam0", 0, now, now, np.zeros((0, 6), np.float32)),  # a camera id on the radar topic
        AudioChunk("mic0", 0, now, now, np.zeros(441, np.float32), 44100),
    ]
    core.step(now, [(now, m) for m in msgs] + [(now, Rejection("bad_msgpack", "x", "radar", ""))])
    rej = core.sensors["cam0"].rejected
    assert rej == {"timestamp_past": 1, "timestamp_future": 1, "out_of_order": 2, "unknown_sensor": 1}
    assert core.sensors["mic0"].rejected == {"bad_header": 1}
    assert core.unattributed == {"unknown_sensor": 1, "bad_msgpack": 1}
    assert core.sensors["cam0"].accepted == 1


def test_restarted_sensor_is_rebased_not_rejected():
    clock = Clock()
    core = FusionCore(_cfg(), None, timer=clock)
    _stream(core, clock, T0, T0 + 500 * MS)
    # The radar process restarts: new run_id, seq from 0.
    _stream(core, clock, T0 + 500 * MS, T0 + 1000 * MS, seq0=5, run=1)
    _feed(core, clock, [_radar(0, T0 + 1000 * MS, run=2)], now=T0 + 1001 * MS)
    st = core.sensors["radar0"]
    assert st.restarts == 1 and sum(st.rejected.values()) == 0


def test_dead_sensor_marked_missing_and_counted():
    clock = Clock()
    core = FusionCore(_cfg(), None, timer=clock)
    _stream(core, clock, T0, T0 + 500 * MS)
    events = _stream(core, clock, T0 + 500 * MS, T0 + 2000 * MS, seq0=5, radar=False)
    assert events[-1]["missing"] == ["radar0"]
    assert not events[-1]["modalities"]["radar"]["present"]
    assert events[-1]["alerts"] == ["sensor_failed:radar0"]
    stats = core.stats(clock.t, 1.0)
    assert stats["sensors"]["radar0"]["alive"] is False and stats["sensors"]["radar0"]["deaths"] == 1
    # Once dead, sets are not held back waiting for it.
    late = [e for e in events if e["t_ref_ns"] > T0 + 1500 * MS]
    assert late and max(e["latency_ms"]["sync_wait"] for e in late) < 50


def test_a_sensor_that_ends_its_stream_is_not_failed_and_not_waited_for():
    clock = Clock()
    core = FusionCore(_cfg(), None, timer=clock)
    _stream(core, clock, T0, T0 + 500 * MS)  # radar seq 0..4
    end = StreamEnd("radar0", 5, T0 + 405 * MS, T0 + 405 * MS, "radar", "source_ended", run_id=1)
    _feed(core, clock, [end], now=T0 + 500 * MS)
    events = _stream(core, clock, T0 + 500 * MS, T0 + 2000 * MS, seq0=5, radar=False)
    assert events[-1]["missing"] == ["radar0"] and not events[-1]["modalities"]["radar"]["present"]
    assert not any(a.startswith("sensor_failed") for e in events for a in e["alerts"])
    radar = core.stats(clock.t, 1.0)["sensors"]["radar0"]
    assert radar["alive"] is False and radar["ended"] == "source_ended" and radar["deaths"] == 0
    # Sets go out at once rather than at the deadline: the ended radar is not waited for.
    assert max(e["latency_ms"]["sync_wait"] for e in events if e["t_ref_ns"] > T0 + 600 * MS) < 50
    # Its next frame (here a new run) revives it.
    _feed(core, clock, [_radar(0, T0 + 2005 * MS, run=2)], now=T0 + 2006 * MS)
    radar = core.stats(clock.t, 1.0)["sensors"]["radar0"]
    assert radar["alive"] is True and radar["ended"] is None and radar["restarts"] == 1


@pytest.mark.parametrize("run, seq", [(2, 9), (1, 4), (1, 3)], ids=["another run", "a seq already seen", "a stale seq"])
def test_a_stream_end_out_of_the_followed_run_is_refused(run, seq):
    clock = Clock()
    core = FusionCore(_cfg(), None, timer=clock)
    _stream(core, clock, T0, T0 + 500 * MS)  # radar run 1, seq 0..4
    _feed(core, clock, [StreamEnd("radar0", seq, T0 + 405 * MS, T0 + 405 * MS, "radar", "stopped", run_id=run)],
          now=T0 + 500 * MS)
    events = _stream(core, clock, T0 + 500 * MS, T0 + 2000 * MS, seq0=5, radar=False)
    radar = core.stats(clock.t, 1.0)["sensors"]["radar0"]
    assert radar["rejected"] == {"out_of_order": 1} and radar["ended"] is None
    assert events[-1]["alerts"] == ["sensor_failed:radar0"]  # a forged end does not hide a dead sensor


def test_a_stream_end_on_another_modality_topic_is_refused():
    clock = Clock()
    core = FusionCore(_cfg(), None, timer=clock)
    _stream(core, clock, T0, T0 + 500 * MS)
    _feed(core, clock, [StreamEnd("radar0", 5, T0 + 405 * MS, T0 + 405 * MS, "camera", "stopped", run_id=1)],
          now=T0 + 500 * MS)
    assert core.stats(clock.t, 1.0)["sensors"]["radar0"]["rejected"] == {"unknown_sensor": 1}


def test_a_backlog_overflows_the_buffer_drop_oldest():
    clock = Clock()
    core = FusionCore(_cfg(), None, timer=clock)
    msgs = [_cam(i, T0 - (20 - i) * 10 * MS) for i in range(20)]  # 20 frames in one step, bound is 8
    core.step(T0, [(T0, m) for m in msgs])
    assert core.sensors["cam0"].dropped == 12


def test_seq_gaps_are_counted():
    clock = Clock()
    core = FusionCore(_cfg(), None, timer=clock)
    core.step(T0, [(T0, _cam(0, T0 - 30 * MS)), (T0, _cam(5, T0 - 20 * MS))])
    assert core.sensors["cam0"].seq_gaps == 4


def test_stats_snapshot_has_the_documented_keys():
    clock = Clock()
    core = FusionCore(_cfg(), None, timer=clock)
    _stream(core, clock, T0, T0 + 300 * MS)
    s = core.stats(clock.t, 0.3)
    assert {"rig", "t_ns", "events", "sensors", "rejected_unattributed", "sync", "latency_ms", "provider", "alignment"} <= set(s)
    assert s["sensors"]["cam0"]["rate_hz"] == pytest.approx(3 / 0.3, rel=0.01)


@pytest.mark.parametrize("policy", ["approximate", "epsilon"])
def test_message_filters_policies_drive_the_core(policy):
    clock = Clock()
    core = FusionCore(_cfg(policy=policy, inter_message_lower_bounds_ms={"cam0": 90, "radar0": 90}
                           if policy == "approximate" else None), None, timer=clock)
    events = _stream(core, clock, T0, T0 + 1000 * MS)
    assert len(events) >= 8
    assert all({m["sensor_id"] for m in e["members"]} == {"cam0", "radar0"} for e in events)
    assert events[-1]["t_ref_ns"] - events[-1]["members"][0]["t_capture_ns"] in (0, 5 * MS)


def test_clock_jump_within_a_run_is_rebased_not_rejected_forever():
    clock = Clock()
    core = FusionCore(_cfg(), None, timer=clock)
    # The camera plays a file whose timestamps jump back 3 s (a loop) while the node clock runs on.
    events = []
    for i in range(40):
        t = T0 + i * 100 * MS
        events += _feed(core, clock, [_audio(i, t), _radar(i, t)], now=t + MS)
        stamp = t if i < 20 else t - 3000 * MS
        core.step(t + 2 * MS, [(t + 2 * MS, _cam(i, stamp))])
    st = core.sensors["cam0"]
    assert st.clock_jumps == 1
    assert st.rejected.get("out_of_order", 0) <= 3  # only until the jump is confirmed
    assert st.accepted >= 37
    assert core.stats(clock.t, 1.0)["sensors"]["cam0"]["clock"]["jumps"] == 1


def test_calibration_file_clock_offsets_put_sensors_on_the_rig_clock(tmp_path):
    rig = Rig(rig="r1", sensors=[SensorCalibration(id="radar0", kind="radar",
                                                    clock=RigClock(clock_offset_ns=-250 * MS))])
    path = save_rig(rig, tmp_path / "rig_cal.yaml")
    clock = Clock()
    core = FusionCore(_cfg(), None, timer=clock, calibration=load_rig(path))
    assert core.sensors["radar0"].offset_ns == -250 * MS and core.sensors["cam0"].offset_ns == 0
    # Radar stamps run 250 ms ahead of the rig clock: after the offset they match the camera.
    events = []
    for i in range(10):
        t = T0 + i * 100 * MS
        events += _feed(core, clock, [_audio(i, t), _cam(i, t), _radar(i, t + 250 * MS)], now=t + MS)
    assert events and all(m["age_ms"] == 0 for e in events for m in e["members"])


def _radar_marked(seq, t, run=1):
    """A radar frame of ``seq + 1`` points whose x is the frame's seq, so a pooled window names its frames."""
    pts = np.zeros((seq % 5 + 1, 6), np.float32)
    pts[:, 0], pts[:, 4] = seq, 20.0
    return RadarPoints("radar0", seq, t, t, pts, run_id=run)


def _pooled_frames(core, clock, seqs, t0, run=1):
    """Feed camera + marked radar frames ``seqs`` 100 ms apart from ``t0`` (audio throughout): for each
    event, the radar frame it was built on and the frames its radar window pooled."""
    out = []
    for i, seq in enumerate(seqs):
        t = t0 + i * 100 * MS
        msgs = [_audio(run * 1000 + seq * 5 + j, t - 80 * MS + j * 20 * MS, run) for j in range(5)]
        msgs += [_cam(seq, t, run), _radar_marked(seq, t + 5 * MS, run)]
        for ev in _feed(core, clock, msgs, now=t + 21 * MS):
            own = next(m["seq"] for m in ev["members"] if m["sensor_id"] == "radar0")
            out.append((own, sorted({int(x) for x in core.runtime.last_raw["radar"][:, 0]})))
    return out


@pytest.mark.parametrize("frames", [1, 3])
def test_radar_window_pools_the_frames_the_model_reads(frames):
    from .fake_runtime import FakeRuntime

    clock = Clock()
    core = FusionCore(_cfg(), FakeRuntime(radar_frames=frames), timer=clock)
    pooled = _pooled_frames(core, clock, range(8), T0)
    assert len(pooled) >= 6
    for own, seqs in pooled:
        assert seqs == list(range(max(0, own - frames + 1), own + 1))  # its own frame and those just before
    # A restarted radar (new run) starts its window afresh; so does one that paused past the pooling span.
    after_restart = _pooled_frames(core, clock, range(100, 104), T0 + 800 * MS, run=2)
    assert after_restart and all(seqs == list(range(max(100, own - frames + 1), own + 1))
                                 for own, seqs in after_restart)
    after_pause = _pooled_frames(core, clock, range(104, 108), T0 + 5000 * MS, run=2)
    assert after_pause and all(seqs == list(range(max(104, own - frames + 1), own + 1)) for own, seqs in after_pause)
