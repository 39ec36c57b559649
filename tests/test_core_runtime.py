"""The fusion core with a model loaded: labels, thresholds, alerts, certainty and weights, the audio rate.

The shipped model (``models/default``) runs on the bundled recordings for real end-to-end
steps; copies of it with an edited manifest show that thresholds come from the manifest. The
fake runtime (``tests/fake_runtime.py``) puts probabilities and consistency exactly where a test
needs them, on either side of a threshold.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest

from fusion_node.config import config_from_dict
from fusion_node.core import FusionCore
from fusion_node.cpu_runtime import ModelRuntime
from fusion_node.preprocess import pool_radar_frames
from fusion_node.runtime import HeadOutput, Runtime
from fusion_node.vocabulary import CLASSES, MODALITIES, WIRE_AUDIO_RATE_HZ
from fusion_node.wire import AudioChunk, CameraFrame, RadarPoints
from sensors.audio import load_audio_file
from sensors.samples import DEFAULT_CAMERA, DEFAULT_RADAR
from sensors.ti_mmwave import read_capture

from .conftest import ROOT, SAMPLES
from .fake_runtime import FakeRuntime

MS = 1_000_000
T0 = 10_000 * MS
DEFAULT = ROOT / "models" / "default" / "manifest.json"
KIND = {"cam0": "camera", "radar0": "radar", "mic0": "audio"}


class Clock:
    """The core's timer, moved by the test."""

    def __init__(self) -> None:
        self.t = T0

    def __call__(self) -> int:
        return self.t


class Feed:
    """Sensor data for a rig: camera images and radar frames (cycled), and mono audio at ``rate``."""

    def __init__(self, images: list[np.ndarray], radar: list[np.ndarray], audio: np.ndarray, rate: int):
        self.images, self.radar, self.audio, self.rate = images, radar, audio, rate

    def drive(self, core: FusionCore, clock: Clock, t_from_ns: int, seconds: float,
              silent: tuple[str, ...] = ()) -> list[dict]:
        """Camera and radar every 100 ms (radar 5 ms later), audio in 20 ms chunks; returns the events.

        Sensors named in ``silent`` send nothing. Sequence numbers and audio follow the capture
        time, so a later call continues the same streams.
        """
        events = []
        chunk = self.rate // 50
        for i in range(int(round(seconds * 50))):
            t = t_from_ns + i * 20 * MS
            k = (t - T0) // (20 * MS)  # index of this 20 ms step since T0
            msgs = []
            if "mic0" not in silent:
                start = k * chunk % (len(self.audio) - chunk)
                msgs.append(AudioChunk("mic0", k, t, t, self.audio[start:start + chunk], self.rate))
            if k % 5 == 0:
                n = k // 5
                if "cam0" not in silent:
                    msgs.append(CameraFrame("cam0", n, t, t, self.images[n % len(self.images)]))
                if "radar0" not in silent:
                    msgs.append(RadarPoints("radar0", n, t + 5 * MS, t + 5 * MS, self.radar[n % len(self.radar)]))
            clock.t = t + 21 * MS
            events += core.step(clock.t, [(clock.t, m) for m in msgs])
        return events


# Labels and alerts of each set on its own, as the head gives them: no smoothing, nothing to sustain.
PER_SET = {"labels": {"smoothing": False}, "alerts": {"disagree_sustain_s": 0, "disagree_clear_s": 0}}


def _core(runtime: Runtime | None, clock: Clock, faults: bool = True, **sections) -> FusionCore:
    """A core for the test rig; ``faults=False`` for constant synthetic feeds, which faulty sensors would send."""
    cfg = config_from_dict({
        "rig": "r1",
        "sensors": [{"id": sid, "kind": kind, "endpoint": f"inproc://{sid}", "liveness_timeout_s": 0.5}
                    for sid, kind in KIND.items()],
        "sync": {"deadline_ms": 100},
        "lifecycle": {"sensor_grace_s": 0},  # a sensor never heard from fails after its liveness timeout
        **sections,
        "faults": {"enabled": faults},
    })
    return FusionCore(cfg, runtime, timer=clock)


class RecordingRuntime(ModelRuntime):
    """The shipped runtime, keeping every head output it returns (one per event, in order)."""

    def __init__(self, manifest: Path) -> None:
        super().__init__(manifest, provider="cpu")
        self.heads: list[HeadOutput] = []

    def fuse(self, embeddings):
        out = super().fuse(embeddings)
        self.heads.append(out)
        return out


@pytest.fixture(scope="module")
def recordings() -> Feed:
    """The bundled recordings: the street video, the simulated radar capture, a truck pulling away."""
    cap = cv2.VideoCapture(str(DEFAULT_CAMERA))
    images = []
    while len(images) < 30:
        ok, image = cap.read()
        assert ok, "the sample video is shorter than 3 s"
        images.append(image)
    cap.release()
    radar = [np.asarray(f.points, np.float32) for f in
             read_capture(DEFAULT_RADAR)]
    audio = load_audio_file(SAMPLES / "audio" / "engine_truck_start_pullaway_opensfx25_CC0.wav").astype(np.float32)
    return Feed(images, radar, audio, WIRE_AUDIO_RATE_HZ)


@pytest.fixture(scope="module")
def shipped() -> RecordingRuntime:
    return RecordingRuntime(DEFAULT)


def _edited_bundle(tmp_path: Path, edit) -> Path:
    """A copy of the shipped bundle whose manifest ``edit(dict)`` changed (model files untouched)."""
    dst = tmp_path / "bundle"
    shutil.copytree(DEFAULT.parent, dst)
    data = json.loads((dst / "manifest.json").read_text())
    edit(data)
    (dst / "manifest.json").write_text(json.dumps(data))
    return dst / "manifest.json"


def _with_model(events: list[dict]) -> list[dict]:
    return [e for e in events if e["scores"] is not None]


# --------------------------------------------------------------------------- the shipped model


def test_events_report_what_the_shipped_model_computed(shipped, recordings):
    manifest = json.loads(DEFAULT.read_text())
    clock = Clock()
    shipped.heads.clear()
    events = recordings.drive(_core(shipped, clock, **PER_SET), clock, T0, 3.0)
    assert len(events) >= 25 and len(shipped.heads) == len(events)
    labelled, unlabelled = set(), set()
    for ev, head in zip(events, shipped.heads):
        assert ev["model"] == {"name": manifest["name"], "trained": True, "provider": "CPUExecutionProvider"}
        probabilities = dict(zip(manifest["classes"], head.probabilities.tolist()))
        assert ev["scores"] == {c: round(p, 4) for c, p in probabilities.items()}
        # A label iff the probability reaches the manifest's threshold for its class, highest first.
        want = [c for c, p in probabilities.items() if p >= manifest["thresholds"][c]]
        assert [d["label"] for d in ev["labels"]] == sorted(want, key=lambda c: -probabilities[c])
        labelled |= set(want)
        unlabelled |= set(probabilities) - set(want)
        assert ev["consistency"] == round(head.consistency, 4)
        present = [m for m in MODALITIES if ev["modalities"][m]["present"]]
        assert head.present.tolist() == [float(m in present) for m in MODALITIES]
        for i, m in enumerate(MODALITIES):
            assert ev["modalities"][m]["certainty"] == round(float(head.certainty[i]), 4)
            assert ev["modalities"][m]["weight"] == round(float(head.weights[i]), 4)
        disagree = len(present) >= 2 and head.consistency < manifest["consistency_threshold"]
        assert ("modalities_disagree" in ev["alerts"]) == disagree
    # Both sides of the thresholds were seen (a person walks by; vehicle, dog... are not all there).
    assert labelled and unlabelled
    # The first windows hold too little audio: audio is missing there and gets no weight.
    first = events[0]
    assert first["missing"] == ["mic0"] and first["modalities"]["audio"] == {
        "sensor_id": "mic0", "present": False, "coverage": first["modalities"]["audio"]["coverage"],
        "certainty": 0.0, "weight": 0.0}
    # People on camera and on radar, a street heard: the bundled recordings agree.
    assert events[-1]["missing"] == [] and "modalities_disagree" not in events[-1]["alerts"]


def test_the_core_hands_the_model_what_arrived(shipped, recordings):
    # The last event, recomputed by running the runtime directly on the same sensor data.
    clock = Clock()
    shipped.heads.clear()
    events = recordings.drive(_core(shipped, clock), clock, T0, 2.0)
    ev, head = events[-1], shipped.heads[-1]
    n = {m["sensor_id"]: m["seq"] for m in ev["members"]}
    t_ref = ev["t_ref_ns"]
    window = int(shipped.audio_window_s * recordings.rate)
    end = (t_ref - T0) * recordings.rate // 1_000_000_000
    # The radar window is the set's frame and the frames just before it, as many as the model reads.
    radar = [recordings.radar[k % len(recordings.radar)]
             for k in range(max(0, n["radar0"] + 1 - shipped.radar_frames), n["radar0"] + 1)]
    raw = {"camera": recordings.images[n["cam0"] % len(recordings.images)],
           "radar": pool_radar_frames(radar, shipped.radar_frames),
           "audio": recordings.audio[end - window:end]}
    direct = shipped.fuse({m: shipped.encode(m, *shipped.preprocess(m, raw[m])) for m in MODALITIES})
    np.testing.assert_allclose(head.logits, direct.logits, atol=1e-4)
    assert head.consistency == pytest.approx(direct.consistency, abs=1e-4)


@pytest.mark.parametrize("labelled", ["person", "vehicle"])
def test_thresholds_come_from_the_manifest(tmp_path, recordings, labelled):
    # Threshold 0 for one class, 1 for every other: that class is the only label, every time.
    def edit(d):
        d["thresholds"] = {c: 0.0 if c == labelled else 1.0 for c in d["classes"]}

    runtime = ModelRuntime(_edited_bundle(tmp_path, edit), provider="cpu")
    assert runtime.thresholds[labelled] == 0.0
    clock = Clock()
    events = _with_model(recordings.drive(_core(runtime, clock), clock, T0, 2.0))
    assert events and all([d["label"] for d in e["labels"]] == [labelled] for e in events)


@pytest.mark.parametrize("threshold", [-1.0, None, 1.0])
def test_disagreement_threshold_comes_from_the_manifest(tmp_path, recordings, threshold):
    def edit(d):
        if threshold is None:
            del d["consistency_threshold"]  # not calibrated: never alert
        else:
            d["consistency_threshold"] = threshold

    runtime = ModelRuntime(_edited_bundle(tmp_path, edit), provider="cpu")
    assert runtime.consistency_threshold == threshold
    clock = Clock()
    events = _with_model(recordings.drive(_core(runtime, clock, **PER_SET), clock, T0, 2.0))
    assert events
    for e in events:
        present = sum(m["present"] for m in e["modalities"].values())
        fires = threshold is not None and present >= 2 and e["consistency"] < threshold
        assert ("modalities_disagree" in e["alerts"]) == fires


def test_a_dead_sensor_alerts_and_gets_no_weight(shipped, recordings):
    clock = Clock()
    core = _core(shipped, clock)
    recordings.drive(core, clock, T0, 1.5)
    events = recordings.drive(core, clock, T0 + 1500 * MS, 1.5, silent=("radar0",))
    late = [e for e in events if e["t_ref_ns"] > T0 + 2200 * MS]
    assert late
    for ev in late:
        assert ev["missing"] == ["radar0"] and ev["alerts"][0] == "sensor_failed:radar0"
        radar = ev["modalities"]["radar"]
        assert radar["present"] is False and radar["weight"] == 0.0 and radar["certainty"] == 0.0
        assert ev["modalities"]["camera"]["weight"] + ev["modalities"]["audio"]["weight"] == pytest.approx(1, abs=2e-4)
        assert ev["modalities"]["camera"]["certainty"] > 0 and ev["modalities"]["audio"]["certainty"] > 0
    # Before the liveness timeout ran out no sensor_failed alert was raised.
    assert not any(a.startswith("sensor_failed") for e in events if e["t_ref_ns"] < T0 + 1600 * MS
                   for a in e["alerts"])


# --------------------------------------------------------------------------- the audio rate


def test_audio_is_admitted_at_the_models_rate_only(shipped):
    clock = Clock()
    core = _core(shipped, clock)
    assert core.audio_rate_hz == shipped.audio_sample_rate_hz == 16000
    chunks = [AudioChunk("mic0", 0, T0, T0, np.zeros(320, np.float32), 16000),
              AudioChunk("mic0", 1, T0 + 20 * MS, T0 + 20 * MS, np.zeros(882, np.float32), 44100)]
    core.step(T0 + 50 * MS, [(T0 + 50 * MS, c) for c in chunks])
    st = core.sensors["mic0"]
    assert st.accepted == 1 and st.rejected == {"bad_header": 1}


def test_a_model_at_another_rate_sets_the_rate_the_core_admits():
    fake = FakeRuntime(audio_sample_rate_hz=8000, audio_window_s=0.2)
    clock = Clock()
    core = _core(fake, clock, faults=False)
    feed = Feed([np.zeros((8, 8, 3), np.uint8)], [np.zeros((2, 6), np.float32)],
                np.full(8000, 0.1, np.float32), 8000)
    events = feed.drive(core, clock, T0, 1.0)
    assert core.sensors["mic0"].accepted == 50 and not core.sensors["mic0"].rejected
    # 8 kHz windows are complete: audio is present and encoded.
    assert events[-1]["modalities"]["audio"]["coverage"] == 1.0 and events[-1]["missing"] == []
    assert fake.calls["encode_audio"] >= 1
    core.step(clock.t, [(clock.t, AudioChunk("mic0", 50, clock.t - MS, clock.t - MS,
                                              np.zeros(320, np.float32), 16000))])
    assert core.sensors["mic0"].rejected == {"bad_header": 1}


# --------------------------------------------------------------------------- controlled outputs


@pytest.fixture
def fake_feed() -> Feed:
    return Feed([np.full((8, 8, 3), 40, np.uint8)], [np.ones((3, 6), np.float32)],
                np.full(3200, 0.1, np.float32), 16000)


def _last_full_event(fake: FakeRuntime, feed: Feed, silent: tuple[str, ...] = ()) -> dict:
    clock = Clock()
    events = feed.drive(_core(fake, clock, faults=False), clock, T0, 2.0, silent=silent)
    return events[-1]


def test_labels_compare_the_probability_not_its_rounding(fake_feed):
    fake = FakeRuntime()
    # Both display as 0.5; only one reaches the 0.5 threshold.
    fake.set_probabilities({**{c: 0.1 for c in CLASSES}, "person": 0.50004, "vehicle": 0.49996, "dog": 0.9})
    ev = _last_full_event(fake, fake_feed)
    assert ev["scores"]["person"] == ev["scores"]["vehicle"] == 0.5
    assert ev["labels"] == [{"label": "dog", "score": 0.9}, {"label": "person", "score": 0.5}]


@pytest.mark.parametrize("setup, silent, fires", [
    pytest.param(lambda f: None, (), False, id="all-agree"),
    pytest.param(lambda f: f.disagree("radar"), (), True, id="radar-opposite"),
    pytest.param(lambda f: f.disagree("audio"), ("radar0",), True, id="two-present-opposite"),
    pytest.param(lambda f: setattr(f, "forced_consistency", 0.5), (), False, id="at-threshold"),
    pytest.param(lambda f: setattr(f, "forced_consistency", 0.49), (), True, id="just-below"),
    pytest.param(lambda f: setattr(f, "forced_consistency", -1.0), ("radar0", "mic0"), False, id="one-present"),
])
def test_disagreement_alert_needs_two_present_modalities_below_the_threshold(fake_feed, setup, silent, fires):
    fake = FakeRuntime(consistency_threshold=0.5)
    setup(fake)
    ev = _last_full_event(fake, fake_feed, silent)
    assert sum(m["present"] for m in ev["modalities"].values()) == 3 - len(silent)
    assert ("modalities_disagree" in ev["alerts"]) is fires, ev
    assert [a for a in ev["alerts"] if a.startswith("sensor_failed")] == [f"sensor_failed:{s}" for s in silent]


@pytest.mark.parametrize("fake", [
    pytest.param(FakeRuntime(consistency_threshold=None), id="not-calibrated"),
    pytest.param(FakeRuntime(trained=False), id="untrained"),
])
def test_no_disagreement_alert_without_a_calibrated_trained_model(fake_feed, fake):
    fake.disagree("radar")
    fake.set_probabilities({"person": 0.9})
    ev = _last_full_event(fake, fake_feed)
    assert "modalities_disagree" not in ev["alerts"]
    if not fake.trained:  # untrained outputs are never reported
        assert ev["labels"] == [] and ev["scores"] is None and ev["consistency"] is None
        assert all("weight" not in m and "certainty" not in m for m in ev["modalities"].values())


def test_weights_and_certainty_per_modality_follow_presence(fake_feed):
    fake = FakeRuntime()
    ev = _last_full_event(fake, fake_feed)
    assert {m: (e["weight"], e["certainty"]) for m, e in ev["modalities"].items()} == {
        m: (0.3333, 1.0) for m in MODALITIES}
    fake = FakeRuntime()
    ev = _last_full_event(fake, fake_feed, silent=("radar0",))
    assert {m: (e["weight"], e["certainty"]) for m, e in ev["modalities"].items()} == {
        "camera": (0.5, 1.0), "radar": (0.0, 0.0), "audio": (0.5, 1.0)}
    # Only what arrived is encoded: a silent radar is never.
    assert fake.calls["encode_radar"] == 0 < fake.calls["encode_camera"]
