"""Procedural car horns and sirens for the audio student, kept only where the teacher agrees.

The real corpus holds few horns and sirens, from few sources, and a small student that has heard
a handful of them does not recognise another maker's (it hears the engine, not the horn). These
sounds are simple physics, so more of them can be made:

* a horn is one or two electromagnetic tones (150-800 Hz, a third or so apart), a harmonic
  series shaped by the horn's resonance (at 1.3-3.2 kHz, or at the fundamental for a horn that
  is nearly a pure tone), sometimes driven into clipping, honked short, long, twice or three times;
* a siren or alarm is a wail, yelp, hi-lo, phaser, smoke-alarm beeps, a car alarm's warble or an
  electric bell.

A made sound joins training only when YAMNet (the audio teacher) hears it as its class, at 0.5
or more, and hears no other product class above 0.3: the teacher vouches for each one, so
the student learns horns and sirens as AudioSet knows them, not the synthesiser's quirks.
Nothing made here is ever a held-out or threshold clip: figures stay on real recordings.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
from scipy.signal import lfilter

from fusion_node.vocabulary import CLASSES, WIRE_AUDIO_RATE_HZ
from models.audio_corpus import Clip

__all__ = ["MADE_CLASSES", "SYNTH_SOURCE", "horn", "siren", "vetted_clips"]

RATE = WIRE_AUDIO_RATE_HZ
SYNTH_SOURCE = "synthesised"
# The teacher's verdict a made sound must earn: its own class at least this, every other below the second.
VET_OWN, VET_OTHER = 0.5, 0.3


def _envelope(n: int, attack_s: float, release_s: float) -> np.ndarray:
    env = np.ones(n)
    a, r = min(n, int(attack_s * RATE)), min(n, int(release_s * RATE))
    env[:a] = np.linspace(0.0, 1.0, a)
    env[n - r:] = np.minimum(env[n - r:], np.linspace(1.0, 0.0, r))
    return env


def _horn_tone(f0: float, n: int, rng: np.random.Generator, formant_hz: float, width_oct: float,
               floor_db: float) -> np.ndarray:
    """One horn tone: harmonics of ``f0`` weighted by a resonance at ``formant_hz``."""
    t = np.arange(n) / RATE
    wobble = 1 + 0.003 * np.sin(2 * np.pi * rng.uniform(4, 9) * t)
    phase = 2 * np.pi * np.cumsum(f0 * wobble) / RATE
    out = np.zeros(n)
    for k in range(1, int(7800 / f0) + 1):
        octaves = np.log2(k * f0 / formant_hz)
        # Gaussian in octaves around the resonance, never below the floor; a steeper fall above it.
        gain_db = max(-6 * (octaves / width_oct) ** 2, floor_db) - max(0.0, 3 * octaves)
        out += 10 ** (gain_db / 20) * np.sin(k * phase + rng.uniform(0, 2 * np.pi))
    return out


def horn(rng: np.random.Generator) -> np.ndarray:
    """A car, truck or scooter horn honked once or more, mono float32 at the wire rate, peak 1."""
    kind = rng.choice(["car", "car", "car", "truck", "small"])
    f0 = {"car": rng.uniform(340, 520), "truck": rng.uniform(150, 330), "small": rng.uniform(520, 800)}[kind]
    tones = [f0] if rng.random() < 0.3 else [f0, f0 * rng.uniform(1.12, 1.3)]
    pattern = rng.choice(["short", "long", "double", "triple"])
    honks = {"short": [rng.uniform(0.2, 0.6)], "long": [rng.uniform(0.8, 2.5)],
             "double": [rng.uniform(0.15, 0.4)] * 2, "triple": [rng.uniform(0.12, 0.3)] * 3}[pattern]
    gap = rng.uniform(0.08, 0.25)
    out = np.zeros(int((sum(honks) + gap * len(honks) + 0.6) * RATE))
    at = int(rng.uniform(0.05, 0.3) * RATE)
    # Most horns ring loudest in a resonance at 1.3-3.2 kHz, narrow or broad; some are nearly pure
    # tones, loudest at the fundamental.
    formant = f0 * rng.uniform(1.0, 2.0) if rng.random() < 0.25 else rng.uniform(1300, 3200)
    width, floor = rng.uniform(0.2, 1.6), rng.uniform(-40, -10)
    for seconds in honks:
        n = min(int(seconds * RATE), len(out) - at)
        honk = sum(_horn_tone(f, n, rng, formant, width, floor) for f in tones)
        if rng.random() < 0.5:  # the diaphragm driven into clipping
            honk = np.tanh(rng.uniform(1, 3) * honk / (np.abs(honk).max() + 1e-9))
        out[at:at + n] += honk * _envelope(n, rng.uniform(0.005, 0.03), rng.uniform(0.02, 0.08))
        at += n + int(gap * RATE)
    return (out / (np.abs(out).max() + 1e-9)).astype(np.float32)


def _oscillator(freq: np.ndarray, rng: np.random.Generator, wave: str) -> np.ndarray:
    phase = 2 * np.pi * np.cumsum(freq) / RATE
    top = max(1, int(7000 / max(float(freq.mean()), 1.0)))  # the highest harmonic kept under 7 kHz
    if wave == "square":
        return np.tanh(rng.uniform(3, 12) * np.sin(phase))
    if wave == "saw":
        return sum(np.sin(k * phase) / k for k in range(1, top + 1))
    if wave == "buzz":
        slope = rng.uniform(0.6, 1.2)
        return sum(k ** -slope * np.sin(k * phase + rng.uniform(0, 2 * np.pi)) for k in range(1, top + 1))
    return np.sin(phase)


def _resonance(x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """One or two broad peaks (a loudspeaker's or a bell's housing): peaking biquads."""
    for _ in range(int(rng.integers(1, 3))):
        w = 2 * np.pi * rng.uniform(800, 3500) / RATE
        alpha, gain = np.sin(w) / (2 * rng.uniform(1, 4)), 10 ** (rng.uniform(3, 9) / 40)
        b = np.array([1 + alpha * gain, -2 * np.cos(w), 1 - alpha * gain])
        a = np.array([1 + alpha / gain, -2 * np.cos(w), 1 - alpha / gain])
        x = lfilter(b / a[0], a / a[0], x)
    return x


SIREN_KINDS = ("wail", "yelp", "hilo", "phaser", "smoke", "car_alarm", "bell")


def siren(rng: np.random.Generator, kind: str | None = None) -> np.ndarray:
    """A siren or alarm of ``kind`` (one of :data:`SIREN_KINDS`; drawn when None), 2.5-5 s, mono
    float32 at the wire rate, peak 1."""
    n = int(rng.uniform(2.5, 5.0) * RATE)
    t = np.arange(n) / RATE
    if kind is None:
        kind = SIREN_KINDS[int(rng.integers(len(SIREN_KINDS)))]
    elif kind not in SIREN_KINDS:
        raise ValueError(f"siren kind {kind!r}: expected one of {', '.join(SIREN_KINDS)}")
    low, high = rng.uniform(500, 800), rng.uniform(1100, 1700)
    if kind in ("wail", "yelp"):  # a rising then falling sweep, slow or fast
        period = rng.uniform(2.0, 6.0) if kind == "wail" else rng.uniform(0.2, 0.45)
        rise = 0.6 if kind == "wail" else 0.5
        cycle = (t / period + rng.random()) % 1
        freq = low + (high - low) * np.where(cycle < rise, cycle / rise, 1 - (cycle - rise) / (1 - rise))
    elif kind == "phaser":
        freq = low + (high - low) * ((t / rng.uniform(0.06, 0.12)) % 1)
    elif kind == "hilo":
        f1 = rng.uniform(390, 700)
        freq = np.where((t / rng.uniform(0.4, 1.5)) % 1 < 0.5, f1, f1 * rng.uniform(1.2, 1.5))
    elif kind == "smoke":
        freq = np.full(n, rng.uniform(2800, 3400))
    elif kind == "car_alarm":
        freq = rng.uniform(900, 1500) + rng.uniform(300, 900) * np.sin(2 * np.pi * t / rng.uniform(0.1, 0.3))
    else:  # bell
        freq = np.full(n, rng.uniform(900, 2200))
    wave = "sine" if kind == "smoke" else ("square", "saw", "buzz", "sine")[int(rng.integers(4))]
    x = _oscillator(freq, rng, wave)
    if kind == "smoke":  # three beeps, a pause (the T3 pattern)
        x = x * (((t % 4.0) < 1.5) & ((t % 0.5) < 0.5 * rng.uniform(0.5, 0.8)))
    elif kind == "bell":  # struck many times a second, each strike decaying
        strike = (t * rng.uniform(12, 25)) % 1
        x = x * np.exp(-strike * rng.uniform(4, 10)) + 0.5 * np.sin(2 * np.pi * freq * 2.76 * t) * np.exp(-strike * 8)
    x = _resonance(x * _envelope(n, 0.05, 0.1), rng)
    return (x / (np.abs(x).max() + 1e-9)).astype(np.float32)


_MAKERS: dict[str, Callable[[np.random.Generator], np.ndarray]] = {"vehicle": horn, "alarm": siren}
MADE_CLASSES = tuple(_MAKERS)  # the product classes made sounds are made for
# The teacher hears about half of what is made as its class; give up well after that.
_MAX_TRIES_PER_CLIP = 20


def vetted_clips(teacher_scores: Callable[[np.ndarray], np.ndarray], per_class: int,
                 rng: np.random.Generator) -> list[tuple[Clip, np.ndarray]]:
    """``per_class`` made horns (``vehicle``) and sirens (``alarm``) that the teacher vouches for.

    ``teacher_scores`` maps a sound to the teacher's product-class scores (the maximum over its
    windows). Each clip comes with a :class:`Clip` of source :data:`SYNTH_SOURCE` in the ``train``
    split, its path a name only (nothing is written to disk).
    """
    out = []
    for label, make in _MAKERS.items():
        k, kept = CLASSES.index(label), 0
        for attempt in range(per_class * _MAX_TRIES_PER_CLIP):
            if kept == per_class:
                break
            x = make(rng)
            scores = np.asarray(teacher_scores(x), np.float32)
            if scores[k] >= VET_OWN and np.delete(scores, k).max() < VET_OTHER:
                out.append((Clip(Path(f"{SYNTH_SOURCE}/{label}_{kept:03d}"), label, SYNTH_SOURCE, "train"), x))
                kept += 1
    return out
