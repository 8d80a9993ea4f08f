"""The HTTP API over real sockets: urllib against the in-process server and `mailhost serve`."""

from __future__ import annotations

import json
import threading
import urllib.error
import urllib.request
from typing import Any

import pytest

from mailhost.testing import DEFAULT_START

pytestmark = pytest.mark.e2e

ALICE = "alice@example.org"


def call(
    base: str, method: str, path: str, body: Any = None, token: str | None = None
) -> tuple[int, Any]:
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(base + path, data=data, method=method)
    if data is not None:
        request.add_header("Content-Type", "application/json")
    if token is not None:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=20) as response:
            raw = response.read()
            status = response.status
    except urllib.error.HTTPError as e:
        raw = e.read()
        status = e.code
    return status, json.loads(raw) if raw else None


def send(server, subject: str = "hello", to: str = ALICE) -> None:
    with server.smtp("127.0.0.2") as client:
        client.sendmail("bob@example.org", [to], f"Subject: {subject}\r\n\r\nhi\r\n")


def test_health_over_http(start_server):
    """The API answers on the port the ready report names."""
    server = start_server()
    assert call(server.api, "GET", "/health") == (200, {"ok": True})


def test_a_long_poll_is_answered_by_mail_sent_during_it(start_server):
    """A waiting GET returns once the message sent meanwhile over SMTP is stored."""
    server = start_server()
    replies: list[tuple[int, Any]] = []
    poll = threading.Thread(
        target=lambda: replies.append(
            call(server.api, "GET", f"/mailboxes/{ALICE}/messages?wait=20&subject=ping")
        )
    )
    poll.start()
    send(server, "ping")
    poll.join(timeout=30)
    [(status, body)] = replies
    assert status == 200
    assert [m["subject"] for m in body["messages"]] == ["ping"]


def test_wait_zero_returns_at_once(start_server):
    """wait=0 lists what is there without waiting."""
    server = start_server()
    assert call(server.api, "GET", "/outbox/messages?wait=0") == (200, {"messages": []})


def test_schemes_switched_by_the_api_govern_smtp(start_server):
    """Turning SMTP-after-POP off through the API refuses a relay the POP login allowed."""
    server = start_server()
    server.pop_login("127.0.0.2")
    status, _ = call(server.api, "PUT", "/schemes", {"smtp-after-pop": "off"})
    assert status == 200
    with server.smtp("127.0.0.2") as client:
        client.mail("alice@example.org")
        code, _ = client.rcpt("someone@remote.example")
    assert code == 550


def test_reset_empties_mailboxes_and_restores_the_clock(start_server):
    """After POST /api/reset the boxes are empty and the clock is back where it started."""
    server = start_server()
    send(server)
    call(server.api, "POST", "/clock/advance", {"seconds": 3600})
    assert call(server.api, "POST", "/reset") == (204, None)
    assert call(server.api, "GET", f"/mailboxes/{ALICE}/messages") == (200, {"messages": []})
    _, clock = call(server.api, "GET", "/clock")
    assert clock["now"].startswith(DEFAULT_START.isoformat()[:16])


def test_token_needed_when_configured(start_server):
    """A server with an API token answers 401 without it and 200 with it."""
    server = start_server(api_token="s3cret")
    assert call(server.api, "GET", "/health")[0] == 401
    assert call(server.api, "GET", "/health", token="s3cret") == (200, {"ok": True})


def test_serve_writes_the_ready_file(serve_process, tmp_path):
    """`serve --ready-file` writes the same report as its ready line, http port included."""
    ready = tmp_path / "ready.json"
    server = serve_process(
        *("--data", str(tmp_path / "data"), "--ready-file", str(ready)),
        *("--smtp-port", "0", "--submission-port", "0", "--pop3-port", "0"),
        *("--smtps-port", "0", "--pop3s-port", "0", "--http-port", "0"),
    )
    assert json.loads(ready.read_text()) == server.ready
    assert server.ports["http"] > 0
    base = f"http://127.0.0.1:{server.ports['http']}/api"
    assert call(base, "GET", "/health") == (200, {"ok": True})
