"""The shared-memory frame path: ring correctness, slow and dead readers, handles on the wire."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import msgpack
import numpy as np
import pytest
import zmq

from fusion_node import shm
from fusion_node.shm import HandleError, ShmReader, ShmRingWriter, remove_stale_rings, ring_name
from fusion_node.wire import CameraFrame, Rejection, decode, encode
from sensors.publisher import SensorPublisher

from .conftest import ROOT


@pytest.fixture
def shm_dir(tmp_path, monkeypatch):
    d = tmp_path / "shm"
    d.mkdir()
    monkeypatch.setenv("FUSION_SHM_DIR", str(d))
    return d


def _image(seed: int, h: int = 48, w: int = 64) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 255, (h, w, 3), dtype=np.uint8)


def test_ring_round_trip_maps_without_copy_and_lease_holds(shm_dir):
    with ShmRingWriter(ring_name("cam0", 7), 4, 48 * 64 * 3, directory=shm_dir) as ring:
        img = _image(1)
        handle = ring.write(img)
        reader = ShmReader(shm_dir)
        view, lease = reader.resolve("cam0", handle, img.nbytes)
        got = np.frombuffer(view, dtype=np.uint8).reshape(img.shape)
        assert np.array_equal(got, img)
        assert not got.flags.writeable and not got.flags.owndata  # a view of the ring, not a copy
        assert lease.valid()
        assert handle["gen"] % 2 == 0 and handle["gen"] > 0


def test_slow_reader_sees_overwritten_slot_rejected(shm_dir):
    with ShmRingWriter(ring_name("cam0", 7), 4, 100, directory=shm_dir) as ring:
        first = ring.write(np.full(100, 1, np.uint8))
        reader = ShmReader(shm_dir)
        # A reader that resolved the slot, then was too slow: the writer laps the ring meanwhile.
        view, lease = reader.resolve("cam0", first, 100)
        for k in range(4):
            ring.write(np.full(100, 2 + k, np.uint8))
        assert not lease.valid()  # the after-use check catches the overwrite
        # A reader that gets to the handle only now is refused outright.
        with pytest.raises(HandleError) as err:
            reader.resolve("cam0", first, 100)
        assert err.value.reason == "shm_overwritten"
        latest = ring.write(np.full(100, 9, np.uint8))
        view, lease = reader.resolve("cam0", latest, 100)
        assert bytes(view) == bytes([9]) * 100 and lease.valid()


def test_slot_being_written_is_not_handed_out(shm_dir):
    with ShmRingWriter(ring_name("cam0", 1), 2, 10, directory=shm_dir) as ring:
        h0 = ring.write(np.zeros(10, np.uint8))
        ring.write(np.zeros(10, np.uint8))
        slot, _view = ring.acquire(10)  # the writer is in the middle of rewriting slot 0
        assert slot == h0["slot"] and ring.generation(slot) % 2 == 1
        with pytest.raises(HandleError) as err:
            ShmReader(shm_dir).resolve("cam0", h0, 10)
        assert err.value.reason == "shm_overwritten"


def test_dead_reader_does_not_block_the_writer(shm_dir):
    ring = ShmRingWriter(ring_name("cam0", 3), 4, 4096, directory=shm_dir)
    try:
        handle = ring.write(np.full(4096, 5, np.uint8))
        code = (
            "import sys, json\n"
            "from pathlib import Path\n"
            "from fusion_node.shm import ShmReader\n"
            f"view, lease = ShmReader(Path({str(shm_dir)!r})).resolve('cam0', {handle!r}, 4096)\n"
            "print(view[0], lease.valid(), flush=True)\n"
            "sys.stdin.read()\n"  # holds the mapping until killed
        )
        reader = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                  text=True, cwd=ROOT)
        assert reader.stdout.readline().split() == ["5", "True"]
        reader.kill()  # the reader dies holding a mapped slot
        reader.wait()
        for k in range(100):  # the writer goes on at full speed: it never waits for readers
            ring.write(np.full(4096, k % 256, np.uint8))
        assert ring.written == 101
        latest = ring.write(np.full(4096, 77, np.uint8))
        view, lease = ShmReader(shm_dir).resolve("cam0", latest, 4096)
        assert view[0] == 77 and lease.valid()
    finally:
        ring.close()
    assert not (shm_dir / ring.name).exists()


def test_closed_ring_stays_mapped_for_its_readers(shm_dir):
    ring = ShmRingWriter(ring_name("cam0", 4), 2, 8, directory=shm_dir)
    handle = ring.write(np.arange(8, dtype=np.uint8))
    view, lease = ShmReader(shm_dir).resolve("cam0", handle, 8)
    ring.close()  # unlinked; the reader's mapping is its own
    assert bytes(view) == bytes(range(8))


def test_stale_rings_of_dead_writers_are_removed(shm_dir):
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead_pid = int(gone.stdout)
    stale = shm_dir / f"fusion-cam0-{dead_pid}-0000abcd-0"
    stale.write_bytes(b"x" * 64)
    live = shm_dir / f"fusion-cam0-{os.getpid()}-0000abcd-0"
    live.write_bytes(b"x" * 64)
    assert remove_stale_rings(shm_dir) == 1
    assert not stale.exists() and live.exists()


@pytest.mark.parametrize("mutate, reason", [
    (lambda h: {k: v for k, v in h.items() if k != "gen"}, "bad_handle"),
    (lambda h: {**h, "extra": 1}, "bad_handle"),
    (lambda h: {**h, "ring": "../../etc/passwd"}, "bad_handle"),
    (lambda h: {**h, "ring": h["ring"].replace("fusion-cam0-", "fusion-cam9-")}, "bad_handle"),
    (lambda h: {**h, "slot": 99}, "bad_handle"),
    (lambda h: {**h, "gen": h["gen"] + 1}, "bad_handle"),  # odd: never a committed generation
    (lambda h: {**h, "gen": h["gen"] + 2}, "bad_handle"),  # from the future
    (lambda h: {**h, "size": h["size"] - 1}, "bad_handle"),
    (lambda h: {**h, "ring": "fusion-cam0-1-00000000-9"}, "bad_handle"),  # no such ring
    (lambda h: {**h, "slot": -1}, "bad_handle"),
    (lambda h: [1, 2, 3], "bad_handle"),
])
def test_wire_decode_rejects_bad_handles_with_a_reason(shm_dir, mutate, reason):
    img = _image(2)
    with ShmRingWriter(ring_name("cam0", 5), 4, img.nbytes, directory=shm_dir) as ring:
        frames = encode(CameraFrame("cam0", 0, 1_000, 1_000, img), payload_sink=ring.write)
        head = msgpack.unpackb(frames[1])
        good = decode(frames, ShmReader(shm_dir))
        assert isinstance(good, CameraFrame) and np.array_equal(good.image, img)
        head["shm"] = mutate(head["shm"])
        bad = decode([frames[0], msgpack.packb(head), b""], ShmReader(shm_dir))
        assert isinstance(bad, Rejection) and bad.reason == reason, bad


def test_handle_needs_empty_payload_and_a_reader(shm_dir):
    img = _image(3)
    with ShmRingWriter(ring_name("cam0", 6), 4, img.nbytes, directory=shm_dir) as ring:
        frames = encode(CameraFrame("cam0", 0, 1_000, 1_000, img), payload_sink=ring.write)
        assert frames[2] == b""
        rej = decode([frames[0], frames[1], b"xx"], ShmReader(shm_dir))
        assert isinstance(rej, Rejection) and rej.reason == "payload_size"
        rej = decode(frames, False)
        assert isinstance(rej, Rejection) and rej.reason == "bad_handle"


def test_publisher_uses_shm_on_ipc_and_plain_frames_on_tcp(shm_dir, ipc_dir, zctx):
    img = _image(4, 240, 320)  # 230 KB: above the shared-memory threshold
    for endpoint, via_shm in ((f"ipc://{ipc_dir}/cam", True), ("tcp://127.0.0.1:*", False)):
        pub = SensorPublisher("camera", endpoint, "cam0", context=zctx)
        sub = zctx.socket(zmq.SUB)
        sub.setsockopt(zmq.LINGER, 0)
        sub.setsockopt(zmq.SUBSCRIBE, b"camera")
        sub.connect(pub.endpoint)
        try:
            assert pub.wait_for_subscriber(10)
            pub.publish(CameraFrame("cam0", 0, time.monotonic_ns(), 0, img))
            assert sub.poll(10_000)
            frames = sub.recv_multipart()
            head = msgpack.unpackb(frames[1])
            assert ("shm" in head) is via_shm
            assert (len(frames[2]) == 0) is via_shm
            msg = decode(frames, ShmReader(shm_dir))
            assert isinstance(msg, CameraFrame) and np.array_equal(msg.image, img)
            assert (getattr(msg, "shm_lease", None) is not None) is via_shm
        finally:
            sub.close(0)
            pub.close()
    assert not list(shm_dir.iterdir())  # the publisher unlinked its ring on close


def test_shm_can_be_turned_off(monkeypatch):
    assert shm.shm_wanted("ipc:///tmp/x")
    assert not shm.shm_wanted("tcp://127.0.0.1:5551")
    monkeypatch.setenv("FUSION_SHM", "0")
    assert not shm.shm_wanted("ipc:///tmp/x")
