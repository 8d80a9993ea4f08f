"""Builders for tests: a Provider on a temporary directory with a fake clock.

Everything runs inline (bcrypt at cost 4, fsync on the calling thread), so a
protocol test drives a server over ``StringTransport`` with no reactor at all.
"""

from __future__ import annotations

import json
import poplib
import select
import socket
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import IO, Any

from twisted.internet import defer
from twisted.internet.address import IPv4Address
from twisted.internet.interfaces import ISSLTransport, ITLSTransport
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from zope.interface import alsoProvides, implementer

from mailhost.accounts import DEMO_ACCOUNTS, AccountFile, Accounts
from mailhost.blocking import run_inline
from mailhost.clock import ServerClock
from mailhost.config import DataDir, Limits
from mailhost.events import EventLog
from mailhost.policy import Role, Schemes
from mailhost.pop_logins import PopLoginTable
from mailhost.provider import Provider
from mailhost.schedule import Schedule
from mailhost.smtp import SMTPFactory
from mailhost.throttle import AuthThrottle

TEST_COST = 4
DEFAULT_START = datetime(2013, 9, 1, 23, 59, tzinfo=UTC)


def make_clock(start: datetime = DEFAULT_START) -> Clock:
    """A task.Clock whose seconds() reads ``start`` as a Unix timestamp."""
    clock = Clock()
    clock.advance(start.timestamp())
    return clock


def make_provider(
    root: Path,
    reactor_clock: Clock | None = None,
    accounts: dict[str, str] | None = None,
    smtp_auth: Schedule | None = None,
    smtp_after_pop: Schedule | None = None,
    pop_window: timedelta = timedelta(minutes=10),
    limits: Limits | None = None,
    domains: tuple[str, ...] = (),
    tls_options: Any = None,
    allow_plaintext_auth: bool = False,
    throttle: AuthThrottle | None = None,
    enforce_sender: bool = False,
) -> Provider:
    data = DataDir(root)
    account_file = AccountFile(data.users)
    for address, password in (DEMO_ACCOUNTS if accounts is None else accounts).items():
        account_file.add(address, password, cost=TEST_COST)
    return Provider(
        data=data,
        clock=ServerClock(reactor_clock if reactor_clock is not None else make_clock()),
        accounts=Accounts(account_file),
        logins=PopLoginTable(),
        events=EventLog(data.events),
        schemes=Schemes(
            smtp_auth if smtp_auth is not None else Schedule.on(),
            smtp_after_pop if smtp_after_pop is not None else Schedule.on(),
            pop_window,
            enforce_sender,
        ),
        run_blocking=run_inline,
        limits=limits if limits is not None else Limits(),
        hostname="mail.example.org",
        configured_domains=domains,
        tls_options=tls_options,
        allow_plaintext_auth=allow_plaintext_auth,
        throttle=throttle if throttle is not None else AuthThrottle(),
    )


@implementer(ITLSTransport)
class TLSTransport(StringTransport):
    """A StringTransport that can start TLS, as a TCP connection can.

    ``startTLS`` performs no handshake: it records the options and what had
    been written until then (the plaintext), and from then on the transport
    provides ``ISSLTransport``, which is how a protocol sees that TLS is on.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.tls_starts: list[Any] = []
        self.plaintext: bytes | None = None

    def startTLS(self, contextFactory: Any, normal: bool = True) -> None:
        self.tls_starts.append(contextFactory)
        self.plaintext = self.value()
        alsoProvides(self, ISSLTransport)

    def getPeerCertificate(self) -> None:
        return None


@implementer(ISSLTransport)
class ImplicitTLSTransport(StringTransport):
    """A StringTransport that is TLS from the first byte, like a port 465/995 connection."""

    def getPeerCertificate(self) -> None:
        return None


class SourcePOP3(poplib.POP3):
    """poplib.POP3 that connects from a chosen local address (127.0.0.2, …).

    smtplib takes ``source_address``; poplib does not, and simulating several
    client addresses on one machine is how SMTP-after-POP is tested.
    """

    def __init__(self, host: str, port: int, source: str, timeout: float = 10.0) -> None:
        self._source = source
        super().__init__(host, port, timeout)

    def _create_socket(self, timeout: float) -> socket.socket:
        return socket.create_connection(
            (self.host, self.port), timeout, source_address=(self._source, 0)
        )


class QueuedRunBlocking:
    """A ``run_blocking`` whose work waits until the test runs it, like a busy thread pool.

    Lets a test prove that a reply waits for storage (or bcrypt) and that
    pipelined commands behind it wait too.
    """

    def __init__(self) -> None:
        self.queue: list[tuple[defer.Deferred, Callable[..., Any], tuple[Any, ...]]] = []

    def __call__(self, f: Callable[..., Any], *args: Any) -> defer.Deferred:
        d: defer.Deferred = defer.Deferred()
        self.queue.append((d, f, args))
        return d

    def run_one(self) -> None:
        d, f, args = self.queue.pop(0)
        try:
            result = f(*args)
        except Exception:
            d.errback()
        else:
            d.callback(result)

    def run_all(self) -> None:
        while self.queue:
            self.run_one()


class SMTPSession:
    """One SMTP connection driven in memory: ``send`` writes once and returns the reply lines.

    The default transport can start TLS and comes from 127.0.0.2, a loopback
    client address; pass another transport for another peer or plain TCP.
    """

    def __init__(
        self, provider: Provider, role: Role = Role.MX, transport: StringTransport | None = None
    ) -> None:
        if transport is None:
            transport = TLSTransport(peerAddress=IPv4Address("TCP", "127.0.0.2", 40000))
        self.transport = transport
        self.server = SMTPFactory(provider, role).buildProtocol(None)
        self.server.makeConnection(self.transport)
        self.greeting = self.replies()

    def replies(self) -> list[str]:
        out = self.transport.value().decode("ascii")
        self.transport.clear()
        return out.splitlines()

    def send(self, *lines: str) -> list[str]:
        self.server.dataReceived("".join(line + "\r\n" for line in lines).encode("latin-1"))
        return self.replies()

    def __call__(self, line: str) -> str:
        """Send one command and return its (last) reply line."""
        return self.send(line)[-1]

    @property
    def closed(self) -> bool:
        return bool(self.transport.disconnecting)


def read_ready_report(stream: IO[str], timeout: float) -> dict[str, Any] | None:
    """The JSON ready line ``mailhost serve`` prints, or None at end of output or timeout."""
    deadline = time.monotonic() + timeout
    while (left := deadline - time.monotonic()) > 0:
        readable, _, _ = select.select([stream], [], [], left)
        if not readable:
            return None
        line = stream.readline()
        if not line:
            return None
        if line.startswith("{"):
            return json.loads(line)
    return None
