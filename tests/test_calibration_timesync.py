"""Clock offsets from data: known offsets injected into simulated streams, and unrelated real recordings.

The unrelated recordings are third-party captures from the development data (``../shared/data``):
those tests skip, with the reason, when it is absent.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

from calibration.errors import CalibrationError
from calibration.synthetic import simulate_recording, truth_rig
from calibration.timesync import (
    ActivitySignal,
    audio_file_activity,
    estimate_offset,
    radar_capture_activity,
    video_activity,
)
from fusion_node.rig import load_rig, save_rig
from sensors.samples import DEFAULT_AUDIO, DEFAULT_CAMERA

from .conftest import ROOT, shared_file

PERSON_VIDEO = "video/one-by-one-person-detection.mp4"
CAR_VIDEO = "video/car-detection.mp4"
DOORS_RADAR = "radar/ti_iwr6843_oob_automated_doors_2019-12-04.dat"
SPEECH = "audio/speech_librispeech_198-209-0000.ogg"
SPEECH2 = "audio/speech_librispeech_5703-47212-0000.ogg"

RADAR_OFFSET_S = -0.065
AUDIO_OFFSET_S = 0.040


def fusion(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "fusion_node", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, "PYTHONUNBUFFERED": "1"})


def _impulses(times, duration, rate=200.0, width=0.03, name="x", kind="camera") -> ActivitySignal:
    t = np.arange(0, duration, 1 / rate)
    v = sum(np.exp(-0.5 * ((t - c) / width) ** 2) for c in times)
    return ActivitySignal(name, kind, t, v, 1 / rate)


def test_sign_convention_and_sub_sample_accuracy():
    rng = np.random.default_rng(0)
    events = np.sort(rng.uniform(1, 39, 40))
    true_offset = 0.1234  # t_reference = t_sensor + offset: the sensor sees each event 123.4 ms "earlier"
    ref = _impulses(events, 40, name="ref")
    sensor = _impulses(events - true_offset, 40, name="sensor", kind="audio")
    est = estimate_offset(ref, sensor)
    assert abs(est.offset_s - true_offset) < 0.001
    assert est.level == "high" and est.confidence > 0.5
    assert est.peak_ratio > 2


def test_offsets_beyond_the_lag_range_are_not_trusted():
    rng = np.random.default_rng(1)
    events = np.sort(rng.uniform(1, 39, 40))
    ref = _impulses(events, 40)
    # just beyond the range: the best lag is the range's end, on the flank of the true peak
    est = estimate_offset(ref, _impulses(events - 2.05, 40, name="late"), max_lag_s=2.0)
    assert est.at_edge and est.confidence == 0.0 and est.level == "low"
    # far beyond: nothing in the range stands out
    est = estimate_offset(ref, _impulses(events - 3.0, 40, name="later"), max_lag_s=2.0)
    assert est.level == "low"
    est = estimate_offset(ref, _impulses(events - 3.0, 40, name="later"), max_lag_s=4.0)
    assert abs(est.offset_s - 3.0) < 0.002 and est.level == "high"


@pytest.fixture(scope="module")
def simulated(tmp_path_factory):
    """30 s of a simulated rig: camera is the reference, radar -65 ms, audio +40 ms (t_cam = t_sensor + offset)."""
    out = tmp_path_factory.mktemp("sync")
    info = simulate_recording(out, 30.0, radar_offset_s=RADAR_OFFSET_S, audio_offset_s=AUDIO_OFFSET_S,
                              video_size=(384, 216), seed=20)
    return info


def test_known_offsets_recovered_within_5_ms(simulated):
    cam = video_activity(simulated["video"], name="cam0", progress=False)
    radar = radar_capture_activity(simulated["radar"], simulated["radar_period_s"], name="radar0")
    audio = audio_file_activity(simulated["audio"], name="mic0")
    for sensor, truth in ((radar, RADAR_OFFSET_S), (audio, AUDIO_OFFSET_S)):
        est = estimate_offset(cam, sensor)
        assert abs(est.offset_s - truth) < 0.005, (sensor.name, est)
        assert est.level in ("high", "medium"), (sensor.name, est)
    # any sensor can be the reference: radar against audio
    est = estimate_offset(radar, audio)
    assert abs(est.offset_s - (AUDIO_OFFSET_S - RADAR_OFFSET_S)) < 0.005
    assert est.level == "high"


def test_command_writes_offsets_and_confidence(simulated, tmp_path):
    rig_path = save_rig(truth_rig(), tmp_path / "rig.yaml")  # all clock offsets 0 at the start
    proc = fusion("calibrate", "time", "--video", simulated["video"], "--radar", simulated["radar"], "--audio",
                  simulated["audio"], "--reference", "cam0", "--rig", str(rig_path), "--radar-period-ms", "50")
    assert proc.returncode == 0, proc.stderr
    rig = load_rig(rig_path)
    for sid, truth in (("radar0", RADAR_OFFSET_S), ("mic0", AUDIO_OFFSET_S)):
        clock = rig.sensor(sid).clock
        assert abs(clock.clock_offset_ns / 1e9 - truth) < 0.005
        assert clock.provenance.confidence >= 0.15 and clock.provenance.details["reference"] == "cam0"
        assert "cross-correlation" in clock.provenance.method
    assert rig.sensor("cam0").clock.clock_offset_ns == 0
    assert rig.sensor("radar0").extrinsics.translation_m == truth_rig().sensor("radar0").extrinsics.translation_m
    report = json.loads((tmp_path / "rig_time.json").read_text())
    assert sorted(report["written"]) == ["mic0", "radar0"]
    assert (tmp_path / "rig_time.png").stat().st_size > 1000


def test_reference_with_its_own_offset(simulated, tmp_path):
    """Offsets are relative to the reference: a reference already 1 s off the rig clock carries the others."""
    rig = truth_rig()
    cam = rig.sensor("cam0")
    rig = rig.with_sensor(cam.model_copy(update={"clock": cam.clock.model_copy(update={"clock_offset_ns": 10**9})}))
    rig_path = save_rig(rig, tmp_path / "rig.yaml")
    proc = fusion("calibrate", "time", "--video", simulated["video"], "--audio", simulated["audio"],
                  "--reference", "cam0", "--rig", str(rig_path))
    assert proc.returncode == 0, proc.stderr
    offset = load_rig(rig_path).sensor("mic0").clock.clock_offset_ns
    assert abs(offset / 1e9 - (1.0 + AUDIO_OFFSET_S)) < 0.005


def test_real_recordings_made_apart_have_no_trustworthy_offset(tmp_path):
    """A video, a radar capture and speech recorded apart: the estimator must say it cannot tell."""
    rig_path = tmp_path / "rig.yaml"
    shutil.copy(ROOT / "examples" / "rig_calibration.yaml", rig_path)
    before = rig_path.read_text()
    proc = fusion("calibrate", "time", "--video", str(shared_file(PERSON_VIDEO)), "--radar",
                  str(shared_file(DOORS_RADAR)), "--audio", str(shared_file(SPEECH)), "--reference", "cam0",
                  "--rig", str(rig_path), "--max-seconds", "40")
    assert proc.returncode == 1
    assert "no trustworthy offset for radar0" in proc.stderr and "mic0" in proc.stderr
    assert "--accept-low-confidence" in proc.stderr
    assert rig_path.read_text() == before
    report = json.loads((tmp_path / "rig_time.json").read_text())
    assert [e["level"] for e in report["estimates"]] == ["low", "low"]
    assert all(e["confidence"] < 0.15 for e in report["estimates"])
    assert report["written"] == []


def test_unrelated_real_pairs_all_low_confidence():
    video = video_activity(shared_file(PERSON_VIDEO), name="cam0", max_seconds=40, progress=False)
    radar = radar_capture_activity(shared_file(DOORS_RADAR), 0.1, name="radar0")
    audio = audio_file_activity(shared_file(SPEECH), name="mic0")
    cars = video_activity(shared_file(CAR_VIDEO), name="cam1", progress=False)
    speech2 = audio_file_activity(shared_file(SPEECH2), name="mic1")
    pairs = ((video, radar), (video, audio), (radar, audio), (audio, video), (cars, radar), (cars, speech2),
             (video, cars), (radar, speech2))
    for ref, other in pairs:
        for max_lag in (1.0, 2.0, 3.0):
            est = estimate_offset(ref, other, max_lag_s=max_lag)
            assert est.level == "low" and est.confidence < 0.15, (ref.name, other.name, max_lag, est)


def test_too_little_overlap_is_an_error():
    video = video_activity(DEFAULT_CAMERA, name="cam0", progress=False)  # the bundled 10 s street video
    bark = audio_file_activity(ROOT / "sensors" / "samples" / "audio" / "dog_bark_1_gcompris_LA.ogg", name="mic0")
    with pytest.raises(CalibrationError, match="overlap by at most .* at least 5 s of common recording"):
        estimate_offset(video, bark)


def test_command_option_errors(tmp_path):
    rig_path = tmp_path / "rig.yaml"
    shutil.copy(ROOT / "examples" / "rig_calibration.yaml", rig_path)
    proc = fusion("calibrate", "time", "--video", str(DEFAULT_CAMERA), "--reference", "cam0", "--rig", str(rig_path))
    assert proc.returncode == 2 and "at least two of --video, --radar, --audio" in proc.stderr
    proc = fusion("calibrate", "time", "--video", str(DEFAULT_CAMERA), "--audio", str(DEFAULT_AUDIO), "--reference",
                  "radar0", "--rig", str(rig_path))
    assert proc.returncode == 2 and "--reference radar0: not one of the sensors given data" in proc.stderr
    proc = fusion("calibrate", "time", "--video", str(tmp_path / "nope.mp4"), "--audio", str(DEFAULT_AUDIO),
                  "--reference", "cam0", "--rig", str(rig_path))
    assert proc.returncode == 2 and "nope.mp4: no such file" in proc.stderr
