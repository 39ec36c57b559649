"""The vocabulary is declared once and everything else agrees with it: the config, the wire
registry, the model manifest, the simulator and the tables of ``docs/wire.md``."""

from __future__ import annotations

import json
import re
import typing

from fusion_node.config import SensorConfig
from fusion_node.paths import SHIPPED_MODELS
from fusion_node.vocabulary import CLASSES, MODALITIES, RADAR_POINT_FIELDS, WIRE_AUDIO_RATE_HZ
from fusion_node.wire import SENSOR_TOPICS, TOPICS, AudioChunk

from .conftest import ROOT

WIRE_DOC = (ROOT / "docs" / "wire.md").read_text()


def test_config_kinds_and_sensor_topics_are_the_modalities():
    kind = SensorConfig.model_fields["kind"].annotation
    assert typing.get_args(kind) == MODALITIES
    assert tuple(SENSOR_TOPICS) == MODALITIES and all(m in TOPICS for m in MODALITIES)


def test_the_shipped_manifest_speaks_the_vocabulary():
    manifest = json.loads(SHIPPED_MODELS.read_text())
    assert tuple(manifest["classes"]) == CLASSES
    assert set(manifest["encoders"]) == set(MODALITIES)


def test_wire_defaults_come_from_the_vocabulary():
    import numpy as np

    assert AudioChunk("mic0", 0, 0, 0, np.zeros(4, np.float32)).sample_rate_hz == WIRE_AUDIO_RATE_HZ


def test_docs_topic_table_is_the_registry():
    rows = re.findall(r"^\| `([a-z]+)` \| (\w+) \| [^|]+\| (\d+) \| (\d) \|", WIRE_DOC, flags=re.M)
    documented = {name: (message, int(bound), int(frames)) for name, message, bound, frames in rows}
    registry = {t.name: (t.message, t.queue_bound, 2 + t.payload_frames) for t in TOPICS.values()}
    assert documented == registry


def test_docs_name_the_radar_point_fields_and_the_classes():
    assert json.dumps(list(RADAR_POINT_FIELDS)) in WIRE_DOC.replace("`", "")
    label_row = next(line for line in WIRE_DOC.splitlines() if line.startswith("| `label` |"))
    assert re.findall(r"`([a-z_]+)`", label_row.split("a class")[1].split(") or")[0]) == list(CLASSES)
