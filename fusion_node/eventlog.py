"""The durable event log: every lifecycle event and alert, in SQLite (WAL), before it is published.

One file per node. The node appends each event (one transaction, ``synchronous=FULL``: on disk
when :meth:`EventLog.append` returns) and only then publishes it, so a consumer that was away,
or a node that was killed, loses nothing that went out. The log gives each event its ``seq``:
SQLite's ``AUTOINCREMENT`` never hands out a number twice, so a restarted node continues the
sequence even after retention emptied the table. Readers (``fusion events --since``) open the
same file concurrently; WAL lets them read while the node writes.

Tables::

    events(seq INTEGER PRIMARY KEY AUTOINCREMENT, id, type, kind, rig, label, wall_ns, body JSON)
    snapshots(id PRIMARY KEY, wall_ns, jpeg BLOB)      -- one per occurrence, referenced by events.body.snapshot
    meta(key PRIMARY KEY, value)                      -- schema version

Retention (:meth:`EventLog.maintain`): events older than ``max_age_days`` go, then the oldest
while the pages in use exceed ``max_mb``; a snapshot goes with the last event of its occurrence,
and freed pages return to the file system (``auto_vacuum=INCREMENTAL``).
"""

from __future__ import annotations

import fcntl
import json
import os
import sqlite3
from pathlib import Path
from typing import Iterator

from .errors import FusionError

__all__ = ["EventLog", "LOG_SCHEMA"]

LOG_SCHEMA = 1
_TABLES = """
CREATE TABLE IF NOT EXISTS events(
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    id TEXT NOT NULL, type TEXT NOT NULL, kind TEXT NOT NULL, rig TEXT NOT NULL, label TEXT NOT NULL,
    wall_ns INTEGER NOT NULL, body TEXT NOT NULL);
CREATE INDEX IF NOT EXISTS events_wall ON events(wall_ns);
CREATE INDEX IF NOT EXISTS events_id ON events(id);
CREATE TABLE IF NOT EXISTS snapshots(id TEXT PRIMARY KEY, wall_ns INTEGER NOT NULL, jpeg BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS meta(key TEXT PRIMARY KEY, value TEXT NOT NULL);
"""


class EventLog:
    """One SQLite event log; the writer is the node, readers are ``fusion events`` and tests."""

    def __init__(self, path: str | Path, max_age_days: float = 30.0, max_mb: float = 256.0, *,
                 reader: bool = False):
        self.path = Path(path)
        self.max_age_ns = int(max_age_days * 86_400e9)
        self.max_bytes = int(max_mb * 1024 * 1024)
        self.reader = reader
        if reader and not self.path.exists():
            raise FusionError(f"{self.path}: no event log here (the node writes it: event_log.path in its config)")
        self._lock = None
        if not reader:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._lock = self._take_writer_lock()
        try:
            self.db = sqlite3.connect(str(self.path), timeout=10.0, isolation_level=None, check_same_thread=False)
            self.db.execute("PRAGMA busy_timeout=10000")
            if reader:
                self.db.execute("PRAGMA query_only=1")
            else:
                self.db.execute("PRAGMA auto_vacuum=INCREMENTAL")  # only takes effect on a new file
                mode = self.db.execute("PRAGMA journal_mode=WAL").fetchone()[0]
                if mode.lower() != "wal":
                    raise FusionError(f"{self.path}: SQLite refused WAL mode ({mode}); put the log on a local disk")
                self.db.execute("PRAGMA synchronous=FULL")
                self.db.executescript(_TABLES)
                self.db.execute("INSERT OR IGNORE INTO meta VALUES ('schema', ?)", (str(LOG_SCHEMA),))
        except sqlite3.DatabaseError as exc:
            raise FusionError(f"{self.path}: cannot open the event log ({exc})") from None
        self.appended = 0

    def _take_writer_lock(self):
        """One writing node per log: two would interleave their sequences and end each other's occurrences."""
        lock = open(f"{self.path}.lock", "a+")
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            lock.seek(0)
            holder = lock.read().strip() or "?"
            lock.close()
            raise FusionError(f"{self.path}: the event log is in use by another node (pid {holder}); give this "
                              f"node its own event_log.path") from None
        lock.truncate(0)
        lock.write(str(os.getpid()))
        lock.flush()
        return lock

    # -- writing ------------------------------------------------------------------------------

    def append(self, event: dict, wall_ns: int) -> dict:
        """Store ``event`` durably; returns it with its ``seq``."""
        body = {k: v for k, v in event.items() if k != "seq"}
        cur = self.db.execute(
            "INSERT INTO events(id, type, kind, rig, label, wall_ns, body) VALUES (?, ?, ?, ?, ?, ?, ?)",
            (event["id"], event["type"], event["kind"], event["rig"], event["label"], int(wall_ns),
             json.dumps(body, separators=(",", ":"))))
        self.appended += 1
        return {"seq": int(cur.lastrowid), **body}

    def put_snapshot(self, snapshot_id: str, jpeg: bytes, wall_ns: int) -> None:
        """Store (or replace) an occurrence's snapshot."""
        self.db.execute("INSERT OR REPLACE INTO snapshots(id, wall_ns, jpeg) VALUES (?, ?, ?)",
                        (snapshot_id, int(wall_ns), sqlite3.Binary(jpeg)))

    def maintain(self, now_wall_ns: int) -> dict:
        """Apply retention by age and size; returns what was deleted."""
        deleted = {"events": 0, "snapshots": 0}
        with self._tx():
            deleted["events"] += self.db.execute("DELETE FROM events WHERE wall_ns < ?",
                                                 (int(now_wall_ns - self.max_age_ns),)).rowcount
        while (used := self.used_bytes()) > self.max_bytes:
            # The share of the oldest events that is over the bound, as a first guess; repeated
            # until under it (snapshots make events unequal in size).
            n = max(1, -(-self.count() * (used - self.max_bytes) // used))
            with self._tx():
                n = self.db.execute("DELETE FROM events WHERE seq IN (SELECT seq FROM events ORDER BY seq LIMIT ?)",
                                    (n,)).rowcount
                deleted["events"] += n
                deleted["snapshots"] += self._drop_orphans()
            self.db.execute("PRAGMA incremental_vacuum")
            if n == 0:
                break
        with self._tx():
            deleted["snapshots"] += self._drop_orphans()
        self.db.execute("PRAGMA incremental_vacuum")
        return deleted

    def _drop_orphans(self) -> int:
        return self.db.execute("DELETE FROM snapshots WHERE id NOT IN (SELECT DISTINCT id FROM events)").rowcount

    def _tx(self):
        return _Transaction(self.db)

    # -- reading ------------------------------------------------------------------------------

    def used_bytes(self) -> int:
        """Bytes of the database pages in use (the file may hold free pages besides)."""
        page = self.db.execute("PRAGMA page_size").fetchone()[0]
        count = self.db.execute("PRAGMA page_count").fetchone()[0]
        free = self.db.execute("PRAGMA freelist_count").fetchone()[0]
        return int((count - free) * page)

    def last_seq(self) -> int:
        """The highest seq ever handed out (0 for a new log), whether or not retention kept it."""
        row = self.db.execute("SELECT seq FROM sqlite_sequence WHERE name = 'events'").fetchone()
        return int(row[0]) if row else 0

    def first_seq_at(self, wall_ns: int) -> int | None:
        """The seq of the first event logged at or after ``wall_ns`` (UTC ns), or None."""
        row = self.db.execute("SELECT MIN(seq) FROM events WHERE wall_ns >= ?", (int(wall_ns),)).fetchone()
        return None if row[0] is None else int(row[0])

    def after(self, seq: int, limit: int = 1000) -> list[dict]:
        """Events with a seq above ``seq``, in order, at most ``limit``."""
        rows = self.db.execute("SELECT seq, body FROM events WHERE seq > ? ORDER BY seq LIMIT ?",
                               (int(seq), int(limit))).fetchall()
        return [{"seq": int(s), **json.loads(b)} for s, b in rows]

    def iter_after(self, seq: int) -> Iterator[dict]:
        """Every event with a seq above ``seq`` that is in the log now, in order."""
        while True:
            batch = self.after(seq)
            if not batch:
                return
            yield from batch
            seq = batch[-1]["seq"]

    def snapshot(self, snapshot_id: str) -> bytes | None:
        """The JPEG of an occurrence's snapshot, or None."""
        row = self.db.execute("SELECT jpeg FROM snapshots WHERE id = ?", (snapshot_id,)).fetchone()
        return None if row is None else bytes(row[0])

    def unfinished(self) -> list[dict]:
        """The last event of each occurrence that has no ``end`` (left open by a node that died)."""
        rows = self.db.execute(
            "SELECT e.seq, e.body FROM events e JOIN (SELECT id, MAX(seq) AS m FROM events GROUP BY id) last "
            "ON e.seq = last.m WHERE e.type != 'end' ORDER BY e.seq").fetchall()
        return [{"seq": int(s), **json.loads(b)} for s, b in rows]

    def count(self) -> int:
        return int(self.db.execute("SELECT COUNT(*) FROM events").fetchone()[0])

    def close(self) -> None:
        self.db.close()
        if self._lock is not None:
            self._lock.close()  # releases the flock
            self._lock = None


class _Transaction:
    """``BEGIN IMMEDIATE`` ... ``COMMIT`` (or ``ROLLBACK`` on an exception) on an autocommit connection."""

    def __init__(self, db: sqlite3.Connection):
        self.db = db

    def __enter__(self) -> sqlite3.Connection:
        self.db.execute("BEGIN IMMEDIATE")
        return self.db

    def __exit__(self, exc_type, exc, tb) -> None:
        self.db.execute("ROLLBACK" if exc_type else "COMMIT")
