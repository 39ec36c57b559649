"""Tests of the TI mmWave out-of-box-demo parser (``sensors.ti_mmwave``) and writer (``sensors.ti_writer``).

Every test of the stream parser runs on two captures: the project's own, written by its TI
writer (frames with and without points, side info, range profile and statistics records,
padded as the radar pads them), and, when the development data is present, the real IWR6843
capture from TI's toolbox (101 frames, 825 points; skipped with the reason otherwise). Every
damaged stream is built from a capture (truncated, garbage-laced, bit-flipped, corrupted
headers, injected NaN) and must yield exactly the intact frames, with the damage counted.
"""

from __future__ import annotations

import gzip
import math
import random
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from fusion_node.vocabulary import RADAR_POINT_FIELDS
from sensors.ti_mmwave import (
    MAGIC,
    STATS_FIELDS,
    TLV_TYPES,
    ChirpConfig,
    ChirpConfigError,
    RadarFrame,
    TIStreamParser,
    iter_capture,
    parse_chirp_config,
    read_capture,
    send_chirp_config,
)
from sensors.ti_writer import (
    PACKET_ALIGN,
    PLATFORM_IWR6843,
    SDK_VERSION,
    encode_capture,
    encode_frame,
    write_capture,
)

from .conftest import shared_file

REAL_IWR6843 = "radar/ti_iwr6843_oob_automated_doors_2019-12-04.dat"
REAL_VITAL_SIGNS = "corpus/radar/ti_vital_signs/ti_iwr1642_vital_signs_dataOutputFromEVM_AN.bin"
REAL_RADHAR = "corpus/radar/radhar/radhar_iwr1443_train___20_walk_1.txt.gz"
REJECTIONS = (
    "rejected_truncated",
    "rejected_bad_header",
    "rejected_bad_tlv",
    "rejected_non_finite",
)

# The project's own capture: frame numbers, and which frames carry no points.
OWN_FIRST = 1000
OWN_FRAMES = 64
OWN_BINS = 256


def own_points(seed: int = 0) -> list[np.ndarray]:
    """Points of the project's capture: every seventh frame empty, up to 24 points in the others."""
    rng = np.random.default_rng(seed)
    out = []
    for k in range(OWN_FRAMES):
        n = 0 if k % 7 == 3 else int(rng.integers(1, 25))
        out.append(np.column_stack([rng.uniform(-5, 5, n), rng.uniform(0.2, 10, n), rng.uniform(-1, 2, n),
                                    rng.uniform(-3, 3, n), rng.uniform(5, 40, n), rng.uniform(40, 90, n)]))
    return out


def own_profile(k: int) -> np.ndarray:
    return ((np.arange(OWN_BINS) * 37 + 11 * k) % 65536).astype(np.uint16)


def own_stats(k: int) -> dict[str, int]:
    return {name: 1000 * (j + 1) + k for j, name in enumerate(STATS_FIELDS)}


def own_capture() -> bytes:
    return b"".join(encode_frame(OWN_FIRST + k, pts, range_profile=own_profile(k), stats=own_stats(k),
                                 time_cpu_cycles=123_456 * k)
                    for k, pts in enumerate(own_points()))


@dataclass
class Capture:
    """A capture under test and what is known about it."""

    name: str
    raw: bytes
    n_frames: int
    n_points: int
    first_frame_number: int


@pytest.fixture(scope="module", params=["own", "ti_iwr6843"])
def capture(request) -> Capture:
    if request.param == "own":
        pts = own_points()
        return Capture("own", own_capture(), OWN_FRAMES, sum(len(p) for p in pts), OWN_FIRST)
    return Capture("ti_iwr6843", shared_file(REAL_IWR6843).read_bytes(), 101, 825, 209)


@pytest.fixture(scope="module")
def raw(capture: Capture) -> bytes:
    return capture.raw


@pytest.fixture(scope="module")
def raw_frames(capture: Capture) -> list[bytes]:
    """The capture split into its frames' bytes, walking the declared lengths."""
    raw, out, pos = capture.raw, [], 0
    while pos < len(raw):
        assert raw[pos : pos + 8] == MAGIC
        (total,) = struct.unpack_from("<I", raw, pos + 12)
        out.append(raw[pos : pos + total])
        pos += total
    assert len(out) == capture.n_frames
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


def frame_number(raw_frame: bytes) -> int:
    return struct.unpack_from("<I", raw_frame, 20)[0]


# --- the captures as they are -------------------------------------------------------------------


def test_real_capture_frames():
    path = shared_file(REAL_IWR6843)
    frames = read_capture(path)
    assert len(frames) == 101
    assert [f.frame_number for f in frames] == list(range(209, 310))
    assert sum(f.num_points for f in frames) == 825
    for f in frames:
        assert f.points.dtype == np.float32
        assert f.points.shape == (f.num_points, len(RADAR_POINT_FIELDS))
        assert np.isfinite(f.points).all()
        assert f.has_side_info == (f.num_points > 0)
        assert not f.points.flags.writeable
        assert f.platform == 0x000A6843 and f.version == 0x03030002
        assert f.subframe_number == 0
        assert f.range_profile is not None and f.range_profile.dtype == np.uint16
        assert f.range_profile.shape == (256,)
        assert f.stats is not None and set(f.stats) == set(STATS_FIELDS)
    pts = np.concatenate([f.points for f in frames])
    # SNR and noise floor arrive as int16 in 0.1 dB: plausible dB values, not raw counts.
    snr = pts[:, RADAR_POINT_FIELDS.index("snr_db")]
    noise = pts[:, RADAR_POINT_FIELDS.index("noise_db")]
    assert 0 < snr.min() and snr.max() < 100
    assert 0 < noise.min() and noise.max() < 150
    # A door scene seen from a few metres: ranges inside the demo's ~10 m reach.
    rng_m = np.linalg.norm(pts[:, :3], axis=1)
    assert rng_m.max() < 20


def test_own_capture_round_trips_what_was_written():
    frames = read_capture_bytes(own_capture())
    written = own_points()
    assert [f.frame_number for f in frames] == list(range(OWN_FIRST, OWN_FIRST + OWN_FRAMES))
    for k, (f, pts) in enumerate(zip(frames, written)):
        assert f.points.shape == (len(pts), len(RADAR_POINT_FIELDS)) and not f.points.flags.writeable
        np.testing.assert_array_equal(f.points[:, :4], pts[:, :4].astype(np.float32))
        # snr/noise travel as tenths of a decibel.
        assert np.abs(f.points[:, 4:] - pts[:, 4:]).max(initial=0) <= 0.05 + 1e-4
        assert f.has_side_info == (len(pts) > 0)
        assert f.version == SDK_VERSION and f.platform == PLATFORM_IWR6843
        assert f.time_cpu_cycles == 123_456 * k and f.subframe_number == 0
        np.testing.assert_array_equal(f.range_profile, own_profile(k))
        assert f.stats == own_stats(k)


def read_capture_bytes(data: bytes) -> list[RadarFrame]:
    frames, parser = parse(data)
    assert rejections(parser) == {} and parser.counters["resync_bytes_skipped"] == 0
    return frames


def test_capture_counters(capture: Capture, raw: bytes):
    frames, parser = parse(raw)
    assert len(frames) == capture.n_frames
    c = parser.counters
    assert c["frames"] == capture.n_frames and c["points"] == capture.n_points
    assert c["resync_bytes_skipped"] == 0
    assert rejections(parser) == {}
    assert c["unknown_tlv"] == 0 and c["skipped_tlv"] == 0
    assert parser.buffered == 0
    assert [f.frame_number for f in frames] == list(range(capture.first_frame_number,
                                                          capture.first_frame_number + capture.n_frames))


@pytest.mark.parametrize("seed", [0, 1, 2, 3, 4])
def test_random_chunks_match_whole_file(capture: Capture, raw: bytes, reference: list[RadarFrame], seed: int):
    frames, parser = parse(raw, seed=seed)
    assert frames == reference
    assert parser.counters["frames"] == capture.n_frames and rejections(parser) == {}


def test_byte_at_a_time_and_iter_capture(raw: bytes, reference: list[RadarFrame], tmp_path: Path):
    frames, _ = parse(raw, seed=99, max_chunk=1)
    assert frames == reference
    path = tmp_path / "capture.dat"
    path.write_bytes(raw)
    assert list(iter_capture(path, chunk_size=13)) == reference


def test_frames_are_yielded_as_soon_as_complete(raw_frames: list[bytes]):
    parser = TIStreamParser()
    first = raw_frames[0]
    assert parser.feed(first[:-1]) == []
    got = parser.feed(first[-1:])
    assert [f.frame_number for f in got] == [frame_number(first)]
    assert parser.buffered == 0


# --- the writer: every record type, padding -----------------------------------------------------


def test_every_tlv_type_the_format_defines():
    pts = np.array([[1.0, 4.0, 0.5, -0.75, 21.3, 60.1], [-2.0, 7.5, 1.0, 1.25, 14.0, 55.5]])
    extra = [(3, own_profile(7)), (4, np.arange(64, dtype="<i2")), (5, np.arange(32, dtype="<u2")),
             (8, np.arange(16, dtype="<i2")), (9, struct.pack("<I10H", 77, *range(10)))]
    data = encode_frame(5, pts, range_profile=own_profile(1), stats=own_stats(2), extra_tlvs=extra)
    assert struct.unpack_from("<I", data, 32)[0] == 9  # numTLVs
    types, off = [], 40
    for _ in range(9):
        t, n = struct.unpack_from("<2I", data, off)
        types.append(t)
        off += 8 + n
    assert sorted(types) == sorted(TLV_TYPES) == list(range(1, 10))
    assert len(data) % PACKET_ALIGN == 0 and not data[off:].strip(b"\x00")  # zero padding after the records
    frames, parser = parse(data)
    assert rejections(parser) == {} and parser.counters["skipped_tlv"] == 5 and parser.counters["unknown_tlv"] == 0
    (f,) = frames
    np.testing.assert_allclose(f.points, pts, atol=0.05)
    np.testing.assert_array_equal(f.range_profile, own_profile(1))
    assert f.stats == own_stats(2) and f.has_side_info


def test_writer_refuses_what_the_format_cannot_hold():
    with pytest.raises(ValueError, match="not one the format defines"):
        encode_frame(1, None, extra_tlvs=[(10, b"\x00" * 4)])
    with pytest.raises(ValueError, match="finite"):
        encode_frame(1, np.array([[0.0, 1.0, math.nan, 0.0]]))
    with pytest.raises(ValueError, match=r"\(N, 4..6\)"):
        encode_frame(1, np.zeros((3, 3)))


def test_undefined_tlv_type_is_counted_unknown():
    data = bytearray(encode_frame(5, None, extra_tlvs=[(9, b"\x01\x02\x03\x04")]))
    struct.pack_into("<I", data, 40, 42)  # the record's type: one the format does not define
    frames, parser = parse(bytes(data))
    assert len(frames) == 1 and parser.counters["unknown_tlv"] == 1 and rejections(parser) == {}


@pytest.mark.parametrize("align", [1, 4, PACKET_ALIGN, 64])
def test_padding_to_any_alignment_reads_the_same(align: int):
    pts = own_points()
    data = encode_capture(pts[:12], first_frame_number=7, align=align, stats=own_stats(0))
    frames, parser = parse(data, seed=align)
    unpadded, _ = parse(encode_capture(pts[:12], first_frame_number=7, align=1, stats=own_stats(0)))
    assert frames == unpadded and len(frames) == 12
    assert rejections(parser) == {} and parser.counters["resync_bytes_skipped"] == 0
    pos = 0
    for _ in range(12):
        (total,) = struct.unpack_from("<I", data, pos + 12)
        assert total % align == 0
        pos += total
    assert pos == len(data)


def test_write_capture_and_empty_frames(tmp_path: Path):
    path = write_capture(tmp_path / "w.dat", [np.zeros((0, 6)), np.array([[0.0, 2.0, 0.0, 0.5]])],
                         first_frame_number=41)
    frames = read_capture(path)
    assert [(f.frame_number, f.num_points, f.has_side_info) for f in frames] == [(41, 0, False), (42, 1, True)]
    assert frames[1].points[0, 4:].tolist() == [20.0, 10.0]  # side info the points did not carry


# --- bit flips ----------------------------------------------------------------------------------


@pytest.mark.parametrize("seed", range(8))
def test_bit_flips_lose_only_the_frames_they_hit(raw_frames, reference, seed: int):
    rng = random.Random(seed)
    data = bytearray(b"".join(raw_frames))
    starts = np.cumsum([0] + [len(f) for f in raw_frames])
    hit = set()
    for _ in range(rng.randint(1, 6)):
        bit = rng.randrange(len(data) * 8)
        data[bit // 8] ^= 1 << (bit % 8)
        hit.add(int(np.searchsorted(starts, bit // 8, side="right")) - 1)
    for chunking in (None, seed):
        frames, parser = parse(bytes(data), seed=chunking, max_chunk=900)
        # Every frame no flip touched comes out unchanged and in order.
        pos = 0
        for i, ref in enumerate(reference):
            if i in hit:
                continue
            while pos < len(frames) and frames[pos] != ref:
                pos += 1
            assert pos < len(frames), f"untouched frame {i} lost (flips in frames {sorted(hit)})"
        assert len(frames) <= len(reference)
        assert len(frames) >= len(reference) - len(hit)
        assert parser.buffered == 0


# --- truncation ---------------------------------------------------------------------------------


def test_truncated_last_frame(raw: bytes, reference: list[RadarFrame], tmp_path: Path):
    cut = raw[: len(raw) - 300]
    for seed in (None, 7):
        frames, parser = parse(cut, seed=seed)
        assert frames == reference[:-1]
        assert rejections(parser) == {"rejected_truncated": 1}
    path = tmp_path / "cut.dat"
    path.write_bytes(cut)
    parser = TIStreamParser()
    assert list(iter_capture(path, parser=parser)) == reference[:-1]
    assert parser.counters["rejected_truncated"] == 1


def test_truncated_frame_is_held_until_flush(raw: bytes, reference: list[RadarFrame]):
    parser = TIStreamParser()
    frames = parser.feed(raw[:-10])
    assert len(frames) == len(reference) - 1 and parser.counters["rejected_truncated"] == 0
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
    assert [f.frame_number for f in parser.feed(raw_frames[6][40:])] == [frame_number(raw_frames[6])]


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
    assert data.count(MAGIC) == len(raw_frames)

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
def test_undecoded_tlv_is_skipped(capture, raw_frames, reference, new_type: int, counter: str):
    i = first_frame_with_points(raw_frames)
    n = struct.unpack_from("<I", raw_frames[i], 28)[0]
    stats_type_at = 40 + (8 + n * 16) + (8 + n * 4) + (8 + 512)
    assert struct.unpack_from("<I", raw_frames[i], stats_type_at)[0] == 6
    patched = _patch_u32(raw_frames[i], stats_type_at, new_type)
    frames, parser = parse(b"".join(raw_frames[:i]) + patched + b"".join(raw_frames[i + 1 :]))
    assert len(frames) == capture.n_frames and rejections(parser) == {}
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


# --- other streams that are not out-of-box-demo frames ------------------------------------------


def test_vital_signs_demo_stream_is_rejected_not_misread():
    """TI's vital-signs demo uses the same magic word and header, but its header counts 99 objects in a
    288-byte packet and its records mean other things: nothing of it may come out as points."""
    raw = shared_file(REAL_VITAL_SIGNS).read_bytes()
    n_packets = raw.count(MAGIC)
    assert n_packets == 3096
    for seed in (None, 5):
        frames, parser = parse(raw, seed=seed, max_chunk=4000)
        assert frames == []
        assert rejections(parser) == {"rejected_bad_header": n_packets}
        assert parser.counters["resync_bytes_skipped"] == len(raw) and parser.buffered == 0
    with pytest.raises(ValueError, match="ti_iwr1642_vital_signs.*no valid TI mmWave"):
        read_capture(shared_file(REAL_VITAL_SIGNS))


def test_radhar_text_dump_holds_no_frame():
    """RadHAR's recordings are ROS text dumps of points, not the UART stream: the parser finds no frame."""
    text = gzip.decompress(shared_file(REAL_RADHAR).read_bytes())
    assert text.startswith(b"header:") and MAGIC not in text
    frames, parser = parse(text, seed=1)
    assert frames == [] and parser.counters["resync_bytes_skipped"] == len(text) and rejections(parser) == {}


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
