"""The shared-memory frame path: ring correctness, slow and dead readers, handles on the wire, and
rings that a hostile or broken process on the same host tries to turn against the reader."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
import tracemalloc

import msgpack
import numpy as np
import pytest
import zmq

from fusion_node import shm
from fusion_node.config import config_from_dict
from fusion_node.shm import REFUSAL_CAUSES, HandleError, ShmReader, ShmRingWriter, remove_stale_rings, ring_name
from fusion_node.wire import CameraFrame, Rejection, decode, encode
from sensors.publisher import SensorPublisher

from .conftest import ROOT


@pytest.fixture
def shm_dir(tmp_path):
    d = tmp_path / "shm"
    d.mkdir()
    return d


def _image(seed: int, h: int = 48, w: int = 64) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 255, (h, w, 3), dtype=np.uint8)


def test_ring_round_trip_reads_a_private_copy(shm_dir):
    with ShmRingWriter(ring_name("cam0", 7), 4, 48 * 64 * 3, directory=shm_dir) as ring:
        img = _image(1)
        handle = ring.write(img)
        reader = ShmReader(shm_dir)
        got = reader.read("cam0", handle, img.nbytes).reshape(img.shape)
        assert np.array_equal(got, img)
        ring.write(_image(2))
        for _ in range(4):  # the writer laps the ring: what the reader holds is its own
            ring.write(_image(3))
        assert np.array_equal(got, img)
        assert handle["gen"] % 2 == 0 and handle["gen"] > 0
        assert reader.summary() == {"resolved": 1, "rings_open": 1, "refused": {}}


def test_slow_reader_sees_overwritten_slot_rejected(shm_dir):
    with ShmRingWriter(ring_name("cam0", 7), 4, 100, directory=shm_dir) as ring:
        first = ring.write(np.full(100, 1, np.uint8))
        reader = ShmReader(shm_dir)
        for k in range(4):  # the reader was too slow: the writer lapped the ring meanwhile
            ring.write(np.full(100, 2 + k, np.uint8))
        with pytest.raises(HandleError) as err:
            reader.read("cam0", first, 100)
        assert err.value.reason == "shm_overwritten"
        latest = ring.write(np.full(100, 9, np.uint8))
        assert bytes(reader.read("cam0", latest, 100)) == bytes([9]) * 100
        assert reader.refused == {"overwritten": 1}


def test_slot_being_written_is_not_handed_out(shm_dir):
    with ShmRingWriter(ring_name("cam0", 1), 2, 10, directory=shm_dir) as ring:
        h0 = ring.write(np.zeros(10, np.uint8))
        ring.write(np.zeros(10, np.uint8))
        slot, _view = ring.acquire(10)  # the writer is in the middle of rewriting slot 0
        assert slot == h0["slot"] and ring.generation(slot) % 2 == 1
        with pytest.raises(HandleError) as err:
            ShmReader(shm_dir).read("cam0", h0, 10)
        assert err.value.reason == "shm_overwritten"


def test_dead_reader_does_not_block_the_writer(shm_dir):
    ring = ShmRingWriter(ring_name("cam0", 3), 4, 4096, directory=shm_dir)
    try:
        handle = ring.write(np.full(4096, 5, np.uint8))
        code = (
            "import sys, json\n"
            "from pathlib import Path\n"
            "from fusion_node.shm import ShmReader\n"
            f"data = ShmReader(Path({str(shm_dir)!r})).read('cam0', {handle!r}, 4096)\n"
            "print(data[0], flush=True)\n"
            "sys.stdin.read()\n"  # holds the ring open until killed
        )
        reader = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                  text=True, cwd=ROOT)
        assert reader.stdout.readline().split() == ["5"]
        reader.kill()  # the reader dies holding the ring open
        reader.wait()
        for k in range(100):  # the writer goes on at full speed: it never waits for readers
            ring.write(np.full(4096, k % 256, np.uint8))
        assert ring.written == 101
        latest = ring.write(np.full(4096, 77, np.uint8))
        assert ShmReader(shm_dir).read("cam0", latest, 4096)[0] == 77
    finally:
        ring.close()
    assert not (shm_dir / ring.name).exists()


def test_closed_ring_stays_readable_for_its_readers(shm_dir):
    ring = ShmRingWriter(ring_name("cam0", 4), 2, 8, directory=shm_dir)
    handle = ring.write(np.arange(8, dtype=np.uint8))
    reader = ShmReader(shm_dir)
    assert bytes(reader.read("cam0", handle, 8)) == bytes(range(8))
    ring.close()  # unlinked; the reader's descriptor keeps the file
    assert bytes(reader.read("cam0", handle, 8)) == bytes(range(8))


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
    for endpoint, via_shm in ((f"ipc://{ipc_dir}/cam", True), ("tcp://127.0.0.1:*", False),
                              (f"ipc://{ipc_dir}/cam2", False)):
        pub = SensorPublisher("camera", endpoint, "cam0", context=zctx, shm_dir=str(shm_dir),
                              use_shm=None if endpoint != f"ipc://{ipc_dir}/cam2" else False)
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
        finally:
            sub.close(0)
            pub.close()
    assert not list(shm_dir.iterdir())  # the publisher unlinked its ring on close


def test_shared_memory_is_a_config_matter_not_the_environment(monkeypatch):
    assert shm.shm_wanted("ipc:///tmp/x") and not shm.shm_wanted("tcp://127.0.0.1:5551")
    monkeypatch.setenv("FUSION_SHM", "0")  # once a hidden switch; now nothing reads it
    assert shm.shm_wanted("ipc:///tmp/x")
    cfg = config_from_dict({"rig": "r", "sensors": [
        {"id": "cam0", "kind": "camera", "endpoint": "ipc:///tmp/c"},
        {"id": "cam1", "kind": "camera", "endpoint": "tcp://10.0.0.5:5551"},
        {"id": "cam2", "kind": "camera", "endpoint": "ipc:///tmp/c2", "shm": False}][:1] + [
        {"id": "radar0", "kind": "radar", "endpoint": "tcp://10.0.0.5:5552"}],
        "node": {"shm_dir": "/run/fusion"}})
    assert cfg.sensors[0].shm_enabled and not cfg.sensors[1].shm_enabled
    assert cfg.node.shm_dir == "/run/fusion"
    off = config_from_dict({"rig": "r", "sensors": [
        {"id": "cam0", "kind": "camera", "endpoint": "ipc:///tmp/c", "shm": False}]})
    assert not off.sensors[0].shm_enabled


# -- rings turned against the reader ---------------------------------------------------------------


def _handle_for(shm_dir, name: str, nbytes: int = 4096) -> dict:
    """A valid ring written elsewhere, and a handle naming ``name`` with the same layout."""
    return {"ring": name, "slot": 0, "gen": 2, "size": nbytes}


def _decode_handle(reader: ShmReader, handle: dict, nbytes: int = 4096):
    img_frames = encode(CameraFrame("cam0", 0, 1_000, 1_000, np.zeros((1, nbytes // 3, 3), np.uint8)))
    head = msgpack.unpackb(img_frames[1])
    head.update(shm=handle, payload_bytes=handle["size"], width_px=nbytes // 3, height_px=1)
    return decode([b"camera", msgpack.packb(head), b""], reader)


def test_a_fifo_named_as_a_ring_cannot_hang_the_reader(shm_dir):
    name = ring_name("cam0", 1)
    os.mkfifo(shm_dir / name)
    reader = ShmReader(shm_dir)
    result = {}
    worker = threading.Thread(target=lambda: result.update(got=_decode_handle(reader, _handle_for(shm_dir, name))),
                              daemon=True)
    worker.start()
    worker.join(10)
    assert not worker.is_alive(), "opening a FIFO named as a ring blocked the reader"
    assert isinstance(result["got"], Rejection) and result["got"].reason == "bad_handle"
    assert reader.refused == {"not_regular": 1}


def test_a_directory_named_as_a_ring_is_a_counted_rejection(shm_dir):
    name = ring_name("cam0", 1)
    (shm_dir / name).mkdir()
    reader = ShmReader(shm_dir)
    got = _decode_handle(reader, _handle_for(shm_dir, name))
    assert isinstance(got, Rejection) and got.reason == "bad_handle"
    assert reader.refused == {"not_regular": 1}


def test_a_symlink_to_a_valid_ring_is_refused(shm_dir, tmp_path):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    with ShmRingWriter(ring_name("cam9", 1), 4, 4096, directory=elsewhere) as ring:
        handle = ring.write(np.full(4096, 3, np.uint8))
        name = ring_name("cam0", 1)
        os.symlink(elsewhere / ring.name, shm_dir / name)
        reader = ShmReader(shm_dir)
        got = _decode_handle(reader, {**handle, "ring": name})
        assert isinstance(got, Rejection) and got.reason == "bad_handle"
        assert reader.refused == {"symlink": 1}


@pytest.mark.parametrize("spoil, cause", [
    (lambda path: os.chmod(path, 0o660), "writable_by_others"),
    (lambda path: os.truncate(path, path.stat().st_size + 4096), "wrong_size"),
    (lambda path: os.truncate(path, 32), "wrong_size"),
    (lambda path: path.write_bytes(b"NOTARING" + bytes(8192)), "not_a_ring"),
])
def test_rings_of_the_wrong_size_mode_or_kind_are_refused(shm_dir, spoil, cause):
    with ShmRingWriter(ring_name("cam0", 2), 4, 4096, directory=shm_dir) as ring:
        handle = ring.write(np.full(4096, 1, np.uint8))
        spoil(ring.path)
        reader = ShmReader(shm_dir)
        got = _decode_handle(reader, handle)
        assert isinstance(got, Rejection) and got.reason == "bad_handle", got
        assert reader.refused == {cause: 1}
        assert reader.open_rings() == 0


def test_a_ring_owned_by_another_user_is_refused(shm_dir):
    with ShmRingWriter(ring_name("cam0", 2), 4, 4096, directory=shm_dir) as ring:
        handle = ring.write(np.full(4096, 1, np.uint8))
        if os.geteuid() == 0:  # really another owner when we may chown; else a reader expecting another uid
            os.chown(ring.path, 65534, -1)
            reader = ShmReader(shm_dir)
        else:
            reader = ShmReader(shm_dir, owner_uid=os.geteuid() + 1)
        got = _decode_handle(reader, handle)
        assert isinstance(got, Rejection) and got.reason == "bad_handle"
        assert reader.refused == {"wrong_owner": 1}


def test_a_ring_truncated_after_it_was_opened_does_not_kill_the_reader(shm_dir):
    # In a child process: with a mapped ring this ends in SIGBUS, which no Python code can catch.
    code = f"""
import json, os, sys
import numpy as np
from pathlib import Path
from fusion_node.shm import ShmReader, ShmRingWriter, ring_name
from fusion_node.wire import CameraFrame, Rejection, decode, encode
d = Path({str(shm_dir)!r})
img = np.full((64, 64, 3), 7, np.uint8)
with ShmRingWriter(ring_name("cam0", 1), 4, img.nbytes, directory=d) as ring:
    reader = ShmReader(d)
    frames = [encode(CameraFrame("cam0", k, k + 1, k + 1, img), payload_sink=ring.write) for k in range(2)]
    first = decode(frames[0], reader)
    os.truncate(ring.path, 8192)  # another process shrinks the ring under the reader
    kept = int(first.image.sum())  # what was read before stays readable
    later = decode(frames[1], reader)
    print(json.dumps({{"kept": kept, "later": later.reason, "refused": dict(reader.refused)}}))
"""
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert proc.returncode == 0, f"reader died with {proc.returncode}: {proc.stderr[-500:]}"
    out = __import__("json").loads(proc.stdout)
    assert out == {"kept": 64 * 64 * 3 * 7, "later": "bad_handle", "refused": {"truncated": 1}}


def test_handles_under_ever_new_sensor_ids_leave_nothing_behind(shm_dir):
    with ShmRingWriter(ring_name("cam0", 2), 4, 4096, directory=shm_dir) as ring:
        handle = ring.write(np.full(4096, 1, np.uint8))
        for reader in (ShmReader(shm_dir), ShmReader(shm_dir, sensors=["cam0"])):
            for i in range(200):  # warm up allocator caches before measuring
                reader.read("cam0", handle, 4096)
            tracemalloc.start()
            before = tracemalloc.take_snapshot()
            for i in range(5000):
                sid = f"intruder{i}"
                try:
                    reader.read(sid, {**handle, "ring": ring_name(sid, i)}, 4096)
                except HandleError:
                    pass
            reader_code = [tracemalloc.Filter(True, shm.__file__)]  # what the reader itself keeps
            after = tracemalloc.take_snapshot().filter_traces(reader_code)
            grown = sum(stat.size_diff for stat in after.compare_to(before.filter_traces(reader_code), "filename"))
            tracemalloc.stop()
            assert grown < 4_000, f"{grown} bytes left behind by 5000 refused handles"
            assert reader.open_rings() == 1
        assert set(reader.refused) <= set(REFUSAL_CAUSES)
