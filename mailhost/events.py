"""Every login and decision as a structured event.

Events are plain dicts (JSON-ready) with a sequence number, so a reader can ask
for "everything after N". The in-memory log is bounded; the JSON-lines file
(``DIR/events.jsonl``) is append-only, opened for each event (so no descriptor
is held and rotation by rename is safe) and not fsync'd: it is an audit trail
for people, not a store a 250 depends on.
"""

from __future__ import annotations

import json
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


def _last_seq(path: Path) -> int:
    """The sequence number of the file's last event, so numbering goes on after a restart."""
    try:
        with open(path, "rb") as f:
            f.seek(0, 2)
            f.seek(max(0, f.tell() - 65536))
            tail = f.read().splitlines()
    except FileNotFoundError:
        return 0
    for line in reversed(tail):
        try:
            return int(json.loads(line)["seq"])
        except (ValueError, KeyError, TypeError):
            continue
    return 0


class EventLog:
    def __init__(self, path: Path | None = None, max_events: int = DEFAULT_MAX_EVENTS) -> None:
        self._events: deque[dict[str, Any]] = deque(maxlen=max_events)
        self._seq = 0
        self._path = path
        self._subscribers: list[Callable[[dict[str, Any]], None]] = []
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            self._seq = _last_seq(path)

    def emit(self, kind: str, at: datetime, **fields: Any) -> dict[str, Any]:
        self._seq += 1
        event = {"seq": self._seq, "at": at.isoformat(), "kind": kind, **fields}
        self._events.append(event)
        if self._path is not None:
            with open(self._path, "a", encoding="utf-8") as f:
                f.write(json.dumps(event) + "\n")
        for subscriber in self._subscribers:
            subscriber(event)
        return event

    def subscribe(self, subscriber: Callable[[dict[str, Any]], None]) -> None:
        """Call ``subscriber`` with every event from now on (console, live views)."""
        self._subscribers.append(subscriber)

    def recent(self, kind: str | None = None, after: int = 0) -> list[dict[str, Any]]:
        return [e for e in self._events if e["seq"] > after and (kind is None or e["kind"] == kind)]

    def forget(self) -> None:
        """Drop the in-memory events (a fixture reset); the file and the numbering go on."""
        self._events.clear()

    def close(self) -> None:
        """Stop appending to the file; the in-memory log stays readable."""
        self._path = None
