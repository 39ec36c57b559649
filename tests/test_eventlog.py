"""The SQLite event log: durable sequence, restart, retention by age and size, snapshots, one writer."""

from __future__ import annotations

import json
import multiprocessing
import os
import sqlite3
import subprocess
import sys

import pytest

from fusion_node.errors import FusionError
from fusion_node.eventlog import EventLog
from fusion_node.walltime import parse_utc_ns

from .conftest import ROOT

DAY_NS = 86_400 * 10**9
WALL0 = 1_790_000_000 * 10**9


def _ev(n, kind="start", label="person"):
    return {"type": kind, "kind": "detection", "id": f"r1:{label}:0:{n}", "rig": "r1", "label": label,
            "score": 0.9, "t_utc": "2026-09-21T00:00:00.000000Z", "snapshot": None}


def test_append_assigns_consecutive_seqs_and_a_reader_sees_them_in_order(tmp_path):
    log = EventLog(tmp_path / "ev.sqlite")
    got = [log.append(_ev(i), WALL0 + i) for i in range(5)]
    assert [e["seq"] for e in got] == [1, 2, 3, 4, 5] and got[0]["id"] == "r1:person:0:0"
    reader = EventLog(tmp_path / "ev.sqlite", reader=True)
    assert [e["seq"] for e in reader.after(2)] == [3, 4, 5]
    assert reader.after(0)[0] == got[0]
    assert [e["seq"] for e in reader.iter_after(0)] == [1, 2, 3, 4, 5]
    assert reader.first_seq_at(WALL0 + 3) == 4 and reader.first_seq_at(WALL0 + 99) is None
    with pytest.raises(sqlite3.OperationalError):
        reader.db.execute("DELETE FROM events")  # readers cannot write
    reader.close()
    log.close()


def test_the_sequence_continues_after_a_restart_even_when_retention_emptied_the_log(tmp_path):
    path = tmp_path / "ev.sqlite"
    log = EventLog(path, max_age_days=1)
    for i in range(3):
        log.append(_ev(i), WALL0)
    log.close()
    log = EventLog(path, max_age_days=1)
    assert log.maintain(WALL0 + 2 * DAY_NS)["events"] == 3 and log.count() == 0
    assert log.append(_ev(9), WALL0 + 2 * DAY_NS)["seq"] == 4
    log.close()


def _write_and_die(path: str, n: int) -> None:
    log = EventLog(path)
    for i in range(n):
        log.append(_ev(i), WALL0 + i)
    os._exit(0)  # no close, no clean-up: as if killed right after the last append returned


def test_every_appended_event_survives_a_process_that_dies_without_closing(tmp_path):
    path = str(tmp_path / "ev.sqlite")
    proc = multiprocessing.get_context("fork").Process(target=_write_and_die, args=(path, 50))
    proc.start()
    proc.join(30)
    log = EventLog(path)  # the lock died with the process
    assert log.last_seq() == 50 and [e["seq"] for e in log.iter_after(0)] == list(range(1, 51))
    log.close()


def test_retention_by_size_drops_the_oldest_events_and_their_snapshots(tmp_path):
    log = EventLog(tmp_path / "ev.sqlite", max_mb=0.25)
    blob = bytes(range(256)) * 200  # 51 kB, stands for a JPEG
    for i in range(40):
        log.append(_ev(i), WALL0 + i)
        log.put_snapshot(f"r1:person:0:{i}", blob, WALL0 + i)
    assert log.used_bytes() > 0.25 * 2**20
    deleted = log.maintain(WALL0 + 100)
    assert log.used_bytes() <= 0.25 * 2**20
    kept = [e["seq"] for e in log.iter_after(0)]
    assert deleted["events"] == 40 - len(kept) > 0 and kept == list(range(41 - len(kept), 41))
    assert log.snapshot("r1:person:0:0") is None and log.snapshot("r1:person:0:39") == blob
    assert deleted["snapshots"] == deleted["events"]
    log.close()


def test_unfinished_lists_the_last_event_of_occurrences_without_an_end(tmp_path):
    log = EventLog(tmp_path / "ev.sqlite")
    log.append(_ev(1), WALL0)
    log.append(_ev(1, "update"), WALL0)
    log.append(_ev(2), WALL0)
    log.append(_ev(2, "end"), WALL0)
    assert [(e["id"], e["type"], e["seq"]) for e in log.unfinished()] == [("r1:person:0:1", "update", 2)]
    log.close()


def test_one_writer_per_log(tmp_path):
    log = EventLog(tmp_path / "ev.sqlite")
    with pytest.raises(FusionError, match="in use by another node"):
        EventLog(tmp_path / "ev.sqlite")
    log.close()
    EventLog(tmp_path / "ev.sqlite").close()
    with pytest.raises(FusionError, match="no event log"):
        EventLog(tmp_path / "missing.sqlite", reader=True)


def test_fusion_events_since_a_utc_time_and_its_errors(tmp_path):
    log = EventLog(tmp_path / "ev.sqlite")
    t0 = parse_utc_ns("2026-11-22T14:00:00Z")
    for i in range(5):
        log.append(_ev(i), t0 + i * 60 * 10**9)  # one a minute
    log.close()

    def events(*args):
        return subprocess.run([sys.executable, "-m", "fusion_node", "events", "--log", str(tmp_path / "ev.sqlite"),
                               *args], cwd=ROOT, capture_output=True, text=True, timeout=60)

    out = events("--since", "2026-11-22T14:02:00Z", "--no-follow")
    assert out.returncode == 0 and [json.loads(x)["seq"] for x in out.stdout.splitlines()] == [3, 4, 5]
    out = events("--since", "3", "--no-follow", "--count", "1")
    assert [json.loads(x)["seq"] for x in out.stdout.splitlines()] == [4]
    bad = events("--since", "yesterday")
    assert bad.returncode == 2 and "--since wants a seq or an ISO 8601 UTC time" in bad.stderr
    missing = events("--snapshot", "nope")
    assert missing.returncode == 1 and "no snapshot 'nope'" in missing.stderr
