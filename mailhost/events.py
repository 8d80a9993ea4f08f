"""Every login and decision as a structured event.

Events are plain dicts (JSON-ready) with a sequence number, so a reader can ask
for "everything after N". The in-memory log is bounded; the JSON-lines file
(``DIR/events.jsonl``) is append-only, opened for each batch (so no descriptor
is held and rotation by rename is safe) and not fsync'd: it is an audit trail
for people, not a store a 250 depends on. Once it reaches ``max_file_bytes`` it
is renamed to ``events.jsonl.1`` (replacing the one before), so a server that
runs for months keeps at most about twice that on disk.

Writing is batched and can run off the caller's thread: with ``schedule_writes``
given (the server hands in its storage pool), :meth:`EventLog.emit` only queues
the event, and one job at a time writes everything queued, in order, to the file
and to every batch writer (the console). Three events per message, each opening
the file and echoing a line on the reactor thread, were a fifth of its time
under load. Without ``schedule_writes`` every emit writes before it returns.
"""

from __future__ import annotations

import json
import os
import sys
import threading
from collections import deque
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any

POP_LOGIN = "pop3-login"
POP_LOGIN_FAILED = "pop3-login-failed"
SMTP_AUTH = "smtp-auth"
SMTP_AUTH_FAILED = "smtp-auth-failed"
SMTP_DECISION = "smtp-decision"
MESSAGE_STORED = "message-stored"
FAULT_APPLIED = "fault-applied"
MAILDIR_TMP_SWEPT = "maildir-tmp-swept"

DEFAULT_MAX_EVENTS = 10_000
DEFAULT_MAX_FILE_BYTES = 64 * 1024 * 1024


def rotated(path: Path) -> Path:
    """Where the event file goes when it is full."""
    return path.with_name(path.name + ".1")


def _last_seq(path: Path) -> int:
    """The last event's sequence number, so numbering goes on after a restart; the
    rotated file's when the current one has no event yet."""
    for candidate in (path, rotated(path)):
        seq = _last_seq_in(candidate)
        if seq:
            return seq
    return 0


def _last_seq_in(path: Path) -> int:
    try:
        with open(path, "rb") as f:
            f.seek(0, 2)
            f.seek(max(0, f.tell() - 65536))
            tail = f.read().splitlines()
    except OSError:
        return 0
    for line in reversed(tail):
        try:
            return int(json.loads(line)["seq"])
        except (ValueError, KeyError, TypeError):
            continue
    return 0


BatchWriter = Callable[[list[dict[str, Any]]], None]


class EventLog:
    def __init__(
        self,
        path: Path | None = None,
        max_events: int = DEFAULT_MAX_EVENTS,
        schedule_writes: Callable[[Callable[[], None]], object] | None = None,
        max_file_bytes: int = DEFAULT_MAX_FILE_BYTES,
    ) -> None:
        self._events: deque[dict[str, Any]] = deque(maxlen=max_events)
        self._seq = 0
        self._path = path
        self._max_file_bytes = max_file_bytes
        self._subscribers: list[Callable[[dict[str, Any]], None]] = []
        self._writers: list[BatchWriter] = []
        self._schedule_writes = schedule_writes
        self._queue_lock = threading.Lock()
        self._write_lock = threading.Lock()
        self._unwritten: list[dict[str, Any]] = []
        self._writing = False
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            self._seq = _last_seq(path)

    def emit(self, kind: str, at: datetime, **fields: Any) -> dict[str, Any]:
        self._seq += 1
        event = {"seq": self._seq, "at": at.isoformat(), "kind": kind, **fields}
        self._events.append(event)
        if self._path is not None or self._writers:
            with self._queue_lock:
                self._unwritten.append(event)
                start = not self._writing
                self._writing = True
            if start:
                if self._schedule_writes is None:
                    self._write_queued()
                else:
                    self._schedule_writes(self._write_queued)
        for subscriber in self._subscribers:
            subscriber(event)
        return event

    def _write_queued(self) -> None:
        """Write batches until the queue is empty; one such job runs at a time."""
        try:
            while self._write_batch():
                pass
        finally:
            with self._queue_lock:
                self._writing = False
            if self._unwritten:  # queued after the last batch, before the flag dropped
                self.flush()

    def _write_batch(self) -> bool:
        with self._write_lock:
            with self._queue_lock:
                batch, self._unwritten = self._unwritten, []
            if not batch:
                return False
            path = self._path
            if path is not None:
                full = False
                try:
                    with open(path, "a", encoding="utf-8") as f:
                        f.write("".join(json.dumps(event) + "\n" for event in batch))
                        full = f.tell() >= self._max_file_bytes
                except OSError as e:
                    print(f"mailhost: cannot append to {path}: {e}", file=sys.stderr)
                if full:
                    try:
                        os.replace(path, rotated(path))
                    except OSError as e:
                        print(f"mailhost: cannot rotate {path}: {e}", file=sys.stderr)
            for writer in self._writers:
                writer(batch)
            return True

    def flush(self) -> None:
        """Write whatever is queued now, on this thread (shutdown, tests)."""
        while self._write_batch():
            pass

    def add_writer(self, writer: BatchWriter) -> None:
        """Also hand every batch of events to ``writer``, where the file is written."""
        self._writers.append(writer)

    def subscribe(self, subscriber: Callable[[dict[str, Any]], None]) -> None:
        """Call ``subscriber`` with every event from now on (console, live views)."""
        self._subscribers.append(subscriber)

    def recent(self, kind: str | None = None, after: int = 0) -> list[dict[str, Any]]:
        return [e for e in self._events if e["seq"] > after and (kind is None or e["kind"] == kind)]

    def forget(self) -> None:
        """Drop the in-memory events (a fixture reset); the file and the numbering go on."""
        self._events.clear()

    def close(self) -> None:
        """Write what is queued, then stop appending; the in-memory log stays readable.

        Later events go to the batch writers at once: the pool that ran the writes
        may be gone, and a job it never runs would leave them queued for good.
        """
        self.flush()
        self._path = None
        with self._queue_lock:
            self._schedule_writes = None
            self._writing = False
