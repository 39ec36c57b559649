"""Several rigs in one node: the rigs: config form, and messages routed by sensor_id (real node process)."""

from __future__ import annotations

import time
from pathlib import Path

import msgpack
import numpy as np
import pytest
import yaml
import zmq

from fusion_node.config import load_rigs, rigs_from_dict
from fusion_node.errors import ConfigError
from fusion_node.wire import AudioChunk, CameraFrame, RadarPoints, decode_map, encode
from sensors.publisher import SensorPublisher


def _rig(i: int, ep: str = "tcp://127.0.0.1:{port}") -> dict:
    return {"rig": f"rig{i}", "sensors": [
        {"id": f"cam{i}", "kind": "camera", "endpoint": ep.format(port=5600 + 3 * i, name=f"c{i}")},
        {"id": f"radar{i}", "kind": "radar", "endpoint": ep.format(port=5601 + 3 * i, name=f"r{i}")},
        {"id": f"mic{i}", "kind": "audio", "endpoint": ep.format(port=5602 + 3 * i, name=f"a{i}")},
    ]}


def test_single_rig_form_stays_valid(tmp_path):
    path = tmp_path / "rig.yaml"
    path.write_text(yaml.safe_dump({**_rig(0), "node": {"models": "m/manifest.json"}}))
    cfgs = load_rigs(path)
    assert [c.rig for c in cfgs] == ["rig0"]
    assert cfgs[0].node.models == str((tmp_path / "m" / "manifest.json").resolve())


def test_rigs_form_resolves_paths_and_takes_a_calibration_file_per_rig(tmp_path):
    path = tmp_path / "rigs.yaml"
    path.write_text(yaml.safe_dump({"rigs": [{**_rig(0), "calibration_file": "cal/bay0.yaml"}, _rig(1)],
                                    "node": {"models": "m/manifest.json"}}))
    cfgs = load_rigs(path)
    assert cfgs[0].calibration_file == str((tmp_path / "cal" / "bay0.yaml").resolve())
    assert cfgs[1].calibration_file is None
    assert all(c.node.models == str((tmp_path / "m" / "manifest.json").resolve()) for c in cfgs)
    single = tmp_path / "rig.yaml"
    single.write_text(yaml.safe_dump({**_rig(0), "calibration_file": "/abs/bay0.yaml"}))
    assert load_rigs(single)[0].calibration_file == "/abs/bay0.yaml"


def test_example_rigs_file_loads():
    cfgs = load_rigs(Path(__file__).resolve().parents[1] / "examples" / "rigs.yaml")
    assert [c.rig for c in cfgs] == ["gate-north", "gate-south"]
    assert cfgs[0].calibration_file.endswith("examples/rig_calibration.yaml") and cfgs[1].calibration_file is None
    assert cfgs[0].node == cfgs[1].node and cfgs[0].node.models.endswith("models/default/manifest.json")


def test_rigs_form_shares_the_node_block():
    cfgs = rigs_from_dict({"rigs": [_rig(0), {**_rig(1), "sync": {"deadline_ms": 50}}],
                           "node": {"publish_endpoint": "tcp://127.0.0.1:5999", "provider": "cpu"}})
    assert [c.rig for c in cfgs] == ["rig0", "rig1"]
    assert all(c.node.publish_endpoint == "tcp://127.0.0.1:5999" for c in cfgs)
    assert cfgs[1].sync.deadline_ms == 50 and cfgs[0].sync.deadline_ms == 200


@pytest.mark.parametrize("data, words", [
    ({"rigs": [_rig(0), _rig(0)]}, "rig names must be unique"),
    ({"rigs": [_rig(0), {**_rig(1), "sensors": [{**_rig(0)["sensors"][0], "endpoint": "tcp://127.0.0.1:6000"}]
                         + _rig(1)["sensors"][1:]}]},
     "sensor ids must be unique across rigs"),
    ({"rigs": [{**_rig(0), "node": {"provider": "cpu"}}]}, "rigs.0.node: unknown key"),
    ({"rigs": []}, "rigs"),
    ({"rigs": [{**_rig(0), "colour": "red"}]}, "rigs.0.colour"),
    ({"rigs": [_rig(0), {**_rig(1), "sensors": [{**_rig(1)["sensors"][0], "endpoint": "tcp://127.0.0.1:5600"}]
                         + _rig(1)["sensors"][1:]}]},
     "endpoints must be unique"),
])
def test_rigs_form_errors_name_the_problem(data, words):
    with pytest.raises(ConfigError) as err:
        rigs_from_dict(data, "x.yaml")
    assert words in str(err.value) and "x.yaml" in str(err.value)


def _wait(sub: zmq.Socket, pred, timeout_s: float = 30.0) -> list:
    got = []
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if sub.poll(100):
            got.append(decode_map(sub.recv_multipart()))
            if pred(got):
                return got
    raise AssertionError(f"condition not met; got {len(got)} messages: {[t for t, _ in got][-10:]}")


def test_one_node_routes_each_sensor_to_its_rig(ipc_dir, spawn, zctx):
    ep = f"ipc://{ipc_dir}/{{name}}"
    cfg = {"rigs": [{**_rig(i, ep), "sync": {"deadline_ms": 60}} for i in range(2)],
           "node": {"publish_endpoint": f"ipc://{ipc_dir}/ev", "stats_interval_s": 0.2}}
    (ipc_dir / "rigs.yaml").write_text(yaml.safe_dump(cfg))
    node = spawn("node", "--config", str(ipc_dir / "rigs.yaml"))
    ready = node.json_line("event", "ready")
    assert ready["rigs"] == ["rig0", "rig1"]
    sub = zctx.socket(zmq.SUB)
    sub.setsockopt(zmq.LINGER, 0)
    sub.setsockopt(zmq.SUBSCRIBE, b"")
    sub.connect(ready["publish_endpoint"])
    _wait(sub, lambda g: any(t == "stats" for t, _ in g))  # subscribed: nothing is lost from here on

    pubs = {}
    for i in range(2):
        for kind, sid, name in (("camera", f"cam{i}", f"c{i}"), ("radar", f"radar{i}", f"r{i}"),
                                ("audio", f"mic{i}", f"a{i}")):
            pubs[sid] = SensorPublisher(kind, ep.format(name=name), sid, context=zctx)
    try:
        for pub in pubs.values():
            assert pub.wait_for_subscriber(20)
        t = time.monotonic_ns()
        img = np.zeros((96, 128, 3), np.uint8)
        for i in range(2):
            for j in range(10):  # contiguous audio from 100 ms before the first frame to past the last
                pubs[f"mic{i}"].publish(AudioChunk(f"mic{i}", 0, t - 100_000_000 + 20_000_000 * j, 0,
                                                   np.zeros(320, np.float32)))
            for k in range(3):
                tk = t + k * 33_000_000
                pubs[f"cam{i}"].publish(CameraFrame(f"cam{i}", 0, tk, 0, img))
                pubs[f"radar{i}"].publish(RadarPoints(f"radar{i}", 0, tk, 0, np.zeros((3, 6), np.float32)))
        # Unknown, forged and malformed traffic on rig 0's camera socket: the endpoint says whose it is.
        cam0 = pubs["cam0"]
        cam0.socket.send_multipart(encode(CameraFrame("camX", 0, t, t, img)))
        cam0.socket.send_multipart(encode(CameraFrame("cam1", 0, t, t, img, run_id=5)))  # rig 1's id
        head = msgpack.unpackb(encode(CameraFrame("cam0", 99, t, t, img))[1])
        head["shm"] = {"ring": "fusion-cam0-1-00000000-0", "slot": 0, "gen": 2, "size": img.nbytes}
        cam0.socket.send_multipart([b"camera", msgpack.packb(head), b""])

        got = _wait(sub, lambda g: sum(1 for tp, b in g if tp == "fused") >= 6 and any(
            tp == "stats" and b["rig"] == "rig0" and b["sensors"]["cam0"]["rejected"].get("bad_handle")
            and b["sensors"]["cam0"]["rejected"].get("unknown_sensor") == 2 for tp, b in g))
    finally:
        for pub in pubs.values():
            pub.close()
    events = [b for tp, b in got if tp == "fused"]
    for ev in events:
        i = ev["rig"][-1]
        assert {m["sensor_id"] for m in ev["members"]} <= {f"cam{i}", f"radar{i}"}
        assert {m["sensor_id"] for m in ev["modalities"].values()} == {f"cam{i}", f"radar{i}", f"mic{i}"}
    assert sorted({ev["rig"] for ev in events}) == ["rig0", "rig1"]
    assert sum(ev["rig"] == "rig0" for ev in events) == 3 and sum(ev["rig"] == "rig1" for ev in events) == 3
    stats = {b["rig"]: b for tp, b in got if tp == "stats"}
    assert set(stats) == {"rig0", "rig1"}
    assert stats["rig1"]["sensors"]["cam1"]["rejected"] == {}  # rig 0's rejects stay rig 0's
    assert stats["rig1"]["sensors"]["cam1"]["restarts"] == 0  # the forged cam1 frame moved nothing of cam1
    assert stats["rig0"]["rejected_unattributed"] == stats["rig1"]["rejected_unattributed"] == {}
    node.stop()
    final = node.json_line("event", "final_stats")
    assert set(final["rigs"]) == {"rig0", "rig1"}
    assert final["rigs"]["rig0"]["sensors"]["cam0"]["rejected"]["bad_handle"] == 1
