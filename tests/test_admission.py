"""Admission in the core under hostile input: rejected messages move no state, forged ones are bounded.

Properties (hypothesis): the core never raises on any sequence of messages; every rejection has
a documented reason and every message is accounted for; a valid stream with rejected messages
mixed in is accepted whole and produces exactly the events and clock tracking it produces alone.
"""

from __future__ import annotations

import cv2
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fusion_node.config import config_from_dict
from fusion_node.core import FusionCore
from fusion_node.wire import (
    REJECT_REASONS,
    AudioChunk,
    CameraFrame,
    RadarPoints,
    Rejection,
    decode,
    encode,
)

MS = 1_000_000
T0 = 100_000 * MS
IDS = ("cam0", "radar0", "mic0")


def _cfg():
    return config_from_dict({
        "rig": "r1",
        "sensors": [{"id": "cam0", "kind": "camera", "endpoint": "inproc://c", "liveness_timeout_s": 0.5},
                    {"id": "radar0", "kind": "radar", "endpoint": "inproc://r", "liveness_timeout_s": 0.5},
                    {"id": "mic0", "kind": "audio", "endpoint": "inproc://a", "liveness_timeout_s": 0.5}],
        "sync": {"deadline_ms": 100, "audio_window_s": 0.2},
    })


class Clock:
    def __init__(self):
        self.t = T0

    def __call__(self):
        return self.t


def _core():
    clock = Clock()
    return FusionCore(_cfg(), None, timer=clock, run_id=7), clock


def _msg(kind, sid, seq, t, run=1, rate=16000):
    if kind == "camera":
        return CameraFrame(sid, seq, t, t, np.zeros((8, 8, 3), np.uint8), run_id=run)
    if kind == "radar":
        return RadarPoints(sid, seq, t, t, np.zeros((2, 6), np.float32), run_id=run)
    return AudioChunk(sid, seq, t, t, np.full(320, 0.1, np.float32), rate, run_id=run)


def _legit_steps(n_frames: int):
    """A valid rig at real-time pace: camera and radar every 100 ms, audio every 20 ms."""
    steps = []
    for i in range(n_frames * 5):
        t = T0 + i * 20 * MS
        msgs = [_msg("audio", "mic0", i, t)]
        if i % 5 == 0:
            msgs += [_msg("camera", "cam0", i // 5, t), _msg("radar", "radar0", i // 5, t + 5 * MS)]
        steps.append((t + 21 * MS, msgs))
    return steps


def _run(core, clock, steps):
    events = []
    for now, msgs in steps:
        clock.t = now
        events += core.step(now, [(now, m) for m in msgs])
    return events


def _state(core):
    """Everything the core knows of its sensors except what counts arrivals and rejections."""
    out = {}
    for sid, s in core.stats(core._now_ns, 1.0)["sensors"].items():
        out[sid] = {k: v for k, v in s.items() if k not in ("received", "rejected", "rate_hz")}
    return out


# -- hostile messages that must be rejected without touching anything ------------------------------

KINDS = {"cam0": "camera", "radar0": "radar", "mic0": "audio"}


@st.composite
def hostile(draw, now: int, last_seq: dict, last_t: dict):
    sid = draw(st.sampled_from(IDS))
    kind = KINDS[sid]
    run = draw(st.sampled_from([1, draw(st.integers(0, 2**32 - 1))]))
    seq = draw(st.integers(0, 2**64 - 1))
    form = draw(st.sampled_from(["past", "future", "topic", "rate", "unknown", "rejection", "repeat", "equal"]))
    if form == "past":
        return _msg(kind, sid, seq, now - draw(st.integers(5_001, 10**6)) * MS, run)
    if form == "future":
        return _msg(kind, sid, seq, now + draw(st.integers(501, 10**6)) * MS, run)
    if form == "topic":
        return _msg(draw(st.sampled_from([k for k in KINDS.values() if k != kind])), sid, seq, now - 10 * MS, run)
    if form == "rate":
        return _msg("audio", "mic0", seq, now - 10 * MS, run, rate=draw(st.sampled_from([8000, 44100, 48000])))
    if form == "unknown":
        return _msg(kind, draw(st.text(min_size=1, max_size=64).filter(lambda s: s not in IDS)), seq, now, run)
    if form == "rejection":
        return Rejection(draw(st.sampled_from(REJECT_REASONS)), "x", kind, draw(st.sampled_from([*IDS, "", "zz"])))
    if last_seq.get(sid) is None:
        return _msg(kind, "ghost", seq, now, run)
    if form == "repeat":  # the last accepted message again
        return _msg(kind, sid, last_seq[sid], last_t[sid], 1)
    return _msg(kind, sid, last_seq[sid] + 1, last_t[sid], 1)  # next seq, same capture time


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_rejected_messages_mixed_into_a_valid_stream_change_nothing(data):
    steps = _legit_steps(12)
    clean, clean_clock = _core()
    expected = _run(clean, clean_clock, steps)
    mixed_steps = []
    last_seq: dict = {}
    last_t: dict = {}
    n_hostile = 0
    for now, msgs in steps:
        extra = data.draw(st.lists(hostile(now, last_seq, last_t), max_size=6))
        n_hostile += len(extra)
        mixed = list(msgs)
        for h in extra:
            mixed.insert(data.draw(st.integers(0, len(mixed))), h)
        mixed_steps.append((now, mixed))
        for m in msgs:
            last_seq[m.sensor_id], last_t[m.sensor_id] = m.seq, m.t_capture_ns
    core, clock = _core()
    got = _run(core, clock, mixed_steps)
    assert got == expected  # the same events, member for member, latency for latency
    assert _state(core) == _state(clean)  # the same clocks, sequences, restarts, liveness
    legit = {sid: sum(m.sensor_id == sid for _, msgs in steps for m in msgs) for sid in IDS}
    assert {sid: core.sensors[sid].accepted for sid in IDS} == legit
    rejected = sum(sum(s.rejected.values()) for s in core.sensors.values()) + sum(core.unattributed.values())
    assert rejected == n_hostile
    assert set(core.unattributed) | {r for s in core.sensors.values() for r in s.rejected} <= set(REJECT_REASONS)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.tuples(
    st.sampled_from([*IDS, "ghost", ""]), st.sampled_from(["camera", "radar", "audio"]),
    st.integers(0, 40), st.integers(-8_000, 2_000), st.sampled_from([0, 1, 2**32 - 1]),
    st.sampled_from([16000, 16000, 48000]), st.integers(0, 3)), max_size=120))
def test_the_core_never_raises_and_accounts_for_every_message(spec):
    core, clock = _core()
    now = T0
    sent = 0
    for sid, kind, seq, dt_ms, run, rate, advance in spec:
        now += advance * 10 * MS
        clock.t = now
        msg = _msg(kind, sid, seq, max(0, now + dt_ms * MS), run, rate)
        core.step(now, [(now, msg)])
        sent += 1
    known = [s for s in core.sensors.values()]
    assert len(core.sensors) == 3  # state only for configured sensors
    for s in known:
        assert s.received == s.accepted + sum(s.rejected.values())
        assert set(s.rejected) <= set(REJECT_REASONS) and len(s.step_candidates) <= 3
        assert len(s.buffer) <= s.buffer.maxlen
    assert sum(s.received for s in known) + core.unattributed["unknown_sensor"] == sent


# -- the findings, one by one -------------------------------------------------------------------------

def test_300_forged_messages_under_a_sensors_id_leave_its_clock_tracking_alone():
    steps = _legit_steps(20)
    clean, clean_clock = _core()
    _run(clean, clean_clock, steps)
    core, clock = _core()
    forged_steps = []
    for k, (now, msgs) in enumerate(steps):
        # New run_ids with capture times outside the window: each one used to reset the clock.
        forged = [_msg("camera", "cam0", j, now - 6_000 * MS - j * MS, run=1000 + 3 * k + j) for j in range(3)]
        forged_steps.append((now, forged + msgs))
    _run(core, clock, forged_steps)
    assert core.sensors["cam0"].rejected == {"timestamp_past": 300}
    assert core.clocks["cam0"].summary() == clean.clocks["cam0"].summary()
    assert core.sensors["cam0"].restarts == 0 and core.sensors["cam0"].clock_jumps == 0


def test_a_capture_time_equal_to_the_previous_one_is_out_of_order():
    core, clock = _core()
    _run(core, clock, [(T0 + MS, [_msg("camera", "cam0", 0, T0)]), (T0 + 2 * MS, [_msg("camera", "cam0", 1, T0)])])
    assert core.sensors["cam0"].rejected == {"out_of_order": 1} and core.sensors["cam0"].accepted == 1


@pytest.mark.parametrize("older_s", [1.0, 2.0, 2.9])
def test_a_frame_1_to_3_s_older_than_the_last_is_out_of_order_not_a_clock_step(older_s):
    core, clock = _core()
    steps = _legit_steps(30)
    stale_at = 20 * 5  # after frame 20, cam0 sends one frame from the past, with the next seq
    now, msgs = steps[stale_at]
    stale = _msg("camera", "cam0", 20, now - int(older_s * 1e9))
    later = [(n, [_msg(m.topic, m.sensor_id, m.seq + (m.topic == "camera"), m.t_capture_ns) if m.topic == "camera"
                  else m for m in ms]) for n, ms in steps[stale_at:]]
    _run(core, clock, steps[:stale_at] + [(now, [stale])] + later)
    cam = core.sensors["cam0"]
    assert cam.rejected == {"out_of_order": 1}
    assert cam.clock_jumps == 0 and cam.resyncs == 0 and core.clocks["cam0"].jumps == 0
    assert cam.accepted == 30


def test_a_seq_claimed_far_ahead_costs_the_real_stream_two_frames_not_the_run():
    core, clock = _core()
    steps = _legit_steps(20)
    _run(core, clock, steps[:50])
    now = steps[50][0]
    clock.t = now
    core.step(now, [(now, _msg("camera", "cam0", 10**12, now - MS))])  # in the window, seq far ahead
    _run(core, clock, steps[50:])
    cam = core.sensors["cam0"]
    assert cam.rejected == {"out_of_order": 2} and cam.resyncs == 1
    assert cam.accepted == 20 + 1 - 2


# -- JPEG frames are decoded once admitted ---------------------------------------------------------------

def _jpeg_frame(sid: str, seq: int, t: int, jpeg: bytes | None = None):
    img = np.full((48, 64, 3), 120, np.uint8)
    frames = encode(CameraFrame(sid, seq, t, t, img, encoding="jpeg",
                                jpeg=jpeg or cv2.imencode(".jpg", img)[1].tobytes(), run_id=1))
    msg = decode(frames)
    assert isinstance(msg, CameraFrame) and msg.image is None
    return msg


def test_jpeg_frames_are_decoded_only_after_admission():
    core, clock = _core()
    now = T0
    good = _jpeg_frame("cam0", 0, now - MS)
    unknown = _jpeg_frame("camX", 0, now - MS)
    late = _jpeg_frame("cam0", 1, now - 9_000 * MS)
    wrong_topic = _jpeg_frame("radar0", 0, now - MS)
    core.step(now, [(now, m) for m in (unknown, late, wrong_topic, good)])
    assert good.image is not None and good.image.shape == (48, 64, 3)
    assert unknown.image is None and late.image is None and wrong_topic.image is None
    assert core.sensors["cam0"].accepted == 1


def test_a_corrupt_jpeg_is_bad_payload_for_its_sensor_and_moves_nothing():
    core, clock = _core()
    jpeg = cv2.imencode(".jpg", np.full((48, 64, 3), 90, np.uint8))[1].tobytes()
    no_scan = jpeg[:jpeg.index(b"\xff\xda")] + b"\xff\xd9" + b"\0" * 64
    now = T0
    core.step(now, [(now, _jpeg_frame("cam0", 0, now - 2 * MS))])
    before = _state(core)
    core.step(now, [(now, _jpeg_frame("cam0", 1, now - MS, no_scan))])
    assert core.sensors["cam0"].rejected == {"bad_payload": 1}
    assert _state(core) == before
    core.step(now, [(now, _jpeg_frame("cam0", 1, now - MS))])  # the same seq, intact: accepted
    assert core.sensors["cam0"].accepted == 2
