"""TI mmWave SDK 3.x out-of-box demo: data-UART frame parser and CLI-port config helpers.

The radar streams binary frames over its data UART (magic word, 40-byte header, TLV records; see
``docs/ti_mmwave.md``). :class:`TIStreamParser` turns an arbitrarily chunked byte
stream into :class:`RadarFrame` objects. It never raises on bad input: garbage, truncated frames,
absurd headers and non-finite points become counted rejections in ``parser.counters`` and the
parser resynchronises on the next magic word.

The module is pure (numpy, struct, stdlib): the only I/O is in the explicit helpers
:func:`iter_capture` / :func:`read_capture` (``.dat`` captures) and :func:`send_chirp_config` /
:func:`open_data_port` / :func:`open_cli_port` (pyserial, imported lazily).
"""

from __future__ import annotations

import struct
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from fusion_node.errors import SensorError
from fusion_node.vocabulary import RADAR_POINT_FIELDS

__all__ = [
    "MAGIC",
    "HEADER_LEN",
    "HEADER_STRUCT",
    "TLV_HEADER_STRUCT",
    "TLV_TYPES",
    "STATS_FIELDS",
    "RadarFrame",
    "TIStreamParser",
    "iter_capture",
    "read_capture",
    "ChirpConfig",
    "ChirpConfigError",
    "parse_chirp_config",
    "send_chirp_config",
    "open_data_port",
    "open_cli_port",
]

MAGIC = bytes((0x02, 0x01, 0x04, 0x03, 0x06, 0x05, 0x08, 0x07))
HEADER_LEN = 40
TLV_HEADER_LEN = 8

# Sanity bounds: anything beyond these is a corrupted header, not a real frame. The packet bound
# also caps how much the parser buffers while waiting for a frame to complete.
MAX_PACKET_LEN = 1 << 20
MAX_TLVS = 32
MAX_POINTS = 10_000

STATS_FIELDS = (
    "interFrameProcessingTime",
    "transmitOutTime",
    "interFrameProcessingMargin",
    "interChirpProcessingMargin",
    "activeFrameCPULoad",
    "interFrameCPULoad",
)

# Header fields after the magic word: version, totalPacketLen, platform, frameNumber,
# timeCpuCycles, numDetectedObj, numTLVs, subFrameNumber.
HEADER_STRUCT = struct.Struct("<8I")
TLV_HEADER_STRUCT = struct.Struct("<2I")  # type, payload length

TLV_POINTS = 1
TLV_RANGE_PROFILE = 2
TLV_NOISE_PROFILE = 3
TLV_AZIMUTH_STATIC_HEATMAP = 4
TLV_RANGE_DOPPLER_HEATMAP = 5
TLV_STATS = 6
TLV_SIDE_INFO = 7
TLV_AZIMUTH_ELEVATION_STATIC_HEATMAP = 8
TLV_TEMPERATURE_STATS = 9
# Every record type the out-of-box demo defines, by number.
TLV_TYPES = {
    TLV_POINTS: "detected points",
    TLV_RANGE_PROFILE: "range profile",
    TLV_NOISE_PROFILE: "noise profile",
    TLV_AZIMUTH_STATIC_HEATMAP: "azimuth static heatmap",
    TLV_RANGE_DOPPLER_HEATMAP: "range-Doppler heatmap",
    TLV_STATS: "statistics",
    TLV_SIDE_INFO: "side info of detected points",
    TLV_AZIMUTH_ELEVATION_STATIC_HEATMAP: "azimuth/elevation static heatmap",
    TLV_TEMPERATURE_STATS: "temperature statistics",
}
# Documented but not decoded here; skipping them is expected, not a sign of corruption.
_DOCUMENTED_UNDECODED = frozenset(TLV_TYPES) - {TLV_POINTS, TLV_RANGE_PROFILE, TLV_STATS, TLV_SIDE_INFO}

POINT_DTYPE = np.dtype("<f4")  # x, y, z, doppler per detected point
SIDE_INFO_DTYPE = np.dtype("<i2")  # snr, noise per detected point
SIDE_INFO_UNIT_DB = 0.1  # side info counts tenths of a decibel
PROFILE_DTYPE = np.dtype("<u2")
STATS_STRUCT = struct.Struct("<6I")


@dataclass(frozen=True, eq=False)
class RadarFrame:
    """One decoded out-of-box-demo frame; ``points`` columns are ``RADAR_POINT_FIELDS``.

    When the frame carries no side-info TLV (7) the snr/noise columns are 0.0 and
    ``has_side_info`` is False; NaN would trip the downstream non-finite checks.
    """

    frame_number: int
    subframe_number: int
    version: int
    platform: int
    time_cpu_cycles: int
    points: np.ndarray
    has_side_info: bool
    range_profile: np.ndarray | None = None
    stats: dict[str, int] | None = None

    @property
    def num_points(self) -> int:
        return int(self.points.shape[0])

    def __repr__(self) -> str:
        # The generated repr would dump the whole range profile into every log line.
        return (
            f"RadarFrame(frame_number={self.frame_number}, subframe_number="
            f"{self.subframe_number}, points={self.num_points}, has_side_info={self.has_side_info})"
        )

    def __eq__(self, other: object) -> bool:
        # The generated __eq__ would compare arrays element-wise and fail on truth-testing.
        if not isinstance(other, RadarFrame):
            return NotImplemented
        if (
            self.frame_number,
            self.subframe_number,
            self.version,
            self.platform,
            self.time_cpu_cycles,
            self.has_side_info,
            self.stats,
        ) != (
            other.frame_number,
            other.subframe_number,
            other.version,
            other.platform,
            other.time_cpu_cycles,
            other.has_side_info,
            other.stats,
        ):
            return False
        if not np.array_equal(self.points, other.points):
            return False
        if (self.range_profile is None) != (other.range_profile is None):
            return False
        return self.range_profile is None or np.array_equal(self.range_profile, other.range_profile)

    __hash__ = None  # type: ignore[assignment]  # holds mutable-typed arrays


class _Reject(Exception):
    """Internal: a frame failed validation; ``reason`` is the counter key."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def _readonly(a: np.ndarray) -> np.ndarray:
    # Frames are shared between pipeline stages; a stray in-place edit must not corrupt them.
    a.flags.writeable = False
    return a


def _decode_frame(buf: bytes | bytearray, header: tuple[int, ...]) -> tuple[RadarFrame, int, int]:
    """Decode one complete frame ``buf`` (header included); raise _Reject if it is inconsistent.

    Returns the frame and the numbers of skipped documented and unknown TLVs.
    """
    version, total_len, platform, frame_number, cpu_cycles, n_obj, n_tlvs, subframe = header
    mv = memoryview(buf)
    end = total_len
    off = HEADER_LEN
    xyzd = None
    side = None
    profile = None
    stats = None
    seen: set[int] = set()
    skipped = unknown = 0
    for _ in range(n_tlvs):
        if off + TLV_HEADER_LEN > end:
            raise _Reject("rejected_truncated")
        tlv_type, tlv_len = TLV_HEADER_STRUCT.unpack_from(mv, off)
        off += TLV_HEADER_LEN
        if tlv_len > end - off:
            raise _Reject("rejected_truncated")
        payload = mv[off : off + tlv_len]
        off += tlv_len
        if tlv_type in seen:
            raise _Reject("rejected_bad_tlv")
        seen.add(tlv_type)
        if tlv_type == TLV_POINTS:
            if tlv_len != n_obj * 16:
                raise _Reject("rejected_bad_tlv")
            xyzd = np.frombuffer(payload, dtype=POINT_DTYPE).reshape(n_obj, 4)
        elif tlv_type == TLV_SIDE_INFO:
            if tlv_len != n_obj * 4:
                raise _Reject("rejected_bad_tlv")
            side = np.frombuffer(payload, dtype=SIDE_INFO_DTYPE).reshape(n_obj, 2)
        elif tlv_type == TLV_RANGE_PROFILE:
            if tlv_len % 2:
                raise _Reject("rejected_bad_tlv")
            profile = _readonly(np.frombuffer(payload, dtype=PROFILE_DTYPE).astype(np.uint16))
        elif tlv_type == TLV_STATS:
            if tlv_len != STATS_STRUCT.size:
                raise _Reject("rejected_bad_tlv")
            stats = dict(zip(STATS_FIELDS, STATS_STRUCT.unpack(payload)))
        elif tlv_type in _DOCUMENTED_UNDECODED:
            skipped += 1
        else:
            unknown += 1

    if xyzd is None:
        if n_obj:
            # Points announced in the header but never delivered: the frame is inconsistent.
            raise _Reject("rejected_bad_tlv")
        xyzd = np.empty((0, 4), dtype=POINT_DTYPE)
    if not np.isfinite(xyzd).all():
        raise _Reject("rejected_non_finite")

    points = np.zeros((n_obj, len(RADAR_POINT_FIELDS)), dtype=np.float32)
    points[:, :4] = xyzd
    if side is not None:
        points[:, 4:] = side.astype(np.float32) * np.float32(SIDE_INFO_UNIT_DB)
    frame = RadarFrame(
        frame_number=frame_number,
        subframe_number=subframe,
        version=version,
        platform=platform,
        time_cpu_cycles=cpu_cycles,
        points=_readonly(points),
        has_side_info=side is not None,
        range_profile=profile,
        stats=stats,
    )
    return frame, skipped, unknown


class TIStreamParser:
    """Incremental parser: feed arbitrary byte chunks, get the frames each chunk completes.

    Never raises on malformed input. ``counters`` (a :class:`collections.Counter`) keys:

    - ``frames``, ``points``: accepted frames and their detected points;
    - ``resync_bytes_skipped``: every byte discarded rather than returned in a frame (garbage,
      rejected frames), so accepted frame lengths + this + ``buffered`` = bytes fed;
    - ``rejected_truncated``: frame cut short (declared length runs into the next magic word or
      past the end of stream, or its TLVs overrun the declared length);
    - ``rejected_bad_header``: absurd header values;
    - ``rejected_bad_tlv``: TLV lengths inconsistent with the header, duplicated TLVs, missing
      points TLV;
    - ``rejected_non_finite``: NaN/inf in point coordinates or Doppler;
    - ``unknown_tlv`` / ``skipped_tlv``: TLVs skipped in accepted frames, of an undocumented type
      or of a documented type this parser does not decode.

    The internal buffer never holds more than one maximal frame plus the chunk being processed.
    """

    def __init__(self, max_packet_len: int = MAX_PACKET_LEN) -> None:
        if max_packet_len < HEADER_LEN:
            raise ValueError(f"max_packet_len must be at least {HEADER_LEN}, got {max_packet_len}")
        self.max_packet_len = max_packet_len
        self.counters: Counter[str] = Counter()
        self._buf = bytearray()
        # Where to resume the search for a magic word inside the span of a pending frame, so
        # a large frame arriving in tiny chunks is not rescanned from its start every time.
        self._scan_from = 1

    @property
    def buffered(self) -> int:
        """Bytes currently held waiting for more data."""
        return len(self._buf)

    def feed(self, data: bytes | bytearray | memoryview) -> list[RadarFrame]:
        """Append ``data`` to the stream; return the frames it completed, in stream order."""
        if not data:
            return []
        self._buf += data
        return self._process(final=False)

    def flush(self) -> list[RadarFrame]:
        """End of stream: return any last complete frame and count a truncated remainder."""
        frames = self._process(final=True)
        self._buf.clear()
        self._scan_from = 1
        return frames

    def _process(self, final: bool) -> list[RadarFrame]:
        buf = self._buf
        frames: list[RadarFrame] = []
        pos = 0
        n = len(buf)
        while True:
            start = buf.find(MAGIC, pos)
            if start < 0:
                if final:
                    keep = 0
                else:
                    # A magic word may be split across chunks: keep the longest tail that is a
                    # prefix of it.
                    keep = _magic_prefix_tail(buf, max(pos, n - len(MAGIC) + 1))
                self.counters["resync_bytes_skipped"] += n - pos - keep
                pos = n - keep
                break
            if start > pos:
                self.counters["resync_bytes_skipped"] += start - pos
                self._scan_from = 1
                pos = start

            avail = n - pos
            # The next magic word bounds this frame: a frame whose header or declared length runs
            # into it was cut short, and trusting its length would swallow the frames after it.
            limit = HEADER_LEN
            if avail >= HEADER_LEN:
                header = HEADER_STRUCT.unpack_from(buf, pos + len(MAGIC))
                if not self._header_ok(header):
                    if buf.find(MAGIC, pos + 1, pos + HEADER_LEN + len(MAGIC) - 1) >= 0:
                        self._reject("rejected_truncated")
                    else:
                        self._reject("rejected_bad_header")
                    self.counters["resync_bytes_skipped"] += 1
                    pos += 1
                    self._scan_from = 1
                    continue
                limit = header[1]
            scan_lo = pos + max(self._scan_from, 1)
            scan_hi = pos + min(limit, avail)
            nxt = buf.find(MAGIC, scan_lo, scan_hi + len(MAGIC) - 1) if scan_lo < scan_hi else -1
            if 0 <= nxt < pos + limit:
                self._reject("rejected_truncated")
                self.counters["resync_bytes_skipped"] += nxt - pos
                pos = nxt
                self._scan_from = 1
                continue
            if avail < limit:
                if final:
                    self._reject("rejected_truncated")
                    self.counters["resync_bytes_skipped"] += avail
                    pos = n
                    break
                # A magic word starting in the last 7 bytes is not complete yet: rescan those.
                self._scan_from = max(1, avail - len(MAGIC) + 1)
                break

            total = header[1]
            self._scan_from = 1
            try:
                # A copy, not a view: numpy views would pin the bytearray and forbid resizing it.
                frame, skipped, unknown = _decode_frame(buf[pos : pos + total], header)
            except _Reject as rej:
                self._reject(rej.reason)
                self.counters["resync_bytes_skipped"] += 1
                pos += 1
                continue
            self.counters["frames"] += 1
            self.counters["points"] += frame.num_points
            if skipped:
                self.counters["skipped_tlv"] += skipped
            if unknown:
                self.counters["unknown_tlv"] += unknown
            frames.append(frame)
            pos += total

        del buf[:pos]
        return frames

    def _header_ok(self, header: tuple[int, ...]) -> bool:
        _version, total, _platform, _frame, _cycles, n_obj, n_tlvs, _sub = header
        if not HEADER_LEN <= total <= self.max_packet_len:
            return False
        if n_tlvs > MAX_TLVS or n_obj > MAX_POINTS:
            return False
        # The declared length must at least hold the TLV headers and the announced points.
        return HEADER_LEN + n_tlvs * TLV_HEADER_LEN + n_obj * 16 <= total

    def _reject(self, reason: str) -> None:
        self.counters[reason] += 1


def _magic_prefix_tail(buf: bytearray, lo: int) -> int:
    """Length of the longest suffix of ``buf`` starting at or after ``lo`` that prefixes MAGIC."""
    n = len(buf)
    for start in range(max(lo, n - len(MAGIC) + 1), n):
        if MAGIC.startswith(buf[start:]):
            return n - start
    return 0


def iter_capture(
    path: str | Path, chunk_size: int = 4096, parser: TIStreamParser | None = None
) -> Iterator[RadarFrame]:
    """Yield the frames of a ``.dat`` capture, reading it in ``chunk_size`` pieces.

    Pass ``parser`` to inspect its counters afterwards. Raises :class:`FileNotFoundError` if the
    file is missing and :class:`ValueError` (naming the file) if it holds no valid frame at all.
    """
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be positive, got {chunk_size}")
    path = Path(path)
    parser = parser if parser is not None else TIStreamParser()
    produced = 0
    with path.open("rb") as fh:
        while chunk := fh.read(chunk_size):
            for frame in parser.feed(chunk):
                produced += 1
                yield frame
    for frame in parser.flush():
        produced += 1
        yield frame
    if not produced:
        counts = ", ".join(f"{k}={v}" for k, v in sorted(parser.counters.items())) or "empty file"
        raise ValueError(f"{path}: no valid TI mmWave out-of-box-demo frame found ({counts})")


def read_capture(path: str | Path) -> list[RadarFrame]:
    """Read every valid frame of a ``.dat`` capture; errors as :func:`iter_capture`."""
    return list(iter_capture(path, chunk_size=1 << 16))


# --- CLI-port configuration of a live radar ---------------------------------------------------


class ChirpConfigError(SensorError):
    """The radar CLI rejected a config command, or did not answer it; names the command."""


@dataclass(frozen=True)
class ChirpConfig:
    """A TI CLI ``.cfg``: the command lines to send, in order, and the frame period."""

    commands: tuple[str, ...]
    frame_period_ms: float

    @property
    def frame_rate_hz(self) -> float:
        return 1000.0 / self.frame_period_ms


def parse_chirp_config(text: str) -> ChirpConfig:
    """Parse TI CLI ``.cfg`` text; ``%`` starts a comment. Raises ValueError on a bad frameCfg."""
    commands: list[str] = []
    frame_period_ms: float | None = None
    for lineno, raw in enumerate(text.splitlines(), start=1):
        line = raw.split("%", 1)[0].strip()
        if not line:
            continue
        words = line.split()
        line = " ".join(words)  # the CLI tokenises on single spaces; tabs and runs confuse it
        commands.append(line)
        if words[0] == "frameCfg":
            # frameCfg chirpStart chirpEnd numLoops numFrames framePeriodicity_ms trigger delay
            try:
                period = float(words[5])
            except (IndexError, ValueError):
                raise ValueError(
                    f"chirp config line {lineno}: frameCfg needs a numeric frame period as its "
                    f"5th argument, got {raw.strip()!r}"
                ) from None
            if not period > 0 or period == float("inf"):
                raise ValueError(
                    f"chirp config line {lineno}: frame period must be positive, got {period}"
                )
            frame_period_ms = period
    if frame_period_ms is None:
        raise ValueError("chirp config has no frameCfg line; cannot tell the frame period")
    return ChirpConfig(commands=tuple(commands), frame_period_ms=frame_period_ms)


def send_chirp_config(
    port, lines: Iterable[str] | ChirpConfig, timeout_s: float = 2.0, max_lines: int = 64
) -> list[str]:
    """Send config lines over an open CLI-port ``serial.Serial``; wait for ``Done`` after each.

    ``timeout_s`` bounds each silent wait for a response line (it is set as the port's read
    timeout for the duration and restored afterwards). Returns the response text of each command.
    Raises :class:`ChirpConfigError` naming the command on an ``Error`` response or no answer.
    """
    if isinstance(lines, ChirpConfig):
        lines = lines.commands
    responses: list[str] = []
    old_timeout = port.timeout
    port.timeout = timeout_s
    try:
        reset = getattr(port, "reset_input_buffer", None)
        if reset is not None:
            # A stale "Done" left from an earlier session must not acknowledge our first command.
            reset()
        for cmd in lines:
            port.write((cmd + "\n").encode("ascii"))
            flush = getattr(port, "flush", None)
            if flush is not None:
                flush()
            got: list[str] = []
            for _ in range(max_lines):
                raw = port.readline()
                if not raw:
                    raise ChirpConfigError(
                        f"radar CLI did not answer {cmd!r} within {timeout_s} s "
                        f"(got {' | '.join(got) or 'nothing'}); check the CLI port and baud rate"
                    )
                text = raw.decode("ascii", errors="replace").strip()
                if text:
                    got.append(text)
                if "Error" in text or "not recognized" in text:
                    raise ChirpConfigError(
                        f"radar CLI rejected {cmd!r}: {' | '.join(got)}"
                    )
                if "Done" in text:
                    break
            else:
                raise ChirpConfigError(
                    f"radar CLI sent {max_lines} lines without Done/Error after {cmd!r}"
                )
            responses.append("\n".join(got))
    finally:
        port.timeout = old_timeout
    return responses


def open_data_port(device: str, baud: int = 921600, timeout_s: float = 0.1):
    """Open the radar's data UART as a ``serial.Serial`` (pyserial imported only here)."""
    import serial  # lazy: the parser must import on machines without pyserial

    return serial.Serial(device, baudrate=baud, timeout=timeout_s)


def open_cli_port(device: str, baud: int = 115200, timeout_s: float = 2.0):
    """Open the radar's CLI UART (config commands) as a ``serial.Serial``."""
    import serial  # lazy, as in open_data_port

    return serial.Serial(device, baudrate=baud, timeout=timeout_s)
