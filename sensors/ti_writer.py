"""TI mmWave SDK 3.x out-of-box demo: a writer of data-UART frames, the inverse of the parser.

The project makes its own captures with it (the demo's simulated radar, the calibration example
recording) and its tests build frames of every record type with it. :func:`encode_frame` gives
the bytes of one frame, :func:`encode_capture` / :func:`write_capture` a whole ``.dat`` stream.
The byte layout is described in ``docs/ti_mmwave.md``; what this writes, ``ti_mmwave`` reads.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

import numpy as np

from .ti_mmwave import (
    HEADER_LEN,
    HEADER_STRUCT,
    MAGIC,
    POINT_DTYPE,
    PROFILE_DTYPE,
    SIDE_INFO_DTYPE,
    SIDE_INFO_UNIT_DB,
    STATS_FIELDS,
    STATS_STRUCT,
    TLV_HEADER_STRUCT,
    TLV_POINTS,
    TLV_RANGE_PROFILE,
    TLV_SIDE_INFO,
    TLV_STATS,
    TLV_TYPES,
)

__all__ = ["SDK_VERSION", "PLATFORM_IWR6843", "PACKET_ALIGN", "encode_frame", "encode_capture", "write_capture"]

SDK_VERSION = 0x03050004  # mmWave SDK 3.5.0.4, as the header's version word
PLATFORM_IWR6843 = 0x000A6843
PACKET_ALIGN = 32  # the demo pads every frame to a multiple of 32 bytes

# Side info written when the points carry no snr/noise columns (decibels).
DEFAULT_SNR_DB = 20.0
DEFAULT_NOISE_DB = 10.0

_INT16 = np.iinfo(np.int16)


def _tlv(tlv_type: int, payload: bytes) -> bytes:
    return TLV_HEADER_STRUCT.pack(tlv_type, len(payload)) + payload


def _tenths(db: np.ndarray) -> np.ndarray:
    return np.clip(np.round(db / SIDE_INFO_UNIT_DB), _INT16.min, _INT16.max)


def encode_frame(
    frame_number: int,
    points: np.ndarray | None = None,
    *,
    side_info: bool = True,
    range_profile: np.ndarray | None = None,
    stats: Mapping[str, int] | Sequence[int] | None = None,
    extra_tlvs: Sequence[tuple[int, bytes | np.ndarray]] = (),
    version: int = SDK_VERSION,
    platform: int = PLATFORM_IWR6843,
    time_cpu_cycles: int = 0,
    subframe_number: int = 0,
    align: int = PACKET_ALIGN,
) -> bytes:
    """The bytes of one frame.

    ``points`` is (N, 4..6): x_m, y_m, z_m, doppler_mps[, snr_db, noise_db] in the radar frame;
    points go in TLV 1 and, with ``side_info``, their snr/noise in TLV 7 (missing columns are
    written as 20 dB / 10 dB). A frame without points carries neither record, as the demo does.
    ``range_profile`` (uint16 per bin) becomes TLV 2, ``stats`` (the six ``STATS_FIELDS``) TLV 6,
    and ``extra_tlvs`` any other records as (type, payload) in the order given. The frame is
    zero-padded to a multiple of ``align`` bytes (1: no padding). Raises ValueError on points that
    are not finite or not (N, 4..6), and on a TLV type the format does not define.
    """
    pts = np.zeros((0, 4)) if points is None else np.asarray(points, dtype=np.float64)
    if pts.ndim != 2 or not 4 <= pts.shape[1] <= 6:
        raise ValueError(f"frame {frame_number}: points must be (N, 4..6), got shape {pts.shape}")
    if not np.isfinite(pts).all():
        raise ValueError(f"frame {frame_number}: points must be finite")
    if align < 1:
        raise ValueError(f"align must be positive, got {align}")
    n = len(pts)
    records = []
    if n:
        records.append(_tlv(TLV_POINTS, pts[:, :4].astype(POINT_DTYPE).tobytes()))
        if side_info:
            snr = pts[:, 4] if pts.shape[1] > 4 else np.full(n, DEFAULT_SNR_DB)
            noise = pts[:, 5] if pts.shape[1] > 5 else np.full(n, DEFAULT_NOISE_DB)
            side = np.stack([_tenths(snr), _tenths(noise)], axis=1).astype(SIDE_INFO_DTYPE)
            records.append(_tlv(TLV_SIDE_INFO, side.tobytes()))
    if range_profile is not None:
        records.append(_tlv(TLV_RANGE_PROFILE, np.asarray(range_profile).astype(PROFILE_DTYPE).tobytes()))
    if stats is not None:
        values = [stats[k] for k in STATS_FIELDS] if isinstance(stats, Mapping) else list(stats)
        records.append(_tlv(TLV_STATS, STATS_STRUCT.pack(*values)))
    for tlv_type, payload in extra_tlvs:
        if tlv_type not in TLV_TYPES:
            raise ValueError(f"frame {frame_number}: TLV type {tlv_type} is not one the format defines "
                             f"({sorted(TLV_TYPES)})")
        records.append(_tlv(tlv_type, payload.tobytes() if isinstance(payload, np.ndarray) else bytes(payload)))
    body = b"".join(records)
    total = HEADER_LEN + len(body)
    total += (-total) % align
    header = MAGIC + HEADER_STRUCT.pack(version, total, platform, frame_number & 0xFFFFFFFF,
                                        time_cpu_cycles & 0xFFFFFFFF, n, len(records), subframe_number)
    return (header + body).ljust(total, b"\x00")


def encode_capture(frames: Iterable[np.ndarray], *, first_frame_number: int = 1, **frame_options) -> bytes:
    """A whole capture: one frame per array of points, numbered from ``first_frame_number``.

    ``frame_options`` are passed to :func:`encode_frame` for every frame.
    """
    return b"".join(encode_frame(first_frame_number + k, pts if np.size(pts) else None, **frame_options)
                    for k, pts in enumerate(frames))


def write_capture(path: str | Path, frames: Iterable[np.ndarray], *, first_frame_number: int = 1,
                  **frame_options) -> Path:
    """Write :func:`encode_capture` of ``frames`` to ``path`` (a ``.dat`` the radar sensor replays)."""
    path = Path(path)
    path.write_bytes(encode_capture(frames, first_frame_number=first_frame_number, **frame_options))
    return path
