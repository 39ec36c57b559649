"""The project's vocabulary, declared once: modalities, event classes, radar point fields, audio rate.

Everything else derives from these names: the config's ``kind`` values, the wire topics of the
sensors, the order of the fusion head's inputs, the simulator's taxonomy, the training targets,
the benchmark's publishers and the tables in ``docs/wire.md`` (checked by a test).

The audio sample rate here is the rate sensors put on the wire by default; what the audio
encoder expects is the model's own business and comes from its manifest
(``ModelRuntime.audio_sample_rate_hz``), never from this constant.
"""

from __future__ import annotations

from typing import Literal, get_args

__all__ = [
    "Modality",
    "MODALITIES",
    "FRAME_MODALITIES",
    "BOUND_PAIRS",
    "EventClass",
    "CLASSES",
    "OBSERVES",
    "WITNESSES",
    "RADAR_POINT_FIELDS",
    "WIRE_AUDIO_RATE_HZ",
    "SPEED_OF_SOUND_MPS",
]

Modality = Literal["camera", "radar", "audio"]
# The order of the fusion head's inputs and of every per-modality vector (present, certainty, weights).
MODALITIES: tuple[str, ...] = get_args(Modality)
# Modalities whose messages are discrete frames matched in time; audio is a continuous signal cut
# as a window ending at the reference time.
FRAME_MODALITIES: tuple[str, ...] = ("camera", "radar")

# Pairs of modalities whose encoders are trained into one embedding space, so that the cosine of
# their embeddings of one scene means something (the drift monitor's cross-modal similarity).
# The radar is bound to the camera; the audio encoder is distilled on its own and shares no space.
BOUND_PAIRS: tuple[tuple[str, str], ...] = (("camera", "radar"),)

EventClass = Literal["person", "vehicle", "dog", "glass_break", "speech", "alarm"]
# Event classes, in the order of the head's logits.
CLASSES: tuple[str, ...] = get_args(EventClass)

# What each modality can observe: its vote counts for these classes only (a radar does not hear
# speech; a camera alone does not see glass breaking by its sound). Audio hears a person by their
# footsteps, a vehicle by its engine or horn.
OBSERVES: dict[str, tuple[str, ...]] = {
    "camera": ("person", "vehicle", "dog"),
    "radar": ("person", "vehicle"),
    "audio": CLASSES,
}
# Classes whose *absence* a modality can vouch for over the rig's shared field of view: when two
# witnesses of a class contradict each other, something is wrong with one of them. A microphone
# vouches for nothing (a person can stand still and silent), so audio never contradicts.
WITNESSES: dict[str, tuple[str, ...]] = {
    "camera": ("person", "vehicle"),
    "radar": ("person", "vehicle"),
    "audio": (),
}

# Radar point columns, in payload order (radar frame, metres, metres per second, decibels).
RADAR_POINT_FIELDS: tuple[str, ...] = ("x_m", "y_m", "z_m", "doppler_mps", "snr_db", "noise_db")

# Sample rate of audio chunks that sensors publish unless told otherwise (Hz).
WIRE_AUDIO_RATE_HZ = 16_000

# Speed of sound in air at about 20 °C (metres per second): audio lags the light by range / this.
SPEED_OF_SOUND_MPS = 343.0
