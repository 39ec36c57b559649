"""The committed recording of the bundled samples, through the core, against its reference."""

from __future__ import annotations

import copy
import json
import subprocess
import sys

import pytest

from fusion_node.recording import Recording
from fusion_node.regression import RECORDING, REFERENCE, compare, summarise
from fusion_node.replay import through_core

from .conftest import ROOT


@pytest.fixture(scope="module")
def events():
    with Recording(RECORDING) as rec:
        return [summarise(ev) for ev in through_core(rec, models="default")]


@pytest.fixture(scope="module")
def reference():
    return json.loads(REFERENCE.read_text())


def test_the_committed_recording_is_small():
    assert RECORDING.stat().st_size < 1.5 * 2**20


def test_the_bundled_recording_matches_its_reference(events, reference):
    diffs = compare(reference, events)
    assert not diffs, "\n".join(diffs)
    assert len(events) >= 50 and any(ev["labels"] for ev in events)


def test_a_change_beyond_the_tolerances_is_printed_as_a_difference(events, reference):
    changed = copy.deepcopy(reference)
    ev = changed["events"][10]
    where = f"event cam0#{ev['key'][2]}"
    ev["scores"]["person"] = round(ev["scores"]["person"] - 0.5, 4)  # person falls far below its threshold
    ev["labels"] = [pair for pair in ev["labels"] if pair[0] != "person"]
    ev["members"] = ev["members"][:1]
    changed["events"][11]["consistency"] += 0.001  # within the tolerance: no difference
    del changed["events"][20]
    diffs = compare(changed, events)
    assert any(d.startswith(where) and "score person" in d for d in diffs), diffs
    assert any(d.startswith(where) and "label person added" in d for d in diffs), diffs
    assert any(d.startswith(where) and "members" in d for d in diffs), diffs
    assert any("not in the reference" in d for d in diffs), diffs
    assert len(diffs) == 4, diffs


def test_the_check_command_prints_the_diff_and_fails(tmp_path, reference):
    changed = copy.deepcopy(reference)
    changed["events"][5]["alerts"] = changed["events"][5]["alerts"] + ["sensor_failed:radar0"]
    path = tmp_path / "reference.json"
    path.write_text(json.dumps(changed))
    proc = subprocess.run([sys.executable, "-m", "fusion_node.regression", "--reference", str(path)], cwd=ROOT,
                          capture_output=True, text=True, timeout=180)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "1 difference(s)" in proc.stdout and "alert sensor_failed:radar0 lost" in proc.stdout
    assert "--update-reference" in proc.stdout
