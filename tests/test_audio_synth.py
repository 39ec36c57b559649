"""Made horns and sirens: their sound, the teacher's vetting, and their place in the training pool."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from fusion_node.vocabulary import CLASSES, WIRE_AUDIO_RATE_HZ

from .conftest import SHARED_DATA

pytest.importorskip("torch")

from models import audio_distill, audio_synth  # noqa: E402
from models.audio_corpus import BACKGROUND, Clip  # noqa: E402
from models.teacher_audio import YamnetTeacher  # noqa: E402

YAMNET = SHARED_DATA.parent / "models" / "teachers" / "yamnet.onnx"


@pytest.fixture(scope="module")
def yamnet() -> YamnetTeacher:
    if not YAMNET.is_file():
        pytest.skip(f"needs the YAMNet teacher at {YAMNET} (training-time only, not shipped)")
    return YamnetTeacher(YAMNET)


def _dominant_hz(x: np.ndarray) -> float:
    spectrum = np.abs(np.fft.rfft(x * np.hanning(len(x))))
    return float(np.fft.rfftfreq(len(x), 1 / WIRE_AUDIO_RATE_HZ)[np.argmax(spectrum)])


def test_made_sounds_are_finite_peak_normalised_and_repeat_under_a_seed():
    for make in (audio_synth.horn, audio_synth.siren):
        a = [make(np.random.default_rng(s)) for s in range(12)]
        b = [make(np.random.default_rng(s)) for s in range(12)]
        for x, y in zip(a, b):
            assert x.dtype == np.float32 and np.isfinite(x).all()
            assert np.abs(x).max() == pytest.approx(1.0, abs=1e-4)
            assert 0.3 * WIRE_AUDIO_RATE_HZ < len(x) < 6 * WIRE_AUDIO_RATE_HZ
            np.testing.assert_array_equal(x, y)
        assert len({len(x) for x in a}) > 6  # honk patterns and siren lengths vary


def test_a_horn_has_its_energy_in_the_horn_band_and_sirens_sweep():
    rng = np.random.default_rng(3)
    for _ in range(10):
        x = audio_synth.horn(rng)
        assert 140 <= _dominant_hz(x) <= 7800
        spectrum = np.abs(np.fft.rfft(x)) ** 2
        freqs = np.fft.rfftfreq(len(x), 1 / WIRE_AUDIO_RATE_HZ)
        # Nothing below the lowest horn tone: the sound is its harmonic series, not a rumble.
        assert spectrum[freqs < 100].sum() < 0.01 * spectrum.sum()
    # A wail's loudest pitch moves from one half second to the next; smoke-alarm beeps stay put.
    half = WIRE_AUDIO_RATE_HZ // 2
    wail, smoke = audio_synth.siren(rng, "wail"), audio_synth.siren(rng, "smoke")
    pitches = {round(_dominant_hz(wail[s:s + half]), -1) for s in range(0, len(wail) - half, half)}
    assert len(pitches) >= 3
    assert 2700 <= _dominant_hz(smoke) <= 3500
    with pytest.raises(ValueError, match="siren kind 'hoot'"):
        audio_synth.siren(rng, "hoot")


def _judge(**heard: float):
    """A stand-in teacher that hears every sound the same way, counting what it was asked."""
    calls = []

    def scores(x: np.ndarray) -> np.ndarray:
        calls.append(len(x))
        out = np.zeros(len(CLASSES), np.float32)
        for label, score in heard.items():
            out[CLASSES.index(label)] = score
        return out

    return scores, calls


def test_vetting_keeps_only_what_the_teacher_hears_as_the_class_and_nothing_else():
    judge, calls = _judge(vehicle=0.9)
    made = audio_synth.vetted_clips(judge, 3, np.random.default_rng(0))
    # Every horn passes at once; no siren is heard as an alarm, so the sirens give up after their tries.
    assert [c.label for c, _ in made] == ["vehicle"] * 3
    assert len(calls) == 3 + 3 * audio_synth._MAX_TRIES_PER_CLIP
    assert all(c.source == audio_synth.SYNTH_SOURCE and c.split == "train" for c, _ in made)
    assert len({c.path for c, _ in made}) == 3
    # A horn that also sounds like a dog is refused.
    judge, calls = _judge(vehicle=0.9, dog=0.4)
    assert audio_synth.vetted_clips(judge, 2, np.random.default_rng(0)) == []


def test_the_teacher_hears_most_made_horns_as_vehicles_and_sirens_as_alarms(yamnet):
    rng = np.random.default_rng(0)
    for make, label, least in ((audio_synth.horn, "vehicle", 0.25), (audio_synth.siren, "alarm", 0.35)):
        scores = np.array([audio_distill._sound_scores(yamnet, make(rng)) for _ in range(40)])
        heard = scores[:, CLASSES.index(label)] >= audio_synth.VET_OWN
        assert heard.mean() >= least, (label, heard.mean())


def test_made_windows_join_the_pool_without_changing_the_real_ones(yamnet, tmp_path):
    from scipy.io import wavfile

    rng = np.random.default_rng(1)
    clips = []
    for i, (label, x) in enumerate([("vehicle", rng.standard_normal(24000) * 0.1),
                                    (BACKGROUND, rng.standard_normal(32000) * 0.01)]):
        wavfile.write(tmp_path / f"{i}.wav", WIRE_AUDIO_RATE_HZ, (x * 32767).astype(np.int16))
        clips.append(Clip(tmp_path / f"{i}.wav", label, f"src{i}", "train"))
    small = {"windows_per_class": 5, "background_windows": 5}
    plain = audio_distill.build_pool(clips, yamnet, audio_distill.AudioDistillConfig(**small, synthetic_windows=0))
    made = audio_distill.build_pool(clips, yamnet, audio_distill.AudioDistillConfig(
        **small, synthetic_clips=2, synthetic_windows=4))
    n = len(plain.clip)
    np.testing.assert_array_equal(made.logmel[:n], plain.logmel)
    np.testing.assert_array_equal(made.clip[:n], plain.clip)
    assert len(made.clip) == n + 8 and len(made.clips) == len(clips) + 4
    extra = [made.clips[i] for i in made.clip[n:]]
    assert {c.source for c in extra} == {audio_synth.SYNTH_SOURCE}
    assert sorted({c.label for c in extra}) == ["alarm", "vehicle"]
    for row, clip in zip(made.hard[n:], extra):  # a loud window carries its made sound's class alone
        if not np.isnan(row).any():
            assert row.tolist() == [1.0 if c == clip.label else 0.0 for c in CLASSES]
