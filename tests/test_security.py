"""CURVE on network hops: key files, the plain-endpoint rule, allow-lists and refusals counted.

The end-to-end test runs the real node, sensor and ``fusion events`` processes over loopback
tcp with CURVE keys made by ``fusion keys new``; the network-namespace test
(``test_netns.py``) does the same across a (virtual) cable.
"""

from __future__ import annotations

import socket
import stat
import subprocess
import sys

import pytest
import yaml

from fusion_node import security
from fusion_node.config import config_from_dict
from fusion_node.errors import ConfigError
from fusion_node.node import FusionNode
from sensors.samples import DEFAULT_CAMERA, DEFAULT_RADAR

from .conftest import ROOT, SAMPLES

VIDEO = DEFAULT_CAMERA
RADAR = DEFAULT_RADAR
AUDIO = SAMPLES / "audio" / "engine_truck_start_pullaway_opensfx25_CC0.wav"


def _fusion(*args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "fusion_node", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=timeout)


def make_keys(directory, *names: str) -> dict[str, tuple]:
    """``fusion keys new`` for each name: name -> (public file, secret file)."""
    out = {}
    for name in names:
        proc = _fusion("keys", "new", name, "--dir", str(directory))
        assert proc.returncode == 0, proc.stderr
        out[name] = (directory / f"{name}.key", directory / f"{name}.key_secret")
    return out


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_keys_new_writes_a_private_secret_and_never_prints_it(tmp_path):
    keydir = tmp_path / "keys"
    proc = _fusion("keys", "new", "cam0", "--dir", str(keydir))
    assert proc.returncode == 0, proc.stderr
    public_file, secret_file = keydir / "cam0.key", keydir / "cam0.key_secret"
    assert stat.S_IMODE(secret_file.stat().st_mode) == 0o600
    assert stat.S_IMODE(keydir.stat().st_mode) == 0o700
    pair = security.load_key_pair(secret_file, "test")
    assert security.load_public_key(public_file, "test") == pair.public
    assert pair.public.decode() in proc.stdout
    assert pair.secret.decode() not in proc.stdout + proc.stderr
    assert b"secret" not in public_file.read_bytes().split(b"curve")[1]  # the public file holds no secret
    assert pair.secret.decode() not in repr(pair)

    again = _fusion("keys", "new", "cam0", "--dir", str(keydir))
    assert again.returncode == 2 and again.stderr.count("\n") == 1 and "exists" in again.stderr
    assert security.load_key_pair(secret_file, "test") == pair  # not overwritten


def test_a_secret_key_others_can_read_or_a_public_key_as_pair_is_refused(tmp_path):
    keys = make_keys(tmp_path, "node")
    public_file, secret_file = keys["node"]
    secret_file.chmod(0o644)
    with pytest.raises(ConfigError, match="chmod 600"):
        security.load_key_pair(secret_file, "node.secret_key_file")
    with pytest.raises(ConfigError, match="only a public key"):
        security.load_key_pair(public_file, "node.secret_key_file")
    with pytest.raises(ConfigError, match="no key file"):
        security.load_public_key(tmp_path / "nope.key", "sensor cam0 public_key_file")
    (tmp_path / "junk.key").write_text("curve\n    public-key = \"short\"\n")
    with pytest.raises(ConfigError, match="malformed key"):
        security.load_public_key(tmp_path / "junk.key", "test")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match="holds no public key"):
        security.load_allow_list([tmp_path / "empty"], "test")


@pytest.mark.parametrize("endpoint, plain", [
    ("ipc:///tmp/x", True), ("inproc://x", True), ("tcp://127.0.0.1:5551", True), ("tcp://127.3.2.1:1", True),
    ("tcp://localhost:5551", True), ("tcp://[::1]:5551", True), ("tcp://lo:5551", True),
    ("tcp://10.0.0.5:5551", False), ("tcp://*:5551", False), ("tcp://0.0.0.0:5551", False),
    ("tcp://cam.local:5551", False), ("tcp://127.0.0.1;10.0.0.5:5551", False), ("ws://127.0.0.1:1", False),
    ("pgm://eth0;239.192.1.1:5555", False),
])
def test_only_endpoints_that_cannot_leave_the_host_may_stay_plain(endpoint, plain):
    assert security.plain_allowed(endpoint) is plain


def _rig_dict(tmp_path, sensors: list[dict], **node) -> dict:
    return {"rig": "secure-rig", "sensors": sensors,
            "sync": {"deadline_ms": 150, "audio_window_s": 0.5},
            "node": {"publish_endpoint": f"ipc://{tmp_path}/events", "stats_interval_s": 0.25, **node}}


def test_node_refuses_network_endpoints_without_keys_unless_insecure(tmp_path, zctx):
    cam = {"id": "cam0", "kind": "camera", "endpoint": "tcp://10.0.0.5:5551"}
    cfg_path = tmp_path / "rig.yaml"
    cfg_path.write_text(yaml.safe_dump(_rig_dict(tmp_path, [cam])))
    proc = _fusion("node", "--config", str(cfg_path))
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.count("\n") == 1 and "Traceback" not in proc.stderr
    assert "sensor cam0: tcp://10.0.0.5:5551 is reachable from the network" in proc.stderr
    assert "insecure" in proc.stderr

    # The publish side follows the same rule.
    cfg = config_from_dict(_rig_dict(tmp_path, [{**cam, "endpoint": f"ipc://{tmp_path}/cam0"}],
                                     publish_endpoint="tcp://0.0.0.0:0"))
    with pytest.raises(ConfigError, match="node.publish_endpoint: tcp://0.0.0.0:0 is reachable"):
        FusionNode(cfg, context=zctx)
    # A key without the node's own pair is a configuration error too.
    keys = make_keys(tmp_path, "cam0")
    cfg = config_from_dict(_rig_dict(tmp_path, [{**cam, "public_key_file": str(keys["cam0"][0])}]))
    with pytest.raises(ConfigError, match="public_key_file needs node.secret_key_file"):
        FusionNode(cfg, context=zctx)

    node = FusionNode(config_from_dict(_rig_dict(tmp_path, [cam], insecure=True)), context=zctx)
    try:
        assert node.publish_stats(0, 1.0)["security"] == {"handshake_failed": {}, "subscribers_refused": 0}
    finally:
        node.close()


def test_sensor_refuses_a_network_endpoint_without_keys(tmp_path):
    proc = _fusion("sensor", "radar", "--source", str(RADAR), "--endpoint", "tcp://*:5552")
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1, proc.stderr
    assert "radar radar0: tcp://*:5552 is reachable from the network" in proc.stderr
    assert "--secret-key" in proc.stderr
    keys = make_keys(tmp_path, "radar0")
    proc = _fusion("sensor", "radar", "--source", str(RADAR), "--endpoint", "tcp://*:5552",
                   "--secret-key", str(keys["radar0"][1]))
    assert proc.returncode == 1 and "--secret-key needs --allow" in proc.stderr, proc.stderr
    proc = _fusion("events", "--endpoint", "tcp://10.0.0.9:5560", "--timeout", "1")
    assert proc.returncode == 2 and "fusion events: tcp://10.0.0.9:5560 is reachable" in proc.stderr


def wait_stats(printer, predicate, what: str, timeout: float = 60.0) -> dict:
    """The first stats of a ``fusion events --stats`` process for which ``predicate`` is true."""
    return printer.wait_json(lambda msg: "stats" in msg and predicate(msg["stats"]), what, timeout)["stats"]


def test_curve_hops_carry_events_and_refuse_unknown_keys(tmp_path, spawn):
    keydir = tmp_path / "keys"
    keys = make_keys(keydir, "node", "cam0", "radar0", "mic0", "rogue", "viewer", "stranger")
    ports = {name: free_port() for name in ("cam0", "radar0", "mic0", "events")}
    sensors = [{"id": sid, "kind": kind, "endpoint": f"tcp://127.0.0.1:{ports[sid]}", "liveness_timeout_s": 1.0,
                "public_key_file": f"keys/{sid}.key"}  # relative to the config file
               for sid, kind in (("cam0", "camera"), ("radar0", "radar"), ("mic0", "audio"))]
    cfg = _rig_dict(tmp_path, sensors, publish_endpoint=f"tcp://127.0.0.1:{ports['events']}",
                    secret_key_file="keys/node.key_secret", allow_subscribers=["keys/viewer.key"])
    cfg_path = tmp_path / "rig.yaml"
    cfg_path.write_text(yaml.safe_dump(cfg))
    node = spawn("node", "--config", str(cfg_path))
    node.json_line("event", "ready")

    def sensor(kind, sid, src, key, allow, *extra):
        return spawn("sensor", kind, "--source", str(src), "--sensor-id", sid, "--loop",
                     "--endpoint", f"tcp://127.0.0.1:{ports[sid]}", "--secret-key", str(keys[key][1]),
                     "--allow", str(keys[allow][0]), *extra)

    sensor("camera", "cam0", VIDEO, "cam0", "node", "--resize", "160x120")
    rogue = sensor("radar", "radar0", RADAR, "rogue", "node")  # at radar0's endpoint, with another key
    sensor("audio", "mic0", AUDIO, "mic0", "rogue")  # a sensor that does not trust this node
    viewer = spawn("events", "--endpoint", f"tcp://127.0.0.1:{ports['events']}", "--stats",
                   "--server-key", str(keys["node"][0]), "--secret-key", str(keys["viewer"][1]))

    def refused(stats):
        failed = stats["security"]["handshake_failed"]
        return (failed.get("radar0", {}).get("no_detail", 0) >= 2 and failed.get("mic0", {}).get("auth", 0) >= 1
                and stats["sensors"]["cam0"]["accepted"] > 0)

    stats = wait_stats(viewer, refused, "the rogue radar and the distrustful microphone refused and counted")
    assert stats["sensors"]["radar0"]["received"] == 0 and stats["sensors"]["mic0"]["received"] == 0
    assert "cam0" not in stats["security"]["handshake_failed"]
    ev = viewer.json_line("rig", "secure-rig")
    assert ev["modalities"]["camera"]["present"] and not ev["modalities"]["radar"]["present"]

    # A subscriber whose key is not on allow_subscribers gets nothing and is counted.
    stranger = spawn("events", "--endpoint", f"tcp://127.0.0.1:{ports['events']}", "--timeout", "2",
                     "--server-key", str(keys["node"][0]), "--secret-key", str(keys["stranger"][1]))
    wait_stats(viewer, lambda s: s["security"]["subscribers_refused"] >= 1, "the stranger refused")
    assert stranger.p.wait(30) == 1 and "nothing from" in stranger.stderr()

    rogue.stop()
    sensor("radar", "radar0", RADAR, "radar0", "node")  # the genuine radar, same endpoint
    wait_stats(viewer, lambda s: s["sensors"]["radar0"]["accepted"] > 0, "the genuine radar accepted")
    ev = viewer.json_line("rig", "secure-rig")
    while not ev["modalities"]["radar"]["present"]:
        ev = viewer.json_line("rig", "secure-rig")
    assert node.p.poll() is None
