"""The provider over real sockets with smtplib and poplib from 127.0.0.2 and 127.0.0.3."""

from __future__ import annotations

import smtplib
from datetime import UTC, datetime

import pytest

from mailhost.config import Limits
from mailhost.schedule import Schedule

ALICE_AT_CAFE = "127.0.0.2"
BOB_AT_HOME = "127.0.0.3"
OUTSIDE = "friend@elsewhere.example"

pytestmark = pytest.mark.e2e


def message(subject: str, sender: str = "alice@example.org") -> str:
    return f"From: {sender}\r\nTo: {OUTSIDE}\r\nSubject: {subject}\r\n\r\nHello.\r\n.dot line\r\n"


def test_pop_login_then_relay_is_allowed(start_server):
    """A POP3 login from 127.0.0.2 lets that address relay without credentials."""
    server = start_server()
    server.pop_login(ALICE_AT_CAFE)
    with server.smtp(ALICE_AT_CAFE) as client:
        refused = client.sendmail("alice@example.org", [OUTSIDE], message("from the cafe"))
    assert refused == {}
    [stored] = server.stored("outbox")
    assert b"Subject: from the cafe" in stored
    assert b"smtp-after-pop: alice@example.org from 127.0.0.2" in stored


def test_stranger_on_the_same_ip_also_relays(start_server):
    """Anyone at the café's address can send once Alice has fetched her mail: the flaw."""
    server = start_server()
    server.pop_login(ALICE_AT_CAFE)
    with server.smtp(ALICE_AT_CAFE) as mallory:
        mallory.sendmail("mallory@spam.example", [OUTSIDE], message("spam", "mallory@spam.example"))
    [stored] = server.stored("outbox")
    assert b"mallory@spam.example" in stored
    assert b"smtp-after-pop: alice@example.org" in stored


def test_another_ip_is_refused_with_the_reason(start_server):
    """Bob's home address has no POP login, so relaying is refused with 550 5.7.1."""
    server = start_server()
    server.pop_login(ALICE_AT_CAFE)
    with server.smtp(BOB_AT_HOME) as client:
        client.mail("bob@example.org")
        code, text = client.rcpt(OUTSIDE)
    assert code == 550
    assert text.startswith(b"5.7.1")
    assert b"SMTP-Auth" in text and b"SMTP-after-POP" in text
    assert server.stored("outbox") == []


def test_window_expiry_ends_the_grant(start_server):
    """Once the POP window has passed (clock advanced, no waiting), the same IP is refused."""
    server = start_server()
    server.pop_login(ALICE_AT_CAFE)
    server.advance(600)
    with server.smtp(ALICE_AT_CAFE) as client:
        client.mail("alice@example.org")
        code, text = client.rcpt(OUTSIDE)
    assert code == 550
    assert b"outside the 600 s window" in text


def test_smtp_auth_relays_from_any_address(start_server):
    """SMTP-Auth relays from an address with no POP login; Received says ESMTPA."""
    server = start_server()
    with server.smtp(BOB_AT_HOME, role="submission") as client:
        client.login("bob@example.org", "bob-secret")
        client.sendmail("bob@example.org", [OUTSIDE], message("authenticated", "bob@example.org"))
    [stored] = server.stored("outbox")
    assert b"with ESMTPA" in stored
    assert b"smtp-auth: bob@example.org" in stored


def test_wrong_password_is_refused_with_535(start_server):
    """A wrong SMTP password gets 535 5.7.8 and no authorisation."""
    server = start_server()
    with (
        server.smtp(BOB_AT_HOME) as client,
        pytest.raises(smtplib.SMTPAuthenticationError) as refused,
    ):
        client.login("bob@example.org", "wrong")
    assert refused.value.smtp_code == 535


def test_submission_needs_authorisation(start_server):
    """The submission port answers 530 5.7.0 without an authorisation, even for local mail."""
    server = start_server()
    with server.smtp(BOB_AT_HOME, role="submission") as client:
        code, text = client.mail("bob@example.org")
    assert code == 530
    assert text.startswith(b"5.7.0")


def test_cutover_switches_smtp_after_pop_off_without_restart(start_server):
    """Crossing the until: instant turns SMTP-after-POP off for the running server."""
    server = start_server(smtp_after_pop=Schedule.until(datetime(2013, 9, 2, tzinfo=UTC)))
    server.pop_login(ALICE_AT_CAFE)
    with server.smtp(ALICE_AT_CAFE) as client:
        assert client.sendmail("alice@example.org", [OUTSIDE], message("before")) == {}
    server.advance(61)
    server.pop_login(ALICE_AT_CAFE)
    with server.smtp(ALICE_AT_CAFE) as client:
        client.mail("alice@example.org")
        code, text = client.rcpt(OUTSIDE)
    assert code == 550
    assert b"SMTP-after-POP is off since 2013-09-02 00:00 UTC" in text


def test_local_mail_round_trip_through_pop3(start_server):
    """Mail for a local account is accepted from anyone and comes back intact over POP3."""
    server = start_server()
    body = "Subject: hi\r\n\r\nline one\r\n.leading dot\r\n..two dots\r\n"
    with server.smtp(BOB_AT_HOME) as client:
        client.sendmail("someone@elsewhere.example", ["alice@example.org"], body)
    pop = server.pop3(ALICE_AT_CAFE)
    pop.user("alice@example.org")
    pop.pass_("alice-secret")
    count, _ = pop.stat()
    assert count == 1
    _, lines, _ = pop.retr(1)
    assert lines[-3:] == [b"line one", b".leading dot", b"..two dots"]
    assert lines[0].startswith(b"Return-Path: <someone@elsewhere.example>")
    pop.dele(1)
    pop.quit()
    assert server.stored("alice@example.org") == []


def test_pop3_drop_after_dele_keeps_the_message(start_server):
    """A POP3 session that ends without QUIT deletes nothing (RFC 1939 §6)."""
    server = start_server()
    with server.smtp(BOB_AT_HOME) as client:
        client.sendmail("bob@example.org", ["alice@example.org"], "Subject: keep\r\n\r\nx\r\n")
    pop = server.pop3(ALICE_AT_CAFE)
    pop.user("alice@example.org")
    pop.pass_("alice-secret")
    pop.dele(1)
    pop.close()
    again = server.pop3(ALICE_AT_CAFE)
    again.user("alice@example.org")
    again.pass_("alice-secret")
    assert again.stat()[0] == 1
    again.quit()


def test_logins_and_decisions_are_logged_as_json_lines(start_server):
    """events.jsonl records the POP3 login and the relay decision with IP, scheme and reason."""
    server = start_server()
    server.pop_login(ALICE_AT_CAFE)
    with server.smtp(ALICE_AT_CAFE) as client:
        client.sendmail("alice@example.org", [OUTSIDE], message("logged"))
    with server.smtp(BOB_AT_HOME) as client:
        client.mail("bob@example.org")
        client.rcpt(OUTSIDE)
    events = server.events_file()
    [login] = [e for e in events if e["kind"] == "pop3-login"]
    assert (login["ip"], login["account"]) == (ALICE_AT_CAFE, "alice@example.org")
    relays = [e for e in events if e["kind"] == "smtp-decision" and e["recipient"] == OUTSIDE]
    assert [(e["ip"], e["allowed"], e["scheme"]) for e in relays] == [
        (ALICE_AT_CAFE, True, "smtp-after-pop"),
        (BOB_AT_HOME, False, None),
    ]
    assert "relaying denied" in relays[1]["reason"]
    assert any(e["kind"] == "message-stored" for e in events)


def test_connection_limit_per_address_over_real_sockets(start_server):
    """With one connection allowed per address, a second from it gets 421 4.7.0 at once."""
    server = start_server(limits=Limits(max_connections_per_ip=1))
    with server.smtp(ALICE_AT_CAFE):
        with pytest.raises(smtplib.SMTPConnectError) as refused:
            smtplib.SMTP("127.0.0.1", server.ports["smtp"], source_address=(ALICE_AT_CAFE, 0))
        assert refused.value.smtp_code == 421
        with server.smtp(BOB_AT_HOME) as other:
            assert other.noop()[0] == 250
