"""Tests of sensors.ti_mmwave against the real IWR6843 out-of-box-demo capture.

Every damaged stream is built from the real capture (truncated, garbage-laced, corrupted
headers, injected NaN) and must yield exactly the intact frames, with the damage counted.
"""

from __future__ import annotations

import math
import random
import struct
from pathlib import Path

import numpy as np
import pytest

from sensors.ti_mmwave import (
    POINT_FIELDS,
    ChirpConfig,
    ChirpConfigError,
    RadarFrame,
    TIStreamParser,
    iter_capture,
    parse_chirp_config,
    read_capture,
    send_chirp_config,
)

ROOT = Path(__file__).resolve().parents[1]
SAMPLE = ROOT / "sensors/samples/radar/ti_iwr6843_oob_automated_doors_2019-12-04.dat"
MAGIC = bytes((0x02, 0x01, 0x04, 0x03, 0x06, 0x05, 0x08, 0x07))
REJECTIONS = (
    "rejected_truncated",
    "rejected_bad_header",
    "rejected_bad_tlv",
    "rejected_non_finite",
)


@pytest.fixture(scope="module")
def raw() -> bytes:
    return SAMPLE.read_bytes()


@pytest.fixture(scope="module")
def raw_frames(raw: bytes) -> list[bytes]:
    """The capture split into its frames' bytes, walking the declared lengths."""
    out, pos = [], 0
    while pos < len(raw):
        assert raw[pos : pos + 8] == MAGIC
        (total,) = struct.unpack_from("<I", raw, pos + 12)
        out.append(raw[pos : pos + total])
        pos += total
    assert len(out) == 101
    return out


@pytest.fixture(scope="module")
def reference(raw: bytes) -> list[RadarFrame]:
    frames, _ = parse(raw)
    return frames


def parse(data: bytes, seed: int | None = None, max_chunk: int = 5000):
    """Parse ``data`` whole (seed None) or in random chunks; return (frames, parser)."""
    parser = TIStreamParser()
    frames: list[RadarFrame] = []
    if seed is None:
        frames += parser.feed(data)
    else:
        rng = random.Random(seed)
        pos = 0
        while pos < len(data):
            step = rng.randint(1, max_chunk)
            frames += parser.feed(data[pos : pos + step])
            pos += step
    frames += parser.flush()
    return frames, parser


def rejections(parser: TIStreamParser) -> dict[str, int]:
    return {k: parser.counters[k] for k in REJECTIONS if parser.counters[k]}


def accepted_bytes(frames_raw: list[bytes], frames: list[RadarFrame]) -> int:
    by_number = {struct.unpack_from("<I", f, 20)[0]: len(f) for f in frames_raw}
    return sum(by_number[f.frame_number] for f in frames)


def first_frame_with_points(raw_frames: list[bytes], start: int = 10) -> int:
    for i in range(start, len(raw_frames)):
        if struct.unpack_from("<I", raw_frames[i], 28)[0] > 1:
            return i
    raise AssertionError("capture has no frame with points")


# --- the real capture ---------------------------------------------------------------------------


def test_real_capture_frames():
    frames = read_capture(SAMPLE)
    assert len(frames) == 101
    assert [f.frame_number for f in frames] == list(range(209, 310))
    assert sum(f.num_points for f in frames) == 825
    for f in frames:
        assert f.points.dtype == np.float32
        assert f.points.shape == (f.num_points, len(POINT_FIELDS))
        assert np.isfinite(f.points).all()
        assert f.has_side_info == (f.num_points > 0)
        assert not f.points.flags.writeable
        assert f.platform == 0x000A6843 and f.version == 0x03030002
        assert f.subframe_number == 0
        assert f.range_profile is not None and f.range_profile.dtype == np.uint16
        assert f.range_profile.shape == (256,)
        assert f.stats is not None and set(f.stats) == {
            "interFrameProcessingTime",
            "transmitOutTime",
            "interFrameProcessingMargin",
            "interChirpProcessingMargin",
            "activeFrameCPULoad",
            "interFrameCPULoad",
        }
    pts = np.concatenate([f.points for f in frames])
    # SNR and noise floor arrive as int16 in 0.1 dB: plausible dB values, not raw counts.
    snr = pts[:, POINT_FIELDS.index("snr_db")]
    noise = pts[:, POINT_FIELDS.index("noise_db")]
    assert 0 < snr.min() and snr.max() < 100
    assert 0 < noise.min() and noise.max() < 150
    # A door scene seen from a few metres: ranges inside the demo's ~10 m reach.
    rng_m = np.linalg.norm(pts[:, :3], axis=1)
    assert rng_m.max() < 20


def test_real_capture_counters(raw: bytes):
    frames, parser = parse(raw)
    assert len(frames) == 101
    c = parser.counters
    assert c["frames"] == 101 and c["points"] == 825
    assert c["resync_bytes_skipped"] == 0
    assert rejections(parser) == {}
    assert c["unknown_tlv"] == 0 and c["skipped_tlv"] == 0
    assert parser.buffered == 0


@pytest.mark.parametrize("seed", [0, 1, 2, 3, 4])
def test_random_chunks_match_whole_file(raw: bytes, reference: list[RadarFrame], seed: int):
    frames, parser = parse(raw, seed=seed)
    assert frames == reference
    assert parser.counters["frames"] == 101 and rejections(parser) == {}


def test_byte_at_a_time_and_iter_capture(raw: bytes, reference: list[RadarFrame]):
    frames, _ = parse(raw, seed=99, max_chunk=1)
    assert frames == reference
    assert list(iter_capture(SAMPLE, chunk_size=13)) == reference


def test_frames_are_yielded_as_soon_as_complete(raw_frames: list[bytes]):
    parser = TIStreamParser()
    first = raw_frames[0]
    assert parser.feed(first[:-1]) == []
    got = parser.feed(first[-1:])
    assert [f.frame_number for f in got] == [209]
    assert parser.buffered == 0


# --- truncation ---------------------------------------------------------------------------------


def test_truncated_last_frame(raw: bytes, reference: list[RadarFrame], tmp_path: Path):
    cut = raw[: len(raw) - 300]
    for seed in (None, 7):
        frames, parser = parse(cut, seed=seed)
        assert frames == reference[:100]
        assert rejections(parser) == {"rejected_truncated": 1}
    path = tmp_path / "cut.dat"
    path.write_bytes(cut)
    parser = TIStreamParser()
    assert list(iter_capture(path, parser=parser)) == reference[:100]
    assert parser.counters["rejected_truncated"] == 1


def test_truncated_frame_is_held_until_flush(raw: bytes):
    parser = TIStreamParser()
    frames = parser.feed(raw[:-10])
    assert len(frames) == 100 and parser.counters["rejected_truncated"] == 0
    assert parser.flush() == []
    assert parser.counters["rejected_truncated"] == 1
    assert parser.buffered == 0


@pytest.mark.parametrize("keep", [20, 39, 40, 47, 48, 300, -1])
def test_truncated_middle_frame(raw_frames, reference, keep: int):
    """Frame 50 cut after ``keep`` bytes, the stream resuming at frame 53's magic word."""
    cut = raw_frames[50][:keep]
    data = b"".join(raw_frames[:50]) + cut + b"".join(raw_frames[53:])
    expected = reference[:50] + reference[53:]
    for seed in (None, 11, 12):
        frames, parser = parse(data, seed=seed, max_chunk=700)
        assert frames == expected
        assert rejections(parser) == {"rejected_truncated": 1}
        assert parser.counters["resync_bytes_skipped"] == len(cut)
        assert accepted_bytes(raw_frames, frames) + len(cut) == len(data)


@pytest.mark.parametrize("split", range(1, 8))
def test_magic_split_across_chunks_ends_truncated_frame_early(raw_frames, split: int):
    """The next magic word arriving in two chunks still cuts the pending frame short at once."""
    head = b"".join(raw_frames[:5]) + raw_frames[5][:300]
    parser = TIStreamParser()
    assert len(parser.feed(head + MAGIC[:split])) == 5
    assert parser.counters["rejected_truncated"] == 0
    parser.feed(raw_frames[6][split:40])  # far less than frame 5's declared length
    assert parser.counters["rejected_truncated"] == 1
    assert [f.frame_number for f in parser.feed(raw_frames[6][40:])] == [215]


# --- garbage ------------------------------------------------------------------------------------


def _garbage(rng: random.Random) -> bytes:
    parts = []
    for _ in range(rng.randint(0, 4)):
        kind = rng.random()
        if kind < 0.4:
            parts.append(MAGIC[: rng.randint(1, 7)])  # partial magic words
        elif kind < 0.6:
            parts.append(MAGIC[:4])
        else:
            parts.append(rng.randbytes(rng.randint(1, 300)))
    return b"".join(parts)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_garbage_between_frames(raw_frames, reference, seed: int):
    rng = random.Random(seed)
    pieces, garbage_len = [], 0
    for f in raw_frames:
        g = _garbage(rng)
        pieces += [g, f]
        garbage_len += len(g)
    tail = b"junk" + MAGIC[:5]
    pieces.append(tail)
    garbage_len += len(tail)
    data = b"".join(pieces)
    # The garbage must not have formed a real magic word anywhere, or the test would be moot.
    assert data.count(MAGIC) == 101

    parser = TIStreamParser()
    frames = parser.feed(data)
    assert parser.buffered <= 7  # only the possible start of a magic word is retained
    frames += parser.flush()
    assert frames == reference
    assert rejections(parser) == {}
    assert parser.counters["resync_bytes_skipped"] == garbage_len

    frames, parser = parse(data, seed=seed + 100)
    assert frames == reference
    assert rejections(parser) == {}
    assert parser.counters["resync_bytes_skipped"] == garbage_len


def test_endless_garbage_keeps_buffer_bounded():
    rng = random.Random(5)
    parser = TIStreamParser()
    fed = 0
    for i in range(500):
        chunk = rng.randbytes(4096).replace(MAGIC[:2], b"\xff\xff")
        if i % 3 == 0:
            chunk += MAGIC[:7]  # tempt it to hold a possible magic word start
        assert parser.feed(chunk) == []
        fed += len(chunk)
        assert parser.buffered <= 7
    assert parser.counters["resync_bytes_skipped"] + parser.buffered == fed
    assert parser.flush() == []
    assert parser.counters["resync_bytes_skipped"] == fed


# --- corrupted headers and TLVs -----------------------------------------------------------------


def _patch_u32(frame: bytes, offset: int, value: int) -> bytes:
    b = bytearray(frame)
    struct.pack_into("<I", b, offset, value)
    return bytes(b)


# Offsets in a frame with points: header fields, then TLV 1 (points) then TLV 7 (side info).
_CORRUPTIONS = {
    "huge_num_obj": (28, lambda n, t: 0xFFFFFFFF, "rejected_bad_header"),
    "num_obj_over_10000": (28, lambda n, t: 10_001, "rejected_bad_header"),
    "huge_total_len": (12, lambda n, t: 0xFFFFFFF0, "rejected_bad_header"),
    "total_len_2MiB": (12, lambda n, t: 2 << 20, "rejected_bad_header"),
    "total_len_below_header": (12, lambda n, t: 8, "rejected_bad_header"),
    "many_tlvs": (32, lambda n, t: 1000, "rejected_bad_header"),
    # Plausible but long: must not swallow the frames that follow.
    "long_total_len": (12, lambda n, t: 100_000, "rejected_truncated"),
    # Short: the TLVs run past the declared end.
    "short_total_len": (12, lambda n, t: t - 32, "rejected_truncated"),
    "num_obj_off_by_one": (28, lambda n, t: n - 1, "rejected_bad_tlv"),
    "points_tlv_len": (44, lambda n, t: n * 16 - 4, "rejected_bad_tlv"),
}


@pytest.mark.parametrize("name", sorted(_CORRUPTIONS))
def test_corrupted_header_rejected_by_reason(raw_frames, reference, name: str):
    offset, value, reason = _CORRUPTIONS[name]
    i = first_frame_with_points(raw_frames)
    n, total = struct.unpack_from("<I", raw_frames[i], 28)[0], len(raw_frames[i])
    bad = _patch_u32(raw_frames[i], offset, value(n, total))
    data = b"".join(raw_frames[:i]) + bad + b"".join(raw_frames[i + 1 :])
    expected = reference[:i] + reference[i + 1 :]
    for seed in (None, 21):
        frames, parser = parse(data, seed=seed)
        assert frames == expected
        assert rejections(parser) == {reason: 1}
        assert parser.counters["resync_bytes_skipped"] == len(bad)


def test_side_info_length_mismatch(raw_frames, reference):
    i = first_frame_with_points(raw_frames)
    n = struct.unpack_from("<I", raw_frames[i], 28)[0]
    side_len_at = 40 + 8 + n * 16 + 4
    assert struct.unpack_from("<I", raw_frames[i], side_len_at - 4)[0] == 7
    bad = _patch_u32(raw_frames[i], side_len_at, n * 4 + 4)
    frames, parser = parse(b"".join(raw_frames[:i]) + bad + b"".join(raw_frames[i + 1 :]))
    assert frames == reference[:i] + reference[i + 1 :]
    assert rejections(parser) == {"rejected_bad_tlv": 1}


@pytest.mark.parametrize("new_type, counter", [(99, "unknown_tlv"), (3, "skipped_tlv")])
def test_undecoded_tlv_is_skipped(raw_frames, reference, new_type: int, counter: str):
    i = first_frame_with_points(raw_frames)
    n = struct.unpack_from("<I", raw_frames[i], 28)[0]
    stats_type_at = 40 + (8 + n * 16) + (8 + n * 4) + (8 + 512)
    assert struct.unpack_from("<I", raw_frames[i], stats_type_at)[0] == 6
    patched = _patch_u32(raw_frames[i], stats_type_at, new_type)
    frames, parser = parse(b"".join(raw_frames[:i]) + patched + b"".join(raw_frames[i + 1 :]))
    assert len(frames) == 101 and rejections(parser) == {}
    assert parser.counters[counter] == 1
    assert frames[i].stats is None
    assert np.array_equal(frames[i].points, reference[i].points)


@pytest.mark.parametrize("column, value", [(0, math.nan), (2, math.inf), (3, -math.inf)])
def test_non_finite_point_rejected(raw_frames, reference, column: int, value: float):
    i = first_frame_with_points(raw_frames)
    b = bytearray(raw_frames[i])
    struct.pack_into("<f", b, 40 + 8 + 16 + 4 * column, value)  # second point
    data = b"".join(raw_frames[:i]) + bytes(b) + b"".join(raw_frames[i + 1 :])
    frames, parser = parse(data, seed=3)
    assert frames == reference[:i] + reference[i + 1 :]
    assert rejections(parser) == {"rejected_non_finite": 1}


# --- capture files ------------------------------------------------------------------------------


def test_empty_and_garbage_files_raise_naming_the_file(tmp_path: Path):
    empty = tmp_path / "empty.dat"
    empty.write_bytes(b"")
    with pytest.raises(ValueError, match="empty.dat"):
        read_capture(empty)
    junk = tmp_path / "junk.dat"
    junk.write_bytes(random.Random(1).randbytes(10_000).replace(MAGIC[:2], b"..") + MAGIC[:6])
    with pytest.raises(ValueError, match="junk.dat"):
        read_capture(junk)
    with pytest.raises(FileNotFoundError):
        read_capture(tmp_path / "missing.dat")


def test_file_of_only_rejected_frames_raises(tmp_path: Path, raw_frames):
    path = tmp_path / "allbad.dat"
    path.write_bytes(_patch_u32(raw_frames[0], 32, 1000) + raw_frames[1][:100])
    with pytest.raises(ValueError, match="allbad.dat"):
        read_capture(path)


# --- chirp configuration ------------------------------------------------------------------------

CFG = """\
% ***************************************************************
% Created for SDK ver:03.03
% Frame Duration(msec):100
% ***************************************************************
sensorStop
flushCfg
dfeDataOutputMode 1
channelCfg 15 7 0
adcCfg 2 1
profileCfg 0 60 359 7 57.14 0 0 70 1 256 5209 0 0 158

chirpCfg 0 0 0 0 0 0 0 1
chirpCfg 1 1 0 0 0 0 0 4
chirpCfg 2 2 0 0 0 0 0 2
frameCfg  0 2 16 0 100 1 0
guiMonitor -1 1 1 0 0 0 1   % points, range profile, stats, side info
sensorStart
"""


def test_parse_chirp_config():
    cfg = parse_chirp_config(CFG)
    assert isinstance(cfg, ChirpConfig)
    assert cfg.frame_period_ms == 100.0
    assert cfg.frame_rate_hz == pytest.approx(10.0)
    assert cfg.commands[0] == "sensorStop" and cfg.commands[-1] == "sensorStart"
    assert len(cfg.commands) == 12
    assert "frameCfg 0 2 16 0 100 1 0" in cfg.commands
    assert "guiMonitor -1 1 1 0 0 0 1" in cfg.commands
    assert not any(c.startswith("%") or "%" in c for c in cfg.commands)


@pytest.mark.parametrize(
    "text", ["sensorStop\nsensorStart\n", "frameCfg 0 2 16 0\n", "frameCfg 0 2 16 0 0 1 0\n"]
)
def test_parse_chirp_config_rejects_bad_frame_cfg(text: str):
    with pytest.raises(ValueError, match="frameCfg|frame period"):
        parse_chirp_config(text)


class FakeCliPort:
    """Stands in for the radar's CLI UART: echoes each command, then answers it."""

    def __init__(self, fail_on: str | None = None, silent_on: str | None = None):
        self.fail_on, self.silent_on = fail_on, silent_on
        self.timeout = 5.0
        self.written: list[str] = []
        self._rx: list[bytes] = [b"Done\r\n"]  # stale answer from an earlier session

    def reset_input_buffer(self):
        self._rx.clear()

    def write(self, data: bytes) -> int:
        cmd = data.decode().rstrip("\n")
        self.written.append(cmd)
        self._rx.append(cmd.encode() + b"\r\n")
        if self.silent_on and cmd.startswith(self.silent_on):
            return len(data)
        if self.fail_on and cmd.startswith(self.fail_on):
            self._rx += [b"Error -1\r\n", b"mmwDemo:/>"]
        else:
            self._rx += [b"\r\n", b"Done\r\n", b"mmwDemo:/>"]
        return len(data)

    def readline(self) -> bytes:
        return self._rx.pop(0) if self._rx else b""


def test_send_chirp_config_ok():
    cfg = parse_chirp_config(CFG)
    port = FakeCliPort()
    responses = send_chirp_config(port, cfg, timeout_s=0.5)
    assert port.written == list(cfg.commands)
    assert len(responses) == len(cfg.commands) and all("Done" in r for r in responses)
    assert port.timeout == 5.0


def test_send_chirp_config_error_names_the_command():
    cfg = parse_chirp_config(CFG)
    port = FakeCliPort(fail_on="profileCfg")
    with pytest.raises(ChirpConfigError, match="profileCfg 0 60 359") as exc:
        send_chirp_config(port, cfg.commands, timeout_s=0.5)
    assert "Error -1" in str(exc.value)
    assert port.written[-1].startswith("profileCfg")  # nothing sent after the failure
    assert port.timeout == 5.0


def test_send_chirp_config_no_answer_names_the_command():
    port = FakeCliPort(silent_on="sensorStart")
    with pytest.raises(ChirpConfigError, match="did not answer 'sensorStart'"):
        send_chirp_config(port, ["sensorStop", "sensorStart"], timeout_s=0.5)
