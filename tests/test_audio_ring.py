"""Audio ring: windows ending at any time, jitter absorbed, gaps marked, clock jumps re-based."""

from __future__ import annotations

import numpy as np

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
