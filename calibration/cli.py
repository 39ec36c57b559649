"""``fusion calibrate {intrinsics,extrinsics,check,time}``: the argparse side of the calibration tools.

:func:`add_parser` adds the ``calibrate`` command to the ``fusion`` command's subparsers. Each
subcommand's work lives in its module (intrinsics, extrinsics, timesync); errors are
:class:`fusion_node.errors.ConfigError` (bad option or file) or
:class:`calibration.errors.CalibrationError` (the data cannot give a trustworthy result), which
the ``fusion`` command prints as one message (exit status 2 and 1).
"""

from __future__ import annotations

import argparse
import sys

from .extrinsics import run_check, run_extrinsics
from .intrinsics import run_intrinsics
from .timesync import run_time

__all__ = ["add_parser"]

_EPILOG_RIG = ("The rig calibration file (YAML) is described in docs/calibration.md; "
               "examples/rig_calibration.yaml is a starting point.")


def _positive(text: str) -> float:
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not v > 0:
        raise argparse.ArgumentTypeError(f"must be positive, got {text!r}")
    return v


def _progress(args: argparse.Namespace) -> bool:
    return not args.no_progress and sys.stderr.isatty()


def _cmd_intrinsics(args: argparse.Namespace) -> int:
    run_intrinsics(args.images, args.pattern, args.square_mm, args.out, args.sensor_id, fix_k3=args.fix_k3,
                   progress=_progress(args))
    return 0


def _cmd_extrinsics(args: argparse.Namespace) -> int:
    run_extrinsics(args.correspondences, args.rig, args.camera, args.radar, threshold_px=args.ransac_px)
    return 0


def _cmd_check(args: argparse.Namespace) -> int:
    run_check(args.rig, args.video, args.radar_capture, args.out, camera_id=args.camera, radar_id=args.radar,
              frames=args.frames, radar_period_ms=args.radar_period_ms, video_fps=args.video_fps,
              color_by=args.color_by, progress=_progress(args))
    return 0


def _cmd_time(args: argparse.Namespace) -> int:
    starts = {k: v for k, v in (("camera", args.video_start_s), ("radar", args.radar_start_s),
                                ("audio", args.audio_start_s)) if v}
    run_time(args.rig, args.reference, video=args.video, radar=args.radar, audio=args.audio,
             camera_id=args.camera_id, radar_id=args.radar_id, audio_id=args.audio_id,
             radar_period_ms=args.radar_period_ms, video_fps=args.video_fps, starts_s=starts,
             max_lag_s=args.max_lag_s, max_seconds=args.max_seconds, accept_low=args.accept_low_confidence,
             progress=_progress(args))
    return 0


def add_parser(subparsers) -> argparse.ArgumentParser:
    """Add ``calibrate`` and its four subcommands to the ``fusion`` command's subparsers."""
    c = subparsers.add_parser(
        "calibrate", help="calibrate a rig: camera intrinsics, radar-camera extrinsics, clock offsets",
        description="Calibrate a rig with a checkerboard, a corner reflector and a sync recording, and check "
                    "the result. Results go into a rig calibration file. " + _EPILOG_RIG)
    kinds = c.add_subparsers(dest="calibrate_command", required=True, metavar="STEP")

    i = kinds.add_parser(
        "intrinsics", help="camera intrinsics from checkerboard pictures",
        description="Find a checkerboard in every picture of a folder, calibrate the camera (cv2.calibrateCamera, "
                    "k1 k2 p1 p2 k3), report the RMS and per-picture reprojection errors and every rejected "
                    "picture with its reason, write the intrinsics into the rig file (created if missing), an "
                    "undistorted preview <out stem>_undistorted.png and a report <out stem>_intrinsics.json next "
                    "to it. Take 10-20 pictures of a flat board at varied angles, covering the image corners.",
        epilog=_EPILOG_RIG)
    i.add_argument("--images", required=True, metavar="DIR", help="folder of checkerboard pictures (png, jpg, ...)")
    i.add_argument("--pattern", required=True, metavar="COLSxROWS",
                   help="inner corners of the board, e.g. 9x6 for a board of 10x7 squares")
    i.add_argument("--square-mm", required=True, type=_positive, metavar="S", help="side of one square, millimetres")
    i.add_argument("--out", required=True, metavar="RIG.yaml", help="rig calibration file to write into")
    i.add_argument("--sensor-id", default="cam0", help="camera sensor id in the rig file (default: cam0)")
    i.add_argument("--fix-k3", action="store_true",
                   help="keep k3 at 0 (advisable with few pictures or a mild lens)")
    i.add_argument("--no-progress", action="store_true", help="no progress bar")
    i.set_defaults(func=_cmd_intrinsics)

    e = kinds.add_parser(
        "extrinsics", help="radar-to-camera pose from reflector correspondences",
        description="Solve the radar's pose from correspondences between radar detections of a corner reflector "
                    "(x_m,y_m,z_m in the radar frame) and the reflector's pixel in the camera (u_px,v_px): "
                    "cv2.solvePnPRansac with the camera's intrinsics from the rig file, then iterative and "
                    "Levenberg-Marquardt refinement on the inliers. Outliers are rejected and counted, the RMS "
                    "reprojection error reported; the radar's extrinsics (in the rig frame; the camera defines "
                    "it if it has no extrinsics yet) go into the rig file, with a picture of the residuals "
                    "<rig stem>_extrinsics_<radar>.png and a JSON report.",
        epilog="CSV format: a header naming x_m,y_m,z_m,u_px,v_px (other columns ignored), one row per "
               "reflector position. " + _EPILOG_RIG)
    e.add_argument("--correspondences", required=True, nargs="+", metavar="FILE.csv",
                   help="one or more correspondence CSV files")
    e.add_argument("--rig", required=True, metavar="RIG.yaml", help="rig calibration file (with camera intrinsics)")
    e.add_argument("--camera", default="cam0", help="camera sensor id (default: cam0)")
    e.add_argument("--radar", default="radar0", help="radar sensor id (default: radar0; added if missing)")
    e.add_argument("--ransac-px", type=_positive, default=10.0,
                   help="inlier threshold, pixels (default 10: radar angles are coarse)")
    e.set_defaults(func=_cmd_extrinsics)

    k = kinds.add_parser(
        "check", help="overlay a recording's radar points on its video frames",
        description="Project the radar points of a recording into its camera frames with the rig file's "
                    "intrinsics, extrinsics and clock offsets, and write PNG pictures (points coloured by "
                    "doppler or range, a cross on the radar boresight 5 m out). Points that sit on the objects "
                    "that move mean the calibration holds.",
        epilog="Each file's time base starts at its sensor clock's zero; the rig file's clock_offset_ns "
               "values align them. " + _EPILOG_RIG)
    k.add_argument("--rig", required=True, metavar="RIG.yaml", help="rig calibration file")
    k.add_argument("--video", required=True, metavar="V", help="the camera's recording")
    k.add_argument("--radar-capture", required=True, metavar="DAT", help="the radar's TI .dat capture")
    k.add_argument("--out", required=True, metavar="DIR", help="folder for the pictures")
    k.add_argument("--frames", type=int, default=8, metavar="N", help="pictures to write (default 8)")
    k.add_argument("--camera", default="cam0", help="camera sensor id (default: cam0)")
    k.add_argument("--radar", default="radar0", help="radar sensor id (default: radar0)")
    k.add_argument("--radar-period-ms", type=_positive, default=100.0,
                   help="radar frame period (default 100 ms, the chirp config's frameCfg periodicity)")
    k.add_argument("--video-fps", type=_positive, default=None, help="override the video's frame rate")
    k.add_argument("--color-by", choices=["doppler", "range"], default="doppler", help="point colour (default doppler)")
    k.add_argument("--no-progress", action="store_true", help="no progress bar")
    k.set_defaults(func=_cmd_check)

    t = kinds.add_parser(
        "time", help="clock offsets between sensors from a recording",
        description="Estimate each sensor's clock offset to a reference sensor from the data alone: activity "
                    "signals (camera motion energy, radar doppler energy, audio onset strength) on a common "
                    "100 Hz grid, normalised cross-correlation over a bounded lag range, parabolic peak. Each "
                    "offset comes with a confidence (peak height against chance and against the next peak); "
                    "confident ones are written into the rig file as clock_offset_ns with their provenance, low "
                    "ones are reported and left out (exit status 1) unless --accept-low-confidence. Writes a "
                    "picture <rig stem>_time.png and a JSON report.",
        epilog="Record 30-60 s with a dozen or more sharp events every sensor sees at once (strike a hanging "
               "corner reflector). Separate recordings that were not captured together give a low confidence. "
               + _EPILOG_RIG)
    t.add_argument("--video", default=None, metavar="V", help="camera recording")
    t.add_argument("--radar", default=None, metavar="DAT", help="radar TI .dat capture")
    t.add_argument("--audio", default=None, metavar="A", help="audio recording (WAV/OGG/FLAC)")
    t.add_argument("--reference", required=True, metavar="SENSOR_ID",
                   help="sensor id whose clock the others are measured against (one of the sources given)")
    t.add_argument("--rig", required=True, metavar="RIG.yaml", help="rig calibration file to update")
    t.add_argument("--camera-id", default=None, help="sensor id of --video (default: the rig's first camera)")
    t.add_argument("--radar-id", default=None, help="sensor id of --radar (default: the rig's first radar)")
    t.add_argument("--audio-id", default=None, help="sensor id of --audio (default: the rig's first audio sensor)")
    t.add_argument("--radar-period-ms", type=_positive, default=100.0, help="radar frame period (default 100 ms)")
    t.add_argument("--video-fps", type=_positive, default=None, help="override the video's frame rate")
    for kind in ("video", "radar", "audio"):
        t.add_argument(f"--{kind}-start-s", type=float, default=0.0, metavar="S",
                       help=f"sensor-clock time of the {kind} file's first sample, seconds (default 0)")
    t.add_argument("--max-lag-s", type=_positive, default=2.0, help="largest offset searched, seconds (default 2)")
    t.add_argument("--max-seconds", type=_positive, default=None, help="use only the first S seconds of video/audio")
    t.add_argument("--accept-low-confidence", action="store_true", help="write low-confidence offsets too")
    t.add_argument("--no-progress", action="store_true", help="no progress bar")
    t.set_defaults(func=_cmd_time)
    return c
