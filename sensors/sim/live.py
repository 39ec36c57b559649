"""``fusion sensor sim``: the simulator as three live sensors (camera, radar, microphone) of one world.

One process publishes all three on their own sockets, in real time, from a :class:`LiveWorld`
whose cast changes every few seconds; frames and chunks share one clock, so a node fuses them
as it would a real rig's. ``fusion demo --sim`` runs it. It renders from what ships only (the
bundled sound clips and street video, procedural radar clutter).
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from fusion_node.errors import SensorError
from fusion_node.rig import load_rig
from fusion_node.vocabulary import WIRE_AUDIO_RATE_HZ
from fusion_node.wire import AudioChunk, CameraFrame, RadarPoints

from ..publisher import SensorPublisher, add_shm_arguments, install_stop_handler, shm_options, sleep_until
from .assets import load_assets
from .faults import FaultInjection, parse_fault
from .render import render_audio, render_camera, render_radar
from .world import LiveWorld, RigGeometry

__all__ = ["add_arguments", "run", "add_read_noise"]

# Read noise of the simulated camera, in grey levels: every real image sensor has some, and
# without it a static simulated scene renders bit-identical frames, which is exactly what a
# frozen camera sends (fusion_node.faults would rightly call it frozen).
READ_NOISE_LEVELS = 2


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The options of ``fusion sensor sim``."""
    p.add_argument("--camera-endpoint", required=True, help="ZeroMQ endpoint for the simulated camera")
    p.add_argument("--radar-endpoint", required=True, help="ZeroMQ endpoint for the simulated radar")
    p.add_argument("--audio-endpoint", required=True, help="ZeroMQ endpoint for the simulated microphone")
    p.add_argument("--camera-id", default="cam0")
    p.add_argument("--radar-id", default="radar0")
    p.add_argument("--audio-id", default="mic0")
    p.add_argument("--seed", type=int, default=0, help="world seed (default 0): same seed, same world")
    p.add_argument("--camera-hz", type=float, default=10.0, help="camera frame rate (default 10)")
    p.add_argument("--radar-hz", type=float, default=10.0, help="radar frame rate (default 10)")
    p.add_argument("--duration", type=float, default=None, metavar="S", help="stop after S seconds")
    p.add_argument("--rig", default=None, metavar="RIG.yaml",
                   help="rig calibration file: take the image size, field of view and radar mounting from it")
    p.add_argument("--wait-subscriber", type=float, default=0.0, metavar="S",
                   help="wait up to S seconds for a subscriber before starting")
    p.add_argument("--fault", action="append", default=[], metavar="MODALITY:KIND@START[-END]",
                   help="make one sensor faulty from START seconds (to END): camera:covered, camera:frozen, "
                        "radar:repeating, radar:empty, audio:silent, audio:clipped, audio:stuck; repeatable")
    add_shm_arguments(p)


def add_read_noise(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """``image`` (uint8) with uniform read noise of +-READ_NOISE_LEVELS, saturating at 0 and 255."""
    noise = rng.integers(-READ_NOISE_LEVELS, READ_NOISE_LEVELS + 1, image.shape, dtype=np.int16)
    return np.clip(image.astype(np.int16) + noise, 0, 255).astype(np.uint8)


def _faults(specs: list[str]) -> dict[str, list[FaultInjection]]:
    out: dict[str, list[FaultInjection]] = {"camera": [], "radar": [], "audio": []}
    for spec in specs:
        try:
            f = parse_fault(spec)
        except ValueError as exc:
            raise SensorError(f"sim: --fault {exc}") from None
        out[f.modality].append(f)
    return out


def _inject(faults: list[FaultInjection], t: float, data):
    for f in faults:
        data = f.apply(t, data)
    return data


def run(args: argparse.Namespace) -> int:
    """Publish the three simulated sensors from one world, on their own sockets, in real time."""
    faults = _faults(args.fault)
    stop = install_stop_handler()
    geometry = RigGeometry()
    if args.rig:
        try:
            geometry = RigGeometry.from_rig(load_rig(args.rig), args.camera_id, args.radar_id)
        except ValueError as exc:
            raise SensorError(f"sim: {args.rig}: {exc}") from None
    assets = load_assets("eval", geometry)  # what ships only: the live sensor never reads development data
    world = LiveWorld(args.seed, geometry)
    noise = np.random.default_rng(args.seed)
    pubs = {kind: SensorPublisher(kind, endpoint, sid, **shm_options(args))
            for kind, endpoint, sid in (("camera", args.camera_endpoint, args.camera_id),
                                        ("radar", args.radar_endpoint, args.radar_id),
                                        ("audio", args.audio_endpoint, args.audio_id))}
    try:
        if args.wait_subscriber > 0:
            for pub in pubs.values():
                pub.wait_for_subscriber(args.wait_subscriber)
        t0_ns = time.monotonic_ns()
        periods = {"camera": 1.0 / args.camera_hz, "radar": 1.0 / args.radar_hz, "audio": 0.02}
        count = {k: 0 for k in periods}
        while not stop():
            # Times come from integer counts so schedules never drift by rounding.
            kind = min(periods, key=lambda k: count[k] * periods[k])
            t = count[kind] * periods[kind]
            if args.duration is not None and t >= args.duration:
                break
            # Publish once the sample's capture time (its end, for audio) has passed.
            sleep_until(t0_ns + int((t + (0.02 if kind == "audio" else 0.0)) * 1e9), stop)
            world.update(t)
            t_ns = t0_ns + int(round(t * 1e9))
            if kind == "camera":
                image = _inject(faults[kind], t, add_read_noise(render_camera(world.scene, t, assets, geometry), noise))
                pubs[kind].publish(CameraFrame(args.camera_id, 0, t_ns, 0, image))
            elif kind == "radar":
                points = _inject(faults[kind], t, render_radar(world.scene, t, assets, geometry))
                pubs[kind].publish(RadarPoints(args.radar_id, 0, t_ns, 0, points, has_side_info=True))
            else:
                samples = _inject(faults[kind], t, render_audio(world.scene, t + 0.02, 0.02, assets))
                pubs[kind].publish(AudioChunk(args.audio_id, 0, t_ns, 0, samples, WIRE_AUDIO_RATE_HZ))
            count[kind] += 1
        for pub in pubs.values():
            pub.end(stopped=stop())
    finally:
        for pub in pubs.values():
            pub.close()
    return 0
