"""Rig config: the example loads, and every kind of mistake is reported with its file and key."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from fusion_node.config import config_from_dict, config_schema, load_config
from fusion_node.errors import ConfigError

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "rig.yaml"


def _base() -> dict:
    return yaml.safe_load(EXAMPLE.read_text())


def test_example_config_loads_with_defaults():
    cfg = load_config(EXAMPLE)
    assert cfg.rig == "lab-rig-1"
    assert [s.id for s in cfg.sensors] == ["cam0", "radar0", "mic0"]
    assert cfg.driver.id == "cam0"
    assert cfg.sync.age_penalty == 0.1
    assert cfg.sensors[0].liveness_timeout_ns == 1_000_000_000
    assert cfg.sensors[0].buffer_len == 8


def test_unknown_key_is_rejected_and_named(tmp_path):
    data = _base()
    data["sync"]["tolerence_ms"] = 10
    path = tmp_path / "rig.yaml"
    path.write_text(yaml.safe_dump(data))
    with pytest.raises(ConfigError) as err:
        load_config(path)
    assert str(path) in str(err.value) and "sync.tolerence_ms" in str(err.value)
    assert "unknown key" in str(err.value)


@pytest.mark.parametrize("mutate,key", [
    (lambda d: d["sensors"][0].update(kind="lidar"), "sensors.0.kind"),
    (lambda d: d["sensors"][1].pop("endpoint"), "sensors.1.endpoint"),
    (lambda d: d["sync"].update(deadline_ms=-5), "sync.deadline_ms"),
    (lambda d: d["node"].update(provider="gpu"), "node.provider"),
    (lambda d: d.pop("rig"), "rig"),
])
def test_invalid_values_name_the_key(mutate, key):
    data = _base()
    mutate(data)
    with pytest.raises(ConfigError) as err:
        config_from_dict(data, "rig.yaml")
    assert key in str(err.value)


def test_cross_field_rules():
    data = _base()
    data["sensors"][1]["id"] = "cam0"
    with pytest.raises(ConfigError, match="unique"):
        config_from_dict(data)
    data = _base()
    data["sync"]["driver"] = "mic0"
    with pytest.raises(ConfigError, match="driver must be a camera or radar"):
        config_from_dict(data)
    data = _base()
    data["sync"]["driver"] = "nope"
    with pytest.raises(ConfigError, match="nope"):
        config_from_dict(data)


def test_unreadable_and_malformed_files(tmp_path):
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("rig: [unclosed")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(bad)
    bad.write_text("- just\n- a list\n")
    with pytest.raises(ConfigError, match="mapping"):
        load_config(bad)


def test_relative_models_path_resolves_against_the_file(tmp_path):
    data = _base()
    data["node"]["models"] = "models/manifest.json"
    path = tmp_path / "rig.yaml"
    path.write_text(yaml.safe_dump(data))
    assert load_config(path).node.models == str(tmp_path / "models" / "manifest.json")


def test_schema_describes_every_field():
    schema = config_schema()

    def walk(node):
        for name, prop in node.get("properties", {}).items():
            assert "description" in prop, name
    walk(schema)
    for definition in schema["$defs"].values():
        walk(definition)
