"""The fixture's wait_for_message spends a long timeout in several bounded long polls."""

from __future__ import annotations

import urllib.parse

from mailhost import pytest_plugin
from mailhost.pytest_plugin import MAX_SERVER_WAIT, Mailhost


class ScriptedServer:
    """Answers the message-list long poll empty until the clock passes 70 s."""

    def __init__(self, clock: list[float]) -> None:
        self.clock = clock
        self.waits: list[float] = []

    def api(self, method, path, body=None, timeout=10.0):
        if "/messages?" in path:
            wait = float(urllib.parse.parse_qs(path.split("?", 1)[1])["wait"][0])
            self.waits.append(wait)
            self.clock[0] += wait
            return {"messages": [{"id": "m1"}] if self.clock[0] >= 70 else []}
        return {"id": "m1", "subject": "late"}


def test_a_timeout_over_the_server_cap_is_split_into_long_polls(monkeypatch):
    """A 90 s wait becomes polls of at most 60 s each, and finds the message at 70 s."""
    clock = [0.0]
    monkeypatch.setattr(pytest_plugin.time, "monotonic", lambda: clock[0])
    server = ScriptedServer(clock)
    mailhost = Mailhost.__new__(Mailhost)
    mailhost.server = server
    message = mailhost.wait_for_message("alice@example.org", timeout=90)
    assert message["subject"] == "late"
    assert server.waits == [MAX_SERVER_WAIT, 30.0]
