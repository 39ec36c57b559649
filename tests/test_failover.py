"""No single point of silence: the driver camera fails, the node goes on with the next sensor or a tick.

Core-level tests drive :class:`fusion_node.core.FusionCore` with deterministic times (camera and
radar at 10 Hz, audio at 50 Hz, liveness 0.5 s); the end-to-end test kills a real camera process
under a real node and times the first event that says so.
"""

from __future__ import annotations

import time

import pytest

from fusion_node.core import FusionCore
from fusion_node.wire import TOPICS

from .test_core import MS, T0, Clock, _audio, _cam, _cfg, _radar
from .test_pipeline import AUDIO, RADAR, VIDEO, _node_and_subscriber, _sensor, _wait_event

LIVENESS = 500 * MS
TICK = TOPICS["camera"].period_ns  # the driver's nominal period


def _run(core, clock, t_from, t_to, *, cam=True, radar=True, audio=True, seq0=0):
    """Stream from ``t_from`` to ``t_to`` in 20 ms steps; returns ``(now, event)`` pairs."""
    out = []
    for i, t in enumerate(range(t_from, t_to, 20 * MS)):
        msgs = [_audio(seq0 * 5 + i, t)] if audio else []
        if (t - t_from) % (100 * MS) == 0:
            k = seq0 + (t - t_from) // (100 * MS)
            msgs += ([_cam(k, t)] if cam else []) + ([_radar(k, t + 5 * MS)] if radar else [])
        clock.t = t + 21 * MS
        out += [(clock.t, ev) for ev in core.step(clock.t, [(clock.t, m) for m in msgs])]
    return out


def _ids(ev):
    return {m["sensor_id"] for m in ev["members"]}


def _increasing_without_gaps(events, gap_ns):
    t = [ev["t_ref_ns"] for _, ev in events]
    return all(b > a for a, b in zip(t, t[1:])) and max(b - a for a, b in zip(t, t[1:])) <= gap_ns


def test_dead_camera_hands_the_reference_to_the_radar_and_takes_it_back():
    clock = Clock()
    core = FusionCore(_cfg(), None, timer=clock)  # a sensor heard from fails on its liveness timeout alone
    before = _run(core, clock, T0, T0 + 1000 * MS)
    cam_last_seen = core.sensors["cam0"].last_seen_ns
    during = _run(core, clock, T0 + 1000 * MS, T0 + 3000 * MS, cam=False, seq0=10)
    stats = core.stats(clock.t, 1.0)
    after = _run(core, clock, T0 + 3000 * MS, T0 + 4000 * MS, seq0=30)

    assert before and all(_ids(ev) == {"cam0", "radar0"} and not ev["alerts"] for _, ev in before)
    failed = [(now, ev) for now, ev in during if "sensor_failed:cam0" in ev["alerts"]]
    assert len(failed) >= 15  # 2 s of radar frames at 10 Hz, less the last ones still pending
    # The first event saying so leaves within one 20 ms step of the liveness timeout.
    first_now = failed[0][0]
    assert LIVENESS < first_now - cam_last_seen <= LIVENESS + 20 * MS
    for _, ev in failed:
        assert _ids(ev) == {"radar0"} and ev["missing"] == ["cam0"] and not ev["modalities"]["camera"]["present"]
        assert ev["modalities"]["audio"]["present"]
    # The radar takes over where the camera stopped: its frames from the time the failure took
    # to notice are fused too, so the reference times run on without a hole.
    assert failed[0][1]["t_ref_ns"] == T0 + 1005 * MS
    assert stats["sync"]["reference"] == "radar0" and stats["sync"]["reference_switches"] == 1
    assert stats["sensors"]["cam0"]["alive"] is False
    # Back: the camera is the reference again, the alert is gone.
    assert _ids(after[-1][1]) == {"cam0", "radar0"} and after[-1][1]["alerts"] == []
    assert core.stats(clock.t, 1.0)["sync"]["reference"] == "cam0"
    assert _increasing_without_gaps(before + during + after, 105 * MS)


def _grace(seconds):
    cfg = _cfg()
    return cfg.model_copy(update={"lifecycle": cfg.lifecycle.model_copy(update={"sensor_grace_s": seconds})})


@pytest.mark.parametrize("grace_s", [0.0, 1.5])
def test_camera_that_never_starts_is_failed_after_its_timeout_and_the_others_go_on(grace_s):
    clock = Clock()
    core = FusionCore(_grace(grace_s), None, timer=clock)
    events = _run(core, clock, T0, T0 + 3000 * MS, cam=False)
    first_message = T0 + 21 * MS
    assert events, "radar and microphone healthy, camera never started: the node must still emit"
    # Until the camera's timeout (at least its liveness timeout, at most the start-up grace)
    # the node waits for it; then the radar sets the reference.
    timeout = max(LIVENESS, int(grace_s * 1e9))
    assert timeout < events[0][0] - first_message <= timeout + 20 * MS
    assert all(_ids(ev) == {"radar0"} and "sensor_failed:cam0" in ev["alerts"] for _, ev in events)
    # The radar's frames since the start are fused too, as far as the pending bound (10) reaches.
    t_refs = [ev["t_ref_ns"] for _, ev in events]
    assert t_refs[0] == max(T0 + 5 * MS, T0 + timeout - 9 * 100 * MS + 5 * MS)
    assert all(b - a == 100 * MS for a, b in zip(t_refs, t_refs[1:]))


def test_with_only_audio_left_sets_are_cut_on_a_clock_tick_at_the_drivers_period():
    clock = Clock()
    core = FusionCore(_cfg(), None, timer=clock)
    _run(core, clock, T0, T0 + 1000 * MS)
    events = _run(core, clock, T0 + 1000 * MS, T0 + 3000 * MS, cam=False, radar=False, seq0=10)
    ticks = [ev for _, ev in events if not ev["members"]]
    assert len(ticks) >= 30
    for ev in ticks:
        assert ev["missing"] == ["cam0", "radar0"] and ev["modalities"]["audio"]["present"]
        assert ev["alerts"] == ["sensor_failed:cam0", "sensor_failed:radar0"]
    steps = {b["t_ref_ns"] - a["t_ref_ns"] for a, b in zip(ticks, ticks[1:])}
    assert steps == {TICK}
    assert _increasing_without_gaps(events, 100 * MS)
    assert core.stats(clock.t, 1.0)["sync"]["reference"] == ""
    # The node loop learns when the next tick is due from the core alone.
    due = core.next_deadline_ns()
    assert clock.t < due <= ticks[-1]["t_ref_ns"] + 2 * TICK
    assert core.assembler.counters["released_on_tick"] == len(ticks)


def test_ticks_need_time_only_and_stop_when_nothing_is_alive():
    clock = Clock()
    core = FusionCore(_grace(0.0), None, timer=clock)  # camera and radar never start
    _run(core, clock, T0, T0 + 1000 * MS, cam=False, radar=False)
    # Audio covers up to T0 + 1000 ms; with no further input, stepping on the deadlines alone
    # releases the ticks up to there and then, past the deadline, the later ones too.
    released = []
    now = clock.t
    while now < T0 + 1400 * MS:
        now = core.next_deadline_ns()
        released += core.step(now, [])
    assert released and all(not ev["members"] for ev in released)
    assert any(ev["modalities"]["audio"]["present"] for ev in released)
    # The microphone fails too (silent past 0.5 s): ticks cut before that still leave, then
    # nothing is alive: nothing is cut and nothing wakes the loop.
    mic_failed_at = core.sensors["mic0"].last_seen_ns + LIVENESS
    assert all(ev["t_ref_ns"] <= mic_failed_at + TICK for ev in core.step(T0 + 2000 * MS, []))
    assert core.step(T0 + 2100 * MS, []) == [] and core.step(T0 + 3000 * MS, []) == []
    assert core.next_deadline_ns() is None


def test_next_deadline_includes_the_moment_a_sensor_fails():
    clock = Clock()
    core = FusionCore(_cfg(), None, timer=clock)
    assert core.next_deadline_ns() is None  # nothing heard: nothing can fail yet
    _run(core, clock, T0, T0 + 300 * MS)
    last_seen = min(st.last_seen_ns for st in core.sensors.values())
    assert core.next_deadline_ns() <= last_seen + LIVENESS + 1


def test_killed_camera_process_events_go_on_and_say_sensor_failed(ipc_dir, spawn, zctx):
    """Real processes: the camera is killed mid-run; events continue and name it within its timeout."""
    node, sub = _node_and_subscriber(ipc_dir, spawn, zctx)
    cam = _sensor(spawn, "camera", "cam0", ipc_dir, VIDEO)
    _sensor(spawn, "radar", "radar0", ipc_dir, RADAR)
    _sensor(spawn, "audio", "mic0", ipc_dir, AUDIO)
    _wait_event(sub, lambda t, b: t == "fused" and not b["missing"], what="a complete set")
    _wait_event(sub, lambda t, b: t == "fused" and not b["missing"], what="another complete set")
    cam.kill()
    t_kill = time.monotonic()
    ev = _wait_event(sub, lambda t, b: t == "fused" and "sensor_failed:cam0" in b["alerts"], timeout=10,
                     what="an event with sensor_failed:cam0")
    took_s = time.monotonic() - t_kill
    print(f"camera killed -> first event with sensor_failed:cam0: {took_s * 1e3:.0f} ms (liveness 500 ms)")
    # The camera's liveness timeout, plus the kill landing up to one frame after its last one and
    # the loop turn that notices (a loaded two-core machine: allow 0.5 s of scheduling).
    assert took_s < 0.5 + 0.04 + 0.5
    # The radar sets the reference (its first sets may still hold the camera's last frame as nearest).
    assert "radar0" in _ids(ev)
    # And they keep coming, without the camera.
    for _ in range(10):
        ev = _wait_event(sub, lambda t, b: t == "fused", timeout=2, what="events after the camera died")
        assert "sensor_failed:cam0" in ev["alerts"] and "radar0" in _ids(ev)
    assert "cam0" in ev["missing"] and _ids(ev) == {"radar0"}
    assert node.p.poll() is None


@pytest.mark.parametrize("how", ["stopped", "source_ended"])
def test_a_camera_that_ends_its_stream_is_dropped_from_sets_without_sensor_failed(ipc_dir, spawn, zctx, how):
    """Real processes: a camera stopped by a signal, or whose source runs out, says so and is not failed."""
    node, sub = _node_and_subscriber(ipc_dir, spawn, zctx)
    cam = _sensor(spawn, "camera", "cam0", ipc_dir, VIDEO, *(["--max-frames", "40"] if how == "source_ended" else []))
    _sensor(spawn, "radar", "radar0", ipc_dir, RADAR)
    _sensor(spawn, "audio", "mic0", ipc_dir, AUDIO)
    _wait_event(sub, lambda t, b: t == "fused" and not b["missing"], what="a complete set")
    if how == "stopped":
        assert cam.stop() == 0
    else:
        assert cam.p.wait(30) == 0  # 40 frames played, then it ends by itself
    _wait_event(sub, lambda t, b: t == "fused" and "cam0" in b["missing"], timeout=10, what="a set without cam0")
    # Well past the camera's 0.5 s liveness timeout, the sets go on without it and without an alert.
    t_end = time.monotonic() + 1.5
    after = []
    while time.monotonic() < t_end:
        after.append(_wait_event(sub, lambda t, b: t == "fused", timeout=2, what="events after the camera ended"))
    assert len(after) >= 5 and all("cam0" in ev["missing"] and not ev["alerts"] for ev in after)
    stats = _wait_event(sub, lambda t, b: t == "stats" and b["sensors"]["cam0"]["ended"] is not None, timeout=5,
                        what="stats saying cam0 ended")
    cam0 = stats["sensors"]["cam0"]
    assert cam0["ended"] == how and cam0["alive"] is False and cam0["deaths"] == 0 and not cam0["rejected"]
    assert node.p.poll() is None
