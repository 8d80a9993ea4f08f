"""The ``mailhost`` pytest fixture: a real POP3 + ESMTP provider for a test suite.

Theory of operation: one ``mailhost serve`` runs per test session, as a
subprocess on ephemeral loopback ports with a temporary data directory; the
function-scoped ``mailhost`` fixture resets it over the HTTP API before each
test (messages, outbox, POP3 logins, faults, clock, schemes, accounts) and
hands the test its ports, client factories and API helpers. The reset is
cheap, so each test starts clean without paying for a new server.

Why a subprocess by default: the server runs its own Twisted reactor in its
own process, so the suite under test may use blocking clients (smtplib,
poplib), asyncio ones, or pytest-twisted with its own reactor, and nothing
is shared with the test process: no global reactor to install or stop, no
threads, no signal handlers. It is also ``mailhost serve`` exactly as a user
runs it, and a test that hangs a client cannot hang the server. For the
same reason this module imports only the standard library and pytest at load
time (pytest loads it in every run where mailhost is installed); mailhost's
Twisted-based helpers are imported when a fixture first needs them.

Configuration (pytest-httpserver's pattern: override a fixture):

* ``mailhost_serve_args`` (session): extra ``serve`` arguments, e.g.
  ``["--smtp-after-pop", "until:2013-09-02", "--now", "2013-09-01T23:59:00Z"]``;
  by default read from the ini option of the same name (one or more
  arguments per line, split as a shell would).
* ``mailhost_accounts``: address → password, created at every reset.
"""

from __future__ import annotations

import contextlib
import json
import os
import poplib
import secrets
import select
import shlex
import signal
import smtplib
import socket
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

__all__ = [
    "Mailhost",
    "MailhostAPIError",
    "MailhostClock",
    "MailhostServer",
    "MailhostStartError",
    "start_server",
]

READY_TIMEOUT = 30.0
"""Seconds to wait for the ready line: covers a first start that makes the TLS certificate."""

STOP_TIMEOUT = 10.0
"""Seconds a server gets to shut down after SIGINT before it is killed."""

MAX_SERVER_WAIT = 60.0
"""The server holds one long poll at most this long."""
HTTP_TIMEOUT = 10.0
"""Seconds any one API call may take (a long poll gets its wait on top)."""

CLIENT_TIMEOUT = 10.0
"""Socket timeout of the SMTP and POP3 clients the factories return."""

ACCOUNT_COST = 4
"""bcrypt cost for fixture accounts: the minimum, so a reset stays in milliseconds."""

DEFAULT_ACCOUNTS = {"alice@example.org": "alice-secret", "bob@example.org": "bob-secret"}

EPHEMERAL_PORTS = (
    *("--smtp-port", "0", "--submission-port", "0", "--pop3-port", "0"),
    *("--smtps-port", "0", "--pop3s-port", "0", "--http-port", "0"),
)


class MailhostStartError(RuntimeError):
    """``mailhost serve`` exited or stayed silent instead of printing its ready line."""


class MailhostAPIError(RuntimeError):
    """The HTTP API answered with an error status; carries the status and the body."""

    def __init__(self, method: str, path: str, status: int, body: str) -> None:
        self.method = method
        self.path = path
        self.status = status
        self.body = body
        super().__init__(f"{method} {path} -> {status}: {body}")


# Loopback traffic must never go through an http_proxy from the environment.
_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


@dataclass
class MailhostServer:
    """A running ``mailhost serve`` subprocess and what its ready line said."""

    process: subprocess.Popen[str]
    ready: dict[str, Any]
    data_dir: Path
    stderr_path: Path
    startup_seconds: float
    api_token: str | None = None

    @property
    def host(self) -> str:
        return self.ready["host"]

    @property
    def ports(self) -> dict[str, int]:
        return dict(self.ready["ports"])

    @property
    def http_url(self) -> str:
        if "http" not in self.ready["ports"]:
            raise MailhostStartError("the ready line names no http port; is --http-port supported?")
        host = self.ready.get("http_host") or self.host
        if ":" in host:
            host = f"[{host}]"
        return f"http://{host}:{self.ready['ports']['http']}"

    @property
    def ca_file(self) -> str:
        """What a verifying client trusts: mailhost's own CA, or the given certificate chain."""
        tls = self.ready["tls"]
        return tls["ca"] or tls["cert"]

    def api(self, method: str, path: str, body: Any = None, timeout: float = HTTP_TIMEOUT) -> Any:
        """One JSON request to the API; an error status raises MailhostAPIError."""
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(self.http_url + path, data=data, method=method)
        request.add_header("Accept", "application/json")
        if data is not None:
            request.add_header("Content-Type", "application/json")
        if self.api_token:
            request.add_header("Authorization", f"Bearer {self.api_token}")
        try:
            with _OPENER.open(request, timeout=timeout) as response:
                payload = response.read()
        except urllib.error.HTTPError as e:
            with e:
                text = e.read().decode(errors="replace")
            raise MailhostAPIError(method, path, e.code, text) from None
        return json.loads(payload) if payload.strip() else None

    def reset(self, accounts: dict[str, str]) -> None:
        """Back to the start state, with exactly ``accounts``.

        Accounts are kept and brought in line rather than wiped: the API hashes
        with the cost most accounts already have, and the data directory was
        seeded at cost 4, so adding before removing keeps every hash cheap.
        """
        self.api("POST", "/api/reset", {"accounts": "keep"})
        current = set(self.api("GET", "/api/accounts")["accounts"])
        for address, password in accounts.items():
            if address.lower() in current:
                self.api("PUT", f"{_account_path(address)}/password", {"password": password})
            else:
                self.api("POST", "/api/accounts", {"address": address, "password": password})
        for address in current - {a.lower() for a in accounts}:
            self.api("DELETE", _account_path(address))

    def stderr_text(self) -> str:
        try:
            return self.stderr_path.read_text(errors="replace")
        except OSError:
            return ""

    def stop(self, timeout: float = STOP_TIMEOUT) -> int:
        """SIGINT (a clean shutdown), then SIGKILL after ``timeout``; only this process."""
        process = self.process
        if process.poll() is None:
            process.send_signal(signal.SIGINT)
            try:
                process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=timeout)
        if process.stdout is not None:
            process.stdout.close()
        return process.returncode


def _account_path(address: str) -> str:
    return f"/api/accounts/{urllib.parse.quote(address, safe='@+')}"


def _api_token(args: list[str]) -> str | None:
    """The token given with ``--api-token`` in the extra arguments, if any (the last wins)."""
    token = None
    for i, arg in enumerate(args):
        if arg == "--api-token" and i + 1 < len(args):
            token = args[i + 1]
        elif arg.startswith("--api-token="):
            token = arg.partition("=")[2]
    return token


def start_server(
    data_dir: Path, extra_args: list[str], ready_timeout: float = READY_TIMEOUT
) -> MailhostServer:
    """Spawn ``mailhost serve`` on ephemeral ports and return once its ready line arrives.

    The data directory is seeded with the demo accounts at cost 4 (see
    :meth:`MailhostServer.reset`). The API gets a random bearer token,
    passed in the environment so that other local users cannot read it
    from the process list; ``--api-token`` in ``extra_args`` wins. stderr
    goes to a file rather than a pipe: the server logs every event there,
    and an undrained pipe would eventually block it mid-test.
    """
    from mailhost.accounts import AccountFile
    from mailhost.config import DataDir

    data_dir.mkdir(parents=True, exist_ok=True)
    account_file = AccountFile(DataDir(data_dir).users)
    for address, password in DEFAULT_ACCOUNTS.items():
        if address not in account_file.read():
            account_file.add(address, password, cost=ACCOUNT_COST)
    token = _api_token(extra_args) or secrets.token_urlsafe(24)
    stderr_path = data_dir.parent / f"{data_dir.name}-stderr.log"
    command = [
        sys.executable,
        "-m",
        "mailhost",
        "serve",
        "--data",
        str(data_dir),
        *EPHEMERAL_PORTS,
        *extra_args,
    ]
    started = time.monotonic()
    with stderr_path.open("w") as stderr:
        process = subprocess.Popen(
            command,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=stderr,
            text=True,
            env={**os.environ, "PYTHONUNBUFFERED": "1", "MAILHOST_API_TOKEN": token},
        )
    server = MailhostServer(process, {}, data_dir, stderr_path, 0.0, api_token=token)
    assert process.stdout is not None
    deadline = started + ready_timeout
    line = None
    while (left := deadline - time.monotonic()) > 0:
        readable, _, _ = select.select([process.stdout], [], [], left)
        if not readable:
            break
        line = process.stdout.readline()
        if not line:
            break
        if line.startswith("{"):
            report = json.loads(line)
            if report.get("event") == "ready":
                server.ready = report
                server.startup_seconds = time.monotonic() - started
                return server
    if line == "":  # end of output: the server is exiting; let it say with which status
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(timeout=STOP_TIMEOUT)
    status = process.poll()
    code = server.stop(timeout=5.0)
    why = (
        f"exited with status {status}"
        if status is not None
        else f"printed no ready line within {ready_timeout:g} s (stopped, status {code})"
    )
    raise MailhostStartError(
        f"mailhost serve {why}\ncommand: {shlex.join(command)}\nstderr:\n{server.stderr_text()}"
    )


class _SourcePOP3SSL(poplib.POP3_SSL):
    """poplib.POP3_SSL connecting from a chosen local address, like SourcePOP3."""

    def __init__(
        self, host: str, port: int, source: str, context: ssl.SSLContext, timeout: float
    ) -> None:
        self._source = source
        super().__init__(host, port, timeout=timeout, context=context)

    def _create_socket(self, timeout: float) -> socket.socket:
        sock = socket.create_connection(
            (self.host, self.port), timeout, source_address=(self._source, 0)
        )
        return self.context.wrap_socket(sock, server_hostname=self.host)


class MailhostClock:
    """The server clock: read it, set it, move it; every window and cutover follows it."""

    def __init__(self, server: MailhostServer) -> None:
        self._server = server

    def now(self) -> datetime:
        return datetime.fromisoformat(self._server.api("GET", "/api/clock")["now"])

    def set(self, when: str | datetime) -> datetime:
        now = when.isoformat() if isinstance(when, datetime) else when
        return datetime.fromisoformat(self._server.api("PUT", "/api/clock", {"now": now})["now"])

    def advance(self, seconds: float) -> datetime:
        reply = self._server.api("POST", "/api/clock/advance", {"seconds": seconds})
        return datetime.fromisoformat(reply["now"])


@dataclass
class Mailhost:
    """What a test gets: the server's addresses, client factories and API helpers.

    Clients from the factories are closed when the test ends, so a test that
    forgets ``quit()`` leaks no socket.
    """

    server: MailhostServer
    clock: MailhostClock = field(init=False)
    _clients: list[Any] = field(default_factory=list, init=False, repr=False)

    def __post_init__(self) -> None:
        self.clock = MailhostClock(self.server)

    # Where the server is.

    @property
    def host(self) -> str:
        return self.server.host

    @property
    def ports(self) -> dict[str, int]:
        return self.server.ports

    @property
    def smtp_port(self) -> int:
        return self.ports["smtp"]

    @property
    def submission_port(self) -> int:
        return self.ports["submission"]

    @property
    def pop3_port(self) -> int:
        return self.ports["pop3"]

    @property
    def smtps_port(self) -> int:
        return self.ports["smtps"]

    @property
    def pop3s_port(self) -> int:
        return self.ports["pop3s"]

    @property
    def http_url(self) -> str:
        return self.server.http_url

    @property
    def ca_file(self) -> str:
        return self.server.ca_file

    def tls_context(self) -> ssl.SSLContext:
        """A verifying client context that trusts only this server's CA."""
        return ssl.create_default_context(cafile=self.ca_file)

    # Clients.

    def _keep(self, client: Any) -> Any:
        self._clients.append(client)
        return client

    def smtp(self, source: str | None = None, port: str = "smtp") -> smtplib.SMTP:
        """A connected smtplib.SMTP on the ``smtp`` or ``submission`` listener, from ``source``."""
        address = (source, 0) if source else None
        return self._keep(
            smtplib.SMTP(
                self.host, self.ports[port], timeout=CLIENT_TIMEOUT, source_address=address
            )
        )

    def smtp_ssl(self, source: str | None = None, port: str = "smtps") -> smtplib.SMTP_SSL:
        """A connected smtplib.SMTP_SSL that verifies the server against ``ca_file``."""
        address = (source, 0) if source else None
        return self._keep(
            smtplib.SMTP_SSL(
                self.host,
                self.ports[port],
                timeout=CLIENT_TIMEOUT,
                source_address=address,
                context=self.tls_context(),
            )
        )

    def pop3(self, source: str | None = None, port: str = "pop3") -> poplib.POP3:
        """A connected poplib.POP3, from ``source`` when given."""
        if source:
            from mailhost.testing import SourcePOP3

            return self._keep(
                SourcePOP3(self.host, self.ports[port], source, timeout=CLIENT_TIMEOUT)
            )
        return self._keep(poplib.POP3(self.host, self.ports[port], timeout=CLIENT_TIMEOUT))

    def pop3_ssl(self, source: str | None = None, port: str = "pop3s") -> poplib.POP3_SSL:
        """A connected poplib.POP3_SSL that verifies the server against ``ca_file``."""
        if source:
            return self._keep(
                _SourcePOP3SSL(
                    self.host, self.ports[port], source, self.tls_context(), CLIENT_TIMEOUT
                )
            )
        return self._keep(
            poplib.POP3_SSL(
                self.host, self.ports[port], timeout=CLIENT_TIMEOUT, context=self.tls_context()
            )
        )

    def close_clients(self) -> None:
        """Close every client the factories made (errors ignored: the test may have closed it)."""
        while self._clients:
            with contextlib.suppress(Exception):
                self._clients.pop().close()

    # The API.

    def api(self, method: str, path: str, body: Any = None, timeout: float = HTTP_TIMEOUT) -> Any:
        """Any API call the helpers do not cover, e.g. ``api("DELETE", "/api/accounts/…")``."""
        return self.server.api(method, path, body, timeout)

    def reset(self, accounts: dict[str, str] | None = None) -> None:
        """What the fixture does before each test; ``accounts`` defaults to the demo pair."""
        self.server.reset(DEFAULT_ACCOUNTS if accounts is None else accounts)

    def add_account(self, address: str, password: str) -> dict[str, Any]:
        """A new account, hashed at the cost the server's accounts have (4 for the fixture's)."""
        return self.api("POST", "/api/accounts", {"address": address, "password": password})

    @staticmethod
    def _mailbox(address: str | None) -> str:
        if address is None:
            return "/api/outbox/messages"
        return f"/api/mailboxes/{urllib.parse.quote(address, safe='@+')}/messages"

    def messages(self, address: str) -> list[dict[str, Any]]:
        """The messages delivered to ``address`` (summaries; oldest first)."""
        return self.api("GET", self._mailbox(address))["messages"]

    def outbox(self) -> list[dict[str, Any]]:
        """Relayed mail, which mailhost keeps instead of sending on."""
        return self.api("GET", self._mailbox(None))["messages"]

    def message(self, message_id: str, address: str | None = None) -> dict[str, Any]:
        """One message with ``headers``, ``body`` and ``raw`` (from the outbox when no address)."""
        return self.api("GET", f"{self._mailbox(address)}/{urllib.parse.quote(message_id)}")

    def wait_for_message(
        self, address: str | None = None, subject: str | None = None, timeout: float = 5.0
    ) -> dict[str, Any]:
        """The first matching message, waiting on the server up to ``timeout`` seconds.

        The server holds the request until a message matches (a long poll),
        so the test neither sleeps nor polls. With no address it watches the
        outbox; ``subject`` matches as a case-insensitive substring. The
        server holds one request at most 60 s, so a longer timeout is spent in
        several long polls. Raises AssertionError when none arrives.
        """
        deadline = time.monotonic() + timeout
        found: list[dict[str, Any]] = []
        while not found:
            wait = min(max(deadline - time.monotonic(), 0.0), MAX_SERVER_WAIT)
            query: dict[str, Any] = {"wait": f"{wait:.3f}", "count": 1}
            if subject is not None:
                query["subject"] = subject
            path = f"{self._mailbox(address)}?{urllib.parse.urlencode(query)}"
            found = self.api("GET", path, timeout=wait + HTTP_TIMEOUT)["messages"]
            if time.monotonic() >= deadline:
                break
        if not found:
            where = address or "the outbox"
            about = f" with subject {subject!r}" if subject is not None else ""
            raise AssertionError(f"no message{about} for {where} within {timeout:g} s")
        return self.message(found[0]["id"], address)

    def pop_logins(self) -> list[dict[str, Any]]:
        """The table of recent POP3 logins that SMTP-after-POP consults."""
        return self.api("GET", "/api/pop-logins")["pop_logins"]

    def schemes(self) -> dict[str, Any]:
        return self.api("GET", "/api/schemes")

    def set_scheme(
        self,
        smtp_auth: str | None = None,
        smtp_after_pop: str | None = None,
        pop_window: str | int | None = None,
    ) -> dict[str, Any]:
        """Switch schemes (``on``, ``off``, ``until:<ISO>``) or the window; None leaves it."""
        changes = {
            key: value
            for key, value in (
                ("smtp-auth", smtp_auth),
                ("smtp-after-pop", smtp_after_pop),
                ("pop-window", pop_window),
            )
            if value is not None
        }
        return self.api("PUT", "/api/schemes", changes)

    def fault(
        self,
        command: str,
        protocol: str = "smtp",
        action: str = "reply",
        code: int | None = 451,
        text: str | None = None,
        times: int | None = 1,
        delay_ms: int = 0,
    ) -> dict[str, Any]:
        """Make the server misbehave on ``command`` (``times`` uses; None until cleared)."""
        spec: dict[str, Any] = {
            "protocol": protocol,
            "command": command,
            "action": action,
            "delay_ms": delay_ms,
            "times": times,
        }
        if action == "reply":
            spec["code"] = code
        if text is not None:
            spec["text"] = text
        return self.api("POST", "/api/faults", spec)

    def clear_faults(self) -> None:
        self.api("DELETE", "/api/faults")

    def events(self, kind: str | None = None, after: int = 0) -> list[dict[str, Any]]:
        """Logged events (logins, decisions, deliveries) after cursor ``after``."""
        query: dict[str, Any] = {"after": after}
        if kind is not None:
            query["kind"] = kind
        return self.api("GET", f"/api/events?{urllib.parse.urlencode(query)}")["events"]


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addini(
        "mailhost_serve_args",
        type="linelist",
        default=[],
        help="Extra 'mailhost serve' arguments for the mailhost fixture (split like a shell).",
    )


@pytest.fixture(scope="session")
def mailhost_serve_args(pytestconfig: pytest.Config) -> list[str]:
    """Extra ``mailhost serve`` arguments; override this fixture or set the ini option."""
    return [arg for line in pytestconfig.getini("mailhost_serve_args") for arg in shlex.split(line)]


@pytest.fixture
def mailhost_accounts() -> dict[str, str]:
    """Accounts (address → password) created at every reset; override to change them."""
    return dict(DEFAULT_ACCOUNTS)


@pytest.fixture(scope="session")
def mailhost_server(
    tmp_path_factory: pytest.TempPathFactory, mailhost_serve_args: list[str]
) -> Iterator[MailhostServer]:
    """One ``mailhost serve`` subprocess for the whole session, stopped at its end."""
    server = start_server(tmp_path_factory.mktemp("mailhost") / "data", list(mailhost_serve_args))
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def mailhost(
    mailhost_server: MailhostServer, mailhost_accounts: dict[str, str]
) -> Iterator[Mailhost]:
    """The session's server, reset to its start state with ``mailhost_accounts``."""
    if mailhost_server.process.poll() is not None:
        raise MailhostStartError(
            f"mailhost serve exited with status {mailhost_server.process.returncode}\n"
            f"stderr:\n{mailhost_server.stderr_text()}"
        )
    mailhost_server.reset(mailhost_accounts)
    handle = Mailhost(mailhost_server)
    try:
        yield handle
    finally:
        handle.close_clients()
