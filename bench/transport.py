"""Moving camera frames between two processes: ZeroMQ (copy, zero-copy), the shared-memory path,
eCAL and Zenoh, side by side, for 640x480 and 1920x1080 BGR frames.

Every transport moves the same frames from a sender process to a receiver process on this host
at a fixed rate. Latency is from the moment the sender starts handing the frame over (before any
copy) to the moment the receiver holds a numpy array over the frame's bytes (for the
shared-memory path: after resolving the handle and checking its lease). Both processes stamp
with CLOCK_MONOTONIC, shared by every process on a host.

- ``zmq_copy``: the wire encoding, ``send_multipart(copy=True)`` / ``recv_multipart(copy=True)``
- ``zmq_zerocopy``: the same with ``copy=False`` on both sides (what sensors and node do over tcp)
- ``shm``: the sensor publisher's shared-memory ring, a handle over ZeroMQ (ipc); the timed
  region includes the one copy of the frame into the ring slot
- ``shm_inplace``: the same ring, the frame produced straight into the slot
  (``ShmRingWriter.acquire``), as a camera driver writing into the ring would: no copy at all
- ``ecal``: eCAL 6 (``eclipse-ecal``) default local transport (its own shared memory); its
  Python ``send`` takes ``bytes`` only, so the sender pays one copy into a bytes object
- ``zenoh``: Zenoh (``eclipse-zenoh``) peer to peer, its default configuration: a TCP loopback
  link, with Zenoh's shared-memory transport optimisation (on by default in 1.x)

eCAL and Zenoh are optional (``pip install -e .[bench]``); when one cannot be imported or run
it is reported as unavailable with the reason.

Run as ``python -m bench.transport recv|send --kind K --size WxH --frames N --endpoint E``
(the benchmark does this) or call :func:`run_transports`.
"""

from __future__ import annotations

import argparse
import json
import os
import queue
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

from fusion_node.shm import ShmReader
from fusion_node.wire import CameraFrame, decode, encode
from sensors.publisher import SensorPublisher, sleep_until

__all__ = ["TRANSPORTS", "SIZES", "run_transports", "availability"]

TRANSPORTS = ("zmq_copy", "zmq_zerocopy", "shm", "shm_inplace", "ecal", "zenoh")
SIZES = ((640, 480), (1920, 1080))
WARMUP_FRAMES = 10
KEY = "fusion_bench/frames"


def availability(kind: str) -> str | None:
    """None if the transport can be used here, else the reason it cannot."""
    if kind == "ecal":
        try:
            import ecal.nanobind_core  # noqa: F401
        except Exception as exc:  # noqa: BLE001 - ImportError, or a missing shared library
            return f"eclipse-ecal not importable ({type(exc).__name__}: {exc}); pip install -e .[bench]"
    if kind == "zenoh":
        try:
            import zenoh  # noqa: F401
        except Exception as exc:  # noqa: BLE001
            return f"eclipse-zenoh not importable ({type(exc).__name__}: {exc}); pip install -e .[bench]"
    return None


def versions() -> dict:
    out = {}
    try:
        import ecal.nanobind_core as ec

        out["eclipse-ecal"] = ec.get_version_string()
    except Exception:  # noqa: BLE001
        pass
    try:
        from importlib.metadata import version

        out["eclipse-zenoh"] = version("eclipse-zenoh")
    except Exception:  # noqa: BLE001
        pass
    return out


# --------------------------------------------------------------------------- sender side


def _frames(w: int, h: int) -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    return [rng.integers(0, 255, (h, w, 3), dtype=np.uint8) for _ in range(2)]


def _stamp(frame: np.ndarray, seq: int, t_ns: int) -> None:
    frame.reshape(-1)[:16] = np.frombuffer(np.array([seq, t_ns], dtype="<i8").tobytes(), dtype=np.uint8)


def _unstamp(buf) -> tuple[int, int]:
    seq, t_ns = np.frombuffer(buf, dtype="<i8", count=2)
    return int(seq), int(t_ns)


def _send(kind: str, endpoint: str, w: int, h: int, frames: int, rate_hz: float) -> dict:
    import zmq

    content = _frames(w, h)
    total = WARMUP_FRAMES + frames
    period = int(1e9 / rate_hz)
    if kind in ("zmq_copy", "zmq_zerocopy", "shm", "shm_inplace"):
        pub = SensorPublisher("camera", endpoint, "bench", use_shm=kind.startswith("shm"), shm_min_bytes=1)
        pub.socket.setsockopt(zmq.SNDHWM, 0)  # the bench counts every frame: no silent drops
        if not pub.wait_for_subscriber(30):
            return {"error": "no subscriber"}
        t0 = time.monotonic_ns()
        for i in range(total):
            sleep_until(t0 + i * period)
            t = time.monotonic_ns()
            msg = CameraFrame("bench", i, t, 0, content[i % 2])
            msg.run_id = pub.run_id
            if kind == "shm_inplace":
                # The producer (a camera driver) wrote the frame straight into the next ring slot;
                # the clock starts once the frame is there, as it starts for the others once the
                # frame is in the sender's memory.
                if pub.ring is None:
                    pub._to_ring(memoryview(content[0].reshape(-1)))  # creates the ring
                slot, view = pub.ring.acquire(content[0].nbytes)
                view[:] = content[i % 2].reshape(-1)
                t = time.monotonic_ns()
                msg = CameraFrame("bench", i, t, 0, content[i % 2])
                msg.run_id = pub.run_id
                handle = pub.ring.commit(slot, view.nbytes, i)
                frames_out = encode(msg, t, payload_sink=lambda _payload: handle)
                pub.socket.send_multipart(frames_out, copy=False)
            elif kind == "shm":
                frames_out = encode(msg, t, payload_sink=pub._to_ring)
                pub.socket.send_multipart(frames_out, copy=False)
            else:
                frames_out = encode(msg, t)
                pub.socket.send_multipart(frames_out, copy=(kind == "zmq_copy"))
            pub.seq += 1
        pub.close()
        return {"sent": total}
    if kind == "ecal":
        import ecal.nanobind_core as ec

        ec.initialize("fusion_bench_send")
        pub = ec.Publisher(KEY)
        deadline = time.monotonic() + 30
        while pub.get_subscriber_count() == 0 and time.monotonic() < deadline:
            time.sleep(0.01)  # eCAL offers no blocking wait for a subscriber
        t0 = time.monotonic_ns()
        for i in range(total):
            sleep_until(t0 + i * period)
            f = content[i % 2]
            t = time.monotonic_ns()
            _stamp(f, i, t)
            pub.send(f.tobytes())
        del pub
        ec.finalize()
        return {"sent": total}
    if kind == "zenoh":
        import zenoh

        conf = zenoh.Config()
        conf.insert_json5("mode", '"peer"')
        conf.insert_json5("scouting/multicast/enabled", "false")
        conf.insert_json5("connect/endpoints", json.dumps([endpoint]))
        session = zenoh.open(conf)
        pub = session.declare_publisher(KEY)
        deadline = time.monotonic() + 30
        while not pub.matching_status.matching and time.monotonic() < deadline:
            time.sleep(0.01)  # no blocking wait for a match in the Python API
        t0 = time.monotonic_ns()
        for i in range(total):
            sleep_until(t0 + i * period)
            f = content[i % 2]
            t = time.monotonic_ns()
            _stamp(f, i, t)
            pub.put(f.tobytes())
        pub.undeclare()
        session.close()
        return {"sent": total}
    raise ValueError(kind)


# --------------------------------------------------------------------------- receiver side


def _recv(kind: str, endpoint: str, w: int, h: int, frames: int, timeout_s: float) -> dict:
    lat: list[float] = []
    rejected = 0
    total = WARMUP_FRAMES + frames
    if kind in ("zmq_copy", "zmq_zerocopy", "shm", "shm_inplace"):
        import zmq

        ctx = zmq.Context()
        sub = ctx.socket(zmq.SUB)
        sub.setsockopt(zmq.RCVHWM, 0)
        sub.setsockopt(zmq.LINGER, 0)
        sub.setsockopt(zmq.SUBSCRIBE, b"camera")
        sub.connect(endpoint)
        reader = ShmReader()
        print(json.dumps({"event": "ready"}), flush=True)
        copy = kind == "zmq_copy"
        seen = 0
        while seen < total and sub.poll(int(timeout_s * 1000 if seen == 0 else 2000)):
            frames_in = sub.recv_multipart(copy=copy)
            msg = decode(frames_in, reader)
            if not isinstance(msg, CameraFrame):
                rejected += 1
                seen += 1
                continue
            img = msg.image
            lease = getattr(msg, "shm_lease", None)
            if lease is not None and not lease.valid():
                rejected += 1
                seen += 1
                continue
            t = time.monotonic_ns()
            assert img.shape == (h, w, 3)
            if msg.seq >= WARMUP_FRAMES:
                lat.append((t - msg.t_capture_ns) / 1e6)
            seen += 1
        sub.close()
        ctx.term()
        return {"latencies_ms": lat, "rejected": rejected}

    got: queue.Queue = queue.Queue()

    def on_bytes(buf) -> None:
        arr = np.frombuffer(buf, dtype=np.uint8).reshape(h, w, 3)
        t = time.monotonic_ns()
        seq, t_send = _unstamp(arr.reshape(-1)[:16])
        got.put((seq, (t - t_send) / 1e6))

    if kind == "ecal":
        import ecal.nanobind_core as ec

        ec.initialize("fusion_bench_recv")
        sub = ec.Subscriber(KEY)
        sub.set_receive_callback(lambda topic_id, dtype, data: on_bytes(data.buffer))
        closer = lambda: (sub.remove_receive_callback(), ec.finalize())  # noqa: E731
    elif kind == "zenoh":
        import zenoh

        conf = zenoh.Config()
        conf.insert_json5("mode", '"peer"')
        conf.insert_json5("scouting/multicast/enabled", "false")
        conf.insert_json5("listen/endpoints", json.dumps([endpoint]))
        session = zenoh.open(conf)
        sub = session.declare_subscriber(KEY, lambda sample: on_bytes(sample.payload.to_bytes()))
        closer = lambda: (sub.undeclare(), session.close())  # noqa: E731
    else:
        raise ValueError(kind)
    print(json.dumps({"event": "ready"}), flush=True)
    seen = 0
    while seen < total:
        try:
            seq, ms = got.get(timeout=timeout_s)
        except queue.Empty:
            break
        seen += 1
        if seq >= WARMUP_FRAMES:
            lat.append(ms)
        if seq == total - 1:
            break
    closer()
    return {"latencies_ms": lat, "rejected": rejected}


# --------------------------------------------------------------------------- orchestration


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _endpoint(kind: str, workdir: Path, tag: str) -> str:
    if kind == "zenoh":
        return f"tcp/127.0.0.1:{_free_port()}"
    return f"ipc://{workdir}/{tag}.sock"


def _lines(stream, q: queue.Queue) -> None:
    for line in stream:
        q.put(line)
    q.put(None)


def _json_from(q: queue.Queue, timeout_s: float, want: str) -> dict | None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            line = q.get(timeout=max(0.01, deadline - time.monotonic()))
        except queue.Empty:
            return None
        if line is None:
            return None
        try:
            msg = json.loads(line)
        except json.JSONDecodeError:
            continue
        if msg.get("event") == want:
            return msg
    return None


def _one(kind: str, w: int, h: int, frames: int, rate_hz: float, workdir: Path) -> dict:
    endpoint = _endpoint(kind, workdir, f"{kind}-{w}x{h}")
    base = [sys.executable, "-m", "bench.transport"]
    common = ["--kind", kind, "--size", f"{w}x{h}", "--frames", str(frames), "--endpoint", endpoint]
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    err_r = open(workdir / f"{kind}-{w}x{h}-recv.log", "w")
    err_s = open(workdir / f"{kind}-{w}x{h}-send.log", "w")
    recv = subprocess.Popen([*base, "recv", *common], stdout=subprocess.PIPE, stderr=err_r, text=True, env=env,
                            cwd=workdir, stdin=subprocess.DEVNULL)
    q: queue.Queue = queue.Queue()
    threading.Thread(target=_lines, args=(recv.stdout, q), daemon=True).start()
    send = None
    try:
        if _json_from(q, 60, "ready") is None:
            return {"available": False, "reason": f"receiver did not start: {_tail(workdir / err_r.name)}"}
        send = subprocess.Popen([*base, "send", *common, "--rate", str(rate_hz)], stdout=subprocess.DEVNULL,
                                stderr=err_s, env=env, cwd=workdir, stdin=subprocess.DEVNULL)
        res = _json_from(q, 60 + frames / rate_hz, "result")
        if res is None:
            return {"available": False, "reason": f"no result: {_tail(Path(err_r.name))} {_tail(Path(err_s.name))}"}
        lat = np.asarray(res["latencies_ms"], dtype=np.float64)
        if lat.size == 0:
            return {"available": False, "reason": f"no frame arrived: {_tail(Path(err_s.name))}"}
        p50, p99 = np.percentile(lat, [50, 99])
        return {"p50_ms": round(float(p50), 3), "p99_ms": round(float(p99), 3), "max_ms": round(float(lat.max()), 3),
                "n": int(lat.size), "lost": int(frames - lat.size), "rejected": res.get("rejected", 0)}
    finally:
        for p in (send, recv):
            if p is not None:
                try:
                    p.wait(timeout=20)
                except subprocess.TimeoutExpired:
                    p.kill()
                    p.wait()
        err_r.close()
        err_s.close()


def _tail(path: Path, n: int = 300) -> str:
    try:
        text = " ".join(path.read_text(errors="replace").split())
    except OSError:
        return ""
    return text[-n:]


def _zenoh_segments() -> set[Path]:
    try:
        return set(Path("/dev/shm").glob("*.zenoh"))
    except OSError:
        return set()


def run_transports(frames: int = 200, rate_hz: float = 60.0, kinds=TRANSPORTS, sizes=SIZES,
                   progress=None) -> dict:
    """``{kind: {"WxH": {p50_ms, p99_ms, max_ms, n, lost}}}``, or ``{"available": False, "reason"}``."""
    out: dict = {}
    workdir = Path(tempfile.mkdtemp(prefix="fzt-"))
    root = Path(__file__).resolve().parents[1]
    env_path = os.environ.get("PYTHONPATH", "")
    os.environ["PYTHONPATH"] = f"{root}{os.pathsep}{env_path}" if env_path else str(root)
    try:
        for kind in kinds:
            reason = availability(kind)
            if reason is not None:
                out[kind] = {"available": False, "reason": reason}
                if progress:
                    progress(len(sizes))
                continue
            out[kind] = {}
            before = _zenoh_segments()
            for w, h in sizes:
                out[kind][f"{w}x{h}"] = _one(kind, w, h, frames, rate_hz, workdir)
                if progress:
                    progress(1)
            for leftover in _zenoh_segments() - before:  # Zenoh leaves its segments behind at exit
                leftover.unlink(missing_ok=True)
    finally:
        if env_path:
            os.environ["PYTHONPATH"] = env_path
        else:
            os.environ.pop("PYTHONPATH", None)
        for p in workdir.iterdir():
            p.unlink(missing_ok=True)
        workdir.rmdir()
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.transport")
    p.add_argument("role", choices=["send", "recv", "all"])
    p.add_argument("--kind", choices=TRANSPORTS)
    p.add_argument("--size", default="640x480")
    p.add_argument("--frames", type=int, default=200)
    p.add_argument("--rate", type=float, default=60.0)
    p.add_argument("--endpoint")
    p.add_argument("--timeout", type=float, default=10.0)
    args = p.parse_args(argv)
    if args.role == "all":
        print(json.dumps(run_transports(args.frames, args.rate), indent=2))
        return 0
    w, h = (int(v) for v in args.size.split("x"))
    if args.role == "send":
        print(json.dumps(_send(args.kind, args.endpoint, w, h, args.frames, args.rate)), flush=True)
    else:
        res = _recv(args.kind, args.endpoint, w, h, args.frames, args.timeout)
        print(json.dumps({"event": "result", **res}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
