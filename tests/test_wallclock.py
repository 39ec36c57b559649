"""Wall-clock honesty: UTC on fused records, and an e2e that cannot go negative."""

from __future__ import annotations

import numpy as np

from fusion_node.config import config_from_dict
from fusion_node.core import FusionCore
from fusion_node.rig import Clock as RigClock
from fusion_node.rig import Rig, SensorCalibration
from fusion_node.walltime import parse_utc_ns, utc_iso
from fusion_node.wire import CameraFrame, RadarPoints

MS = 1_000_000
T0 = 10_000 * MS
WALL0 = parse_utc_ns("2026-11-22T14:03:07Z")


def test_utc_round_trip():
    assert utc_iso(WALL0 + 123_456_789) == "2026-11-22T14:03:07.123456Z"
    assert parse_utc_ns("2026-11-22T14:03:07.123456Z") == WALL0 + 123_456_000
    assert parse_utc_ns("2026-11-22") == parse_utc_ns("2026-11-22T00:00:00+00:00")
    assert parse_utc_ns("2026-11-22T15:03:07+01:00") == WALL0


def test_a_calibrated_offset_that_puts_a_capture_after_its_arrival_no_longer_makes_e2e_negative():
    # The radar is fast and the camera slow; `fusion calibrate time` aligned the radar to the
    # camera's late stamps with +40 ms. Live, a radar frame stamped t+5 ms therefore sits at t+45 ms
    # on the rig clock, after it reached the node (t+6 ms), and joins the camera frame of t.
    # Publication minus that rig-clock time, the old e2e, came out at -37 ms for every set.
    cfg = config_from_dict({"rig": "r1", "sensors": [
        {"id": "cam0", "kind": "camera", "endpoint": "inproc://c"},
        {"id": "radar0", "kind": "radar", "endpoint": "inproc://r"}]})
    rig = Rig(rig="r1", sensors=[SensorCalibration(id="radar0", kind="radar",
                                                    clock=RigClock(clock_offset_ns=40 * MS))])
    now = {"t": T0}
    core = FusionCore(cfg, None, timer=lambda: now["t"], calibration=rig)
    events = []
    for i in range(6):
        t = T0 + i * 100 * MS
        now["t"] = t + 6 * MS
        cam = CameraFrame("cam0", i, t, t, np.zeros((4, 4, 3), np.uint8), run_id=1)
        radar = RadarPoints("radar0", i, t + 5 * MS, t + 5 * MS, np.zeros((1, 6), np.float32), run_id=1)
        for ev in core.step(now["t"], [(t + 5 * MS, cam), (t + 6 * MS, radar)]):
            events.append(core.finish_event(ev, now["t"] + 2 * MS, WALL0 + now["t"] + 2 * MS - T0))
    assert len(events) >= 4
    for ev in events:
        radar = next(m for m in ev["members"] if m["sensor_id"] == "radar0")
        assert radar["t_capture_ns"] - ev["t_ref_ns"] == 45 * MS  # alignment still uses the rig clock
        assert (ev["t_publish_ns"] - radar["t_capture_ns"]) / MS == -37.0  # what e2e used to be
        assert ev["latency_ms"]["e2e"] == 2.0 and ev["latency_ms"]["receive"] >= 0
        assert ev["t_publish_utc"] == utc_iso(WALL0 + ev["t_publish_ns"] - T0)
        assert ev["t_ref_utc"] == utc_iso(WALL0 + ev["t_ref_ns"] - T0)
    stats = core.stats(now["t"], 1.0)["sensors"]
    assert stats["radar0"]["capture_after_arrival"] == len(events) and stats["cam0"]["capture_after_arrival"] == 0
