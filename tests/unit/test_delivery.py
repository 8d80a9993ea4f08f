from datetime import UTC, datetime, timedelta

import pytest
from twisted.internet import defer

from mailhost import delivery, events, policy
from mailhost.addresses import parse_path
from mailhost.policy import Recipient, Role
from mailhost.schedule import Schedule
from mailhost.testing import make_clock, make_provider

NOW = datetime(2013, 9, 1, 23, 59, tzinfo=UTC)


@pytest.fixture
def new_provider(tmp_path):
    """make_provider, each in its own directory."""
    made = []

    def build(**options):
        made.append(make_provider(tmp_path / str(len(made)), **options))
        return made[-1]

    return build


def destination(provider, path):
    return delivery.classify(provider, parse_path(path))


def stored_files(directory):
    new = directory / "new"
    return sorted(new.iterdir()) if new.exists() else []


def test_existing_account_in_local_domain_is_local(new_provider):
    """An account in a local domain is LOCAL and names its own mailbox."""
    provider = new_provider()
    found = destination(provider, "<alice@example.org>")
    assert found == delivery.Destination("alice@example.org", Recipient.LOCAL, "alice@example.org")


def test_upper_case_address_maps_to_the_lowercase_account(new_provider):
    """Domains compare case-insensitively and accounts are lowercase keys."""
    provider = new_provider()
    found = destination(provider, "<ALICE@EXAMPLE.ORG>")
    assert found.kind is Recipient.LOCAL
    assert found.mailbox == "alice@example.org"


def test_unknown_mailbox_in_local_domain_is_unknown_local(new_provider):
    """A local domain without that account is UNKNOWN_LOCAL, so policy answers 550 5.1.1."""
    provider = new_provider()
    found = destination(provider, "<relaytest@Example.Org>")
    assert found.kind is Recipient.UNKNOWN_LOCAL
    assert found.mailbox is None


def test_other_domain_is_remote(new_provider):
    """A domain that is not local is REMOTE and has no mailbox."""
    provider = new_provider()
    found = destination(provider, "<relaytest@elsewhere.example>")
    assert found == delivery.Destination("relaytest@elsewhere.example", Recipient.REMOTE)


def test_address_literal_is_never_local(new_provider):
    """Even the server's own address literal counts as remote, so it needs authorisation."""
    provider = new_provider()
    assert destination(provider, "<alice@[127.0.0.1]>").kind is Recipient.REMOTE
    assert destination(provider, "<alice@[IPv6:::1]>").kind is Recipient.REMOTE


def test_postmaster_of_a_local_domain_is_local_without_an_account(new_provider):
    """RFC 5321 §4.5.1: postmaster@<local domain> must be accepted even with no such account."""
    provider = new_provider()
    found = destination(provider, "<PostMaster@example.org>")
    assert found.kind is Recipient.LOCAL
    assert found.mailbox == "postmaster@example.org"


def test_bare_postmaster_belongs_to_the_first_sorted_local_domain(new_provider):
    """A bare <postmaster> goes to postmaster@ the first local domain in sorted order."""
    provider = new_provider(domains=("zeta.example", "example.org"))
    assert delivery.postmaster(provider) == delivery.Destination(
        "postmaster@example.org", Recipient.LOCAL, "postmaster@example.org"
    )


def test_decide_uses_the_last_pop_login_from_the_peer(new_provider):
    """A POP3 login from the peer's address authorises relaying, and the decision names it."""
    provider = new_provider()
    provider.logins.record("10.1.2.3", "alice@example.org", provider.now())
    origin = delivery.Origin("10.1.2.3", Role.MX)
    decision = delivery.decide(
        provider, origin, "x@y.example", destination(provider, "<r@elsewhere.example>")
    )
    assert decision.allowed
    assert decision.scheme == policy.SMTP_AFTER_POP
    assert decision.account == "alice@example.org"


def test_decide_reads_the_schemes_at_each_call(new_provider):
    """Replacing provider.schemes at run time changes the next decision."""
    provider = new_provider()
    provider.logins.record("127.0.0.2", "alice@example.org", provider.now())
    origin = delivery.Origin("127.0.0.2", Role.MX)
    remote = destination(provider, "<r@elsewhere.example>")
    assert delivery.decide(provider, origin, "", remote).allowed
    provider.schemes = policy.Schemes(Schedule.on(), Schedule.off(), timedelta(minutes=10))
    decision = delivery.decide(provider, origin, "", remote)
    assert (decision.allowed, decision.code, decision.enhanced) == (False, 550, "5.7.1")


def test_decide_emits_one_event_with_every_field(new_provider):
    """Every decision is logged with who asked, what was decided, why, and by which scheme."""
    provider = new_provider()
    origin = delivery.Origin(
        "127.0.0.3", Role.SUBMISSION, smtp_auth_account="bob@example.org", tls=True
    )
    delivery.decide(provider, origin, "bob@example.org", destination(provider, "<r@far.example>"))
    (event,) = provider.events.recent(events.SMTP_DECISION)
    assert {k: v for k, v in event.items() if k not in ("seq", "at", "reason")} == {
        "kind": events.SMTP_DECISION,
        "ip": "127.0.0.3",
        "role": "submission",
        "sender": "bob@example.org",
        "recipient": "r@far.example",
        "smtp_auth_account": "bob@example.org",
        "tls": True,
        "allowed": True,
        "code": 250,
        "enhanced": "2.1.5",
        "scheme": policy.SMTP_AUTH,
        "authorised_account": "bob@example.org",
    }
    assert "SMTP-Auth" in event["reason"]


def test_decide_binds_the_sender_to_the_smtp_auth_account(new_provider):
    """With enforce_sender, MAIL as someone else's address is refused: the sender reaches policy."""
    provider = new_provider(enforce_sender=True)
    origin = delivery.Origin("127.0.0.3", Role.MX, smtp_auth_account="bob@example.org")
    decision = delivery.decide(provider, origin, "alice@example.org", None)
    assert (decision.allowed, decision.code, decision.enhanced) == (False, 553, "5.7.1")
    assert delivery.decide(provider, origin, "Bob@example.org", None).allowed


def test_decide_logs_a_mail_decision_without_recipient(new_provider):
    """MAIL decisions are logged too, with recipient None."""
    provider = new_provider()
    decision = delivery.decide(provider, delivery.Origin("127.0.0.3", Role.SUBMISSION), "", None)
    assert (decision.code, decision.enhanced) == (530, "5.7.0")
    (event,) = provider.events.recent(events.SMTP_DECISION)
    assert event["recipient"] is None
    assert event["allowed"] is False


def test_authorisation_comment_names_scheme_and_account():
    """The Received comment says which scheme let the message in and whose login it was."""
    pop = policy.Decision(True, 250, "2.1.5", "r", policy.SMTP_AFTER_POP, "alice@example.org")
    auth = policy.Decision(True, 250, "2.1.5", "r", policy.SMTP_AUTH, "bob@example.org")
    local = policy.Decision(True, 250, "2.1.5", "local delivery")
    assert (
        delivery.authorisation_comment(pop, "127.0.0.2")
        == "(smtp-after-pop: alice@example.org from 127.0.0.2)"
    )
    assert delivery.authorisation_comment(auth, "127.0.0.2") == "(smtp-auth: bob@example.org)"
    assert delivery.authorisation_comment(local, "127.0.0.2") == delivery.NO_AUTHORISATION
    assert delivery.authorisation_comment(None, "127.0.0.2") == delivery.NO_AUTHORISATION


def test_received_header_for_one_recipient():
    """RFC 5321 §4.4 / RFC 3848: from, comment, by, with ESMTPA, id, for, date."""
    auth = policy.Decision(True, 250, "2.1.5", "r", policy.SMTP_AUTH, "alice@example.org")
    origin = delivery.Origin("127.0.0.2", Role.SUBMISSION, "client.example", "ESMTPA", "alice")
    header = delivery.received_header(
        origin, "mail.example.org", "ABC123", auth, ["bob@example.org"], NOW
    )
    assert header == (
        "Received: from client.example ([127.0.0.2])\n"
        "\t(smtp-auth: alice@example.org)\n"
        "\tby mail.example.org (mailhost) with ESMTPA id ABC123\n"
        "\tfor <bob@example.org>; Sun, 01 Sep 2013 23:59:00 +0000\n"
    )


@pytest.mark.parametrize(
    ("extended", "tls", "authenticated", "keyword"),
    [
        (False, False, False, "SMTP"),
        (False, True, False, "SMTP"),
        (True, False, False, "ESMTP"),
        (True, False, True, "ESMTPA"),
        (True, True, False, "ESMTPS"),
        (True, True, True, "ESMTPSA"),
    ],
)
def test_received_protocol_follows_rfc_3848(extended, tls, authenticated, keyword):
    """The with-keyword adds S for TLS and A for SMTP-Auth to ESMTP; HELO stays SMTP."""
    assert delivery.received_protocol(extended, tls, authenticated) == keyword


def test_received_header_for_several_recipients_has_no_for_clause():
    """With more than one recipient the for-clause is left out (it would disclose the others)."""
    origin = delivery.Origin("::1", Role.MX, "client.example", "SMTP")
    header = delivery.received_header(origin, "mx", "ID", None, ["a@x.example", "b@x.example"], NOW)
    assert "for <" not in header
    assert header.startswith("Received: from client.example ([IPv6:::1])\n")
    assert "\tby mx (mailhost) with SMTP id ID; Sun, 01 Sep 2013 23:59:00 +0000\n" in header
    assert delivery.NO_AUTHORISATION in header


def test_received_header_neutralises_a_hostile_helo():
    """A HELO argument cannot close the comment or forge another clause in the header."""
    origin = delivery.Origin("127.0.0.2", Role.MX, "evil)\tby\x00(x")
    header = delivery.received_header(origin, "mx", "ID", None, ["a@x.example"], NOW)
    assert header.startswith("Received: from evil??by??x ([127.0.0.2])\n")


def test_local_copies_carry_return_path_and_delivered_to(new_provider):
    """Each distinct local mailbox gets one copy starting Return-Path, Delivered-To, Received."""
    provider = new_provider()
    alice = destination(provider, "<alice@example.org>")
    envelope = delivery.Envelope("x@y.example", (alice, alice))
    copies = delivery.copy_headers(provider.data, envelope, "Received: r\n")
    assert copies == [
        (
            provider.data.mailbox("alice@example.org"),
            b"Return-Path: <x@y.example>\nDelivered-To: alice@example.org\nReceived: r\n",
        )
    ]


def test_remote_recipients_share_one_outbox_copy(new_provider):
    """All remote recipients go into one outbox copy listing them in X-Envelope-To lines."""
    provider = new_provider()
    one = destination(provider, "<r1@far.example>")
    two = destination(provider, "<r2@far.example>")
    envelope = delivery.Envelope("", (one, two, one))
    copies = delivery.copy_headers(provider.data, envelope, "Received: r\n")
    assert copies == [
        (
            provider.data.outbox,
            b"X-Envelope-From: <>\nX-Envelope-To: r1@far.example\n"
            b"X-Envelope-To: r2@far.example\nReceived: r\n",
        )
    ]


def test_store_writes_through_run_blocking_and_logs(new_provider):
    """Storage runs in run_blocking; only when it completes is the message on disk and logged."""
    provider = new_provider(reactor_clock=make_clock())
    calls = []

    def deferred_run_blocking(f, *args):
        d = defer.Deferred()
        calls.append((d, f, args))
        return d

    provider.run_blocking = deferred_run_blocking
    alice = destination(provider, "<alice@example.org>")
    remote = destination(provider, "<r@far.example>")
    origin = delivery.Origin("127.0.0.2", Role.MX, "client.example")
    result = delivery.store(
        provider, origin, delivery.Envelope("", (alice, remote)), b"Subject: s\n\nbody\n", None
    )
    fired = []
    result.addCallback(fired.append)
    assert stored_files(provider.data.mailbox("alice@example.org")) == []
    assert provider.events.recent(events.MESSAGE_STORED) == []

    d, f, args = calls.pop()
    d.callback(f(*args))

    (message_id,) = fired
    (local,) = stored_files(provider.data.mailbox("alice@example.org"))
    (outbox,) = stored_files(provider.data.outbox)
    local_bytes = local.read_bytes()
    assert local_bytes.startswith(b"Return-Path: <>\nDelivered-To: alice@example.org\nReceived: ")
    assert local_bytes.endswith(b"\nSubject: s\n\nbody\n")
    assert f"id {message_id}".encode() in local_bytes
    assert b"\r" not in local_bytes
    assert b"X-Envelope-To: r@far.example\n" in outbox.read_bytes()
    (event,) = provider.events.recent(events.MESSAGE_STORED)
    assert event["id"] == message_id
    assert event["mailboxes"] == ["alice@example.org"]
    assert event["relayed"] == ["r@far.example"]


def test_queue_ids_are_unique_and_share_a_per_run_prefix():
    """Counter-based queue ids: no two alike in a run, all of them hexadecimal."""
    from mailhost.delivery import new_message_id

    ids = [new_message_id() for _ in range(1000)]
    assert len(set(ids)) == 1000
    assert len({i[:6] for i in ids}) == 1
    assert all(len(i) >= 12 and int(i, 16) >= 0 for i in ids)
