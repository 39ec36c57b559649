"""Audio ring: windows ending at any time, jitter absorbed, gaps marked, clock jumps re-based."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from fusion_node.audio_ring import AudioRing

RATE = 16000
CHUNK = 320  # 20 ms
NS = 20_000_000


def _ramp(i):
    return (np.arange(CHUNK, dtype=np.float32) + i * CHUNK) / 1e5


def test_window_ending_at_a_time_returns_exactly_those_samples():
    ring = AudioRing(RATE, 4.0)
    t0 = 1_000_000_000
    for i in range(100):
        ring.write(t0 + i * NS, _ramp(i))
    end = t0 + 50 * NS  # just after chunk 49
    w = ring.window(end, 0.1)
    assert w.coverage == 1.0
    expected = np.arange(50 * CHUNK - 1600, 50 * CHUNK, dtype=np.float32) / 1e5
    np.testing.assert_allclose(w.samples, expected)


def test_window_beyond_the_newest_sample_is_partly_covered():
    ring = AudioRing(RATE, 4.0)
    ring.write(0, np.ones(16000, dtype=np.float32))  # one second from t=0
    w = ring.window(1_500_000_000, 1.0)
    assert abs(w.coverage - 0.5) < 1e-3
    assert w.samples[:8000].sum() == 8000 and not w.samples[8000:].any()


def test_small_timestamp_jitter_keeps_the_stream_contiguous():
    ring = AudioRing(RATE, 4.0)
    rng = np.random.default_rng(1)
    for i in range(50):
        jitter = int(rng.integers(-2_000_000, 2_000_000))
        assert ring.write(i * NS + jitter + 10**9, _ramp(i)) is None
    assert ring.gaps == 0 and ring.rebases == 0


def test_gap_is_silence_marked_not_captured():
    ring = AudioRing(RATE, 4.0)
    ring.write(0, np.ones(CHUNK, np.float32))
    assert ring.write(100_000_000, np.ones(CHUNK, np.float32)) == "gap"  # 80 ms missing
    w = ring.window(120_000_000, 0.12)
    assert ring.gaps == 1
    assert abs(w.coverage - 40 / 120) < 0.01


def test_clock_jump_backwards_rebases():
    ring = AudioRing(RATE, 4.0)
    for i in range(10):
        ring.write(10**9 + i * NS, np.ones(CHUNK, np.float32))
    assert ring.write(5 * 10**8, np.full(CHUNK, 2.0, np.float32)) == "rebase"
    w = ring.window(5 * 10**8 + NS, 0.04)
    assert ring.rebases == 1
    assert abs(w.coverage - 0.5) < 1e-3 and (w.samples[CHUNK:] == 2.0).all()


def test_ring_wraps_and_forgets_old_audio():
    ring = AudioRing(RATE, 0.5)
    for i in range(100):
        ring.write(i * NS, _ramp(i))
    assert ring.window(10 * NS, 0.1).coverage == 0.0  # long gone
    assert ring.window(100 * NS, 0.4).coverage == 1.0


# -- the ring against its specification -----------------------------------------------------

SPEC_RATE = 1000  # a low rate keeps the unbounded timeline below small
SPEC_CAPACITY_S = 0.25
SPEC_TOLERANCE_NS = 3_000_000


class _Timeline:
    """What the ring must return, kept without a ring: every sample ever written, forever.

    Gap fill is silence marked invalid; a jump back marks all earlier samples invalid; a window
    sees only the newest ``capacity`` samples.
    """

    def __init__(self, capacity: int):
        self.capacity = capacity
        self.samples = np.zeros(0, np.float32)
        self.valid = np.zeros(0, bool)
        self.end_ns = None

    def _extend(self, samples, valid):
        self.samples = np.concatenate([self.samples, samples])
        self.valid = np.concatenate([self.valid, np.full(len(samples), valid)])

    def write(self, t_ns, samples):
        event = None
        if self.end_ns is not None:
            delta = t_ns - self.end_ns
            if delta > SPEC_TOLERANCE_NS:
                self._extend(np.zeros(int(round(delta * SPEC_RATE / 1e9)), np.float32), False)
                self.end_ns, event = t_ns, "gap"
            elif delta < -SPEC_TOLERANCE_NS:
                self.valid[:] = False
                self.end_ns, event = None, "rebase"
        if self.end_ns is None:
            self.end_ns = t_ns
        self._extend(samples, True)
        self.end_ns += int(round(len(samples) * 1e9 / SPEC_RATE))
        return event

    def window(self, t_end_ns, duration_s):
        n = int(round(duration_s * SPEC_RATE))
        out = np.zeros(n, np.float32)
        if self.end_ns is None or n == 0:
            return out, 0.0
        written = len(self.samples)
        stop = written - int(round((self.end_ns - t_end_ns) * SPEC_RATE / 1e9))
        covered = 0
        for i in range(max(stop - n, written - self.capacity, 0), min(stop, written)):
            if self.valid[i]:
                out[i - (stop - n)] = self.samples[i]
                covered += 1
        return out, covered / n


# One operation: a chunk written some ms after (or before) the ring's end, mostly within the
# jitter tolerance, else a gap (up to more than twice the capacity) or a jump back; or a window cut.
_offset_ms = st.one_of(st.integers(-3, 3), st.integers(-3, 3), st.integers(-400, 600))
_write = st.tuples(st.just("write"), _offset_ms, st.integers(0, 400))
_window = st.tuples(st.just("window"), st.integers(-400, 100), st.integers(0, 400))


@settings(max_examples=300, deadline=None)
@given(st.lists(st.one_of(_write, _write, _write, _window), min_size=1, max_size=60), st.integers(0, 2**32))
def test_windows_and_events_match_the_specification(ops, seed):
    """Random chunk sizes (up to more than the capacity) and timing wrap the storage many times;
    every window and every write's event equals the unbounded timeline's."""
    rng = np.random.default_rng(seed)
    ring = AudioRing(SPEC_RATE, SPEC_CAPACITY_S, jitter_tolerance_ns=SPEC_TOLERANCE_NS)
    spec = _Timeline(ring.capacity)
    t_ms = 10_000
    for op, offset_ms, size in ops:
        if op == "write":
            if spec.end_ns is not None:
                t_ms = spec.end_ns // 1_000_000 + offset_ms
            chunk = rng.uniform(-1, 1, size).astype(np.float32)
            assert ring.write(t_ms * 1_000_000, chunk) == spec.write(t_ms * 1_000_000, chunk)
        else:
            t_end = (spec.end_ns or 0) + offset_ms * 1_000_000
            got = ring.window(t_end, size / SPEC_RATE)
            want, coverage = spec.window(t_end, size / SPEC_RATE)
            np.testing.assert_array_equal(got.samples, want)
            assert got.coverage == coverage
        assert ring.end_ns == spec.end_ns


def test_window_across_the_end_of_storage_joins_both_parts():
    ring = AudioRing(SPEC_RATE, SPEC_CAPACITY_S)  # 250 samples
    for i in range(7):  # 350 samples: the newest 200 lie at storage 150..250 then 0..100
        ring.write(i * 50_000_000, np.arange(i * 50, i * 50 + 50, dtype=np.float32))
    w = ring.window(ring.end_ns, 0.2)
    np.testing.assert_array_equal(w.samples, np.arange(150, 350, dtype=np.float32))
    assert w.coverage == 1.0
