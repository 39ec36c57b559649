"""``python -m bench.faults``: fault detection latency, false faults and cost on real recordings.

For each fault kind, the bundled recording of its modality (street video, TI radar capture, street
sound mix) is made faulty from 3 s to 6.5 s (:mod:`sensors.sim.faults`) and fed through the
detectors at its own rate; printed: seconds from onset to the fault being raised and from
recovery to its clearing. Then every healthy real recording given (the bundled ones, and with
``--real-clips DIR`` the videos, radar captures and microphone recordings under it) is fed whole:
printed are the faults raised and the share of its duration spent faulty (both should be 0), and
the detectors' cost per message (median microseconds).
"""

from __future__ import annotations

import argparse
import time
from functools import lru_cache
from pathlib import Path

import cv2
import numpy as np

from fusion_node.config import FaultsConfig
from fusion_node.faults import SensorFaults
from sensors.audio import load_audio_file
from sensors.radar import _message as radar_message
from sensors.samples import DEFAULT_AUDIO, DEFAULT_CAMERA, DEFAULT_RADAR
from sensors.sim.faults import FaultInjection
from sensors.ti_mmwave import read_capture

__all__ = ["camera_stream", "radar_stream", "audio_stream", "run_detector", "main", "CHUNK", "FAULTS"]

S = 1_000_000_000
CHUNK = 320  # 20 ms at the wire's 16 kHz
FAULTS = [("camera", "covered"), ("camera", "frozen"), ("radar", "repeating"), ("radar", "empty"),
          ("audio", "silent"), ("audio", "clipped"), ("audio", "stuck")]


@lru_cache(maxsize=None)
def video_frames(path: str) -> tuple[float, tuple[np.ndarray, ...]]:
    """Every frame of a video as the node sees it (through JPEG, as the camera sensor sends it), and its fps."""
    cap = cv2.VideoCapture(path)
    fps = cap.get(cv2.CAP_PROP_FPS) or 25.0
    frames = []
    while True:
        ok, frame = cap.read()
        if not ok:
            break
        ok, buf = cv2.imencode(".jpg", frame, [cv2.IMWRITE_JPEG_QUALITY, 85])
        frames.append(cv2.imdecode(buf, cv2.IMREAD_COLOR))
    cap.release()
    return fps, tuple(frames)


@lru_cache(maxsize=None)
def radar_frames(path: str) -> tuple[np.ndarray, ...]:
    """The point sets of a TI capture, as the radar sensor publishes them."""
    return tuple(radar_message("r", f, 0).points for f in read_capture(path))


@lru_cache(maxsize=None)
def audio_samples(path: str) -> np.ndarray:
    """A recording as the audio sensor publishes it: mono float32 at 16 kHz."""
    return load_audio_file(path)


def camera_stream(path=DEFAULT_CAMERA, loops: int = 1) -> list[tuple[float, np.ndarray]]:
    """(stream time in s, frame) at the video's own rate."""
    fps, frames = video_frames(str(path))
    return [(i / fps, f) for i, f in enumerate(frames * loops)]


def radar_stream(path=DEFAULT_RADAR, loops: int = 1) -> list[tuple[float, np.ndarray]]:
    """(stream time in s, points) at 10 Hz."""
    return [(i / 10.0, p) for i, p in enumerate(radar_frames(str(path)) * loops)]


def audio_stream(path=DEFAULT_AUDIO) -> list[tuple[float, np.ndarray]]:
    """(capture time of the chunk's end in s, 20 ms chunk)."""
    return chunked(audio_samples(str(path)))


def chunked(x: np.ndarray) -> list[tuple[float, np.ndarray]]:
    """Samples cut into 20 ms chunks, each with the time of its end."""
    return [((i + 1) * CHUNK / 16_000, x[i * CHUNK:(i + 1) * CHUNK]) for i in range(len(x) // CHUNK)]


STREAMS = {"camera": camera_stream, "radar": radar_stream, "audio": audio_stream}


def run_detector(kind: str, stream, injection: FaultInjection | None = None, cfg: FaultsConfig = FaultsConfig(),
                 timings: list | None = None):
    """Feed a stream through one sensor's detectors; returns ``[(t_s, active kinds)]`` and the detectors."""
    det = SensorFaults("s0", kind, cfg)
    timeline = []
    for t, data in stream:
        if injection is not None:
            data = injection.apply(t, data)
        t0 = time.perf_counter_ns()
        det.observe(1, int(round(t * S)), data)
        if timings is not None:
            timings.append((time.perf_counter_ns() - t0) / 1e3)
        timeline.append((t, tuple(det.active)))
    return timeline, det


def _first(timeline, fault: str, after: float, present: bool) -> float | None:
    return next((t for t, active in timeline if t >= after and (fault in active) == present), None)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.faults", description=__doc__.split("\n\n")[0])
    p.add_argument("--real-clips", type=Path, default=None, metavar="DIR",
                   help="also check the real recordings under DIR (video/*.mp4, registry/video/*, radar/*.dat, "
                        "audio/*.ogg|wav, registry/audio/*) for false faults")
    args = p.parse_args(argv)
    onset, end = 3.0, 6.5
    print(f"fault detection on the bundled recordings, fault from {onset} s to {end} s")
    print(f"{'fault':22s} {'raised after (s)':>17s} {'cleared after (s)':>18s}")
    for modality, fault in FAULTS:
        timeline, _ = run_detector(modality, STREAMS[modality](), FaultInjection(modality, fault, onset, end))
        raised = _first(timeline, fault, 0.0, True)
        cleared = None if raised is None else _first(timeline, fault, raised, False)
        print(f"{modality + ':' + fault:22s} {'-' if raised is None else f'{raised - onset:.2f}':>17s} "
              f"{'-' if cleared is None else f'{cleared - end:.2f}':>18s}")
    healthy = [("camera", DEFAULT_CAMERA), ("radar", DEFAULT_RADAR), ("audio", DEFAULT_AUDIO)]
    if args.real_clips is not None:
        d = args.real_clips
        healthy += [("camera", q) for q in sorted(d.glob("video/*.mp4")) + sorted(d.glob("registry/video/*"))]
        healthy += [("radar", q) for q in sorted(d.glob("radar/*.dat"))]
        healthy += [("audio", q) for q in sorted(d.glob("audio/*")) + sorted(d.glob("registry/audio/*"))
                    if q.suffix in (".ogg", ".wav", ".flac", ".mp3")]
    print("\nhealthy real recordings: faults raised, share of time faulty")
    costs: dict[str, list] = {"camera": [], "radar": [], "audio": []}
    for modality, path in healthy:
        timeline, det = run_detector(modality, STREAMS[modality](path), timings=costs[modality])
        faulty = sum(1 for _, a in timeline if a) / max(1, len(timeline))
        raised = {k: n for k, n in det.onsets.items() if n}
        print(f"  {modality:6s} {path.name[:48]:48s} {timeline[-1][0]:6.1f} s  raised {raised or 'none'}  "
              f"faulty {100 * faulty:.1f} %")
    print("\ncost per message (median / p99 microseconds): " + ", ".join(
        f"{m} {np.percentile(v, 50):.0f} / {np.percentile(v, 99):.0f}" for m, v in costs.items() if v))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
