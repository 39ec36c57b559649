"""ClockTracker: offset and drift from (capture, receive) pairs, jumps detected, delays not mistaken for jumps."""

from __future__ import annotations

import numpy as np
import pytest

from fusion_node.clock import ClockTracker

OFFSET_NS = 1_234_567_890_123  # node clock minus sensor clock


def feed(tracker: ClockTracker, *, seconds: float = 120.0, rate_hz: float = 30.0, drift_ppm: float = 0.0,
         jitter_ms: float = 2.0, min_delay_ms: float = 0.5, seed: int = 0, capture_shift=None, receive_hold=None,
         spikes: float = 0.0):
    """Simulate a sensor: capture on its clock, receive = node clock of capture + positive delay.

    A positive ``drift_ppm`` makes the sensor clock slow: the node clock advances (1 + drift) per
    sensor second. Returns the list of (index, result) where ``observe`` did not return None.
    """
    rng = np.random.default_rng(seed)
    out = []
    for i in range(int(seconds * rate_hz)):
        t = i / rate_hz
        capture = int(t * 1e9)
        if capture_shift is not None:
            capture += capture_shift(i)
        node = OFFSET_NS + int(t * (1 + drift_ppm * 1e-6) * 1e9)
        delay = min_delay_ms + rng.exponential(jitter_ms)
        if spikes and rng.random() < spikes:
            delay += rng.uniform(20, 200)
        receive = node + int(delay * 1e6)
        if receive_hold is not None:
            receive = max(receive, receive_hold(i, node))
        r = tracker.observe(capture, receive)
        if r is not None:
            out.append((i, r))
    return out


def test_constant_offset_with_jitter():
    tr = ClockTracker("cam0", expected_period_ns=33_333_333)
    assert tr.summary()["offset_ms"] is None and tr.observe(0, OFFSET_NS) is None
    tr = ClockTracker("cam0", expected_period_ns=33_333_333)
    assert feed(tr, spikes=0.03) == []
    s = tr.summary()
    # the lower envelope: the offset plus the least transport delay (0.5 ms), not the mean delay
    assert abs(s["offset_ms"] - (OFFSET_NS / 1e6 + 0.5)) < 0.2
    assert abs(s["drift_ppm"]) < 2.0
    assert s["jumps"] == 0 and s["samples"] == 3600
    assert 0.5 < s["delay_excess_ms_p50"] < 3.0


@pytest.mark.parametrize("drift_ppm", [50.0, -50.0])
def test_drift_recovered_within_5_ppm(drift_ppm):
    tr = ClockTracker("radar0", expected_period_ns=50_000_000)
    assert feed(tr, rate_hz=20, drift_ppm=drift_ppm, jitter_ms=3.0, spikes=0.05, seed=3) == []
    s = tr.summary()
    assert abs(s["drift_ppm"] - drift_ppm) < 5.0
    # after 120 s the offset has moved by drift * 120 s = 6 ms; the envelope follows it
    expected_ms = OFFSET_NS / 1e6 + 0.5 + drift_ppm * 1e-6 * (119.95 * 1e3)
    assert abs(s["offset_ms"] - expected_ms) < 0.3
    t_cap = int(119.95e9)
    assert abs(tr.to_receive_ns(t_cap) - (t_cap + int(expected_ms * 1e6))) < 300_000


def test_looped_file_is_one_jump():
    """A 60 s file played twice: capture time restarts at 0 once while receive time goes on."""
    tr = ClockTracker("cam0", expected_period_ns=33_333_333)
    events = feed(tr, seconds=100, capture_shift=lambda i: -60_000_000_000 if i >= 1800 else 0)
    assert events == [(1800, "jump")]
    s = tr.summary()
    assert s["jumps"] == 1
    assert abs(s["offset_ms"] - (OFFSET_NS / 1e6 + 60_000 + 0.5)) < 0.3  # re-based onto the new relation


def test_forward_jump_is_one_jump():
    tr = ClockTracker("mic0", expected_period_ns=20_000_000)
    events = feed(tr, seconds=60, rate_hz=50, capture_shift=lambda i: 3_000_000_000 if i >= 1000 else 0)
    assert events == [(1000, "jump")]


def test_device_restart_with_a_new_clock_is_confirmed_then_one_jump():
    """Capture time moves back by less than a loop would (a restarted device): d rises and stays up."""
    tr = ClockTracker("radar0", expected_period_ns=100_000_000, jump_threshold_ms=500)
    events = feed(tr, seconds=60, rate_hz=10, capture_shift=lambda i: -2_000_000_000 if i >= 300 else 0,
                  jitter_ms=1.0)
    # capture went backwards by 2 s > threshold: immediate
    assert events == [(300, "jump")]
    tr = ClockTracker("radar0", expected_period_ns=100_000_000, jump_threshold_ms=500)
    # receive time leaps ahead by 5 s (the sensor clock paused): confirmed after 3 messages at the new level
    events = feed(tr, seconds=60, rate_hz=10, receive_hold=lambda i, node: node + 5_000_000_000 if i >= 300 else 0,
                  jitter_ms=1.0)
    assert events == [(302, "jump")]
    assert tr.summary()["jumps"] == 1


def test_a_stall_is_a_delay_not_a_jump():
    """The node stalls for 3 s: messages pile up and arrive together; the clocks did not change."""
    tr = ClockTracker("cam0", expected_period_ns=33_333_333)
    stall_end = OFFSET_NS + 33 * 10**9

    def hold(i, node):
        return stall_end if 900 <= i < 990 else 0

    events = feed(tr, seconds=80, receive_hold=hold)
    assert events == []
    s = tr.summary()
    assert s["jumps"] == 0 and s["late"] > 0
    assert abs(s["offset_ms"] - (OFFSET_NS / 1e6 + 0.5)) < 0.3


def test_reset_forgets_the_relation_but_keeps_counters():
    tr = ClockTracker("cam0")
    feed(tr, seconds=5, capture_shift=lambda i: -10**12 if i >= 100 else 0)
    assert tr.jumps == 1
    tr.reset()
    assert tr.offset_ns is None and tr.jumps == 1 and tr.samples == 150
    assert tr.observe(5, 10) is None and tr.offset_ns == 5


def test_observe_is_cheap():
    import time

    tr = ClockTracker("mic0", expected_period_ns=20_000_000)
    t0 = time.perf_counter()
    feed(tr, seconds=200, rate_hz=50)
    per_call_us = (time.perf_counter() - t0) / 10_000 * 1e6
    assert per_call_us < 200  # includes the simulation itself
