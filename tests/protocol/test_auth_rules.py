"""Who may send a password, how often, and as whom: the rules both protocols share.

Plaintext passwords only over TLS or from loopback (DESIGN "Choices made",
RFC 4954 §6 538, Dovecot's POP3 wording); a per-address throttle on failed
logins that refuses before any password is checked; and, with
enforce_sender, an SMTP-Auth session bound to its own address.
"""

import base64
from datetime import timedelta

import pytest
from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.error import ConnectionDone
from twisted.internet.testing import StringTransport
from twisted.python import failure

from mailhost import events, testing
from mailhost.blocking import run_inline
from mailhost.policy import SENDER_UNBOUND, Role
from mailhost.pop3 import POP3Factory
from mailhost.testing import ImplicitTLSTransport, TLSTransport, make_provider
from mailhost.throttle import AuthThrottle, ThrottleSettings

ALICE = "alice@example.org"
OUTSIDER = IPv4Address("TCP", "192.0.2.10", 40000)
OTHER_OUTSIDER = IPv4Address("TCP", "192.0.2.11", 40000)
LOOPBACK = IPv4Address("TCP", "127.0.0.2", 40000)
TLS_OPTIONS = object()
WINDOW = timedelta(minutes=10)
SMTP_ENCRYPTION_REQUIRED = "538 5.7.11 Encryption required for requested authentication mechanism"
POP_PLAINTEXT_DISALLOWED = (
    b"-ERR [AUTH] Plaintext authentication disallowed on non-secure (SSL/TLS) connections\r\n"
)
POP_THROTTLED = b"-ERR [SYS/TEMP] Too many failed logins from your address; try again later\r\n"
POP_BUSY = b"-ERR [SYS/TEMP] Too many logins in progress from your address; try again shortly\r\n"


def plain(user=ALICE, password="alice-secret"):
    return base64.b64encode(f"\0{user}\0{password}".encode()).decode("ascii")


def SMTPSession(provider, peer=OUTSIDER, role=Role.SUBMISSION, transport=None):
    return testing.SMTPSession(provider, role, transport or TLSTransport(peerAddress=peer))


class POP3Session:
    def __init__(self, provider, peer=OUTSIDER, transport=None):
        self.transport = transport if transport is not None else TLSTransport(peerAddress=peer)
        self.server = POP3Factory(provider).buildProtocol(peer)
        self.server.makeConnection(self.transport)
        self.take()

    def take(self):
        value = self.transport.value()
        self.transport.clear()
        return value

    def command(self, line):
        self.server.dataReceived(line.encode() + b"\r\n")
        return self.take()

    def login(self, password="alice-secret"):
        self.command(f"USER {ALICE}")
        return self.command(f"PASS {password}")

    def capabilities(self):
        return self.command("CAPA").split(b"\r\n")[1:-2]

    def drop(self):
        self.server.connectionLost(failure.Failure(ConnectionDone()))


class CountingRunBlocking:
    """run_inline that counts its calls: zero calls means no password was checked."""

    def __init__(self):
        self.calls = 0

    def __call__(self, f, *args):
        self.calls += 1
        return run_inline(f, *args)


@pytest.fixture
def new_provider(tmp_path, clock):
    made = []

    def build(**options):
        options.setdefault("reactor_clock", clock)
        options.setdefault("tls_options", TLS_OPTIONS)
        made.append(make_provider(tmp_path / str(len(made)), **options))
        made[-1].run_blocking = CountingRunBlocking()
        return made[-1]

    return build


@pytest.fixture
def provider(new_provider):
    return new_provider()


@pytest.fixture
def throttled(new_provider):
    """A provider whose throttle blocks an address after 2 failures in 10 minutes."""
    return new_provider(throttle=AuthThrottle(ThrottleSettings(limit=2, window=WINDOW)))


@pytest.fixture
def pop3():
    """Opens POP3 sessions and drops them at the end, so maildrop locks are released."""
    opened = []

    def open_session(*args, **kwargs):
        opened.append(POP3Session(*args, **kwargs))
        return opened[-1]

    yield open_session
    for session in opened:
        session.drop()


def smtp_fail(provider, peer=OUTSIDER, times=1):
    for _ in range(times):
        session = SMTPSession(provider, peer, transport=ImplicitTLSTransport(peerAddress=peer))
        session("EHLO client.example")
        assert session(f"AUTH PLAIN {plain(password='wrong')}").startswith("535 5.7.8")


# SMTP: plaintext rule


def test_smtp_does_not_advertise_auth_to_a_remote_peer_without_tls(provider):
    """From a non-loopback address before TLS, EHLO offers STARTTLS but not AUTH."""
    replies = SMTPSession(provider).send("EHLO client.example")
    assert replies[-1] == "250 STARTTLS"
    assert not any("AUTH" in line for line in replies)


def test_smtp_auth_from_a_remote_peer_without_tls_is_538(provider):
    """RFC 4954 §6: 538 5.7.11, and the password is never checked."""
    session = SMTPSession(provider)
    session("EHLO client.example")
    assert session(f"AUTH PLAIN {plain()}") == SMTP_ENCRYPTION_REQUIRED
    assert session("AUTH LOGIN") == SMTP_ENCRYPTION_REQUIRED
    assert provider.run_blocking.calls == 0


def test_smtp_unknown_mechanism_is_still_504_without_tls(provider):
    """The 538 is about the mechanisms offered; an unknown one stays 504."""
    session = SMTPSession(provider)
    session("EHLO client.example")
    assert session("AUTH CRAM-MD5").startswith("504 5.5.4")


def test_smtp_auth_from_a_remote_peer_works_after_starttls(provider):
    """After STARTTLS the same peer sees AUTH in EHLO and can log in."""
    session = SMTPSession(provider)
    session("EHLO client.example")
    session("STARTTLS")
    assert session.send("EHLO client.example")[-1] == "250 AUTH PLAIN LOGIN"
    assert session(f"AUTH PLAIN {plain()}") == "235 2.7.0 Authentication successful"


def test_smtp_auth_from_a_remote_peer_works_on_implicit_tls(provider):
    """A submissions (port 465) connection is TLS from the start."""
    session = SMTPSession(provider, transport=ImplicitTLSTransport(peerAddress=OUTSIDER))
    assert session.send("EHLO client.example")[-1] == "250 AUTH PLAIN LOGIN"
    assert session(f"AUTH PLAIN {plain()}").startswith("235")


@pytest.mark.parametrize(
    "peer",
    [IPv4Address("TCP", "127.0.0.3", 40000), IPv6Address("TCP", "::1", 40000)],
    ids=["127.0.0.3", "::1"],
)
def test_smtp_auth_from_loopback_works_without_tls(provider, peer):
    """Loopback peers count as secure, so the fixture and demo work on one machine."""
    session = SMTPSession(provider, peer)
    assert session.send("EHLO client.example")[-1] == "250 AUTH PLAIN LOGIN"
    assert session(f"AUTH PLAIN {plain()}").startswith("235")


def test_smtp_auth_from_a_remote_peer_works_when_plaintext_is_allowed(new_provider):
    """allow_plaintext_auth lifts the rule for every peer."""
    provider = new_provider(allow_plaintext_auth=True, tls_options=None)
    session = SMTPSession(provider, transport=StringTransport(peerAddress=OUTSIDER))
    assert session.send("EHLO client.example")[-1] == "250 AUTH PLAIN LOGIN"
    assert session(f"AUTH PLAIN {plain()}").startswith("235")


# POP3: plaintext rule


def test_pop3_capa_omits_user_and_sasl_for_a_remote_peer_without_tls(provider, pop3):
    """USER and SASL are withheld where they would be refused; STLS is offered."""
    listed = pop3(provider).capabilities()
    assert b"USER" not in listed
    assert not any(line.startswith(b"SASL") for line in listed)
    assert b"STLS" in listed


@pytest.mark.parametrize("command", [f"USER {ALICE}", "PASS alice-secret", "AUTH", "AUTH PLAIN"])
def test_pop3_password_commands_from_a_remote_peer_without_tls_are_refused(provider, pop3, command):
    """USER, PASS and AUTH get Dovecot's [AUTH] refusal before TLS."""
    assert pop3(provider).command(command) == POP_PLAINTEXT_DISALLOWED


def test_pop3_auth_plain_with_initial_response_is_refused_unchecked(provider, pop3):
    """A password sent in the clear anyway is not checked."""
    session = pop3(provider)
    assert session.command(f"AUTH PLAIN {plain()}") == POP_PLAINTEXT_DISALLOWED
    assert provider.run_blocking.calls == 0
    assert session.server.maildrop is None


def test_pop3_login_from_a_remote_peer_works_after_stls(provider, pop3):
    """After STLS, CAPA lists USER and SASL again and USER/PASS logs in."""
    session = pop3(provider)
    session.command("STLS")
    listed = session.capabilities()
    assert b"USER" in listed and b"SASL PLAIN" in listed
    assert session.login().startswith(b"+OK Logged in")


def test_pop3_login_from_a_remote_peer_works_on_implicit_tls(provider, pop3):
    """A POP3S (port 995) connection is TLS from the start."""
    session = pop3(provider, transport=ImplicitTLSTransport(peerAddress=OUTSIDER))
    assert session.command(f"AUTH PLAIN {plain()}").startswith(b"+OK Logged in")


def test_pop3_login_from_loopback_works_without_tls(provider, pop3):
    """Loopback peers may log in in the clear."""
    assert pop3(provider, LOOPBACK).login().startswith(b"+OK Logged in")


def test_pop3_login_from_a_remote_peer_works_when_plaintext_is_allowed(new_provider, pop3):
    """allow_plaintext_auth lifts the rule for POP3 too."""
    provider = new_provider(allow_plaintext_auth=True)
    session = pop3(provider)
    assert b"USER" in session.capabilities()
    assert session.login().startswith(b"+OK Logged in")


# SMTP: throttle


def test_smtp_failures_from_an_address_block_its_next_auth_unchecked(throttled):
    """At the limit, AUTH gets 454 4.7.0 with the wait, and no password is checked."""
    smtp_fail(throttled, times=2)
    checks = throttled.run_blocking.calls
    session = SMTPSession(throttled, transport=ImplicitTLSTransport(peerAddress=OUTSIDER))
    session("EHLO client.example")
    assert session(f"AUTH PLAIN {plain()}") == (
        "454 4.7.0 Too many failed authentications from your address; try again in 600 s"
    )
    assert throttled.run_blocking.calls == checks
    assert session.server.auth_account is None


def test_smtp_throttle_wait_counts_down_with_the_clock(throttled, clock):
    """The seconds in the 454 are the time left until the block ends."""
    smtp_fail(throttled, peer=LOOPBACK, times=2)
    clock.advance(100)
    session = SMTPSession(throttled, LOOPBACK)
    session("EHLO client.example")
    assert session(f"AUTH PLAIN {plain()}").endswith("try again in 500 s")


def test_smtp_throttled_attempt_is_logged_as_a_failure(throttled):
    """A refusal by the throttle is an smtp-auth-failed event with reason "throttled"."""
    smtp_fail(throttled, peer=LOOPBACK, times=2)
    session = SMTPSession(throttled, LOOPBACK)
    session("EHLO client.example")
    session(f"AUTH PLAIN {plain()}")
    *_, event = throttled.events.recent(events.SMTP_AUTH_FAILED)
    assert (event["ip"], event["reason"], event["mechanism"]) == ("127.0.0.2", "throttled", "PLAIN")


def test_smtp_throttle_does_not_affect_another_address(throttled):
    """Only the failing address is blocked."""
    smtp_fail(throttled, times=2)
    session = SMTPSession(throttled, transport=ImplicitTLSTransport(peerAddress=OTHER_OUTSIDER))
    session("EHLO client.example")
    assert session(f"AUTH PLAIN {plain()}").startswith("235")


def test_smtp_throttle_block_decays_after_the_window(throttled, clock):
    """Once the failures have aged out of the window, AUTH is checked again."""
    smtp_fail(throttled, times=2)
    clock.advance(WINDOW.total_seconds())
    session = SMTPSession(throttled, transport=ImplicitTLSTransport(peerAddress=OUTSIDER))
    session("EHLO client.example")
    assert session(f"AUTH PLAIN {plain()}").startswith("235")


def test_smtp_throttled_attempts_do_not_prolong_the_block(throttled, clock):
    """Knocking while blocked is not a guess, so the block still ends one window after."""
    smtp_fail(throttled, times=2)
    clock.advance(WINDOW.total_seconds() / 2)
    session = SMTPSession(throttled, transport=ImplicitTLSTransport(peerAddress=OUTSIDER))
    session("EHLO client.example")
    for _ in range(2):
        assert session(f"AUTH PLAIN {plain()}").startswith("454 4.7.0")
    clock.advance(WINDOW.total_seconds() / 2)
    session = SMTPSession(throttled, transport=ImplicitTLSTransport(peerAddress=OUTSIDER))
    session("EHLO client.example")
    assert session(f"AUTH PLAIN {plain()}").startswith("235")


def test_smtp_success_does_not_reset_the_failure_count(throttled):
    """A guesser who finds one password keeps his record."""
    smtp_fail(throttled)
    session = SMTPSession(throttled, transport=ImplicitTLSTransport(peerAddress=OUTSIDER))
    session("EHLO client.example")
    assert session(f"AUTH PLAIN {plain()}").startswith("235")
    smtp_fail(throttled)
    assert throttled.throttle.is_blocked("192.0.2.10", throttled.now())


def test_smtp_throttle_applies_on_the_mx_listener_too(throttled):
    """Failures on either listener count for the address on both."""
    smtp_fail(throttled, times=2)
    session = SMTPSession(
        throttled, role=Role.MX, transport=ImplicitTLSTransport(peerAddress=OUTSIDER)
    )
    session("EHLO client.example")
    assert session(f"AUTH PLAIN {plain()}").startswith("454 4.7.0")


def test_smtp_block_starting_during_a_login_exchange_refuses_the_password_unchecked(throttled):
    """An AUTH LOGIN prompted before the block gets 454 at the password, unchecked."""
    session = SMTPSession(throttled, LOOPBACK)
    session("EHLO client.example")
    session("AUTH LOGIN")
    session(base64.b64encode(ALICE.encode()).decode())
    smtp_fail(throttled, peer=LOOPBACK, times=2)
    checks = throttled.run_blocking.calls
    assert session(base64.b64encode(b"alice-secret").decode()).startswith("454 4.7.0")
    assert throttled.run_blocking.calls == checks


def test_three_auth_failures_then_421_still_holds_with_a_lenient_throttle(provider):
    """The per-session RFC 4954 §9 rule works beside the per-address throttle."""
    session = SMTPSession(provider, LOOPBACK)
    session("EHLO client.example")
    for _ in range(3):
        assert session(f"AUTH PLAIN {plain(password='wrong')}").startswith("535 5.7.8")
    assert session(f"AUTH PLAIN {plain()}").startswith("421 4.7.0")
    assert session.transport.disconnecting


def test_throttled_refusals_count_towards_the_sessions_421(throttled):
    """A client that keeps trying while throttled is disconnected like one that keeps guessing."""
    session = SMTPSession(throttled, LOOPBACK)
    session("EHLO client.example")
    for _ in range(2):
        assert session(f"AUTH PLAIN {plain(password='wrong')}").startswith("535 5.7.8")
    assert session(f"AUTH PLAIN {plain()}").startswith("454 4.7.0")
    assert session(f"AUTH PLAIN {plain()}").startswith("421 4.7.0")


# POP3: throttle


def test_pop3_failures_from_an_address_block_its_next_pass_unchecked(throttled, pop3):
    """At the limit, PASS gets -ERR [SYS/TEMP] and no password is checked."""
    session = pop3(throttled, LOOPBACK)
    for _ in range(2):
        assert session.login("wrong") == b"-ERR [AUTH] Authentication failed\r\n"
    checks = throttled.run_blocking.calls
    assert session.login() == POP_THROTTLED
    assert throttled.run_blocking.calls == checks
    assert session.server.maildrop is None


def test_pop3_throttle_refuses_auth_before_the_challenge(throttled, pop3):
    """AUTH from a blocked address is refused at once, with or without initial response."""
    smtp_fail(throttled, peer=LOOPBACK, times=2)
    session = pop3(throttled, LOOPBACK)
    assert session.command("AUTH PLAIN") == POP_THROTTLED
    assert session.command(f"AUTH PLAIN {plain()}") == POP_THROTTLED


def test_pop3_throttled_login_is_logged_as_a_failure(throttled, pop3):
    """A refusal by the throttle is a pop3-login-failed event with reason "throttled"."""
    session = pop3(throttled, LOOPBACK)
    session.login("wrong")
    session.login("wrong")
    session.login()
    reasons = [e["reason"] for e in throttled.events.recent(events.POP_LOGIN_FAILED)]
    assert reasons == ["credentials", "credentials", "throttled"]


def test_smtp_and_pop3_failures_count_together(throttled, pop3):
    """The throttle is per address, not per protocol."""
    smtp_fail(throttled, peer=LOOPBACK)
    pop3(throttled, LOOPBACK).login("wrong")
    assert pop3(throttled, LOOPBACK).login() == POP_THROTTLED


def test_pop3_throttle_does_not_affect_another_address(throttled, pop3):
    """Only the failing address is blocked."""
    smtp_fail(throttled, peer=LOOPBACK, times=2)
    other = IPv4Address("TCP", "127.0.0.3", 40000)
    assert pop3(throttled, other).login().startswith(b"+OK Logged in")


def test_pop3_throttle_block_decays_after_the_window(throttled, pop3, clock):
    """Once the failures have aged out of the window, PASS is checked again."""
    smtp_fail(throttled, peer=LOOPBACK, times=2)
    clock.advance(WINDOW.total_seconds())
    assert pop3(throttled, LOOPBACK).login().startswith(b"+OK Logged in")


def test_pop3_in_use_is_not_counted_as_a_failure(throttled, pop3):
    """Only bad credentials feed the throttle: a locked maildrop is not a guess."""
    assert pop3(throttled, LOOPBACK).login().startswith(b"+OK")
    for _ in range(2):
        assert pop3(throttled, LOOPBACK).login().startswith(b"-ERR [IN-USE]")
    assert not throttled.throttle.is_blocked("127.0.0.2", throttled.now())


# Sender binding


@pytest.mark.parametrize("role", list(Role))
def test_enforce_sender_refuses_another_address_with_553(new_provider, role):
    """An SMTP-Auth session on either listener may not send as someone else."""
    provider = new_provider(enforce_sender=True)
    session = SMTPSession(provider, LOOPBACK, role)
    session("EHLO client.example")
    session(f"AUTH PLAIN {plain()}")
    reply = session("MAIL FROM:<bob@example.org>")
    assert reply.startswith("553 5.7.1 sender <bob@example.org> is not yours")
    assert session("MAIL FROM:<alice@example.org>") == "250 2.1.0 Ok"


def test_without_enforce_sender_an_auth_session_may_use_any_sender(provider):
    """Sender binding is opt-in."""
    session = SMTPSession(provider, LOOPBACK)
    session("EHLO client.example")
    session(f"AUTH PLAIN {plain()}")
    assert session("MAIL FROM:<bob@example.org>") == "250 2.1.0 Ok"


def test_enforce_sender_with_smtp_after_pop_says_the_sender_cannot_be_checked(new_provider):
    """A POP grant vouches for an address, not a person: the decision's reason says so."""
    provider = new_provider(enforce_sender=True)
    provider.logins.record("127.0.0.2", ALICE, provider.now())
    session = SMTPSession(provider, LOOPBACK)
    session("EHLO client.example")
    assert session("MAIL FROM:<bob@example.org>") == "250 2.1.0 Ok"
    [event] = provider.events.recent(events.SMTP_DECISION)
    assert event["scheme"] == "smtp-after-pop"
    assert SENDER_UNBOUND in event["reason"]


# --- checks in progress count: many connections at once cannot outrun the throttle -------------


def test_parallel_smtp_attempts_get_no_more_checks_than_the_limit(new_provider):
    """With checks still running, new attempts from the address are refused (454) unchecked."""
    from mailhost.testing import QueuedRunBlocking

    provider = new_provider(throttle=AuthThrottle(ThrottleSettings(limit=3, window=WINDOW)))
    provider.run_blocking = queue = QueuedRunBlocking()
    sessions = [SMTPSession(provider, peer=LOOPBACK) for _ in range(10)]
    replies = []
    for session in sessions:
        session("EHLO guesser.example")
        replies.append(session.send(f"AUTH PLAIN {plain(password='guess')}"))
    assert len(queue.queue) == 3
    busy = "454 4.7.0 Too many authentications in progress from your address; try again shortly"
    assert [r[-1] for r in replies[3:]] == [busy] * 7
    queue.run_all()
    assert [session.replies() for session in sessions[:3]] == [
        ["535 5.7.8 Error: authentication failed"]
    ] * 3
    assert provider.throttle.failures("127.0.0.2", provider.now()) == 3


def test_parallel_pop3_logins_get_no_more_checks_than_the_limit(new_provider):
    """POP3 logins in flight count too: past the limit the rest get -ERR [SYS/TEMP] unchecked."""
    from mailhost.testing import QueuedRunBlocking

    provider = new_provider(throttle=AuthThrottle(ThrottleSettings(limit=2, window=WINDOW)))
    provider.run_blocking = queue = QueuedRunBlocking()
    sessions = [POP3Session(provider, peer=LOOPBACK) for _ in range(5)]
    replies = [session.login(password="guess") for session in sessions]
    assert len(queue.queue) == 2
    assert replies[2:] == [POP_BUSY] * 3, "nothing has failed yet: not called failures"
    queue.run_all()
    assert provider.throttle.failures("127.0.0.2", provider.now()) == 2
    for session in sessions:
        session.drop()


def test_pop3_auth_plain_failures_feed_the_throttle(throttled):
    """A failed POP3 AUTH PLAIN counts like a failed PASS."""
    session = POP3Session(throttled, peer=LOOPBACK)
    for _ in range(2):
        assert session.command(f"AUTH PLAIN {plain(password='guess')}").startswith(b"-ERR [AUTH]")
    assert session.command(f"AUTH PLAIN {plain()}") == POP_THROTTLED
    session.drop()


def test_refused_plaintext_passwords_are_logged(provider):
    """A password refused for want of TLS is a failure event, so such clients can be spotted."""
    smtp = SMTPSession(provider)
    smtp("EHLO outside.example")
    assert smtp(f"AUTH PLAIN {plain()}") == SMTP_ENCRYPTION_REQUIRED
    pop = POP3Session(provider)
    pop.command(f"USER {ALICE}")
    kinds = [(e["kind"], e["reason"]) for e in provider.events.recent() if "reason" in e]
    assert (events.SMTP_AUTH_FAILED, "plaintext-without-tls") in kinds
    assert (events.POP_LOGIN_FAILED, "plaintext-without-tls") in kinds
    pop.drop()
