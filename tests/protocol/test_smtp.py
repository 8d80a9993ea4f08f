import base64
import dataclasses
from datetime import UTC, datetime

import pytest
from twisted.internet import defer
from twisted.internet.address import IPv4Address
from twisted.internet.testing import StringTransport
from twisted.logger import globalLogPublisher

from mailhost import events
from mailhost.config import Limits
from mailhost.policy import Role
from mailhost.schedule import Schedule
from mailhost.smtp import (
    MessageReader,
    PathArgument,
    Refusal,
    data_line,
    parse_path_argument,
)
from mailhost.testing import QueuedRunBlocking, SMTPSession, make_provider

GRANT_IP = "127.0.0.2"
OTHER_IP = "127.0.0.3"
CUTOVER = datetime(2013, 9, 2, tzinfo=UTC)
REMOTE = "relaytest@elsewhere.example"


class Session(SMTPSession):
    """An SMTP connection over plain TCP from ``ip`` (127.0.0.2 by default)."""

    def __init__(self, provider, role=Role.MX, ip=GRANT_IP):
        super().__init__(provider, role, StringTransport(peerAddress=IPv4Address("TCP", ip, 40000)))


def b64(data):
    return base64.b64encode(data).decode("ascii")


def plain(user="alice@example.org", password="alice-secret"):
    return b64(f"\0{user}\0{password}".encode())


def files(directory):
    new = directory / "new"
    return [p.read_bytes() for p in sorted(new.iterdir())] if new.exists() else []


def mailbox(provider, account="alice@example.org"):
    return files(provider.data.mailbox(account))


def outbox(provider):
    return files(provider.data.outbox)


def transaction(session, sender, *recipients, body=("Subject: test", "", "hello")):
    """MAIL, RCPT…, DATA, body and the final dot; returns every reply line."""
    lines = [f"MAIL FROM:<{sender}>"] + [f"RCPT TO:<{r}>" for r in recipients] + ["DATA"]
    replies = session.send(*lines)
    if replies[-1].startswith("354"):
        replies += session.send(*body, ".")
    return replies


def received(message):
    """The Received header of a stored message, unfolded."""
    head = message.decode().split("\nReceived: ", 1)[1]
    lines = head.split("\n")
    folded = [lines[0]]
    for line in lines[1:]:
        if not line.startswith("\t"):
            break
        folded.append(line.strip())
    return "Received: " + " ".join(folded)


@pytest.fixture
def new_provider(tmp_path, clock):
    """make_provider on the test's clock, each in its own directory."""
    made = []

    def build(**options):
        options.setdefault("reactor_clock", clock)
        made.append(make_provider(tmp_path / str(len(made)), **options))
        return made[-1]

    return build


@pytest.fixture
def provider(new_provider):
    return new_provider()


def grant(provider, ip=GRANT_IP, account="alice@example.org"):
    provider.logins.record(ip, account, provider.now())


def ehlo(provider, role=Role.MX, ip=GRANT_IP):
    session = Session(provider, role, ip)
    session.send("EHLO client.example")
    return session


# Pure helpers


def test_parse_path_argument_splits_path_and_parameters():
    """Keyword and parameter names are case-insensitive; values keep their case."""
    assert parse_path_argument("from:<a@b.example> size=10 BODY=8bitmime AUTH=<>", "FROM") == (
        PathArgument("<a@b.example>", {"SIZE": "10", "BODY": "8bitmime", "AUTH": "<>"})
    )


def test_parse_path_argument_tolerates_a_space_after_the_colon():
    """`MAIL FROM: <a@b>` is common in the wild and unambiguous."""
    assert parse_path_argument("FROM: <a@b.example>", "FROM").path == "<a@b.example>"


def test_parse_path_argument_keeps_angle_brackets_inside_quotes():
    """A quoted local part may contain '>' without ending the path."""
    parsed = parse_path_argument('TO:<"a>b"@c.example> X', "TO")
    assert parsed == PathArgument('<"a>b"@c.example>', {"X": None})


@pytest.mark.parametrize(
    "argument",
    ["FROM:a@b.example", "TO:<a@b.example>", "FROM:<a@b.example", "FROM:<a@b>X=1", "FROM:<> =1"],
)
def test_parse_path_argument_refuses_bad_syntax_with_501(argument):
    """Missing brackets, wrong keyword, unterminated path or junk parameters are 501 5.5.4."""
    with pytest.raises(Refusal) as caught:
        parse_path_argument(argument, "FROM")
    assert (caught.value.code, caught.value.enhanced) == (501, "5.5.4")


def test_data_line_unstuffs_dots_and_spots_the_end():
    """RFC 5321 §4.5.2: a leading dot is removed; a lone dot ends the data."""
    assert data_line(b"..hidden") == b".hidden"
    assert data_line(b"plain") == b"plain"
    assert data_line(b".") is None


def test_message_reader_never_buffers_past_the_limit():
    """Past the size limit the reader drops what it had and only counts further lines."""
    reader = MessageReader(max_size=10)
    assert not reader.feed(b"12345678")
    assert reader.content() == b"12345678\n"
    assert not reader.feed(b"more")
    assert reader.too_big
    assert reader.content() == b""
    assert reader.feed(b".")


def test_message_reader_flags_long_lines_not_counting_a_stuffed_dot():
    """RFC 5321 §4.5.3.1.6: 1000 octets incl. CRLF; a stuffed dot does not count."""
    reader = MessageReader(max_size=10_000)
    reader.feed(b"." + b"x" * 998)
    assert not reader.long_line
    reader.feed(b"x" * 999)
    assert reader.long_line


# Greeting and EHLO


def test_greeting_names_the_host(provider):
    """The 220 greeting carries the configured hostname."""
    assert Session(provider).greeting == ["220 mail.example.org ESMTP mailhost"]


def test_ehlo_advertises_extensions_and_auth_while_on(provider):
    """EHLO lists SIZE with the limit, 8BITMIME, PIPELINING, ENHANCEDSTATUSCODES and AUTH."""
    assert Session(provider).send("EHLO client.example") == [
        "250-mail.example.org",
        "250-SIZE 26214400",
        "250-8BITMIME",
        "250-PIPELINING",
        "250-ENHANCEDSTATUSCODES",
        "250 AUTH PLAIN LOGIN",
    ]


def test_ehlo_omits_auth_when_smtp_auth_is_off(new_provider):
    """AUTH is not advertised where it would be refused."""
    provider = new_provider(smtp_auth=Schedule.off())
    replies = Session(provider).send("EHLO client.example")
    assert replies[-1] == "250 ENHANCEDSTATUSCODES"
    assert not any("AUTH" in line for line in replies)


def test_ehlo_stops_advertising_auth_at_the_cutover(new_provider, clock):
    """The schedule is read at each EHLO, so the cutover needs no restart."""
    provider = new_provider(smtp_auth=Schedule.until(CUTOVER))
    session = Session(provider)
    assert session.send("EHLO a")[-1] == "250 AUTH PLAIN LOGIN"
    clock.advance(60)
    assert session.send("EHLO a")[-1] == "250 ENHANCEDSTATUSCODES"


def test_helo_offers_no_extensions(provider):
    """HELO gets a one-line 250 and MAIL parameters are then refused."""
    session = Session(provider)
    assert session.send("HELO client.example") == ["250 mail.example.org"]
    assert session("MAIL FROM:<a@b.example> SIZE=10").startswith("555 5.5.4")
    assert session("MAIL FROM:<a@b.example>") == "250 2.1.0 Ok"


def test_ehlo_and_helo_reset_the_transaction(provider):
    """A new EHLO/HELO abandons the open transaction."""
    session = ehlo(provider)
    session("MAIL FROM:<a@b.example>")
    session("EHLO again")
    assert session("RCPT TO:<alice@example.org>").startswith("503 5.5.1")
    session("MAIL FROM:<a@b.example>")
    session("HELO again")
    assert session("RCPT TO:<alice@example.org>").startswith("503 5.5.1")


def test_ehlo_needs_a_domain(provider):
    """EHLO without an argument is a syntax error."""
    assert Session(provider)("EHLO").startswith("501 5.5.4")


def test_mail_before_ehlo_is_a_bad_sequence(provider):
    """MAIL before EHLO/HELO gets 503 5.5.1."""
    assert Session(provider)("MAIL FROM:<a@b.example>").startswith("503 5.5.1")


# MAIL


def test_nested_mail_is_refused(provider):
    """A second MAIL inside a transaction gets 503 5.5.1."""
    session = ehlo(provider)
    assert session("MAIL FROM:<a@b.example>") == "250 2.1.0 Ok"
    assert session("MAIL FROM:<a@b.example>").startswith("503 5.5.1")


def test_declared_size_over_the_limit_is_552(new_provider):
    """RFC 1870: SIZE above the fixed maximum gets 552 5.3.4; at the maximum it is accepted."""
    provider = new_provider(limits=Limits(max_message_size=1000))
    session = ehlo(provider)
    assert session("MAIL FROM:<a@b.example> SIZE=1001").startswith("552 5.3.4")
    assert session("MAIL FROM:<a@b.example> SIZE=1000") == "250 2.1.0 Ok"


def test_mail_parameters(provider):
    """Unknown parameters are 555 5.5.4; BODY takes 7BIT/8BITMIME; AUTH= is accepted (RFC 4954)."""
    session = ehlo(provider)
    assert session("MAIL FROM:<a@b.example> RET=FULL").startswith("555 5.5.4")
    assert session("MAIL FROM:<a@b.example> BODY=BINARYMIME").startswith("555 5.5.4")
    assert session("MAIL FROM:<a@b.example> SIZE=lots").startswith("501 5.5.4")
    assert session("MAIL FROM:<a@b.example> BODY=8BITMIME AUTH=<>") == "250 2.1.0 Ok"


def test_mail_auth_parameter_needs_auth_to_be_offered(new_provider):
    """AUTH= belongs to an extension: while SMTP-Auth is off it is an unknown parameter (555)."""
    session = ehlo(new_provider(smtp_auth=Schedule.off()))
    assert session("MAIL FROM:<a@b.example> AUTH=<>").startswith("555 5.5.4")


def test_mail_syntax_errors(provider):
    """No brackets is 501 5.5.4; a bracketed but invalid sender is 553 5.1.7."""
    session = ehlo(provider)
    assert session("MAIL FROM:a@b.example").startswith("501 5.5.4")
    assert session("MAIL FROM:<a@@b.example>").startswith("553 5.1.7")
    assert session("MAIL FROM:<no-domain>").startswith("553 5.1.7")


def test_null_sender_is_accepted_on_the_mx(provider):
    """Bounces use the null reverse-path <> and must be accepted for local delivery."""
    session = ehlo(provider, ip=OTHER_IP)
    replies = transaction(session, "", "alice@example.org")
    assert replies[-1].startswith("250 2.0.0")
    assert mailbox(provider)[0].startswith(b"Return-Path: <>\n")


# RCPT and relaying


def test_rcpt_without_mail_is_a_bad_sequence(provider):
    """RCPT before MAIL gets 503 5.5.1."""
    assert ehlo(provider)("RCPT TO:<alice@example.org>").startswith("503 5.5.1")


def test_local_account_accepted_from_anyone_on_the_mx(provider):
    """The MX accepts mail for a local account without any authorisation."""
    session = ehlo(provider, ip=OTHER_IP)
    session("MAIL FROM:<stranger@far.example>")
    assert session("RCPT TO:<alice@example.org>") == "250 2.1.5 Ok"


def test_unknown_local_mailbox_is_550_5_1_1(provider):
    """A local domain without the account gets 550 5.1.1, even with authorisation."""
    grant(provider)
    session = ehlo(provider)
    session("MAIL FROM:<a@b.example>")
    assert session("RCPT TO:<nobody@example.org>") == "550 5.1.1 no such mailbox here"


def test_rcpt_address_errors(provider):
    """No brackets is 501 5.5.4; an invalid or null forward-path is 553 5.1.3."""
    session = ehlo(provider)
    session("MAIL FROM:<a@b.example>")
    assert session("RCPT TO:alice@example.org").startswith("501 5.5.4")
    assert session("RCPT TO:<alice@example.org.>").startswith("553 5.1.3")
    assert session("RCPT TO:<>").startswith("553 5.1.3")
    assert session("RCPT TO:<alice@example.org> NOTIFY=NEVER").startswith("555 5.5.4")


def test_relay_from_the_grant_ip_is_allowed(provider):
    """A POP3 login from 127.0.0.2 lets that address relay; the copy goes to the outbox."""
    grant(provider)
    session = ehlo(provider)
    replies = transaction(session, "alice@example.org", REMOTE)
    assert replies[1] == "250 2.1.5 Ok"
    assert replies[-1].startswith("250 2.0.0 Ok: queued as ")
    (message,) = outbox(provider)
    assert f"X-Envelope-To: {REMOTE}\n".encode() in message


def test_stranger_on_the_grant_ip_may_relay_too(provider):
    """The known flaw: anyone sharing the address of a POP3 login may relay, as anyone."""
    grant(provider)
    ehlo(provider).send("QUIT")
    stranger = ehlo(provider)
    replies = transaction(stranger, "mallory@evil.example", "victim@far.example")
    assert replies[1] == "250 2.1.5 Ok"
    assert len(outbox(provider)) == 1


def test_relay_from_another_ip_is_refused_naming_both_schemes(provider):
    """Without authorisation the MX refuses relaying with 550 5.7.1 and says what would work."""
    grant(provider)
    session = ehlo(provider, ip=OTHER_IP)
    session("MAIL FROM:<alice@example.org>")
    reply = session(f"RCPT TO:<{REMOTE}>")
    assert reply.startswith("550 5.7.1 relaying denied: ")
    assert "SMTP-Auth" in reply
    assert "SMTP-after-POP" in reply
    assert f"POP3 login from {OTHER_IP}" in reply


def test_grant_window_boundary(provider, clock):
    """The grant is live at 599 s and gone at 600 s (window 600 s, end exclusive)."""
    grant(provider)
    clock.advance(599)
    session = ehlo(provider)
    session("MAIL FROM:<alice@example.org>")
    assert session(f"RCPT TO:<{REMOTE}>") == "250 2.1.5 Ok"
    clock.advance(1)
    session = ehlo(provider)
    session("MAIL FROM:<alice@example.org>")
    reply = session(f"RCPT TO:<{REMOTE}>")
    assert reply.startswith("550 5.7.1")
    assert "outside the 600 s window" in reply


def test_smtp_after_pop_cutover_without_restart(new_provider, clock):
    """A scheduled scheme stops authorising at its cutover, mid-session, and says since when."""
    provider = new_provider(smtp_after_pop=Schedule.until(CUTOVER))
    grant(provider)
    session = ehlo(provider)
    session("MAIL FROM:<alice@example.org>")
    assert session(f"RCPT TO:<{REMOTE}>") == "250 2.1.5 Ok"
    clock.advance(60)
    reply = session("RCPT TO:<other@elsewhere.example>")
    assert reply.startswith("550 5.7.1")
    assert "off since 2013-09-02 00:00 UTC" in reply


def test_too_many_recipients_is_452(provider):
    """RFC 5321 §4.5.3.1.10: 100 recipients are taken, the 101st gets 452 4.5.3."""
    session = ehlo(provider)
    session("MAIL FROM:<a@b.example>")
    replies = session.send(*["RCPT TO:<alice@example.org>"] * 101)
    assert replies[:100] == ["250 2.1.5 Ok"] * 100
    assert replies[100].startswith("452 4.5.3")


def test_bare_postmaster_is_accepted_and_delivered(provider):
    """RFC 5321 §4.5.1: RCPT TO:<Postmaster> works and lands in postmaster@<first domain>."""
    session = ehlo(provider, ip=OTHER_IP)
    replies = transaction(session, "a@b.example", "Postmaster")
    assert replies[1] == "250 2.1.5 Ok"
    assert replies[-1].startswith("250 2.0.0")
    (message,) = mailbox(provider, "postmaster@example.org")
    assert b"Delivered-To: postmaster@example.org\n" in message
    assert outbox(provider) == []


def test_every_decision_is_logged(provider):
    """MAIL and RCPT decisions, allowed or not, each emit an smtp-decision event."""
    session = ehlo(provider, ip=OTHER_IP)
    session("MAIL FROM:<a@b.example>")
    session("RCPT TO:<alice@example.org>")
    session(f"RCPT TO:<{REMOTE}>")
    logged = provider.events.recent(events.SMTP_DECISION)
    assert [(e["recipient"], e["allowed"], e["code"]) for e in logged] == [
        (None, True, 250),
        ("alice@example.org", True, 250),
        (REMOTE, False, 550),
    ]
    assert {e["ip"] for e in logged} == {OTHER_IP}
    assert {e["role"] for e in logged} == {"smtp"}


# Submission


def test_submission_refuses_mail_without_authorisation(provider):
    """RFC 6409 §4.3: MAIL on submission without authorisation gets 530 5.7.0."""
    session = ehlo(provider, Role.SUBMISSION, OTHER_IP)
    reply = session("MAIL FROM:<alice@example.org>")
    assert reply.startswith("530 5.7.0 ")
    assert "SMTP-Auth" in reply
    assert "SMTP-after-POP" in reply
    assert session("RCPT TO:<alice@example.org>").startswith("503 5.5.1")


def test_submission_accepts_with_a_grant(provider):
    """A live POP3 grant for the client's address authorises submission."""
    grant(provider)
    session = ehlo(provider, Role.SUBMISSION)
    replies = transaction(session, "alice@example.org", "bob@example.org", REMOTE)
    assert replies[:3] == ["250 2.1.0 Ok", "250 2.1.5 Ok", "250 2.1.5 Ok"]
    assert replies[-1].startswith("250 2.0.0")
    assert len(mailbox(provider, "bob@example.org")) == 1
    assert len(outbox(provider)) == 1


def test_submission_accepts_after_auth(provider):
    """SMTP-Auth authorises submission from any address."""
    session = ehlo(provider, Role.SUBMISSION, OTHER_IP)
    assert session(f"AUTH PLAIN {plain()}") == "235 2.7.0 Authentication successful"
    replies = transaction(session, "alice@example.org", REMOTE)
    assert replies[-1].startswith("250 2.0.0")


# AUTH


def test_auth_plain_with_initial_response_allows_relay(provider):
    """AUTH PLAIN with an initial response authenticates, logs it, and authorises relaying."""
    session = ehlo(provider, ip=OTHER_IP)
    assert session(f"AUTH PLAIN {plain()}") == "235 2.7.0 Authentication successful"
    (event,) = provider.events.recent(events.SMTP_AUTH)
    assert (event["account"], event["mechanism"], event["ip"]) == (
        "alice@example.org",
        "PLAIN",
        OTHER_IP,
    )
    replies = transaction(session, "alice@example.org", REMOTE)
    assert replies[-1].startswith("250 2.0.0")
    assert len(outbox(provider)) == 1


def test_a_check_dropped_at_shutdown_gets_421_and_a_close(provider):
    """A password check the stopping server never ran: 421 4.3.2, no 535, nothing counted."""
    stopping = dataclasses.replace(
        provider, run_hashing=lambda f, *args: defer.fail(defer.CancelledError("stopping"))
    )
    session = ehlo(stopping, ip=OTHER_IP)
    reply = session(f"AUTH PLAIN {plain()}")
    assert reply == "421 4.3.2 mail.example.org Service shutting down, closing"
    assert session.transport.disconnecting
    assert provider.throttle.failures(OTHER_IP, provider.now()) == 0


def test_auth_plain_without_initial_response(provider):
    """AUTH PLAIN alone gets an empty 334 challenge, then takes the response."""
    session = ehlo(provider, ip=OTHER_IP)
    assert session.send("AUTH PLAIN") == ["334 "]
    assert session(plain()) == "235 2.7.0 Authentication successful"


def test_auth_login_prompts_for_username_and_password(provider):
    """AUTH LOGIN asks Username:/Password: in base64 and then authorises relaying."""
    session = ehlo(provider, ip=OTHER_IP)
    assert session("AUTH LOGIN") == "334 VXNlcm5hbWU6"
    assert session(b64(b"bob@example.org")) == "334 UGFzc3dvcmQ6"
    assert session(b64(b"bob-secret")) == "235 2.7.0 Authentication successful"
    session("MAIL FROM:<bob@example.org>")
    assert session(f"RCPT TO:<{REMOTE}>") == "250 2.1.5 Ok"


def test_auth_login_with_initial_response(provider):
    """AUTH LOGIN <username> skips the username prompt."""
    session = ehlo(provider, ip=OTHER_IP)
    assert session(f"AUTH LOGIN {b64(b'bob@example.org')}") == "334 UGFzc3dvcmQ6"
    assert session(b64(b"bob-secret")) == "235 2.7.0 Authentication successful"


def test_auth_equals_sign_is_an_empty_initial_response(provider):
    """'=' is an empty initial response: PLAIN then fails (535), it is not a base64 error."""
    session = ehlo(provider)
    assert session("AUTH PLAIN =") == "535 5.7.8 Error: authentication failed"
    assert session("AUTH LOGIN =") == "334 UGFzc3dvcmQ6"


def test_auth_star_cancels(provider):
    """'*' cancels the exchange with 501 5.7.0 and does not count as a failure."""
    session = ehlo(provider)
    session("AUTH LOGIN")
    assert session("*") == "501 5.7.0 Authentication cancelled"
    assert session.server.auth_failures == 0
    assert session(f"AUTH PLAIN {plain()}").startswith("235 2.7.0")


def test_auth_bad_base64_is_501(provider):
    """An undecodable response is 501 5.5.2 (RFC 4954 §4)."""
    session = ehlo(provider)
    assert session("AUTH PLAIN ###").startswith("501 5.5.2")
    session("AUTH PLAIN")
    assert session("%%%").startswith("501 5.5.2")


def test_auth_wrong_password_is_535_and_logged(provider):
    """Bad credentials get 535 5.7.8 and an smtp-auth-failed event, and authorise nothing."""
    session = ehlo(provider, ip=OTHER_IP)
    assert session(f"AUTH PLAIN {plain(password='wrong')}") == (
        "535 5.7.8 Error: authentication failed"
    )
    (event,) = provider.events.recent(events.SMTP_AUTH_FAILED)
    assert event["username"] == "alice@example.org"
    session("MAIL FROM:<alice@example.org>")
    assert session(f"RCPT TO:<{REMOTE}>").startswith("550 5.7.1")


def test_auth_with_a_foreign_authzid_fails(provider):
    """PLAIN may not authorise as another user (no proxy authorisation)."""
    response = b64(b"bob@example.org\0alice@example.org\0alice-secret")
    assert ehlo(provider)(f"AUTH PLAIN {response}").startswith("535 5.7.8")


def test_auth_sequence_errors(provider):
    """AUTH before EHLO, after HELO, twice, or inside a transaction is 503 5.5.1."""
    session = Session(provider)
    assert session(f"AUTH PLAIN {plain()}").startswith("503 5.5.1")
    session("HELO client.example")
    assert session(f"AUTH PLAIN {plain()}").startswith("503 5.5.1")
    session("EHLO client.example")
    session("MAIL FROM:<a@b.example>")
    assert session(f"AUTH PLAIN {plain()}").startswith("503 5.5.1")
    session("RSET")
    assert session(f"AUTH PLAIN {plain()}").startswith("235 2.7.0")
    assert session(f"AUTH PLAIN {plain()}").startswith("503 5.5.1")


def test_auth_unknown_mechanism_is_504(provider):
    """CRAM-MD5 and other mechanisms are not offered: 504 5.5.4."""
    assert ehlo(provider)("AUTH CRAM-MD5").startswith("504 5.5.4")


@pytest.mark.parametrize("role", list(Role))
def test_auth_is_refused_while_smtp_auth_is_off(new_provider, role):
    """With SMTP-Auth off, AUTH gets 502 5.5.1 saying so, on both listeners."""
    provider = new_provider(smtp_auth=Schedule.off())
    assert ehlo(provider, role)(f"AUTH PLAIN {plain()}") == "502 5.5.1 SMTP-Auth is off"


def test_auth_after_its_cutover_says_since_when(new_provider, clock):
    """A scheduled-off SMTP-Auth refuses AUTH after the cutover and names the date."""
    provider = new_provider(smtp_auth=Schedule.until(CUTOVER))
    session = ehlo(provider)
    clock.advance(60)
    assert session(f"AUTH PLAIN {plain()}") == (
        "502 5.5.1 SMTP-Auth is off since 2013-09-02 00:00 UTC"
    )


def test_auth_session_stops_authorising_when_smtp_auth_turns_off(new_provider, clock):
    """An authenticated session loses its authorisation at the cutover."""
    provider = new_provider(smtp_auth=Schedule.until(CUTOVER))
    session = ehlo(provider, ip=OTHER_IP)
    session(f"AUTH PLAIN {plain()}")
    session("MAIL FROM:<alice@example.org>")
    assert session(f"RCPT TO:<{REMOTE}>") == "250 2.1.5 Ok"
    clock.advance(60)
    reply = session("RCPT TO:<other@elsewhere.example>")
    assert reply.startswith("550 5.7.1")
    assert "SMTP-Auth is off since 2013-09-02 00:00 UTC" in reply


def test_three_auth_failures_then_421(provider):
    """RFC 4954 §9: never drop before 3 failures; the next AUTH gets 421 4.7.0 and closes."""
    session = ehlo(provider)
    for _ in range(3):
        assert session(f"AUTH PLAIN {plain(password='wrong')}").startswith("535 5.7.8")
    assert not session.closed
    assert session(f"AUTH PLAIN {plain()}").startswith("421 4.7.0")
    assert session.closed


def test_auth_lines_may_exceed_512_octets(provider):
    """RFC 4954 §4: AUTH lines and SASL responses may be up to 12288 octets."""
    long_plain = plain(password="x" * 3000)
    session = ehlo(provider)
    assert len(f"AUTH PLAIN {long_plain}") > 512
    assert session(f"AUTH PLAIN {long_plain}").startswith("535 5.7.8")
    session("AUTH PLAIN")
    assert session(long_plain).startswith("535 5.7.8")


def test_sasl_response_over_12288_octets_is_500_5_5_6(provider):
    """An over-long SASL response ends the exchange with 500 5.5.6."""
    session = ehlo(provider)
    session("AUTH PLAIN")
    assert session("A" * 13000).startswith("500 5.5.6")
    assert session("NOOP") == "250 2.0.0 Ok"


# DATA


def test_data_needs_mail_and_a_valid_recipient(provider):
    """DATA without MAIL, or with no accepted RCPT, gets 503 5.5.1."""
    session = ehlo(provider, ip=OTHER_IP)
    assert session("DATA").startswith("503 5.5.1")
    session("MAIL FROM:<a@b.example>")
    session(f"RCPT TO:<{REMOTE}>")
    assert session("DATA").startswith("503 5.5.1")


def test_message_is_stored_unstuffed_with_lf_and_trace_headers(provider):
    """Dot-unstuffed body, LF line ends, Return-Path, Delivered-To and Received in front."""
    session = ehlo(provider, ip=OTHER_IP)
    replies = transaction(
        session, "a@b.example", "alice@example.org", body=("Subject: s", "", "..dot", "end")
    )
    assert replies[2] == "354 End data with <CR><LF>.<CR><LF>"
    message_id = replies[-1].removeprefix("250 2.0.0 Ok: queued as ")
    (message,) = mailbox(provider)
    assert message.startswith(b"Return-Path: <a@b.example>\nDelivered-To: alice@example.org\n")
    assert message.endswith(b"\nSubject: s\n\n.dot\nend\n")
    assert b"\r" not in message
    assert received(message) == (
        "Received: from client.example ([127.0.0.3]) (no authorisation: local delivery) "
        f"by mail.example.org (mailhost) with ESMTP id {message_id} "
        "for <alice@example.org>; Sun, 01 Sep 2013 23:59:00 +0000"
    )
    (event,) = provider.events.recent(events.MESSAGE_STORED)
    assert event["id"] == message_id


def test_received_header_names_smtp_after_pop(provider):
    """A message relayed on a POP3 grant says whose login from which address let it in."""
    grant(provider)
    transaction(ehlo(provider), "alice@example.org", REMOTE)
    header = received(outbox(provider)[0])
    assert "(smtp-after-pop: alice@example.org from 127.0.0.2)" in header
    assert " with ESMTP id " in header


def test_received_header_names_smtp_auth_with_esmtpa(provider):
    """RFC 3848: an authenticated session is 'with ESMTPA' and names the account."""
    session = ehlo(provider, ip=OTHER_IP)
    session(f"AUTH PLAIN {plain('bob@example.org', 'bob-secret')}")
    transaction(session, "bob@example.org", REMOTE)
    header = received(outbox(provider)[0])
    assert "(smtp-auth: bob@example.org)" in header
    assert " with ESMTPA id " in header


def test_received_header_says_smtp_after_helo(provider):
    """A HELO session is 'with SMTP'."""
    session = Session(provider, ip=OTHER_IP)
    session("HELO old.example")
    transaction(session, "a@b.example", "alice@example.org")
    header = received(mailbox(provider)[0])
    assert header.startswith("Received: from old.example ([127.0.0.3])")
    assert " with SMTP id " in header


def test_message_over_the_size_limit_is_552_and_not_stored(new_provider):
    """Too big: read to the final dot, then 552 5.3.4; nothing stored, the session goes on."""
    provider = new_provider(limits=Limits(max_message_size=1000))
    session = ehlo(provider)
    replies = transaction(session, "a@b.example", "alice@example.org", body=["x" * 100] * 20)
    assert replies[-1].startswith("552 5.3.4")
    assert mailbox(provider) == []
    assert session("NOOP") == "250 2.0.0 Ok"


def test_data_line_over_1000_octets_refuses_the_message(provider):
    """RFC 5321 §4.5.3.1.6: a text line over 1000 octets gets 554 5.6.0; nothing stored."""
    session = ehlo(provider)
    replies = transaction(session, "a@b.example", "alice@example.org", body=["x" * 999])
    assert replies[-1].startswith("554 5.6.0")
    assert mailbox(provider) == []
    replies = transaction(session, "a@b.example", "alice@example.org", body=["x" * 998])
    assert replies[-1].startswith("250 2.0.0")


def test_data_line_beyond_the_buffer_is_refused_and_dropped(provider):
    """A data line past the 12288-octet buffer is discarded, and the final dot still ends DATA."""
    session = ehlo(provider)
    replies = transaction(session, "a@b.example", "alice@example.org", body=["y" * 20000])
    assert replies[-1].startswith("554 5.6.0")
    assert mailbox(provider) == []


def test_250_waits_for_durable_storage_and_pipelined_quit_waits_too(provider):
    """250 waits for the storage Deferred; a QUIT in the same write is answered after it."""
    provider.run_blocking = storage = QueuedRunBlocking()
    session = ehlo(provider)
    session.send("MAIL FROM:<a@b.example>", "RCPT TO:<alice@example.org>", "DATA")
    assert session.send("Subject: s", "", "body", ".", "QUIT") == []
    assert mailbox(provider) == []
    assert not session.closed

    storage.run_one()

    replies = session.replies()
    assert replies[0].startswith("250 2.0.0 Ok: queued as ")
    assert replies[1:] == ["221 2.0.0 Bye"]
    assert len(mailbox(provider)) == 1
    assert session.closed


def test_slow_storage_does_not_count_as_client_idle_time(provider, clock):
    """The idle timer stops while the server stores a message and restarts after the reply."""
    provider.run_blocking = storage = QueuedRunBlocking()
    session = ehlo(provider)
    transaction(session, "a@b.example", "alice@example.org")
    clock.advance(1000)
    assert not session.closed
    storage.run_one()
    assert session.replies()[0].startswith("250 2.0.0")
    clock.advance(300)
    assert session.closed


def test_storage_failure_is_451_and_logged(provider):
    """If storage fails the client gets 451 4.3.0 (try later) and the failure is logged."""
    logged = []
    globalLogPublisher.addObserver(logged.append)
    try:
        provider.run_blocking = lambda f, *args: defer.fail(OSError("disk full"))
        replies = transaction(ehlo(provider), "a@b.example", "alice@example.org")
    finally:
        globalLogPublisher.removeObserver(logged.append)
    assert replies[-1].startswith("451 4.3.0")
    assert mailbox(provider) == []
    assert any(e.get("log_failure") and e["log_failure"].check(OSError) for e in logged)


def test_pipelined_commands_are_answered_in_order(provider):
    """RFC 2920: a whole pipelined envelope in one write gets its replies in order."""
    session = ehlo(provider, ip=OTHER_IP)
    replies = session.send(
        "MAIL FROM:<a@b.example>", f"RCPT TO:<{REMOTE}>", "RCPT TO:<bob@example.org>", "DATA"
    )
    assert [r[:9] for r in replies] == ["250 2.1.0", "550 5.7.1", "250 2.1.5", "354 End d"]
    assert session.send("hi", ".", "NOOP")[1:] == ["250 2.0.0 Ok"]


# Other commands and limits


def test_rset_noop_quit(provider):
    """RSET clears the transaction, NOOP is a no-op, QUIT says 221 and closes."""
    session = ehlo(provider)
    session("MAIL FROM:<a@b.example>")
    assert session("RSET") == "250 2.0.0 Ok"
    assert session("RCPT TO:<alice@example.org>").startswith("503 5.5.1")
    assert session("NOOP") == "250 2.0.0 Ok"
    assert session("QUIT") == "221 2.0.0 Bye"
    assert session.closed


def test_vrfy_never_discloses(provider):
    """VRFY gives the same 252 2.0.0 for existing and missing mailboxes."""
    session = ehlo(provider)
    assert session("VRFY alice@example.org") == session("VRFY nobody@example.org")
    assert session("VRFY alice@example.org").startswith("252 2.0.0")


def test_expn_and_help(provider):
    """EXPN is not implemented (502 5.5.1); HELP answers 214."""
    session = ehlo(provider)
    assert session("EXPN staff").startswith("502 5.5.1")
    assert session("HELP").startswith("214 2.0.0")


@pytest.mark.parametrize("command", ["FOO", "BDAT 10 LAST", ""])
def test_unknown_commands_are_500(provider, command):
    """Unknown commands, including the not-offered BDAT, get 500 5.5.2."""
    assert ehlo(provider)(command).startswith("500 5.5.2")


def test_too_many_bad_commands_closes(provider):
    """After max_bad_commands bad commands the next gets 421 4.7.0 and the connection closes."""
    session = ehlo(provider)
    replies = session.send(*["FOO"] * 21, "NOOP")
    assert all(r.startswith("500 5.5.2") for r in replies[:20])
    assert replies[20].startswith("421 4.7.0")
    assert len(replies) == 21
    assert session.closed


def test_command_line_limit_is_512_octets(provider):
    """RFC 5321 §4.5.3.1.4: 512 octets with CRLF pass, 513 get 500 5.5.2 Line too long."""
    session = ehlo(provider)
    assert session("NOOP " + "x" * 505) == "250 2.0.0 Ok"
    assert session("NOOP " + "x" * 506) == "500 5.5.2 Line too long"
    assert session("NOOP " + "x" * 20000) == "500 5.5.2 Line too long"
    assert session("NOOP") == "250 2.0.0 Ok"


def test_idle_timeout_closes_with_421(provider, clock):
    """After smtp_idle_timeout seconds of silence the server says 421 4.4.2 and closes."""
    session = ehlo(provider)
    clock.advance(299)
    assert session("NOOP") == "250 2.0.0 Ok"
    clock.advance(299)
    assert not session.closed
    clock.advance(1)
    assert session.replies() == [
        "421 4.4.2 mail.example.org Error: idle timeout, closing connection"
    ]
    assert session.closed


def test_peer_ip_comes_from_the_transport(provider):
    """Decisions use the connection's peer address."""
    session = ehlo(provider, ip="127.0.0.9")
    session("MAIL FROM:<a@b.example>")
    (event,) = provider.events.recent(events.SMTP_DECISION)
    assert event["ip"] == "127.0.0.9"


def test_bare_lf_dot_lf_does_not_end_the_data(provider):
    """<LF>.<LF> is message text, not the end of data (RFC 5321 §4.1.1.4): no smuggled mail."""
    session = Session(provider)
    session("EHLO client.example")
    session.send("MAIL FROM:<bob@example.org>", "RCPT TO:<alice@example.org>", "DATA")
    smuggled = (
        b"Subject: first\r\n\r\nbody\n.\nMAIL FROM:<ceo@example.org>\r\n"
        b"RCPT TO:<alice@example.org>\r\nDATA\r\nSubject: smuggled\r\n\r\nx\r\n.\r\n"
    )
    session.server.dataReceived(smuggled)
    replies = session.replies()
    assert [r[:3] for r in replies] == ["250"]
    [stored] = mailbox(provider)
    assert b"Subject: smuggled" in stored
    assert stored.count(b"Subject:") == 2
    assert session("NOOP").startswith("250")


def test_commands_still_accept_a_bare_lf_after_data(provider):
    """Outside DATA a bare LF still ends a command line, as most servers allow."""
    session = Session(provider)
    session("EHLO client.example")
    transaction(session, "bob@example.org", "alice@example.org")
    session.server.dataReceived(b"NOOP\n")
    assert session.replies() == ["250 2.0.0 Ok"]


def test_help_lists_only_what_is_offered(new_provider):
    """HELP names AUTH and STARTTLS only where they would be accepted."""
    session = ehlo(new_provider(smtp_auth=Schedule.off()))
    listed = session("HELP")
    assert "AUTH" not in listed and "STARTTLS" not in listed
    assert "MAIL" in listed
    assert "AUTH" in ehlo(new_provider())("HELP")
