"""The open-relay battery: nmap's smtp-open-relay variants and mailhost's extras.

Each case is one SMTP session (EHLO, MAIL, RCPT and, when the RCPT is
accepted, DATA), on each listener: the MX port, the submission port and the
implicit-TLS submission port. Without a live authorisation no case may put a message in
the outbox: the RCPT must be refused, or the message must land in a local
Maildir. With one, the remote cases must relay, so the battery can fail.
"""

import base64
from dataclasses import dataclass
from datetime import UTC, datetime

import pytest
from twisted.internet.address import IPv4Address
from twisted.internet.testing import StringTransport

from mailhost.policy import Role
from mailhost.schedule import Schedule
from mailhost.smtp import SMTPFactory
from mailhost.testing import DEMO_ACCOUNTS, ImplicitTLSTransport, make_clock, make_provider

CLIENT_IP = "127.0.0.2"
SERVER_IP = "127.0.0.1"
FOREIGN = "relay-target.example"
SERVER_NAME = "mail.example.org"
LOCAL = "example.org"
CUTOVER = datetime(2013, 9, 2, tzinfo=UTC)
LOCAL_MAILBOXES = {*DEMO_ACCOUNTS, f"postmaster@{LOCAL}"}

RELAYS = "relays"
LOCAL_DELIVERY = "local"
REFUSED = "refused"


@dataclass(frozen=True)
class Case:
    name: str
    sender: str
    recipient: str
    authorised: str
    """What happens with a valid authorisation: RELAYS, LOCAL_DELIVERY or REFUSED."""


D, R, IP = FOREIGN, SERVER_NAME, f"[{SERVER_IP}]"

CASES = [
    Case("nmap-1-null-sender", "<>", f"<relaytest@{D}>", RELAYS),
    Case("nmap-2-foreign-sender", f"<antispam@{D}>", f"<relaytest@{D}>", RELAYS),
    Case("nmap-3-server-name-sender", f"<antispam@{R}>", f"<relaytest@{D}>", RELAYS),
    Case("nmap-4-literal-sender", f"<antispam@{IP}>", f"<relaytest@{D}>", RELAYS),
    Case("nmap-5-percent-at-literal", f"<antispam@{IP}>", f"<relaytest%{D}@{IP}>", RELAYS),
    Case("nmap-6-percent-at-server-name", f"<antispam@{IP}>", f"<relaytest%{D}@{R}>", RELAYS),
    Case("nmap-7-quoted-address", f"<antispam@{IP}>", f'<"relaytest@{D}">', REFUSED),
    Case("nmap-8-quoted-percent", f"<antispam@{IP}>", f'<"relaytest%{D}">', REFUSED),
    Case("nmap-9-double-at-literal", f"<antispam@{IP}>", f"<relaytest@{D}@{IP}>", REFUSED),
    Case("nmap-10-quoted-at-literal", f"<antispam@{IP}>", f'<"relaytest@{D}"@{IP}>', RELAYS),
    Case("nmap-11-double-at-server-name", f"<antispam@{IP}>", f"<relaytest@{D}@{R}>", REFUSED),
    Case("nmap-12-route-via-literal", f"<antispam@{IP}>", f"<@{IP}:relaytest@{D}>", RELAYS),
    Case("nmap-13-route-via-server-name", f"<antispam@{IP}>", f"<@{R}:relaytest@{D}>", RELAYS),
    Case("nmap-14-bang-path", f"<antispam@{IP}>", f"<{D}!relaytest>", REFUSED),
    Case("nmap-15-bang-at-literal", f"<antispam@{IP}>", f"<{D}!relaytest@{IP}>", RELAYS),
    Case("nmap-16-bang-at-server-name", f"<antispam@{IP}>", f"<{D}!relaytest@{R}>", RELAYS),
    Case("percent-at-local-domain", f"<antispam@{D}>", f"<relaytest%{D}@{LOCAL}>", REFUSED),
    Case("bang-at-local-domain", f"<antispam@{D}>", f"<{D}!relaytest@{LOCAL}>", REFUSED),
    Case("quoted-at-local-domain", f"<antispam@{D}>", f'<"relaytest@{D}"@{LOCAL}>', REFUSED),
    Case("route-via-local-domain", f"<antispam@{D}>", f"<@{LOCAL}:relaytest@{D}>", RELAYS),
    Case("upper-case-local-domain", f"<antispam@{D}>", "<relaytest@EXAMPLE.ORG>", REFUSED),
    Case("upper-case-local-account", f"<antispam@{D}>", "<ALICE@EXAMPLE.ORG>", LOCAL_DELIVERY),
    Case("trailing-dot-foreign", f"<antispam@{D}>", f"<relaytest@{D}.>", REFUSED),
    Case("trailing-dot-local", f"<antispam@{D}>", f"<alice@{LOCAL}.>", REFUSED),
    Case("ipv4-literal-of-server", f"<antispam@{D}>", f"<alice@{IP}>", RELAYS),
    Case("ipv6-literal-of-server", f"<antispam@{D}>", "<alice@[IPv6:::1]>", RELAYS),
    Case("ipv6-literal-foreign-user", "<>", "<relaytest@[IPv6:::1]>", RELAYS),
    Case("bare-postmaster", "<>", "<postmaster>", LOCAL_DELIVERY),
    Case("spoofed-local-sender", f"<alice@{LOCAL}>", f"<relaytest@{D}>", RELAYS),
    Case("local-account", "<>", f"<bob@{LOCAL}>", LOCAL_DELIVERY),
]


def no_grant(provider, clock):
    pass


def expired_grant(provider, clock):
    provider.logins.record(CLIENT_IP, "alice@example.org", provider.now())
    clock.advance(600)


def after_cutover(provider, clock):
    provider.logins.record(CLIENT_IP, "alice@example.org", provider.now())
    clock.advance(60)


def grant_for_another_ip(provider, clock):
    provider.logins.record("127.0.0.3", "alice@example.org", provider.now())


UNAUTHORISED = [no_grant, expired_grant, after_cutover, grant_for_another_ip]


@pytest.fixture
def new_provider(tmp_path):
    """A provider on its own clock, with SMTP-after-POP scheduled off at the cutover."""

    def build():
        clock = make_clock()
        provider = make_provider(
            tmp_path, reactor_clock=clock, smtp_after_pop=Schedule.until(CUTOVER)
        )
        return provider, clock

    return build


@dataclass(frozen=True)
class Listener:
    name: str
    role: Role
    implicit_tls: bool = False


LISTENERS = [
    Listener("smtp", Role.MX),
    Listener("submission", Role.SUBMISSION),
    Listener("smtps", Role.SUBMISSION, implicit_tls=True),
]


class Session:
    def __init__(self, provider, listener):
        transport_type = ImplicitTLSTransport if listener.implicit_tls else StringTransport
        self.transport = transport_type(
            hostAddress=IPv4Address("TCP", SERVER_IP, 2525),
            peerAddress=IPv4Address("TCP", CLIENT_IP, 40000),
        )
        self.server = SMTPFactory(provider, listener.role).buildProtocol(None)
        self.server.makeConnection(self.transport)

    def __call__(self, line):
        self.transport.clear()
        self.server.dataReceived(line.encode("latin-1") + b"\r\n")
        return self.transport.value().decode("ascii").splitlines()[-1]


def attempt(provider, listener, case, auth=None):
    """One session for ``case``; returns the RCPT reply (after DATA if it was accepted)."""
    session = Session(provider, listener)
    session("EHLO relay.test")
    if auth is not None:
        assert session(f"AUTH PLAIN {auth}").startswith("235")
    session(f"MAIL FROM:{case.sender}")
    reply = session(f"RCPT TO:{case.recipient}")
    if reply.startswith("2"):
        assert session("DATA").startswith("354")
        assert session("Subject: relay test\r\n\r\nrelay test\r\n.").startswith("250 2.0.0")
    return reply


def local_deliveries(provider):
    root = provider.data.root / "mail"
    if not root.exists():
        return {}
    return {box.name: len(list((box / "new").iterdir())) for box in root.iterdir()}


def outbox_messages(provider):
    new = provider.data.outbox / "new"
    return [p.read_bytes() for p in new.iterdir()] if new.exists() else []


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
@pytest.mark.parametrize("condition", UNAUTHORISED, ids=lambda f: f.__name__)
@pytest.mark.parametrize("listener", LISTENERS, ids=lambda listener: listener.name)
def test_nothing_relays_without_a_live_authorisation(new_provider, listener, condition, case):
    """Unauthorised: every recipient is refused or lands in a local Maildir, never the outbox."""
    provider, clock = new_provider()
    condition(provider, clock)
    reply = attempt(provider, listener, case)
    assert outbox_messages(provider) == []
    if reply.startswith("2"):
        assert listener.role is Role.MX
        assert set(local_deliveries(provider)) <= LOCAL_MAILBOXES
        assert sum(local_deliveries(provider).values()) == 1


def plain_alice():
    return base64.b64encode(b"\0alice@example.org\0alice-secret").decode("ascii")


def live_grant(provider, clock):
    provider.logins.record(CLIENT_IP, "alice@example.org", provider.now())
    clock.advance(59)


def smtp_auth(provider, clock):
    clock.advance(3600)
    return plain_alice()


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
@pytest.mark.parametrize("authorisation", [live_grant, smtp_auth], ids=lambda f: f.__name__)
@pytest.mark.parametrize("listener", LISTENERS, ids=lambda listener: listener.name)
def test_remote_recipients_relay_with_a_live_authorisation(
    new_provider, listener, authorisation, case
):
    """With a live grant or SMTP-Auth the remote cases reach the outbox; the others do not."""
    provider, clock = new_provider()
    auth = authorisation(provider, clock)
    reply = attempt(provider, listener, case, auth)
    outbox = outbox_messages(provider)
    if case.authorised == RELAYS:
        assert reply == "250 2.1.5 Ok"
        (message,) = outbox
        assert message.startswith(b"X-Envelope-From: ")
        assert b"\nX-Envelope-To: " in message
    elif case.authorised == LOCAL_DELIVERY:
        assert reply == "250 2.1.5 Ok"
        assert outbox == []
        assert set(local_deliveries(provider)) <= LOCAL_MAILBOXES
    else:
        assert not reply.startswith("2")
        assert outbox == []
        assert local_deliveries(provider) == {}
