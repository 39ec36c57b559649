"""Shared fixtures: private ipc endpoints, real subprocesses of the fusion command, sample paths.

Development data that may not ship (third-party recordings from source repositories) lies in
``../shared/data`` beside the repository; tests that need it call :func:`shared_file` or use the
``shared_data`` fixture and skip, with the reason, when it is absent. ``FUSION_TEST_SHARED_DIR``
points the tests at another copy of ``../shared`` (an empty folder runs them as on a machine
without it); the product itself never reads it.
"""

from __future__ import annotations

import json
import os
import queue
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import pytest
import zmq

ROOT = Path(__file__).resolve().parents[1]
SAMPLES = ROOT / "sensors" / "samples"
SHARED_DATA = Path(os.environ.get("FUSION_TEST_SHARED_DIR") or ROOT.parent / "shared") / "data"


def shared_file(relative: str) -> Path:
    """A file of the development data (``../shared/data/<relative>``); skips the test when absent."""
    path = SHARED_DATA / relative
    if not path.is_file():
        pytest.skip(f"needs {relative} from the development data in {SHARED_DATA} (third-party recordings "
                    f"that are not shipped), which is absent")
    return path


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The development data folder (``../shared/data``); skips the test when absent."""
    if not (SHARED_DATA / "SOURCES.md").is_file():
        pytest.skip(f"needs the development data in {SHARED_DATA} (third-party recordings that are not "
                    f"shipped), which is absent")
    return SHARED_DATA


@pytest.fixture
def ipc_dir():
    # ipc paths must stay short (sun_path is ~107 bytes): a short private temp folder.
    d = Path(tempfile.mkdtemp(prefix="fz-"))
    yield d
    for p in d.iterdir():
        p.unlink(missing_ok=True)
    d.rmdir()


@pytest.fixture
def zctx():
    ctx = zmq.Context()
    yield ctx
    ctx.destroy(linger=0)


class Proc:
    """A real child process of the fusion command, its stdout read line by line.

    ``prefix`` runs it under another command that ends by exec'ing it (``ip netns exec NS``), so
    signals still reach the fusion process itself.
    """

    def __init__(self, *args: str, log_dir: Path, prefix: tuple[str, ...] = ()):
        self.args = args
        self.stderr_path = log_dir / f"{args[0]}-{time.monotonic_ns()}.stderr"
        self._err = open(self.stderr_path, "wb")
        self.p = subprocess.Popen([*prefix, sys.executable, "-m", "fusion_node", *args], stdout=subprocess.PIPE,
                                  stderr=self._err, stdin=subprocess.DEVNULL, text=True, cwd=ROOT,
                                  env={**os.environ, "PYTHONUNBUFFERED": "1"})
        self.lines: queue.Queue = queue.Queue()
        threading.Thread(target=self._pump, daemon=True).start()

    def _pump(self):
        for line in self.p.stdout:
            self.lines.put(line)
        self.lines.put(None)

    def json_line(self, key: str, value, timeout: float = 60.0) -> dict:
        """Wait for a JSON stdout line whose ``key`` equals ``value``."""
        return self.wait_json(lambda msg: msg.get(key) == value, f"{key}={value!r}", timeout)

    def wait_json(self, predicate, what: str, timeout: float = 60.0) -> dict:
        """Wait for a JSON stdout line (a dict) for which ``predicate`` is true; earlier lines are consumed."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                line = self.lines.get(timeout=0.2)
            except queue.Empty:
                continue
            if line is None:
                break
            try:
                msg = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(msg, dict) and predicate(msg):
                return msg
        raise AssertionError(f"no {what} line from {self.args}; stderr:\n{self.stderr()}")

    def stderr(self) -> str:
        self._err.flush()
        return self.stderr_path.read_text(errors="replace")[-3000:]

    def stop(self, timeout: float = 10.0) -> int:
        if self.p.poll() is None:
            self.p.send_signal(2)
            try:
                self.p.wait(timeout)
            except subprocess.TimeoutExpired:
                self.p.kill()
                self.p.wait()
        self._err.close()
        return self.p.returncode

    def kill(self) -> None:
        self.p.kill()
        self.p.wait()


@pytest.fixture
def spawn(tmp_path):
    procs: list[Proc] = []

    def start(*args: str, prefix: tuple[str, ...] = ()) -> Proc:
        proc = Proc(*args, log_dir=tmp_path, prefix=prefix)
        procs.append(proc)
        return proc

    yield start
    for proc in reversed(procs):
        proc.stop(timeout=5)


@pytest.fixture(scope="session")
def untrained_models(tmp_path_factory) -> Path:
    """A small untrained model set exported from torch once per test session."""
    from models.export import export_untrained_bundle

    return export_untrained_bundle(tmp_path_factory.mktemp("models"), seed=0)


class Mosquitto:
    """A real mosquitto broker on a free loopback port, with persistence so it can be restarted."""

    def __init__(self, workdir: Path):
        import getpass
        import shutil
        import socket

        self.binary = shutil.which("mosquitto") or ("/usr/sbin/mosquitto" if Path("/usr/sbin/mosquitto").exists()
                                                    else None)
        if self.binary is None:
            pytest.fail("mosquitto is not installed (Debian: apt-get install mosquitto; `make test` installs it)")
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.workdir = workdir
        self.conf = workdir / "mosquitto.conf"
        # Started as root, mosquitto drops to the user "mosquitto", which cannot write the test's
        # folder: its sessions would not survive a restart. It stays the user running the tests.
        self.conf.write_text(f"listener {self.port} 127.0.0.1\nallow_anonymous true\npersistence true\n"
                             f"persistence_location {workdir}/\nuser {getpass.getuser()}\n"
                             "log_dest stderr\nlog_type all\n")
        self.proc: subprocess.Popen | None = None
        self.log: list[str] = []

    @property
    def url(self) -> str:
        return f"mqtt://127.0.0.1:{self.port}"

    def start(self, timeout: float = 15.0) -> "Mosquitto":
        self.proc = subprocess.Popen([self.binary, "-c", str(self.conf)], stderr=subprocess.PIPE,
                                     stdout=subprocess.DEVNULL, stdin=subprocess.DEVNULL, text=True)
        lines: queue.Queue = queue.Queue()

        def pump(stream):
            for line in stream:
                self.log.append(line)
                lines.put(line)
            lines.put(None)

        threading.Thread(target=pump, args=(self.proc.stderr,), daemon=True).start()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                line = lines.get(timeout=0.5)
            except queue.Empty:
                continue
            if line is None:
                break
            if " running" in line:
                return self
        self.stop(9)  # never leave a half-started broker behind
        raise AssertionError("mosquitto did not start:\n" + "".join(self.log[-20:]))

    def stop(self, sig: int = 15) -> None:
        """Stop the broker (SIGTERM: it saves its persistent sessions first)."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(sig)
            self.proc.wait(15)
        self.proc = None


@pytest.fixture
def mosquitto(tmp_path):
    d = tmp_path / "broker"
    d.mkdir()
    broker = Mosquitto(d).start()
    yield broker
    broker.stop()


class MqttRecorder:
    """A real paho subscriber that records every message, with a persistent session (QoS 1)."""

    def __init__(self, port: int, topics: str = "#", client_id: str = "test-recorder"):
        import paho.mqtt.client as mqtt

        self.messages: list[tuple[str, bytes, bool]] = []
        self.cond = threading.Condition()
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id, clean_session=False)
        self.client.reconnect_delay_set(min_delay=1, max_delay=1)
        self.client.on_connect = lambda c, u, f, rc, p: c.subscribe(topics, qos=1)
        self.client.on_message = self._on_message
        # A message published before the broker acknowledges the subscription is not for this
        # client: the tests publish only once it has.
        self.subscribed = threading.Event()
        self.client.on_subscribe = self._on_subscribe
        self.client.connect(("127.0.0.1"), port)
        self.client.loop_start()
        if not self.subscribed.wait(15):
            self.close()
            raise RuntimeError(f"MQTT recorder {client_id!r}: the broker on port {port} did not acknowledge "
                               f"the subscription to {topics!r} within 15 s")

    def _on_subscribe(self, client, userdata, mid, reason_codes, properties):
        if not any(rc.is_failure for rc in reason_codes):  # a refused subscription is not one
            self.subscribed.set()

    def _on_message(self, client, userdata, msg):
        with self.cond:
            self.messages.append((msg.topic, msg.payload, bool(msg.retain)))
            self.cond.notify_all()

    def wait_for(self, predicate, timeout: float = 30.0) -> bool:
        """Wait until ``predicate(messages)`` holds."""
        with self.cond:
            return self.cond.wait_for(lambda: predicate(self.messages), timeout)

    def on(self, topic: str) -> list[bytes]:
        with self.cond:
            return [p for t, p, _ in self.messages if t == topic]

    def close(self):
        self.client.disconnect()
        self.client.loop_stop()


@pytest.fixture
def mqtt_recorder():
    made: list[MqttRecorder] = []

    def make(port: int, topics: str = "#", client_id: str = "test-recorder") -> MqttRecorder:
        rec = MqttRecorder(port, topics, client_id)
        made.append(rec)
        return rec

    yield make
    for rec in made:
        rec.close()
