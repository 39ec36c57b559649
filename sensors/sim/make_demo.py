"""Make the demo's two project-made inputs: its simulated radar capture and its street sound mix.

``python -m sensors.sim.make_demo`` writes, into ``sensors/samples`` (or ``--out DIR``):

- ``radar/demo_street_simulated.dat``: the scripted street of :func:`demo_street_scene`
  rendered by the simulator's radar at 10 Hz for 10 s and written as TI mmWave out-of-box-demo
  UART frames (detected points, their side info and the statistics record) by the project's
  TI writer. It is **simulated**: no radar recorded it.
- ``audio/demo_street_mix.flac``: real sound clips from Debian packages (footsteps, a car pulling
  away, its horn, a voice), cut and placed on the same 10 s timeline as the scene's targets, and
  mixed to mono 16 kHz. A changed work of its CC-BY-SA-3.0 and CC-BY-3.0 sources, shared under
  CC-BY-SA-3.0 (``sensors/samples/SOURCES.md``).

Running it again gives the same files (the simulator is seeded).
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf

from fusion_node.vocabulary import WIRE_AUDIO_RATE_HZ

from ..audio import load_audio_file
from ..samples import DEFAULT_AUDIO, DEFAULT_RADAR, SAMPLES_DIR
from ..ti_writer import encode_capture
from .assets import load_assets
from .render import render_radar
from .world import DEMO_DURATION_S, RigGeometry, demo_street_scene

__all__ = ["RADAR_HZ", "MIX", "demo_radar_frames", "demo_radar_capture", "demo_audio_mix", "main"]

RADAR_HZ = 10.0
FIRST_FRAME_NUMBER = 1


@dataclass(frozen=True)
class Placement:
    """One clip in the mix: from ``clip_start_s`` for ``length_s``, at ``start_s`` on the timeline."""

    clip: str
    start_s: float
    gain: float
    clip_start_s: float = 0.0
    length_s: float | None = None  # None: to the clip's end


# The timeline follows demo_street_scene(): the pedestrian crossing in the first seconds, the car
# passing from about 1.5 s and sounding its horn as it goes by, the person on the left speaking
# in the second half.
MIX = (
    Placement("footsteps_0ad_Footstep_Gravel_Walking.ogg", 0.3, 0.5),
    Placement("footsteps_0ad_Footstep_Rock_Walking.ogg", 3.2, 0.45),
    Placement("vehicle_supertuxkart_car_accel.ogg", 1.4, 0.8),
    Placement("vehicle_horn_supertuxkart_horn.ogg", 3.0, 0.7),
    Placement("speech_en_asterisk_allison_demo-congrats.wav", 5.6, 0.9, clip_start_s=0.0, length_s=4.2),
)


def demo_radar_frames(geometry: RigGeometry = RigGeometry()) -> list[np.ndarray]:
    """The scene's radar detections, one array per frame, from the shipped assets only."""
    scene = demo_street_scene()
    assets = load_assets("eval", geometry)
    n = int(round(DEMO_DURATION_S * RADAR_HZ))
    return [render_radar(scene, k / RADAR_HZ, assets, geometry) for k in range(n)]


def _stats(n_points: int) -> tuple[int, ...]:
    """A plausible statistics record: processing time grows with the points found (microseconds, %)."""
    processing = 2_400 + 35 * n_points
    transmit = 180 + 24 * n_points
    return (processing, transmit, int(1e6 / RADAR_HZ) - processing - transmit, 48, 21 + n_points // 4, 9)


def demo_radar_capture(geometry: RigGeometry = RigGeometry()) -> bytes:
    """The bytes of the demo's simulated TI capture."""
    frames = demo_radar_frames(geometry)
    return b"".join(encode_capture([pts], first_frame_number=FIRST_FRAME_NUMBER + k, stats=_stats(len(pts)))
                    for k, pts in enumerate(frames))


def demo_audio_mix(audio_dir: Path = SAMPLES_DIR / "audio") -> np.ndarray:
    """The demo's street sound: the clips of :data:`MIX` placed on the timeline, mono at the wire rate."""
    rate = WIRE_AUDIO_RATE_HZ
    out = np.zeros(int(round(DEMO_DURATION_S * rate)), np.float32)
    for p in MIX:
        x = load_audio_file(audio_dir / p.clip)
        x = x / (np.abs(x).max() + 1e-9)
        first = int(round(p.clip_start_s * rate))
        x = x[first:] if p.length_s is None else x[first:first + int(round(p.length_s * rate))]
        at = int(round(p.start_s * rate))
        x = x[:max(0, len(out) - at)]
        # Short fades so that a cut clip does not click.
        fade = min(len(x) // 2, rate // 50)
        if fade:
            ramp = np.linspace(0.0, 1.0, fade, dtype=np.float32)
            x[:fade] *= ramp
            x[-fade:] *= ramp[::-1]
        out[at:at + len(x)] += p.gain * x
    return (out * (0.9 / (np.abs(out).max() + 1e-9))).astype(np.float32)


def main(argv: list[str] | None = None) -> int:
    """Write both files; print what was written."""
    p = argparse.ArgumentParser(prog="python -m sensors.sim.make_demo", description=__doc__.split("\n")[0])
    p.add_argument("--out", default=None, metavar="DIR",
                   help="write radar/ and audio/ files under DIR instead of sensors/samples")
    args = p.parse_args(argv)
    radar_path = DEFAULT_RADAR if args.out is None else Path(args.out) / "radar" / DEFAULT_RADAR.name
    audio_path = DEFAULT_AUDIO if args.out is None else Path(args.out) / "audio" / DEFAULT_AUDIO.name
    radar_path.parent.mkdir(parents=True, exist_ok=True)
    audio_path.parent.mkdir(parents=True, exist_ok=True)
    data = demo_radar_capture()
    radar_path.write_bytes(data)
    print(f"{radar_path}: {len(data)} bytes, {int(DEMO_DURATION_S * RADAR_HZ)} simulated TI frames")
    mix = demo_audio_mix()
    sf.write(str(audio_path), mix, WIRE_AUDIO_RATE_HZ, format="FLAC", subtype="PCM_16")
    print(f"{audio_path}: {len(mix) / WIRE_AUDIO_RATE_HZ:.1f} s mono {WIRE_AUDIO_RATE_HZ} Hz")
    return 0


if __name__ == "__main__":
    sys.exit(main())
