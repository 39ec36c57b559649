"""Camera sensor process: OpenCV ``VideoCapture`` from a device index, a file, or an RTSP/HTTP URL.

Files are played in real time at their own frame rate (or ``--fps``), optionally looped, and
each frame is stamped with its scheduled capture time. Live sources are stamped when the frame
is read. Frames go out as raw BGR by default, or JPEG (``--jpeg QUALITY``) for network links.
"""

from __future__ import annotations

import argparse
import math
import time
from collections.abc import Iterable
from pathlib import Path

import numpy as np

from fusion_node.errors import SensorError
from fusion_node.wire import CameraFrame

from .publisher import (
    Pacer,
    SensorPublisher,
    add_security_arguments,
    add_shm_arguments,
    install_stop_handler,
    security_options,
    shm_options,
)
from .samples import DEFAULT_CAMERA

__all__ = ["CameraSource", "VIDEO_SUFFIXES", "video_files_in", "frame_stride", "parse_size", "add_arguments", "run"]

# Recorded videos, as the training and evaluation tools find them in a folder.
VIDEO_SUFFIXES = (".mp4", ".avi", ".mkv", ".mov", ".webm")


def video_files_in(folders: Iterable[Path | str]) -> list[Path]:
    """The video files (:data:`VIDEO_SUFFIXES`) directly in each existing folder, sorted."""
    return sorted(p for d in map(Path, folders) if d.is_dir() for p in d.iterdir()
                  if p.suffix.lower() in VIDEO_SUFFIXES)


def frame_stride(path: Path | str, max_frames: int) -> int:
    """The smallest stride that reads at most ``max_frames`` of the video at ``path`` (1 when
    OpenCV cannot tell its frame count)."""
    import cv2

    cap = cv2.VideoCapture(str(path))
    n = int(cap.get(cv2.CAP_PROP_FRAME_COUNT)) or max_frames
    cap.release()
    return max(1, math.ceil(n / max_frames))


def parse_size(text: str) -> tuple[int, int]:
    """``"640x480"`` -> ``(640, 480)``; an argparse error for anything else."""
    try:
        w, h = (int(v) for v in text.lower().split("x"))
        if w <= 0 or h <= 0:
            raise ValueError
    except ValueError:
        raise argparse.ArgumentTypeError(f"size must look like 640x480, got {text!r}") from None
    return w, h


class CameraSource:
    """Opens a camera source and yields BGR frames; tells files from live sources."""

    def __init__(self, source: str, sensor_id: str, resize: tuple[int, int] | None = None):
        import cv2

        self._cv2 = cv2
        self.sensor_id = sensor_id
        self.source = source
        self.resize = resize
        self.is_file = not source.isdigit() and "://" not in source
        if self.is_file and not Path(source).exists():
            raise SensorError(f"camera {sensor_id}: no such video file {source!r}")
        target: int | str = int(source) if source.isdigit() else source
        self.cap = cv2.VideoCapture(target)
        if not self.cap.isOpened():
            raise SensorError(f"camera {sensor_id}: cannot open {source!r} (check the device index, file "
                              f"or URL, and that no other process holds the camera)")
        fps = self.cap.get(cv2.CAP_PROP_FPS)
        self.fps = fps if fps and 0 < fps < 1000 else 30.0

    def read(self) -> np.ndarray | None:
        ok, frame = self.cap.read()
        if not ok or frame is None:
            return None
        if frame.ndim == 2:
            frame = self._cv2.cvtColor(frame, self._cv2.COLOR_GRAY2BGR)
        if self.resize is not None and (frame.shape[1], frame.shape[0]) != self.resize:
            frame = self._cv2.resize(frame, self.resize, interpolation=self._cv2.INTER_AREA)
        return frame

    def rewind(self) -> bool:
        return bool(self.cap.set(self._cv2.CAP_PROP_POS_FRAMES, 0))

    def close(self) -> None:
        self.cap.release()


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--source", default=str(DEFAULT_CAMERA),
                   help="device index (0), video file, or rtsp:// / http:// URL (default: bundled sample video)")
    p.add_argument("--sensor-id", default="cam0", help="sensor_id to publish under (default: cam0)")
    p.add_argument("--endpoint", required=True, help="ZeroMQ endpoint to bind, e.g. tcp://*:5551 or ipc:///run/cam0")
    p.add_argument("--fps", type=float, default=None, help="playback rate for files (default: the file's own)")
    p.add_argument("--loop", action="store_true", help="restart a file at its end instead of exiting")
    p.add_argument("--jpeg", type=int, metavar="QUALITY", default=None,
                   help="send JPEG of this quality (1-100) instead of raw BGR")
    p.add_argument("--resize", type=parse_size, default=None, metavar="WxH", help="resize frames before sending")
    p.add_argument("--max-frames", type=int, default=None, help="stop after this many frames")
    p.add_argument("--wait-subscriber", type=float, default=0.0, metavar="S",
                   help="wait up to S seconds for a subscriber before the first frame")
    add_shm_arguments(p)
    add_security_arguments(p)


def run(args: argparse.Namespace) -> int:
    secure = security_options(args)  # a bad key or allow-list fails before the source opens
    import cv2

    if args.jpeg is not None and not 1 <= args.jpeg <= 100:
        raise SensorError(f"camera {args.sensor_id}: --jpeg quality must be 1..100, got {args.jpeg}")
    stop = install_stop_handler()
    src = CameraSource(args.source, args.sensor_id, args.resize)
    pub = SensorPublisher("camera", args.endpoint, args.sensor_id, **shm_options(args), **secure)
    if args.wait_subscriber > 0:
        pub.wait_for_subscriber(args.wait_subscriber)
    fps = args.fps or src.fps
    pacer = Pacer(int(1e9 / fps)) if src.is_file else None
    sent = 0
    try:
        while not stop() and (args.max_frames is None or sent < args.max_frames):
            t_capture = pacer.wait(stop) if pacer else None
            frame = src.read()
            if frame is None:
                if src.is_file and args.loop and src.rewind():
                    frame = src.read()
                if frame is None:
                    if src.is_file:
                        break  # end of the recording
                    raise SensorError(f"camera {args.sensor_id}: {args.source!r} stopped delivering frames")
            if t_capture is None:
                t_capture = time.monotonic_ns()
            msg = CameraFrame(args.sensor_id, 0, t_capture, 0, frame)
            if args.jpeg is not None:
                ok, buf = cv2.imencode(".jpg", frame, [cv2.IMWRITE_JPEG_QUALITY, args.jpeg])
                if not ok:
                    raise SensorError(f"camera {args.sensor_id}: JPEG encoding failed")
                msg.encoding, msg.jpeg = "jpeg", buf.tobytes()
            pub.publish(msg)
            sent += 1
        pub.end(stopped=stop())
    finally:
        src.close()
        pub.close()
    return 0
