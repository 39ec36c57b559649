"""The rig calibration file: round trip, updates that keep other sensors, errors that name file, sensor, key."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import yaml

from calibration.projection import Transform, radar_to_camera
from fusion_node.errors import ConfigError
from fusion_node.rig import (
    Clock,
    Intrinsics,
    Provenance,
    Rig,
    load_rig,
    rig_schema,
    save_rig,
    update_rig_sensor,
)

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "rig_calibration.yaml"


def _write(tmp_path: Path, data: dict, name: str = "rig.yaml") -> Path:
    p = tmp_path / name
    p.write_text(yaml.safe_dump(data, sort_keys=False))
    return p


def _example_dict() -> dict:
    return yaml.safe_load(EXAMPLE.read_text())


def test_example_loads_and_describes_the_rig():
    rig = load_rig(EXAMPLE)
    assert rig.ids == ["cam0", "radar0", "mic0"]
    cam = rig.sensor("cam0", kind="camera")
    assert cam.intrinsics.size == (768, 432)
    assert cam.intrinsics.provenance.method
    # the radar sits below the camera (camera y points down), boresight along the optical axis
    T = radar_to_camera(rig, "radar0", "cam0")
    assert T.t[1] > 0
    assert np.allclose(T.apply([[0.0, 5.0, 0.0]]), [[0.0, T.t[1], 5.0]])


def test_round_trip_is_exact(tmp_path):
    rig = load_rig(EXAMPLE)
    out = save_rig(rig, tmp_path / "copy.yaml")
    again = load_rig(out)
    assert again == rig
    assert save_rig(again, tmp_path / "copy2.yaml").read_text() == out.read_text()


def test_every_field_is_described():
    schema = rig_schema()

    def walk(node, path="$"):
        if isinstance(node, dict):
            for name, prop in node.get("properties", {}).items():
                assert prop.get("description"), f"{path}.{name} has no description"
            for key, value in node.items():
                walk(value, f"{path}.{key}")
        elif isinstance(node, list):
            for v in node:
                walk(v, path)

    walk(schema)


def test_update_one_sensor_keeps_the_others(tmp_path):
    path = save_rig(load_rig(EXAMPLE), tmp_path / "rig.yaml")
    before = load_rig(path)
    prov = Provenance(date="2024-06-01", method="test", residual=0.1, residual_unit="px")
    intr = before.sensor("cam0").intrinsics.model_copy(update={"fx_px": 700.0, "provenance": prov})
    update_rig_sensor(path, "cam0", "camera", intrinsics=intr)
    after = load_rig(path)
    assert after.sensor("cam0").intrinsics.fx_px == 700.0
    assert after.sensor("cam0").extrinsics == before.sensor("cam0").extrinsics
    assert after.sensor("radar0") == before.sensor("radar0")
    assert after.sensor("mic0") == before.sensor("mic0")
    # a new sensor is appended; a clock update leaves the extrinsics alone
    update_rig_sensor(path, "radar1", "radar", clock=Clock(clock_offset_ns=-5_000_000))
    update_rig_sensor(path, "mic0", "audio", clock=Clock(clock_offset_ns=40_000_000))
    final = load_rig(path)
    assert final.ids == ["cam0", "radar0", "mic0", "radar1"]
    assert final.sensor("mic0").extrinsics == before.sensor("mic0").extrinsics
    assert final.sensor("mic0").clock.clock_offset_ns == 40_000_000


def test_save_with_merge_keeps_sensors_of_the_file(tmp_path):
    path = save_rig(load_rig(EXAMPLE), tmp_path / "rig.yaml")
    only_cam = Rig(rig="lab-rig-1", sensors=[load_rig(EXAMPLE).sensor("cam0").model_copy(update={"extrinsics": None})])
    save_rig(only_cam, path, merge=True)
    merged = load_rig(path)
    assert merged.ids == ["cam0", "radar0", "mic0"] and merged.sensor("cam0").extrinsics is None
    save_rig(only_cam, path)
    assert load_rig(path).ids == ["cam0"]


def test_update_creates_the_file(tmp_path):
    path = tmp_path / "new_rig.yaml"
    intr = Intrinsics(width_px=640, height_px=480, fx_px=500, fy_px=500, cx_px=320, cy_px=240)
    rig = update_rig_sensor(path, "cam0", "camera", intrinsics=intr)
    assert path.exists() and load_rig(path) == rig
    with pytest.raises(ConfigError, match="cam0.*camera.*not a radar"):
        update_rig_sensor(path, "cam0", "radar", clock=Clock())


@pytest.mark.parametrize("mutate, expected", [
    (lambda d: d["sensors"][0]["intrinsics"].update(fx_px=-3),
     r"sensor 'cam0' \(sensors\[0\]\), key 'intrinsics.fx_px': Input should be greater than 0 \(got -3\)"),
    (lambda d: d["sensors"][1]["extrinsics"].update(rotation_deg=[0, 0, 0]),
     r"sensor 'radar0' \(sensors\[1\]\), key 'extrinsics.rotation_deg': unknown key"),
    (lambda d: d["sensors"][1]["extrinsics"].pop("translation_m"),
     r"sensor 'radar0' \(sensors\[1\]\), key 'extrinsics.translation_m': required key is missing"),
    (lambda d: d["sensors"][2].update(intrinsics=d["sensors"][0]["intrinsics"]),
     r"sensor 'mic0' \(sensors\[2\]\).*only cameras have intrinsics"),
    (lambda d: d["sensors"][2]["extrinsics"]["provenance"].pop("residual_unit"),
     r"sensor 'mic0'.*key 'extrinsics.provenance'.*residual_unit is required"),
    (lambda d: d["sensors"][0]["intrinsics"]["provenance"].update(date="last tuesday"),
     r"sensor 'cam0'.*key 'intrinsics.provenance.date'.*ISO 8601"),
    (lambda d: d["sensors"][1]["clock"].update(clock_offset_ns="soon"),
     r"sensor 'radar0'.*key 'clock.clock_offset_ns'.*'soon'"),
    (lambda d: d["sensors"][1].update(id="cam0"), r"sensor ids must be unique"),
    (lambda d: d["sensors"][0]["intrinsics"].update(cx_px=float("nan")), r"key 'intrinsics.cx_px'"),
])
def test_errors_name_file_sensor_and_key(tmp_path, mutate, expected):
    data = _example_dict()
    mutate(data)
    path = _write(tmp_path, data)
    with pytest.raises(ConfigError, match=expected) as err:
        load_rig(path)
    assert str(path) in str(err.value)


def test_file_level_errors(tmp_path):
    with pytest.raises(ConfigError, match="no such rig calibration file"):
        load_rig(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("rig: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_rig(bad)
    bad.write_text("- just\n- a list\n")
    with pytest.raises(ConfigError, match="mapping at the top level"):
        load_rig(bad)


def test_sensor_lookup_errors():
    rig = load_rig(EXAMPLE)
    with pytest.raises(ConfigError, match="no sensor 'cam9'.*cam0, radar0, mic0"):
        rig.sensor("cam9")
    with pytest.raises(ConfigError, match="'radar0' is a radar, expected a camera"):
        rig.sensor("radar0", kind="camera")


def test_clock_mapping_with_drift():
    clock = Clock(clock_offset_ns=1_000_000, clock_drift_ppm=50.0, clock_epoch_ns=10_000_000_000)
    assert clock.to_rig_ns(10_000_000_000) == 10_001_000_000
    # 100 s after the epoch, 50 ppm adds 5 ms
    assert clock.to_rig_ns(110_000_000_000) == 110_006_000_000
    arr = clock.to_rig_ns(np.array([10_000_000_000, 110_000_000_000], dtype=np.int64))
    assert arr.tolist() == [10_001_000_000, 110_006_000_000]


def test_transform_extrinsics_round_trip(tmp_path):
    T = Transform.from_rvec([0.1, -0.2, 0.3], [1.0, 2.0, 3.0])
    ext = T.to_extrinsics()
    assert Transform.from_extrinsics(ext).angle_to_deg(T) < 1e-9
    assert np.allclose(Transform.from_extrinsics(ext).t, T.t)
    # The same pose survives a rig file: saved, loaded back, it is still T.
    path = save_rig(Rig(rig="r", sensors=[{"id": "radar0", "kind": "radar", "extrinsics": ext}]), tmp_path / "r.yaml")
    back = Transform.from_extrinsics(load_rig(path).sensor("radar0", kind="radar").extrinsics)
    assert back.angle_to_deg(T) < 1e-9 and np.allclose(back.t, T.t, atol=1e-12)
