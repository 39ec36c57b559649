"""Any subset of modalities is a rig: one camera, one radar, one microphone, or any pair.

The config accepts every subset under every policy and still refuses real mistakes; a fusion core
with the shipped model (``models/default``) releases sets and builds events for each subset from
the bundled recordings; and ``fusion demo`` runs without a camera, and with a microphone alone.
"""

from __future__ import annotations

import json
import subprocess
import sys
from itertools import combinations

import numpy as np
import pytest

from fusion_node.config import config_from_dict
from fusion_node.core import FusionCore
from fusion_node.errors import ConfigError
from fusion_node.vocabulary import MODALITIES
from fusion_node.wire import AudioChunk

from .conftest import ROOT
from .fake_runtime import FakeRuntime
from .test_core_runtime import KIND, MS, T0, Clock, recordings, shipped  # noqa: F401 - fixtures

SUBSETS = [s for n in (1, 2, 3) for s in combinations(KIND, n)]
IDS = ["+".join(KIND[sid] for sid in s) for s in SUBSETS]


def _cfg(sensor_ids, policy="reference", **sync):
    return config_from_dict({
        "rig": "r1",
        "sensors": [{"id": sid, "kind": KIND[sid], "endpoint": f"inproc://{sid}", "liveness_timeout_s": 0.5}
                    for sid in sensor_ids],
        "sync": {"policy": policy, "deadline_ms": 100, **sync},
    })


@pytest.mark.parametrize("policy", ["reference", "approximate", "epsilon"])
@pytest.mark.parametrize("sensor_ids", SUBSETS, ids=IDS)
def test_every_subset_is_a_valid_rig_under_every_policy(sensor_ids, policy):
    cfg = _cfg(sensor_ids, policy)
    frames = [sid for sid in sensor_ids if KIND[sid] != "audio"]
    # The driver: the camera, else the radar; a rig of microphones only has none (the audio clock).
    assert (cfg.driver.id if cfg.driver else None) == (frames[0] if frames else None)


@pytest.mark.parametrize("data, key, message", [
    pytest.param({"rig": "r", "sensors": []}, "sensors", "at least 1", id="no-sensor"),
    pytest.param({"rig": "r", "sensors": [{"id": "x", "kind": "lidar", "endpoint": "inproc://x"}]},
                 "sensors.0.kind", "camera", id="unknown-kind"),
    pytest.param({"rig": "r", "sensors": [{"id": "m", "kind": "audio", "endpoint": "inproc://m"}],
                  "sync": {"driver": "m"}}, "(top level)", "sync.driver must be a camera or radar", id="audio-driver"),
    pytest.param({"rig": "r", "sensors": [{"id": "m", "kind": "audio", "endpoint": "inproc://m"}],
                  "sync": {"audio_hop_s": 0}}, "sync.audio_hop_s", "greater than 0", id="zero-hop"),
])
def test_real_misconfigurations_are_still_refused_naming_the_key(data, key, message):
    with pytest.raises(ConfigError) as err:
        config_from_dict(data, "rig.yaml")
    lines = str(err.value).splitlines()
    assert lines[0] == "rig.yaml: invalid rig config" and len(lines) == 2, lines
    assert lines[1].strip().startswith(f"{key}:") and message in lines[1]


@pytest.mark.parametrize("sync, runtime, hop_ms", [
    pytest.param({"audio_window_s": 1.0}, None, 250, id="config-window"),
    pytest.param({"audio_window_s": 1.0}, FakeRuntime(audio_window_s=0.2), 50, id="model-window"),
    pytest.param({"audio_hop_s": 0.1}, FakeRuntime(audio_window_s=0.2), 100, id="configured"),
])
def test_the_audio_hop_defaults_to_a_quarter_of_the_window_the_core_cuts(sync, runtime, hop_ms):
    assert FusionCore(_cfg(["mic0"], **sync), runtime).assembler._impl.hop_ns == hop_ms * MS


@pytest.mark.parametrize("policy", ["reference", "approximate"])
@pytest.mark.parametrize("sensor_ids", SUBSETS, ids=IDS)
def test_every_subset_releases_sets_the_shipped_model_fuses(sensor_ids, policy, shipped, recordings):  # noqa: F811
    clock = Clock()
    core = FusionCore(_cfg(sensor_ids, policy), shipped, timer=clock)
    silent = tuple(sid for sid in KIND if sid not in sensor_ids)
    events = recordings.drive(core, clock, T0, 3.0, silent=silent)
    kinds = {KIND[sid] for sid in sensor_ids}
    frames = kinds - {"audio"}
    fused = [e for e in events if e["scores"] is not None]
    if frames:
        assert len(events) >= 25  # one set per 100 ms frame
    else:
        # Microphone only: a set every hop (a quarter of the 1 s window) of captured audio, from
        # half a window after the first chunk.
        assert 9 <= len(events) <= 11
        assert {b["t_ref_ns"] - a["t_ref_ns"] for a, b in zip(events, events[1:])} == {250 * MS}
        assert all(e["members"] == [] for e in events)
    assert len(fused) >= len(events) - 2, [e["missing"] for e in events]
    assert set(core.sensors) == set(sensor_ids) and not core.unattributed
    ev = fused[-1]
    assert set(ev["modalities"]) == kinds
    assert all(m["present"] for m in ev["modalities"].values()) and ev["missing"] == []
    assert {m["topic"] for m in ev["members"]} == frames
    assert sorted(ev["scores"]) == sorted(shipped.classes) and ev["labels"] is not None
    weights = {k: m["weight"] for k, m in ev["modalities"].items()}
    assert sum(weights.values()) == pytest.approx(1, abs=1e-3) and all(w > 0 for w in weights.values())
    for m in MODALITIES:
        assert (f"encode_{m}" in ev["latency_ms"]) is (m in kinds)
    assert not [a for e in events for a in e["alerts"] if a.startswith("sensor_failed")]


def test_an_audio_only_rig_follows_a_restarted_microphone(shipped, recordings):  # noqa: F811
    clock = Clock()
    core = FusionCore(_cfg(["mic0"]), shipped, timer=clock)
    first = recordings.drive(core, clock, T0, 2.0, silent=("cam0", "radar0"))
    assert first
    # The microphone restarts (a new run, its sequence from 0) after a second of silence: the
    # audio clock starts afresh half a window into the new run, then a set every hop again.
    t_restart = T0 + 3000 * MS
    later = []
    for i in range(100):
        t = t_restart + i * 20 * MS
        clock.t = t + 21 * MS
        chunk = AudioChunk("mic0", i, t, t, recordings.audio[i * 320:(i + 1) * 320], 16000, run_id=2)
        later += core.step(clock.t, [(clock.t, chunk)])
    assert core.sensors["mic0"].restarts == 1 and not core.sensors["mic0"].rejected
    assert later[0]["t_ref_ns"] == t_restart + 20 * MS + int(shipped.audio_window_s * 1e9) // 2
    assert all(b["t_ref_ns"] - a["t_ref_ns"] == 250 * MS for a, b in zip(later, later[1:]))
    assert all(e["modalities"]["audio"]["present"] for e in later)
    assert core.assembler.counters["released_on_tick"] == len(first) + len(later)


def _demo(tmp_path, *flags, duration="3"):
    out = tmp_path / "events.jsonl"
    proc = subprocess.run(
        [sys.executable, "-m", "fusion_node", "demo", "--duration", duration, "--quiet", "--events-out", str(out),
         *flags], cwd=ROOT, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert "fusion demo summary" in proc.stdout and "FAILED" not in proc.stdout
    return [json.loads(line) for line in out.read_text().splitlines()]


def test_demo_runs_without_a_camera(tmp_path):
    events = _demo(tmp_path, "--no-camera")
    assert len(events) >= 15  # the 10 Hz radar sets the time
    assert all(set(e["modalities"]) == {"radar", "audio"} for e in events)
    full = [e for e in events if not e["missing"]]
    assert full and full[-1]["scores"] is not None and [m["topic"] for m in full[-1]["members"]] == ["radar"]


def test_demo_runs_with_a_microphone_alone(tmp_path):
    events = _demo(tmp_path, "--no-camera", "--no-radar", duration="4")
    assert len(events) >= 8  # a set every 250 ms of audio
    assert all(set(e["modalities"]) == {"audio"} and e["members"] == [] for e in events)
    heard = [e for e in events if e["modalities"]["audio"]["present"]]
    assert heard and heard[-1]["scores"] is not None


def test_demo_refuses_a_rig_with_no_sensor(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "fusion_node", "demo", "--no-camera", "--no-radar", "--no-audio"],
                          cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert proc.returncode != 0
    assert "leave no sensor" in (proc.stdout + proc.stderr) and "Traceback" not in proc.stderr
