"""Where the bundled sample recordings live, and which ones the demo plays by default.

The recordings are real third-party captures shipped inside the package (see
``sensors/samples/SOURCES.md`` for credits and licences), so the demo needs no hardware.
"""

from __future__ import annotations

from pathlib import Path

__all__ = ["SAMPLES_DIR", "DEFAULT_CAMERA", "DEFAULT_RADAR", "DEFAULT_AUDIO", "sample"]

SAMPLES_DIR = Path(__file__).resolve().parent / "samples"

DEFAULT_CAMERA = SAMPLES_DIR / "video" / "one-by-one-person-detection.mp4"
DEFAULT_RADAR = SAMPLES_DIR / "radar" / "ti_iwr6843_oob_automated_doors_2019-12-04.dat"
DEFAULT_AUDIO = SAMPLES_DIR / "audio" / "speech_librispeech_198-209-0000.ogg"


def sample(relative: str) -> Path:
    """Path of a bundled sample, e.g. ``sample("audio/glass_break02_ufoai.ogg")``."""
    path = SAMPLES_DIR / relative
    if not path.exists():
        available = sorted(str(p.relative_to(SAMPLES_DIR)) for p in SAMPLES_DIR.rglob("*") if p.is_file())
        raise FileNotFoundError(f"no bundled sample {relative!r}; available: {', '.join(available)}")
    return path
