"""Labels that do not flicker: smoothing over sets with hysteresis, alone and through the core."""

from __future__ import annotations

import numpy as np
import pytest

from fusion_node.config import LabelsConfig, config_from_dict, config_schema
from fusion_node.core import FusionCore
from fusion_node.labels import LabelSmoother
from fusion_node.vocabulary import CLASSES

from .fake_runtime import FakeRuntime, logit
from .test_core_runtime import KIND, MS, T0, Clock, Feed

ONE = ("person",)


def _run(cfg: LabelsConfig, sequence: list[float], threshold: float = 0.5) -> list[bool]:
    smoother = LabelSmoother(ONE, {"person": threshold}, cfg)
    return [bool(smoother.update([p])[1]) for p in sequence]


def _flips(states: list[bool]) -> int:
    return sum(a != b for a, b in zip(states, states[1:]))


def test_a_probability_flickering_around_the_threshold_gives_one_steady_label():
    flicker = [0.56, 0.46] * 20
    raw = _run(LabelsConfig(smoothing=False), flicker)
    assert _flips(raw) == 39  # without smoothing the label follows every frame
    smoothed = _run(LabelsConfig(), flicker)
    assert smoothed[0] and _flips(smoothed) == 0


def test_a_label_turns_off_only_below_the_release_level():
    cfg = LabelsConfig(smoothing_sets=1, release_ratio=0.8, min_on_sets=1)
    # On at 0.5; 0.45 and 0.41 are under the threshold but above the release level 0.4: held.
    assert _run(cfg, [0.3, 0.5, 0.45, 0.41, 0.39, 0.45, 0.5]) == [False, True, True, True, False, False, True]


def test_a_label_that_turned_on_is_held_for_min_on_sets():
    cfg = LabelsConfig(smoothing_sets=1, release_ratio=1.0, min_on_sets=4)
    assert _run(cfg, [0.9, 0.1, 0.1, 0.1, 0.1, 0.1]) == [True, True, True, True, False, False]


def test_a_single_spike_is_smoothed_away_and_a_real_onset_is_not():
    cfg = LabelsConfig(smoothing_sets=3)
    assert not any(_run(cfg, [0.1, 0.1, 0.9, 0.1, 0.1, 0.1]))
    states = _run(cfg, [0.1, 0.1, 0.9, 0.9, 0.9, 0.9])
    assert states == [False, False, False, True, True, True]


def test_smoothed_probabilities_are_the_mean_of_the_last_sets_and_reset_forgets_them():
    smoother = LabelSmoother(("person", "dog"), {"person": 0.5, "dog": 0.5}, LabelsConfig(smoothing_sets=2))
    smoother.update([0.2, 0.9])
    smoothed, on = smoother.update([0.6, 0.9])
    assert smoothed == pytest.approx({"person": 0.4, "dog": 0.9}) and on == ["dog"]
    smoother.reset()
    smoothed, on = smoother.update([0.6, 0.1])
    assert smoothed == pytest.approx({"person": 0.6, "dog": 0.1}) and on == ["person"]
    with pytest.raises(ValueError, match="expected 2 probabilities"):
        smoother.update([0.5])


def test_the_labels_section_is_in_the_config_schema_and_validated():
    defs = config_schema()["$defs"]
    assert {"smoothing", "smoothing_sets", "release_ratio", "min_on_sets"} <= set(defs["LabelsConfig"]["properties"])
    assert {"drift_fraction", "drift_sustain_s", "drift_warmup_sets", "disagree_sustain_s"} <= set(
        defs["AlertsConfig"]["properties"])


class FlickerRuntime(FakeRuntime):
    """The fake runtime whose ``person`` probability follows a sequence, one value per fused set."""

    def __init__(self, sequence: list[float]):
        super().__init__(audio_window_s=0.2)
        self.sequence = sequence

    def fuse(self, embeddings):
        p = self.sequence[min(self.calls["fuse"], len(self.sequence) - 1)]
        self.logits[CLASSES.index("person")] = logit(p)
        return super().fuse(embeddings)


@pytest.mark.parametrize("smoothing", [False, True])
def test_the_core_reports_raw_scores_and_steady_smoothed_labels(smoothing):
    runtime = FlickerRuntime([0.56, 0.46] * 40)
    clock = Clock()
    cfg = config_from_dict({
        "rig": "r1", "sensors": [{"id": s, "kind": k, "endpoint": f"inproc://{s}"} for s, k in KIND.items()],
        "sync": {"deadline_ms": 100}, "labels": {"smoothing": smoothing},
        "faults": {"enabled": False}})  # a constant synthetic feed is what faulty sensors send
    core = FusionCore(cfg, runtime, timer=clock)
    feed = Feed([np.full((8, 8, 3), 40, np.uint8)], [np.ones((3, 6), np.float32)], np.full(3200, 0.1, np.float32),
                16000)
    events = [e for e in feed.drive(core, clock, T0, 4.0) if e["scores"] is not None]
    assert len(events) >= 30
    person = [any(d["label"] == "person" for d in e["labels"]) for e in events]
    raw = [e["scores"]["person"] for e in events]
    assert _flips([p >= 0.5 for p in raw]) >= 25  # the head's output does flicker, and is reported as is
    if smoothing:
        assert _flips(person) == 0 and all(person)
        assert all(e["smoothed"]["person"] == pytest.approx(np.mean([0.56, 0.46, 0.56]), abs=0.04) for e in events[2:])
        label = next(d for d in events[-1]["labels"] if d["label"] == "person")
        assert label["score"] == events[-1]["smoothed"]["person"]
    else:
        assert person == [p >= 0.5 for p in raw]


def test_labels_start_afresh_after_the_rigs_sets_stop_for_seconds():
    runtime = FakeRuntime(audio_window_s=0.2)
    clock = Clock()
    cfg = config_from_dict({
        "rig": "r1", "sensors": [{"id": s, "kind": k, "endpoint": f"inproc://{s}", "liveness_timeout_s": 0.5}
                                 for s, k in KIND.items()],
        "sync": {"deadline_ms": 100}, "faults": {"enabled": False}})
    core = FusionCore(cfg, runtime, timer=clock)
    feed = Feed([np.full((8, 8, 3), 40, np.uint8)], [np.ones((3, 6), np.float32)], np.full(3200, 0.1, np.float32),
                16000)
    runtime.set_probabilities({"person": 0.9})
    assert "person" in [d["label"] for d in feed.drive(core, clock, T0, 2.0)[-1]["labels"]]
    # Between the release level (0.4) and the threshold (0.5): a label that is on stays on...
    runtime.set_probabilities({"person": 0.45})
    held = feed.drive(core, clock, T0 + 2000 * MS, 1.0)
    assert all("person" in [d["label"] for d in e["labels"]] for e in held)
    # ...but after 3 s without sets (the rig's sensors stopped) nothing carries over.
    after = feed.drive(core, clock, T0 + 6000 * MS, 1.0)
    assert after and all("person" not in [d["label"] for d in e["labels"]] and e["smoothed"]["person"] == 0.45
                         for e in after if e["scores"])
