"""Real sockets on loopback: the provider in-process on a reactor thread, or as a subprocess.

The in-process server lets a test move the server clock (``server.advance``)
so windows and cutovers are crossed without waiting; the subprocess fixture
runs ``mailhost serve`` exactly as a user would and reads its JSON ready line.
"""

from __future__ import annotations

import json
import os
import signal
import smtplib
import ssl
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from twisted.internet.threads import blockingCallFromThread

from mailhost.accounts import DEMO_ACCOUNTS, AccountFile
from mailhost.config import Listeners, ServeConfig
from mailhost.policy import Schemes
from mailhost.schedule import Schedule
from mailhost.testing import DEFAULT_START, TEST_COST, SourcePOP3, read_ready_report

HOST = "127.0.0.1"
READY_TIMEOUT = 20.0


@dataclass
class RunningServer:
    service: Any
    reactor: Any
    ports: dict[str, int]
    data: Path

    @property
    def cert(self) -> Path:
        """The server's certificate file: the leaf, then the CA that signed it."""
        return self.service.tls.cert_path

    @property
    def ca(self) -> Path:
        """The name-constrained CA mailhost made: what clients are told to trust."""
        return self.service.tls.ca_path

    @property
    def api(self) -> str:
        """The base URL of the HTTP API (``…/api``)."""
        return f"http://{HOST}:{self.ports['http']}/api"

    def tls_context(self) -> ssl.SSLContext:
        """A verifying client context that trusts only this server's ca.pem."""
        return ssl.create_default_context(cafile=str(self.ca))

    def advance(self, seconds: float) -> None:
        """Move the server clock forward (grants and schedules follow it)."""
        blockingCallFromThread(self.reactor, self.service.provider.clock.advance, seconds)

    def events_file(self) -> list[dict[str, Any]]:
        """The events in DIR/events.jsonl once everything emitted so far is written there."""
        blockingCallFromThread(self.reactor, self.service.provider.events.flush)
        lines = (self.data / "events.jsonl").read_text().splitlines()
        return [json.loads(line) for line in lines]

    def smtp(self, source: str, role: str = "smtp") -> smtplib.SMTP:
        client = smtplib.SMTP(HOST, self.ports[role], timeout=10, source_address=(source, 0))
        client.ehlo("client.example.net")
        return client

    def pop3(self, source: str) -> SourcePOP3:
        return SourcePOP3(HOST, self.ports["pop3"], source)

    def pop_login(self, source: str, account: str = "alice@example.org") -> None:
        client = self.pop3(source)
        client.user(account)
        client.pass_(DEMO_ACCOUNTS[account])
        client.quit()

    def stored(self, where: str) -> list[bytes]:
        folder = self.data / "outbox" if where == "outbox" else self.data / "mail" / where
        return [p.read_bytes() for p in sorted((folder / "new").glob("*"))]


@pytest.fixture(scope="session")
def reactor_thread() -> Iterator[Any]:
    from twisted.internet import reactor

    thread = threading.Thread(
        target=reactor.run, kwargs={"installSignalHandlers": False}, daemon=True
    )
    thread.start()
    yield reactor
    reactor.callFromThread(reactor.stop)
    thread.join(timeout=10)


@pytest.fixture
def start_server(tmp_path: Path, reactor_thread: Any) -> Iterator[Callable[..., RunningServer]]:
    """Start an in-process provider on ephemeral ports (TLS ones too); accounts alice and bob."""
    from mailhost.service import MailhostService

    running: list[Any] = []

    def start(**overrides: Any) -> RunningServer:
        data = tmp_path / f"data{len(running)}"
        account_file = AccountFile(data / "users")
        for address, password in DEMO_ACCOUNTS.items():
            account_file.add(address, password, cost=TEST_COST)
        schemes = Schemes(
            overrides.pop("smtp_auth", Schedule.on()),
            overrides.pop("smtp_after_pop", Schedule.on()),
            overrides.pop("pop_window", timedelta(minutes=10)),
        )
        config = ServeConfig(
            data_dir=data,
            listeners=Listeners(smtp=0, submission=0, pop3=0, smtps=0, pop3s=0, http=0),
            schemes=schemes,
            now=DEFAULT_START,
            hostname="mail.example.org",
        )
        config = replace(config, **overrides)

        def begin() -> Any:
            service = MailhostService(config, reactor_thread)
            service.startService()
            running.append(service)
            return service.ready

        ports = blockingCallFromThread(reactor_thread, begin)
        return RunningServer(running[-1], reactor_thread, ports, data)

    yield start
    for service in running:
        blockingCallFromThread(reactor_thread, service.stopService)


@dataclass
class ServeProcess:
    process: subprocess.Popen[str]
    ready: dict[str, Any]

    @property
    def ports(self) -> dict[str, int]:
        return self.ready["ports"]


def mailhost_command(*args: str) -> list[str]:
    return [sys.executable, "-m", "mailhost", *args]


@pytest.fixture
def serve_process() -> Iterator[Callable[..., ServeProcess]]:
    """Run ``mailhost serve`` as a subprocess and wait for its JSON ready line."""
    started: list[subprocess.Popen[str]] = []

    def start(*args: str) -> ServeProcess:
        process = subprocess.Popen(
            mailhost_command("serve", *args),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
        started.append(process)
        assert process.stdout is not None
        report = read_ready_report(process.stdout, READY_TIMEOUT)
        if report is not None:
            return ServeProcess(process, report)
        process.kill()
        _, err = process.communicate(timeout=10)
        raise AssertionError(f"mailhost serve never became ready: {err}")

    yield start
    for process in started:
        if process.poll() is None:
            process.send_signal(signal.SIGINT)
            try:
                process.communicate(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.communicate()
