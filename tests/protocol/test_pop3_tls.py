"""POP3 STLS (RFC 2595 §4) over an in-memory TLS-capable transport."""

import pytest
from twisted.internet.address import IPv4Address
from twisted.internet.error import ConnectionDone
from twisted.python import failure

from mailhost.pop3 import POP3Factory, capabilities
from mailhost.testing import ImplicitTLSTransport, TLSTransport, make_clock, make_provider

ALICE = "alice@example.org"
LOOPBACK = IPv4Address("TCP", "127.0.0.2", 40000)
TLS_OPTIONS = object()
"""Stands in for a CertificateOptions: the fake transport only records it."""


class Session:
    """One POP3 connection; ``command`` sends a line and returns the reply bytes."""

    def __init__(self, factory, transport=None):
        self.transport = transport if transport is not None else TLSTransport(peerAddress=LOOPBACK)
        self.server = factory.buildProtocol(LOOPBACK)
        self.server.makeConnection(self.transport)
        self.take()

    def take(self):
        value = self.transport.value()
        self.transport.clear()
        return value

    def send(self, data):
        self.server.dataReceived(data)
        return self.take()

    def command(self, line):
        return self.send(line.encode() + b"\r\n")

    def capabilities(self):
        lines = self.command("CAPA").split(b"\r\n")
        assert lines[0].startswith(b"+OK") and lines[-2:] == [b".", b""]
        return lines[1:-2]

    def drop(self):
        self.server.connectionLost(failure.Failure(ConnectionDone()))


@pytest.fixture
def sessions():
    """Opens sessions and drops them at the end, so maildrop locks are released."""
    opened = []

    def open_session(provider, transport=None):
        opened.append(Session(POP3Factory(provider), transport))
        return opened[-1]

    yield open_session
    for session in opened:
        session.drop()


@pytest.fixture
def provider(tmp_path):
    return make_provider(tmp_path, reactor_clock=make_clock(), tls_options=TLS_OPTIONS)


@pytest.fixture
def provider_without_tls(tmp_path):
    return make_provider(tmp_path / "plain", reactor_clock=make_clock())


def test_capabilities_list_stls_only_when_asked():
    """The pure CAPA builder appends STLS and drops USER/SASL as told."""
    assert b"STLS" in capabilities(stls=True, passwords=True)
    assert b"STLS" not in capabilities(stls=False, passwords=True)
    without_passwords = capabilities(stls=False, passwords=False)
    assert b"USER" not in without_passwords
    assert not any(line.startswith(b"SASL") for line in without_passwords)


def test_capa_lists_stls_while_tls_can_start(provider, sessions):
    """Before TLS, with TLS configured, CAPA offers STLS."""
    assert b"STLS" in sessions(provider).capabilities()


def test_capa_without_tls_options_does_not_list_stls(provider_without_tls, sessions):
    """No certificate, no STLS."""
    assert b"STLS" not in sessions(provider_without_tls).capabilities()


def test_stls_without_tls_options_is_refused(provider_without_tls, sessions):
    """STLS that is not offered gets -ERR and starts nothing."""
    session = sessions(provider_without_tls)
    assert session.command("STLS") == b"-ERR TLS is not available\r\n"
    assert session.transport.tls_starts == []


def test_stls_answers_ok_in_plaintext_then_starts_tls_with_the_providers_options(
    provider, sessions
):
    """+OK is written before startTLS, which gets provider.tls_options."""
    session = sessions(provider)
    session.command("STLS")
    assert session.transport.plaintext == b"+OK Begin TLS negotiation\r\n"
    assert session.transport.tls_starts == [TLS_OPTIONS]


def test_commands_pipelined_behind_stls_are_discarded(provider, sessions):
    """STLS\\r\\nCAPA\\r\\n in one write yields only the +OK (the CVE-2011-0411 class)."""
    session = sessions(provider)
    assert session.send(b"STLS\r\nCAPA\r\n") == b"+OK Begin TLS negotiation\r\n"
    assert session.send(b"NOOP\r\n") == b"-ERR Command not valid in this state\r\n"


def test_a_password_pipelined_behind_stls_is_not_used(provider, sessions):
    """USER/PASS injected behind STLS neither logs in nor is answered after TLS."""
    session = sessions(provider)
    session.send(f"STLS\r\nUSER {ALICE}\r\nPASS alice-secret\r\n".encode())
    assert session.server.maildrop is None
    assert session.command("PASS alice-secret") == b"-ERR Send USER first\r\n"


def test_user_given_before_stls_is_forgotten(provider, sessions):
    """A USER from the plaintext phase does not carry over into TLS."""
    session = sessions(provider)
    session.command(f"USER {ALICE}")
    session.command("STLS")
    assert session.command("PASS alice-secret") == b"-ERR Send USER first\r\n"


def test_capa_after_stls_no_longer_lists_stls(provider, sessions):
    """After TLS, the client re-reads CAPA and sees the new state."""
    session = sessions(provider)
    session.command("STLS")
    listed = session.capabilities()
    assert b"STLS" not in listed
    assert b"USER" in listed


def test_a_second_stls_is_refused(provider, sessions):
    """TLS cannot be started twice."""
    session = sessions(provider)
    session.command("STLS")
    assert session.command("STLS") == b"-ERR TLS is already active\r\n"
    assert session.transport.tls_starts == [TLS_OPTIONS]


def test_stls_with_an_argument_is_refused(provider, sessions):
    """STLS takes no arguments."""
    session = sessions(provider)
    assert session.command("STLS now").startswith(b"-ERR")
    assert session.transport.tls_starts == []


def test_stls_after_login_is_refused_and_not_listed(provider, sessions):
    """STLS belongs to the AUTHORIZATION state only."""
    session = sessions(provider)
    session.command(f"USER {ALICE}")
    assert session.command("PASS alice-secret").startswith(b"+OK")
    assert b"STLS" not in session.capabilities()
    assert session.command("STLS").startswith(b"-ERR")
    assert session.transport.tls_starts == []


def test_login_after_stls_works(provider, sessions):
    """The point of STLS: USER/PASS inside TLS logs in."""
    session = sessions(provider)
    session.command("STLS")
    session.command(f"USER {ALICE}")
    assert session.command("PASS alice-secret").startswith(b"+OK Logged in")


def test_implicit_tls_neither_lists_nor_accepts_stls(provider, sessions):
    """On a POP3S connection STLS is not listed and gets -ERR."""
    session = sessions(provider, ImplicitTLSTransport(peerAddress=LOOPBACK))
    assert b"STLS" not in session.capabilities()
    assert session.command("STLS") == b"-ERR TLS is already active\r\n"
