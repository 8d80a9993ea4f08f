"""STARTTLS (RFC 3207) on both SMTP listeners, over an in-memory TLS-capable transport."""

import base64

import pytest
from twisted.internet.address import IPv4Address
from twisted.internet.testing import StringTransport

from mailhost.policy import Role
from mailhost.testing import (
    ImplicitTLSTransport,
    QueuedRunBlocking,
    SMTPSession,
    make_provider,
)

LOOPBACK = IPv4Address("TCP", "127.0.0.2", 40000)
REMOTE = "relaytest@elsewhere.example"
TLS_OPTIONS = object()
"""Stands in for a CertificateOptions: the fake transport only records it."""


Session = SMTPSession


def plain(user="alice@example.org", password="alice-secret"):
    return base64.b64encode(f"\0{user}\0{password}".encode()).decode("ascii")


def stored(provider, account="alice@example.org"):
    new = provider.data.mailbox(account) / "new"
    return [p.read_bytes() for p in sorted(new.iterdir())] if new.exists() else []


def received_with(message):
    """The ``with`` keyword of the Received header."""
    return message.decode().split(" with ", 1)[1].split()[0]


@pytest.fixture
def provider(tmp_path, clock):
    return make_provider(tmp_path, reactor_clock=clock, tls_options=TLS_OPTIONS)


@pytest.fixture
def provider_without_tls(tmp_path, clock):
    return make_provider(tmp_path / "plain", reactor_clock=clock)


def after_starttls(provider, role=Role.MX):
    session = Session(provider, role)
    session("EHLO client.example")
    assert session("STARTTLS") == "220 2.0.0 Ready to start TLS"
    return session


# Advertising


@pytest.mark.parametrize("role", list(Role))
def test_ehlo_advertises_starttls_when_tls_is_configured(provider, role):
    """Both listeners list STARTTLS before TLS, ahead of AUTH."""
    replies = Session(provider, role).send("EHLO client.example")
    assert replies[-2:] == ["250-STARTTLS", "250 AUTH PLAIN LOGIN"]


def test_ehlo_without_tls_options_does_not_advertise_starttls(provider_without_tls):
    """No certificate, no STARTTLS keyword."""
    replies = Session(provider_without_tls).send("EHLO client.example")
    assert not any("STARTTLS" in line for line in replies)


def test_starttls_without_tls_options_is_502(provider_without_tls):
    """A STARTTLS that is not offered gets 502 5.5.1 and starts nothing."""
    session = Session(provider_without_tls)
    session("EHLO client.example")
    assert session("STARTTLS") == "502 5.5.1 Error: STARTTLS is not offered"
    assert session.transport.tls_starts == []


def test_starttls_is_not_offered_on_a_transport_that_cannot_start_tls(provider):
    """A transport without ITLSTransport cannot switch, so neither EHLO nor STARTTLS offer it."""
    session = Session(provider, transport=StringTransport(peerAddress=LOOPBACK))
    assert "250-STARTTLS" not in session.send("EHLO client.example")
    assert session("STARTTLS").startswith("502 5.5.1")


# The switch


def test_starttls_replies_220_in_plaintext_then_starts_tls_with_the_providers_options(provider):
    """The 220 is written before startTLS, which gets provider.tls_options."""
    session = Session(provider)
    session("EHLO client.example")
    session.server.dataReceived(b"STARTTLS\r\n")
    assert session.transport.tls_starts == [TLS_OPTIONS]
    assert session.transport.plaintext == b"220 2.0.0 Ready to start TLS\r\n"
    assert session.server.tls_active


def test_commands_pipelined_behind_starttls_are_discarded(provider):
    """STARTTLS\\r\\nNOOP\\r\\n in one write yields only the 220 (the CVE-2011-0411 class)."""
    session = Session(provider)
    session("EHLO client.example")
    assert session.send("STARTTLS", "NOOP") == ["220 2.0.0 Ready to start TLS"]


def test_commands_pipelined_behind_starttls_never_run_after_tls(provider):
    """The discarded commands are not answered once TLS traffic arrives either."""
    session = Session(provider)
    session("EHLO client.example")
    transcript = session.send("STARTTLS", "NOOP", "MAIL FROM:<a@b.example>")
    transcript += session.send("EHLO client.example")
    assert transcript[:2] == ["220 2.0.0 Ready to start TLS", "250-mail.example.org"]
    assert "250 2.0.0 Ok" not in transcript


def test_a_partial_line_behind_starttls_is_discarded(provider):
    """Unterminated plaintext after STARTTLS is not glued to the first line inside TLS."""
    session = Session(provider)
    session("EHLO client.example")
    session.server.dataReceived(b"STARTTLS\r\nNOO")
    session.replies()
    assert session("P") == "500 5.5.2 Error: command not recognized"


def test_starttls_behind_a_pending_command_still_discards_what_follows(provider):
    """When STARTTLS is reached only after a slow AUTH finishes, the NOOP behind it is dropped."""
    provider.run_blocking = QueuedRunBlocking()
    session = Session(provider)
    session("EHLO client.example")
    assert session.send(f"AUTH PLAIN {plain()}", "STARTTLS", "NOOP") == []
    provider.run_blocking.run_all()
    assert session.replies() == [
        "235 2.7.0 Authentication successful",
        "220 2.0.0 Ready to start TLS",
    ]
    assert session.transport.tls_starts == [TLS_OPTIONS]


# The session after TLS (RFC 3207 §4.2)


def test_after_starttls_ehlo_is_required_again(provider):
    """The pre-TLS EHLO is forgotten: MAIL needs a new one."""
    session = after_starttls(provider)
    assert session("MAIL FROM:<a@b.example>") == "503 5.5.1 Error: send HELO/EHLO first"


def test_after_starttls_the_login_is_forgotten(provider):
    """A session authenticated before STARTTLS is not authenticated after it."""
    session = Session(provider, Role.SUBMISSION)
    session("EHLO client.example")
    assert session(f"AUTH PLAIN {plain()}").startswith("235")
    session("STARTTLS")
    session("EHLO client.example")
    assert session("MAIL FROM:<alice@example.org>").startswith("530 5.7.0")
    assert session(f"AUTH PLAIN {plain()}").startswith("235")


def test_ehlo_after_tls_lists_auth_but_not_starttls(provider):
    """After TLS, EHLO reflects the new state: no STARTTLS keyword."""
    session = after_starttls(provider)
    replies = session.send("EHLO client.example")
    assert "250-STARTTLS" not in replies
    assert replies[-1] == "250 AUTH PLAIN LOGIN"


def test_a_second_starttls_is_503(provider):
    """TLS cannot be started twice."""
    session = after_starttls(provider)
    session("EHLO client.example")
    assert session("STARTTLS") == "503 5.5.1 Error: TLS is already active"
    assert session.transport.tls_starts == [TLS_OPTIONS]


def test_starttls_with_an_argument_is_501(provider):
    """STARTTLS takes no parameters (RFC 3207 §4)."""
    session = Session(provider)
    session("EHLO client.example")
    assert session("STARTTLS now") == "501 5.5.4 Syntax: STARTTLS (no parameters)"
    assert session.transport.tls_starts == []


def test_starttls_inside_a_transaction_is_503(provider):
    """A transaction in progress must be finished or reset first."""
    session = Session(provider)
    session("EHLO client.example")
    session("MAIL FROM:<a@b.example>")
    assert session("STARTTLS") == (
        "503 5.5.1 Error: STARTTLS is not allowed during a mail transaction"
    )
    assert session.transport.tls_starts == []


# Implicit TLS (ports 465/995: TLS from the first byte)


def test_implicit_tls_neither_advertises_nor_accepts_starttls(provider):
    """On a TLS listener STARTTLS is not listed and gets 503."""
    session = Session(provider, transport=ImplicitTLSTransport(peerAddress=LOOPBACK))
    replies = session.send("EHLO client.example")
    assert "250-STARTTLS" not in replies
    assert replies[-1] == "250 AUTH PLAIN LOGIN"
    assert session("STARTTLS") == "503 5.5.1 Error: TLS is already active"


# Received (RFC 3848)


def test_received_says_esmtps_after_starttls(provider):
    """Mail over TLS without SMTP-Auth is received with ESMTPS."""
    session = after_starttls(provider)
    session("EHLO client.example")
    session.send("MAIL FROM:<bob@example.org>", "RCPT TO:<alice@example.org>", "DATA")
    assert session.send("hi", ".")[-1].startswith("250 2.0.0")
    [message] = stored(provider)
    assert received_with(message) == "ESMTPS"


def test_received_says_esmtpsa_after_starttls_and_auth(provider):
    """Mail over TLS after SMTP-Auth is received with ESMTPSA."""
    session = after_starttls(provider, Role.SUBMISSION)
    session("EHLO client.example")
    session(f"AUTH PLAIN {plain()}")
    session.send("MAIL FROM:<alice@example.org>", "RCPT TO:<alice@example.org>", "DATA")
    assert session.send("hi", ".")[-1].startswith("250 2.0.0")
    [message] = stored(provider)
    assert received_with(message) == "ESMTPSA"


def test_received_says_esmtps_on_implicit_tls(provider):
    """An implicit-TLS session counts as TLS for the trace header too."""
    session = Session(provider, transport=ImplicitTLSTransport(peerAddress=LOOPBACK))
    session("EHLO client.example")
    session.send("MAIL FROM:<bob@example.org>", "RCPT TO:<alice@example.org>", "DATA")
    session.send("hi", ".")
    [message] = stored(provider)
    assert received_with(message) == "ESMTPS"


def test_decisions_record_whether_the_session_is_tls(provider):
    """The decision event carries the TLS state of the session."""
    session = after_starttls(provider)
    session("EHLO client.example")
    session("MAIL FROM:<bob@example.org>")
    [event] = provider.events.recent("smtp-decision")
    assert event["tls"] is True
