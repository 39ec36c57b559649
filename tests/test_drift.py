"""Alerts that must last: the drift monitor on bound modality pairs and a sustained ``modalities_disagree``.

Unit tests drive the pure monitors with chosen similarities; core tests drive a fusion core with
the fake runtime (``tests/fake_runtime.py``), turning the radar's embedding away from the
camera's by a chosen angle, or forcing the head's consistency, for a chosen stretch of time.
"""

from __future__ import annotations

import numpy as np
import pytest

from fusion_node.alerts import DisagreementMonitor, Sustained
from fusion_node.config import AlertsConfig, config_from_dict
from fusion_node.core import FusionCore
from fusion_node.drift import MIN_BASELINE, DriftMonitor
from fusion_node.vocabulary import BOUND_PAIRS, MODALITIES

from .fake_runtime import FakeRuntime
from .test_core_runtime import KIND, MS, T0, Clock, Feed

SET_NS = 100 * MS  # sets every 100 ms, as a 10 fps camera makes them


def _unit(angle: float, dim: int = 8) -> np.ndarray:
    v = np.zeros(dim, np.float32)
    v[0], v[7] = np.cos(angle), np.sin(angle)
    return v[None, :]


def _similarities(monitor: DriftMonitor, sims: list[float], t0: int = 0) -> list[bool]:
    """Feed camera/radar embeddings with these cosines, one set every 100 ms; the alert after each."""
    return [monitor.update(t0 + i * SET_NS, {"camera": _unit(0.0), "radar": _unit(float(np.arccos(s))),
                                             "audio": _unit(1.0)})
            for i, s in enumerate(sims)]


CFG = AlertsConfig(drift_fraction=0.15, drift_sustain_s=5.0, drift_warmup_sets=30, drift_clear_s=2.0)


def test_only_declared_pairs_are_watched():
    assert BOUND_PAIRS == (("camera", "radar"),)
    assert all(a in MODALITIES and b in MODALITIES for a, b in BOUND_PAIRS)
    monitor = DriftMonitor(BOUND_PAIRS, CFG)
    _similarities(monitor, [0.8] * 40)
    assert list(monitor.summary()) == ["camera-radar"]


def test_a_sustained_fall_of_20_percent_fires_and_recovery_clears():
    monitor = DriftMonitor(BOUND_PAIRS, CFG)
    warm = _similarities(monitor, [0.8] * 30)
    assert not any(warm) and monitor.summary()["camera-radar"]["baseline"] == pytest.approx(0.8, abs=1e-4)
    fallen = _similarities(monitor, [0.64] * 80, t0=30 * SET_NS)  # 20 % below the baseline for 8 s
    first = fallen.index(True)
    # The smoothing (median of 5) needs 3 fallen sets, then 5 s of them: about 5.2 s after onset.
    assert 5.0 <= first * 0.1 <= 5.6 and all(fallen[first:])
    back = _similarities(monitor, [0.8] * 40, t0=110 * SET_NS)
    cleared = back.index(False)
    assert 2.0 <= cleared * 0.1 <= 2.6 and not any(back[cleared:])
    assert monitor.summary()["camera-radar"]["fired"] == 1


@pytest.mark.parametrize("sims, why", [
    pytest.param([0.72] * 100, "a 10 % fall is within the normal band", id="fall-10pct"),
    pytest.param([0.64] * 40 + [0.8] * 60, "a 4 s dip is shorter than the 5 s sustain", id="short-dip"),
    pytest.param([0.64, 0.64, 0.8, 0.8, 0.8] * 20, "odd sets are smoothed away", id="odd-sets"),
])
def test_no_drift_from_a_small_fall_a_short_dip_or_odd_sets(sims, why):
    monitor = DriftMonitor(BOUND_PAIRS, CFG)
    _similarities(monitor, [0.8] * 30)
    assert not any(_similarities(monitor, sims, t0=30 * SET_NS)), why


def test_the_baseline_is_the_warmup_median_and_then_frozen():
    monitor = DriftMonitor(BOUND_PAIRS, CFG)
    # A few odd sets during warm-up do not move the median.
    _similarities(monitor, [0.8] * 25 + [0.1] * 5)
    assert monitor.summary()["camera-radar"]["baseline"] == pytest.approx(0.8, abs=1e-4)
    # A slow decline is not followed by the baseline: it ends in an alert.
    decline = list(np.linspace(0.8, 0.6, 200)) + [0.6] * 60
    assert any(_similarities(monitor, decline, t0=30 * SET_NS))
    assert monitor.summary()["camera-radar"]["baseline"] == pytest.approx(0.8, abs=1e-4)


def test_sets_without_both_modalities_do_not_count_and_an_unaligned_pair_never_alerts():
    monitor = DriftMonitor(BOUND_PAIRS, CFG)
    for i in range(40):
        monitor.update(i * SET_NS, {"camera": _unit(0.0), "radar": None, "audio": _unit(0.0)})
    assert monitor.summary()["camera-radar"]["warmup_left"] == 30
    _similarities(monitor, [MIN_BASELINE / 2] * 30)  # never aligned: an untrained pair
    assert not any(_similarities(monitor, [-0.5] * 100, t0=30 * SET_NS))


def test_sustained_needs_an_unbroken_watched_run():
    state = Sustained(sustain_s=1.0, clear_s=0.5, max_gap_s=0.5)
    assert not any(state.update(i * SET_NS, True) for i in range(10))  # 0.9 s: not yet
    assert state.update(10 * SET_NS, True)
    state.reset()
    # A 2 s stretch with no sets in the middle breaks the run: what was not seen did not hold.
    assert not any(state.update(t, True) for t in (0, 5 * SET_NS, 25 * SET_NS, 30 * SET_NS))
    # Time going back (a restarted timeline) breaks it too.
    state.reset()
    assert not any(state.update(t, True) for t in (0, 6 * SET_NS, 2 * SET_NS, 8 * SET_NS))


def test_disagreement_needs_two_present_and_a_sustained_low_consistency():
    cfg = AlertsConfig(disagree_sustain_s=1.5, disagree_clear_s=1.0)
    mon = DisagreementMonitor(cfg)
    out = [mon.update(i * SET_NS, 0.2, 0.5, 2) for i in range(30)]
    assert out.index(True) == 15 and all(out[15:])
    out = [mon.update((30 + i) * SET_NS, 0.9, 0.5, 2) for i in range(20)]
    assert out.index(False) == 10
    mon = DisagreementMonitor(cfg)
    assert not any(mon.update(i * SET_NS, 0.0, 0.5, 1) for i in range(50))  # one modality: no contradiction
    # Flickering consistency (one set in two agrees) never sustains.
    assert not any(mon.update(i * SET_NS, 0.2 if i % 2 else 0.9, 0.5, 3) for i in range(50))


# --------------------------------------------------------------------------- through the core


def _core(fake: FakeRuntime, clock: Clock, **alerts) -> FusionCore:
    cfg = config_from_dict({
        "rig": "r1", "sensors": [{"id": s, "kind": k, "endpoint": f"inproc://{s}"} for s, k in KIND.items()],
        "sync": {"deadline_ms": 100}, "alerts": alerts,
        "faults": {"enabled": False}})  # a constant synthetic feed is what faulty sensors send
    return FusionCore(cfg, fake, timer=clock)


@pytest.fixture
def feed() -> Feed:
    return Feed([np.full((8, 8, 3), 40, np.uint8)], [np.ones((3, 6), np.float32)], np.full(3200, 0.1, np.float32),
                16000)


def _turn_radar(fake: FakeRuntime, cosine: float) -> None:
    angle = float(np.arccos(cosine))
    v = np.zeros(fake.embedding_dim, np.float32)
    v[0], v[7] = np.cos(angle), np.sin(angle)  # dimension 7: away from where inputs nudge embeddings
    fake.directions["radar"] = v


@pytest.mark.parametrize("fall, seconds, fires", [
    pytest.param(0.20, 4.0, True, id="20pct-sustained"),
    pytest.param(0.10, 4.0, False, id="10pct-sustained"),
    pytest.param(0.20, 1.0, False, id="20pct-short-dip"),
])
def test_the_core_raises_drift_on_a_sustained_fall_of_camera_radar_similarity(feed, fall, seconds, fires):
    fake = FakeRuntime()
    clock = Clock()
    core = _core(fake, clock, drift_warmup_sets=10, drift_sustain_s=2.0)
    warm = feed.drive(core, clock, T0, 2.0)
    baseline = core.stats(clock.t, 1.0)["alignment"]["camera-radar"]["baseline"]
    assert baseline > 0.9 and not any("drift" in e["alerts"] for e in warm)
    _turn_radar(fake, 1 - fall)
    events = feed.drive(core, clock, T0 + 2000 * MS, seconds)
    _turn_radar(fake, 1.0)
    events += feed.drive(core, clock, T0 + int((2 + seconds) * 1000) * MS, 1.0)
    sim = core.stats(clock.t, 1.0)["alignment"]["camera-radar"]
    assert sim["baseline"] == baseline  # frozen after warm-up
    low = [e for e in events if e["t_ref_ns"] < T0 + int((2 + seconds) * 1000) * MS]
    assert ("drift" in low[-1]["alerts"]) is fires
    assert any("drift" in e["alerts"] for e in events) is fires
    assert all("modalities_disagree" not in e["alerts"] for e in events)  # consistency is the head's business


def test_the_measured_fall_is_the_one_the_test_means(feed):
    fake = FakeRuntime()
    clock = Clock()
    core = _core(fake, clock, drift_warmup_sets=10)
    feed.drive(core, clock, T0, 2.0)
    _turn_radar(fake, 0.8)
    feed.drive(core, clock, T0 + 2000 * MS, 1.0)
    sim = core.stats(clock.t, 1.0)["alignment"]["camera-radar"]
    assert sim["similarity"] / sim["baseline"] == pytest.approx(0.8, abs=0.02)


@pytest.mark.parametrize("seconds, fires", [(1.0, False), (2.5, True)])
def test_the_core_raises_modalities_disagree_only_when_sustained(feed, seconds, fires):
    fake = FakeRuntime(consistency_threshold=0.5)
    clock = Clock()
    core = _core(fake, clock, disagree_sustain_s=1.5, disagree_clear_s=1.0)
    before = feed.drive(core, clock, T0, 1.0)
    fake.forced_consistency = 0.2
    low = feed.drive(core, clock, T0 + 1000 * MS, seconds)
    fake.forced_consistency = None
    after = feed.drive(core, clock, T0 + int((1 + seconds) * 1000) * MS, 2.0)
    assert not any("modalities_disagree" in e["alerts"] for e in before)
    flagged = [e["t_ref_ns"] for e in low if "modalities_disagree" in e["alerts"]]
    assert bool(flagged) is fires
    if fires:
        onset = min(e["t_ref_ns"] for e in low if e["consistency"] < 0.5)
        assert 1.5e9 <= flagged[0] - onset <= 1.7e9
        # Cleared with hysteresis: still on just after agreement returned, off a second later.
        assert "modalities_disagree" in after[0]["alerts"] and "modalities_disagree" not in after[-1]["alerts"]
    else:
        assert not any("modalities_disagree" in e["alerts"] for e in after)
