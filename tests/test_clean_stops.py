"""Clean starts and stops: sources checked first, signals stop everything, user errors are one line.

Every test runs the real ``fusion`` command as a subprocess and checks what a user would see:
exit status, stdout/stderr, and what is left behind (processes, temp folder, shared-memory rings).
"""

from __future__ import annotations

import os
import queue
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import zmq

from .conftest import ROOT
from .test_pipeline import _rig

FUSION = [sys.executable, "-m", "fusion_node"]
ENV = {**os.environ, "PYTHONUNBUFFERED": "1"}


def _fusion(*args, timeout=60):
    return subprocess.run([*FUSION, *args], cwd=ROOT, capture_output=True, text=True, timeout=timeout, env=ENV)


def _one_line_error(proc, *fragments):
    lines = proc.stderr.strip().splitlines()
    assert "Traceback" not in proc.stderr and len(lines) == 1, proc.stderr
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    return lines[0]


def _lines(stream) -> queue.Queue:
    q: queue.Queue = queue.Queue()

    def pump():
        for line in stream:
            q.put((time.monotonic(), line))
        q.put((time.monotonic(), None))

    threading.Thread(target=pump, daemon=True).start()
    return q


def _wait_line(q: queue.Queue, predicate, timeout: float, seen: list[str]) -> tuple[float, str]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            t, line = q.get(timeout=0.2)
        except queue.Empty:
            continue
        if line is None:
            break
        seen.append(line)
        if predicate(line):
            return t, line
    raise AssertionError("no such line; got:\n" + "".join(seen[-40:]))


def _children(pid: int) -> list[int]:
    """Every live descendant of ``pid``, from /proc."""
    parent = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        parent[int(stat.parent.name)] = int(fields[1])
    out, frontier = [], [pid]
    while frontier:
        p = frontier.pop()
        kids = [c for c, pp in parent.items() if pp == p]
        out += kids
        frontier += kids
    return out


def _gone(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True
    return stat.rsplit(")", 1)[1].split()[0] == "Z"  # a zombie is dead, only not yet reaped by its parent


def test_demo_refuses_a_missing_source_before_starting_anything():
    t0 = time.monotonic()
    proc = _fusion("demo", "--radar", "/nope.dat", "--duration", "30")
    took = time.monotonic() - t0
    assert proc.returncode == 2
    _one_line_error(proc, "--radar /nope.dat", "no such file", "nothing was started")
    assert proc.stdout == ""  # no node, no sensor: nothing was announced
    assert took < 20  # the interpreter's start only, not a run


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_stops_the_demo_its_children_and_leaves_nothing_behind(sig):
    demo = subprocess.Popen([*FUSION, "demo", "--duration", "30", "--models", "none"], cwd=ROOT, env=ENV,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True)
    out = _lines(demo.stdout)
    err: list[str] = []
    threading.Thread(target=lambda: err.extend(demo.stderr), daemon=True).start()
    seen: list[str] = []
    try:
        _, ready = _wait_line(out, lambda line: "node ready on ipc://" in line, 120, seen)
        workdir = Path(ready.split("ipc://", 1)[1].split(",", 1)[0]).parent
        for _ in range(3):
            _wait_line(out, lambda line: line.startswith("event "), 90, seen)
        children = _children(demo.pid)
        rings = list(workdir.glob("fusion-*"))
        assert len(children) >= 4, children  # the node and three sensors
        assert rings, "the camera publishes through a shared-memory ring in the demo's folder"
        t_signal = time.monotonic()
        demo.send_signal(sig)
        code = demo.wait(30)
        took = time.monotonic() - t_signal
    finally:
        if demo.poll() is None:
            demo.kill()
            demo.wait()
    while True:
        _, line = out.get(timeout=5)
        if line is None:
            break
        seen.append(line)
    stdout = "".join(seen)
    print(f"{signal.Signals(sig).name} -> demo exit: {took * 1e3:.0f} ms")
    assert code == 0, stdout[-2000:] + "".join(err)[-2000:]
    assert f"stopped by {signal.Signals(sig).name}" in stdout and "=== fusion demo summary ===" in stdout
    assert "Traceback" not in "".join(err) and "KeyboardInterrupt" not in "".join(err), "".join(err)
    assert [pid for pid in children if not _gone(pid)] == []
    assert not workdir.exists() and not any(r.exists() for r in rings)
    assert took < 15


def test_a_second_node_on_a_used_port_is_one_line(ipc_dir):
    cfg, _ = _rig(ipc_dir)
    holder = zmq.Context.instance().socket(zmq.PUB)
    try:
        port = holder.bind_to_random_port("tcp://127.0.0.1")
        endpoint = f"tcp://127.0.0.1:{port}"
        proc = _fusion("node", "--config", str(cfg), "--publish", endpoint, "--models", "none")
    finally:
        holder.close(0)
    assert proc.returncode == 1
    _one_line_error(proc, endpoint, "already in use", "--publish")


def test_events_endpoint_without_a_transport_is_one_line():
    proc = _fusion("events", "--endpoint", "localhost:5560")
    assert proc.returncode == 2
    _one_line_error(proc, "'localhost:5560' is not a ZeroMQ endpoint", "tcp://localhost:5560")


def test_events_pointed_at_nothing_says_so_and_keeps_waiting():
    with zmq.Context.instance().socket(zmq.PUB) as probe:  # a port nothing listens on
        port = probe.bind_to_random_port("tcp://127.0.0.1")
    t0 = time.monotonic()
    events = subprocess.Popen([*FUSION, "events", "--endpoint", f"tcp://127.0.0.1:{port}"], cwd=ROOT, env=ENV,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True)
    err = _lines(events.stderr)
    try:
        t_notice, notice = _wait_line(err, lambda line: "nothing from" in line, 30, [])
        assert "still waiting" in notice and f"tcp://127.0.0.1:{port}" in notice
        assert t_notice - t0 >= 5.0
        with pytest.raises(subprocess.TimeoutExpired):  # still there after the notice: it keeps waiting
            events.wait(0.5)
        events.send_signal(signal.SIGINT)
        assert events.wait(10) == 0
    finally:
        if events.poll() is None:
            events.kill()
            events.wait()
    rest = []
    while (item := err.get(timeout=5))[1] is not None:
        rest.append(item[1])
    assert "Traceback" not in "".join(rest)


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_events_stops_on_a_signal_even_when_started_with_sigint_ignored(sig):
    # A background job of a shell script starts with SIGINT ignored; a stop request must still work.
    with zmq.Context.instance().socket(zmq.PUB) as probe:
        port = probe.bind_to_random_port("tcp://127.0.0.1")
    events = subprocess.Popen([*FUSION, "events", "--endpoint", f"tcp://127.0.0.1:{port}"], cwd=ROOT, env=ENV,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True,
                              preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN))
    err = _lines(events.stderr)
    try:
        _wait_line(err, lambda line: "nothing from" in line, 30, [])  # running, its handlers in place
        events.send_signal(sig)
        assert events.wait(10) == 0
    finally:
        if events.poll() is None:
            events.kill()
            events.wait()


def test_events_with_a_timeout_gives_up_after_it():
    with zmq.Context.instance().socket(zmq.PUB) as probe:
        port = probe.bind_to_random_port("tcp://127.0.0.1")
    proc = _fusion("events", "--endpoint", f"tcp://127.0.0.1:{port}", "--timeout", "1")
    assert proc.returncode == 1
    _one_line_error(proc, "nothing from", "for 1.0 s")
