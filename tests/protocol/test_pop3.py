"""POP3 over an in-memory transport, driven by a task.Clock."""

from __future__ import annotations

import base64
import dataclasses
from collections.abc import Callable, Iterator
from datetime import timedelta
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st
from twisted.internet import defer
from twisted.internet.address import IPv4Address
from twisted.internet.error import ConnectionDone
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.python import failure

from mailhost import events, maildir
from mailhost.config import Limits
from mailhost.maildir import deliver, pop3_size
from mailhost.pop3 import (
    FIRST_READ_AHEAD_BYTES,
    READ_AHEAD_BYTES,
    POP3Factory,
    multiline,
    parse_number,
    top_text,
    wire_text,
)
from mailhost.provider import Provider
from mailhost.testing import QueuedRunBlocking, make_provider

ALICE = "alice@example.org"
PEER = IPv4Address("TCP", "127.0.0.2", 40000)
OTHER_PEER = IPv4Address("TCP", "127.0.0.3", 40000)
MESSAGE = b"From: bob@example.org\nSubject: hi\n\nfirst\n.dotted\n..two\nlast\n"


class Session:
    """One client connection to a POP3Server over a StringTransport."""

    def __init__(self, factory: POP3Factory, peer: IPv4Address = PEER) -> None:
        self.transport = StringTransport(peerAddress=peer)
        self.server = factory.buildProtocol(peer)
        self.server.makeConnection(self.transport)
        self.greeting = self.take()

    def take(self) -> bytes:
        value = self.transport.value()
        self.transport.clear()
        return value

    def send(self, data: bytes) -> bytes:
        self.server.dataReceived(data)
        return self.take()

    def command(self, line: str) -> bytes:
        return self.send(line.encode() + b"\r\n")

    def login(self, user: str = ALICE, password: str = "alice-secret") -> bytes:
        self.command(f"USER {user}")
        return self.command(f"PASS {password}")

    @property
    def closed(self) -> bool:
        return self.transport.disconnecting

    def drop(self) -> None:
        self.server.connectionLost(failure.Failure(ConnectionDone()))


@pytest.fixture
def provider(tmp_path: Path, clock: Clock) -> Iterator[Provider]:
    return make_provider(tmp_path, reactor_clock=clock)


@pytest.fixture
def factory(provider: Provider) -> POP3Factory:
    return POP3Factory(provider)


@pytest.fixture
def connect(factory: POP3Factory) -> Iterator[Callable[..., Session]]:
    sessions: list[Session] = []

    def open_session(peer: IPv4Address = PEER) -> Session:
        session = Session(factory, peer)
        sessions.append(session)
        return session

    yield open_session
    for session in sessions:
        session.drop()


def slow_session(provider: Provider) -> tuple[Session, QueuedRunBlocking]:
    """A session whose disk and bcrypt work waits until the test runs it."""
    runner = QueuedRunBlocking()
    return Session(POP3Factory(dataclasses.replace(provider, run_blocking=runner))), runner


def inbox(provider: Provider) -> Path:
    return provider.data.mailbox(ALICE)


def stored(provider: Provider) -> list[str]:
    return sorted(p.name for sub in ("new", "cur") for p in (inbox(provider) / sub).iterdir())


def plain(authzid: str, authcid: str, password: str) -> str:
    return base64.b64encode(f"{authzid}\0{authcid}\0{password}".encode()).decode()


# Pure wire rules


STORED_MESSAGES = st.binary(max_size=200) | st.lists(
    st.sampled_from([b"a", b".", b"\r", b"\n"])
).map(b"".join)


def reference_lines(data: bytes) -> list[bytes]:
    """The plain definition: split at LF, drop one CR before it, keep an unterminated last line."""
    lines = data.split(b"\n")
    if lines[-1] == b"":
        lines.pop()
    return [line[:-1] if line.endswith(b"\r") else line for line in lines]


@pytest.mark.parametrize(
    ("data", "sent"),
    [
        (b"a\nb\n", b"a\r\nb\r\n.\r\n"),
        (b"a\r\nb\r\n", b"a\r\nb\r\n.\r\n"),
        (b"a\nb", b"a\r\nb\r\n.\r\n"),
        (b"", b".\r\n"),
        (b"\n", b"\r\n.\r\n"),
        (b"a\rb\n", b"a\rb\r\n.\r\n"),
        (b".a\n..b\n.\n", b"..a\r\n...b\r\n..\r\n.\r\n"),
    ],
)
def test_wire_text_ends_lines_with_crlf_stuffs_dots_and_terminates(data: bytes, sent: bytes):
    """LF or CRLF become CRLF, a bare CR stays, leading dots are doubled, '.' ends it."""
    assert wire_text(data) == sent


@given(
    st.binary(max_size=200) | st.lists(st.sampled_from([b"a", b".", b"\r", b"\n"])).map(b"".join)
)
def test_wire_text_matches_the_line_by_line_definition(data: bytes) -> None:
    """The whole-buffer encoder sends exactly what encoding line by line would."""
    assert wire_text(data) == multiline(reference_lines(data))


@given(
    st.binary(max_size=200) | st.lists(st.sampled_from([b"a", b".", b"\r", b"\n"])).map(b"".join)
)
def test_listed_size_is_the_transmitted_size(data: bytes) -> None:
    """LIST's size equals the octets RETR sends before byte-stuffing and the final dot."""
    assert pop3_size(data) == sum(len(line) + 2 for line in reference_lines(data))


def test_multiline_stuffs_leading_dots_and_terminates() -> None:
    """A line starting with '.' gets one more; the body ends with a lone '.' line."""
    assert multiline([b"a", b".b", b"..c", b""]) == b"a\r\n..b\r\n...c\r\n\r\n.\r\n"
    assert multiline([]) == b".\r\n"


def test_top_text_keeps_header_blank_line_and_n_body_lines() -> None:
    """TOP n sends the header, the separating blank line and the first n body lines."""
    message = b"H: 1\nH: 2\n\nb1\nb2\nb3\n"
    assert top_text(message, 0) == b"H: 1\nH: 2\n\n"
    assert top_text(message, 2) == b"H: 1\nH: 2\n\nb1\nb2\n"
    assert top_text(message, 99) == message
    assert top_text(b"H: 1\n", 5) == b"H: 1\n"
    assert top_text(b"\nbody\n", 0) == b"\n"


@given(st.lists(st.sampled_from([b"a", b"H: x", b"", b".", b"\r"])), st.integers(0, 5))
def test_top_text_matches_the_line_by_line_definition(lines: list[bytes], n: int) -> None:
    """TOP cut on bytes equals: the lines up to the first empty one, plus n more."""
    data = b"".join(line + b"\n" for line in lines)
    expected = reference_lines(data)
    if b"" in expected:
        expected = expected[: expected.index(b"") + 1 + n]
    assert reference_lines(top_text(data, n)) == expected


def test_parse_number_takes_plain_decimal_only() -> None:
    """Message numbers and line counts are unsigned decimal digits."""
    assert parse_number(b"12") == 12
    assert parse_number(b"0") == 0
    for bad in (b"", b"-1", b"+1", b"1x", b"\xd9\xa1", b"9" * 20):
        assert parse_number(bad) is None


# Greeting and capabilities


def test_greeting_has_no_apop_timestamp(connect: Callable[..., Session]) -> None:
    """APOP is not offered (bcrypt storage), so the greeting carries no <timestamp>."""
    assert connect().greeting == b"+OK mailhost POP3 server ready\r\n"


def test_nagle_is_disabled_when_the_transport_allows(factory: POP3Factory) -> None:
    """Multi-line replies would stall ~40 ms on Nagle + delayed ACK."""

    class TCPTransport(StringTransport):
        no_delay: bool | None = None

        def setTcpNoDelay(self, enabled: bool) -> None:
            self.no_delay = enabled

    transport = TCPTransport(peerAddress=PEER)
    factory.buildProtocol(PEER).makeConnection(transport)
    assert transport.no_delay is True


CAPABILITIES = {
    b"TOP",
    b"UIDL",
    b"USER",
    b"RESP-CODES",
    b"PIPELINING",
    b"SASL PLAIN",
    b"IMPLEMENTATION mailhost",
}


def capability_lines(reply: bytes) -> list[bytes]:
    lines = reply.split(b"\r\n")
    assert lines[0].startswith(b"+OK")
    assert lines[-2:] == [b".", b""]
    return lines[1:-2]


def test_capa_lists_pipelining_and_response_codes_in_both_states(
    connect: Callable[..., Session],
) -> None:
    """RFC 2449: PIPELINING (not twisted's PIPELINE), RESP-CODES; the same list after login."""
    session = connect()
    before = capability_lines(session.command("CAPA"))
    assert set(before) >= CAPABILITIES
    assert b"PIPELINE" not in before
    session.login()
    assert capability_lines(session.command("CAPA")) == before


# AUTHORIZATION


def test_user_pass_logs_in_records_the_grant_and_emits_an_event(
    connect: Callable[..., Session], provider: Provider
) -> None:
    """A successful login is what SMTP-after-POP trusts: the table and the log both see it."""
    deliver(inbox(provider), MESSAGE)
    session = connect()
    assert session.command(f"USER {ALICE}").startswith(b"+OK")
    reply = session.command("PASS alice-secret")
    assert reply == b"+OK Logged in, 1 messages (%d octets)\r\n" % pop3_size(MESSAGE)
    grant = provider.logins.grant_for("127.0.0.2", provider.now(), timedelta(minutes=10))
    assert grant is not None
    assert (grant.account, grant.granted_at) == (ALICE, provider.now())
    [event] = provider.events.recent(events.POP_LOGIN)
    assert (event["ip"], event["account"]) == ("127.0.0.2", ALICE)


def test_bad_credentials_get_one_reply_whether_or_not_the_user_exists(
    connect: Callable[..., Session], provider: Provider
) -> None:
    """Unknown user and wrong password are byte-identical [AUTH] failures that grant nothing."""
    wrong_password = connect().login(ALICE, "wrong")
    unknown_user = connect().login("nobody@example.org", "alice-secret")
    assert wrong_password == unknown_user == b"-ERR [AUTH] Authentication failed\r\n"
    assert len(provider.logins) == 0
    assert provider.events.recent(events.POP_LOGIN) == []
    failed = provider.events.recent(events.POP_LOGIN_FAILED)
    assert [(e["ip"], e["account"]) for e in failed] == [
        ("127.0.0.2", ALICE),
        ("127.0.0.2", "nobody@example.org"),
    ]


def test_pass_without_user_is_refused(connect: Callable[..., Session]) -> None:
    """PASS needs a preceding USER, and a failed PASS needs a new one."""
    session = connect()
    assert session.command("PASS alice-secret").startswith(b"-ERR")
    session.login(ALICE, "wrong")
    assert session.command("PASS alice-secret").startswith(b"-ERR")


def test_a_new_login_refreshes_the_grant(
    connect: Callable[..., Session], provider: Provider, clock: Clock
) -> None:
    """Every successful login restarts the SMTP-after-POP window."""
    first = connect()
    first.login()
    first.command("QUIT")
    first.drop()
    clock.advance(300)
    connect().login()
    grant = provider.logins.last_login("127.0.0.2")
    assert grant is not None
    assert grant.granted_at == provider.now()


def test_auth_plain_with_initial_response(connect: Callable[..., Session]) -> None:
    """RFC 5034: AUTH PLAIN <base64> logs in in one round trip."""
    session = connect()
    assert session.command("AUTH PLAIN " + plain("", ALICE, "alice-secret")).startswith(b"+OK")
    assert session.command("STAT").startswith(b"+OK")


def test_auth_plain_without_initial_response_sends_an_empty_challenge(
    connect: Callable[..., Session], provider: Provider
) -> None:
    """AUTH PLAIN alone gets '+ ' and the next line is the response, not a command."""
    session = connect()
    assert session.command("AUTH PLAIN") == b"+ \r\n"
    assert session.command(plain(ALICE, ALICE, "alice-secret")).startswith(b"+OK")
    [event] = provider.events.recent(events.POP_LOGIN)
    assert event["account"] == ALICE


def test_auth_star_cancels_the_exchange(connect: Callable[..., Session]) -> None:
    """A '*' response cancels with -ERR and leaves the session in AUTHORIZATION."""
    session = connect()
    session.command("AUTH PLAIN")
    assert session.command("*").startswith(b"-ERR")
    assert session.command("STAT").startswith(b"-ERR")
    assert session.login().startswith(b"+OK")


def test_auth_plain_refuses_acting_as_another_user(
    connect: Callable[..., Session], provider: Provider
) -> None:
    """An authzid naming someone else fails as [AUTH] even with the right password."""
    session = connect()
    reply = session.command("AUTH PLAIN " + plain("bob@example.org", ALICE, "alice-secret"))
    assert reply == b"-ERR [AUTH] Authentication failed\r\n"
    assert len(provider.logins) == 0
    assert provider.events.recent(events.POP_LOGIN_FAILED)[0]["account"] == ALICE


def test_auth_plain_with_wrong_password_fails_like_pass(connect: Callable[..., Session]) -> None:
    """The [AUTH] reply is the same whichever way the credentials arrived."""
    session = connect()
    reply = session.command("AUTH PLAIN " + plain("", ALICE, "wrong"))
    assert reply == b"-ERR [AUTH] Authentication failed\r\n"


def test_auth_with_undecodable_response_is_refused(connect: Callable[..., Session]) -> None:
    """Invalid base64 gets -ERR without a login attempt."""
    session = connect()
    assert session.command("AUTH PLAIN !!!!").startswith(b"-ERR")
    session.command("AUTH PLAIN")
    assert session.command("not base64").startswith(b"-ERR")


def test_auth_alone_lists_mechanisms_and_unknown_ones_are_refused(
    connect: Callable[..., Session],
) -> None:
    """AUTH without arguments lists PLAIN; CRAM-MD5 cannot work on bcrypt and is refused."""
    session = connect()
    assert session.command("AUTH") == b"+OK Supported SASL mechanisms\r\nPLAIN\r\n.\r\n"
    assert session.command("AUTH CRAM-MD5").startswith(b"-ERR")


def test_quit_before_login_closes_without_update(
    connect: Callable[..., Session], provider: Provider
) -> None:
    """QUIT from AUTHORIZATION says goodbye and closes; the maildrop is untouched."""
    deliver(inbox(provider), MESSAGE)
    session = connect()
    assert session.command("QUIT").startswith(b"+OK")
    assert session.closed
    assert len(stored(provider)) == 1


# State rules and bad input


def test_commands_are_case_insensitive(connect: Callable[..., Session]) -> None:
    """RFC 1939 §3: keywords are case-insensitive."""
    session = connect()
    session.command(f"uSeR {ALICE}")
    assert session.command("pass alice-secret").startswith(b"+OK")
    assert session.command("stat") == b"+OK 0 0\r\n"


def test_transaction_commands_before_login_are_refused(connect: Callable[..., Session]) -> None:
    """A command in the wrong state gets a negative reply."""
    session = connect()
    for command in ("STAT", "LIST", "UIDL", "RETR 1", "DELE 1", "RSET", "NOOP", "TOP 1 1"):
        assert session.command(command).startswith(b"-ERR"), command


def test_login_commands_after_login_are_refused(
    connect: Callable[..., Session], provider: Provider
) -> None:
    """USER, PASS and AUTH cannot run again once logged in (twisted.mail lets them)."""
    session = connect()
    session.login()
    for command in (f"USER {ALICE}", "PASS alice-secret", "AUTH PLAIN"):
        assert session.command(command).startswith(b"-ERR"), command
    assert len(provider.events.recent(events.POP_LOGIN)) == 1


def test_unknown_command_is_refused(connect: Callable[..., Session]) -> None:
    """An unknown keyword, or an empty line, gets -ERR and the session goes on."""
    session = connect()
    assert session.command("XYZZY").startswith(b"-ERR")
    assert session.command("").startswith(b"-ERR")
    assert session.command("APOP alice 0123").startswith(b"-ERR")
    assert not session.closed


def test_too_many_bad_commands_close_the_session(tmp_path: Path, clock: Clock) -> None:
    """After max_bad_commands unknown or invalid commands the server says -ERR and closes."""
    provider = make_provider(tmp_path, reactor_clock=clock, limits=Limits(max_bad_commands=3))
    session = Session(POP3Factory(provider))
    session.command("XYZZY")
    session.command("STAT")
    assert not session.closed
    assert session.command("RETR x").startswith(b"-ERR")
    assert session.closed
    assert session.command("CAPA") == b""
    session.drop()


def test_command_line_limit_is_512_octets(connect: Callable[..., Session]) -> None:
    """A 512-octet line (CRLF included) is read; a 513-octet one gets '-ERR line too long'."""
    session = connect()
    session.login()
    assert session.send(b"NOOP " + b"x" * 505 + b"\r\n") == b"+OK\r\n"
    assert session.send(b"NOOP " + b"x" * 506 + b"\r\n") == b"-ERR line too long\r\n"
    assert session.command("NOOP") == b"+OK\r\n"


# TRANSACTION


@pytest.fixture
def three_messages(provider: Provider) -> list[bytes]:
    messages = [MESSAGE, b"Subject: two\n\nsecond\n", b"Subject: three\n\nthird\n"]
    for message in messages:
        deliver(inbox(provider), message)
    return messages


def test_stat_and_list_count_crlf_octets(
    connect: Callable[..., Session], three_messages: list[bytes]
) -> None:
    """Sizes are what POP3 transmits: LF-stored messages are counted with CRLF."""
    sizes = [len(m) + m.count(b"\n") for m in three_messages]
    session = connect()
    session.login()
    assert session.command("STAT") == b"+OK 3 %d\r\n" % sum(sizes)
    listing = b"".join(b"%d %d\r\n" % (n, size) for n, size in enumerate(sizes, 1))
    assert session.command("LIST") == b"+OK octets follow\r\n" + listing + b".\r\n"
    assert session.command("LIST 2") == b"+OK 2 %d\r\n" % sizes[1]
    assert session.command("LIST 4") == b"-ERR No such message\r\n"
    assert session.command("LIST 0") == b"-ERR No such message\r\n"


def test_uidl_lists_file_unique_names(
    connect: Callable[..., Session], provider: Provider, three_messages: list[bytes]
) -> None:
    """UIDL gives each message its Maildir unique name, in message-number order."""
    session = connect()
    session.login()
    uids = stored(provider)
    reply = session.command("UIDL").split(b"\r\n")
    assert reply[1:-2] == [f"{n} {uid}".encode() for n, uid in enumerate(uids, 1)]
    assert session.command("UIDL 3") == f"+OK 3 {uids[2]}\r\n".encode()


def test_uids_are_stable_across_sessions(
    connect: Callable[..., Session], three_messages: list[bytes]
) -> None:
    """The same message has the same UIDL in the next session, and numbering follows it."""
    first = connect()
    first.login()
    before = first.command("UIDL")
    first.command("DELE 1")
    first.command("QUIT")
    first.drop()
    second = connect()
    second.login()
    after = second.command("UIDL").split(b"\r\n")
    assert [line.split()[1] for line in after[1:-2]] == [
        line.split()[1] for line in before.split(b"\r\n")[2:-2]
    ]


def test_retr_sends_crlf_lines_byte_stuffed(
    connect: Callable[..., Session], three_messages: list[bytes]
) -> None:
    """RETR converts LF to CRLF, doubles leading dots and ends with '.'; the size matches."""
    session = connect()
    session.login()
    reply = session.command("RETR 1")
    body = b"From: bob@example.org\r\nSubject: hi\r\n\r\nfirst\r\n..dotted\r\n...two\r\nlast\r\n"
    size = len(MESSAGE) + MESSAGE.count(b"\n")
    assert reply == b"+OK %d octets\r\n" % size + body + b".\r\n"
    assert len(body) - 2 == size


def test_top_sends_header_and_first_lines(
    connect: Callable[..., Session], three_messages: list[bytes]
) -> None:
    """TOP n k sends the header, the blank line and k body lines, byte-stuffed."""
    session = connect()
    session.login()
    assert session.command("TOP 1 2") == (
        b"+OK\r\nFrom: bob@example.org\r\nSubject: hi\r\n\r\nfirst\r\n..dotted\r\n.\r\n"
    )
    assert session.command("TOP 1 0").endswith(b"Subject: hi\r\n\r\n.\r\n")
    assert session.command("TOP 1").startswith(b"-ERR")
    assert session.command("TOP 9 1") == b"-ERR No such message\r\n"


def test_dele_only_marks_and_rset_unmarks(
    connect: Callable[..., Session], provider: Provider, three_messages: list[bytes]
) -> None:
    """DELE hides a message for the session; the file stays until QUIT; RSET brings it back."""
    session = connect()
    session.login()
    assert session.command("DELE 2").startswith(b"+OK")
    assert len(stored(provider)) == 3
    assert session.command("DELE 2") == b"-ERR Message 2 already deleted\r\n"
    assert session.command("RETR 2") == b"-ERR No such message\r\n"
    assert session.command("LIST 2") == b"-ERR No such message\r\n"
    assert b"\r\n2 " not in session.command("LIST")
    assert session.command("STAT").startswith(b"+OK 2 ")
    assert session.command("DELE 7") == b"-ERR No such message\r\n"
    assert session.command("DELE two").startswith(b"-ERR")
    assert session.command("RSET").startswith(b"+OK Maildrop has 3 messages")
    assert session.command("RETR 2").startswith(b"+OK")


def test_quit_after_dele_removes_the_marked_files(
    connect: Callable[..., Session], provider: Provider, three_messages: list[bytes]
) -> None:
    """QUIT from TRANSACTION enters UPDATE: marked files are removed, then +OK and close."""
    names = stored(provider)
    session = connect()
    session.login()
    session.command("DELE 1")
    session.command("DELE 3")
    assert session.command("QUIT") == b"+OK mailhost POP3 server signing off (1 left)\r\n"
    assert session.closed
    assert stored(provider) == [names[1]]


def test_quit_reports_files_it_could_not_remove(
    connect: Callable[..., Session],
    provider: Provider,
    three_messages: list[bytes],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """If UPDATE cannot remove a marked message, QUIT answers -ERR [SYS/TEMP]."""
    session = connect()
    session.login()
    session.command("DELE 1")

    def refuse(path: object) -> None:
        raise PermissionError(13, "Permission denied", str(path))

    monkeypatch.setattr(maildir.os, "unlink", refuse)
    assert session.command("QUIT").startswith(b"-ERR [SYS/TEMP] ")
    assert session.closed
    assert len(stored(provider)) == 3


def test_dropped_connection_after_dele_deletes_nothing_and_unlocks(
    connect: Callable[..., Session], provider: Provider, three_messages: list[bytes]
) -> None:
    """RFC 1939 §6: no QUIT, no UPDATE; and the maildrop is free for the next session."""
    session = connect()
    session.login()
    session.command("DELE 1")
    session.drop()
    assert len(stored(provider)) == 3
    assert connect().login().startswith(b"+OK Logged in, 3 messages")


def test_second_session_on_a_locked_maildrop_gets_in_use(
    connect: Callable[..., Session], provider: Provider
) -> None:
    """One session per maildrop: the second login is refused with [IN-USE] and grants nothing."""
    connect().login()
    second = connect(OTHER_PEER)
    assert second.login().startswith(b"-ERR [IN-USE] ")
    assert provider.logins.last_login("127.0.0.3") is None
    [failed] = provider.events.recent(events.POP_LOGIN_FAILED)
    assert (failed["ip"], failed["account"]) == ("127.0.0.3", ALICE)
    assert connect(OTHER_PEER).login("bob@example.org", "bob-secret").startswith(b"+OK")


def test_each_factory_shares_the_maildrop_lock(provider: Provider) -> None:
    """A session on another listener (say POP3S) still sees the maildrop as in use."""
    first = Session(POP3Factory(provider))
    first.login()
    second = Session(POP3Factory(provider), OTHER_PEER)
    assert second.login().startswith(b"-ERR [IN-USE] ")
    first.drop()
    second.drop()


def test_unreadable_maildrop_gets_sys_temp(
    connect: Callable[..., Session], provider: Provider
) -> None:
    """A maildrop that cannot be opened is a temporary system error, not bad credentials."""
    inbox(provider).parent.mkdir(parents=True)
    inbox(provider).write_bytes(b"not a directory")
    assert connect().login().startswith(b"-ERR [SYS/TEMP] ")
    assert len(provider.logins) == 0
    assert connect().login().startswith(b"-ERR [SYS/TEMP] ")


def test_message_vanished_under_the_session_gets_sys_temp(
    connect: Callable[..., Session], provider: Provider, three_messages: list[bytes]
) -> None:
    """RETR of a file removed behind the session's back is a storage error, and it goes on."""
    session = connect()
    session.login()
    (inbox(provider) / "new" / stored(provider)[0]).unlink()
    assert session.command("RETR 1").startswith(b"-ERR [SYS/TEMP] ")
    assert session.command("RETR 2").startswith(b"+OK")


def test_maildrop_is_a_snapshot_taken_at_login(
    connect: Callable[..., Session], provider: Provider
) -> None:
    """Mail arriving during a session keeps message numbers stable (RFC 1939 §5)."""
    deliver(inbox(provider), MESSAGE)
    session = connect()
    session.login()
    deliver(inbox(provider), MESSAGE)
    assert session.command("STAT").startswith(b"+OK 1 ")


# Idle timeout


def test_idle_timeout_is_ten_minutes(
    connect: Callable[..., Session], clock: Clock, provider: Provider
) -> None:
    """RFC 1939 §3 needs at least 10 minutes: open at 599 s, -ERR and closed at 600 s."""
    session = connect()
    clock.advance(599)
    assert not session.closed
    clock.advance(1)
    assert session.take().startswith(b"-ERR ")
    assert session.closed


def test_idle_timeout_restarts_on_each_command(
    connect: Callable[..., Session], clock: Clock
) -> None:
    """Only silence counts: a command at 500 s keeps the session open past 600 s."""
    session = connect()
    clock.advance(500)
    session.command("CAPA")
    clock.advance(599)
    assert not session.closed
    clock.advance(1)
    assert session.closed


def test_idle_timeout_does_not_update(
    connect: Callable[..., Session], clock: Clock, provider: Provider, three_messages: list[bytes]
) -> None:
    """An autologout is not a QUIT: messages marked deleted stay."""
    session = connect()
    session.login()
    session.command("DELE 1")
    clock.advance(600)
    assert session.closed
    session.drop()
    assert len(stored(provider)) == 3
    assert connect().login().startswith(b"+OK")


# Pipelining


def test_pipelined_commands_in_one_write_answer_in_order(
    connect: Callable[..., Session], provider: Provider, three_messages: list[bytes]
) -> None:
    """RFC 2449 PIPELINING: a whole batch in one write gets its replies in order."""
    session = connect()
    reply = session.send(
        f"USER {ALICE}\r\nPASS alice-secret\r\nSTAT\r\nRETR 2\r\nDELE 1\r\nQUIT\r\n".encode()
    )
    lines = reply.split(b"\r\n")
    assert lines[0] == b"+OK Send PASS"
    assert lines[1].startswith(b"+OK Logged in")
    assert lines[2].startswith(b"+OK 3 ")
    assert lines[3].startswith(b"+OK ") and lines[3].endswith(b" octets")
    assert lines[-3].startswith(b"+OK Message 1")
    assert lines[-2].startswith(b"+OK mailhost POP3 server signing off")
    assert len(stored(provider)) == 2


def test_pipelined_commands_wait_for_a_slow_handler(
    tmp_path: Path, clock: Clock, three_messages: list[bytes], provider: Provider
) -> None:
    """While bcrypt or a disk read is pending, later commands are held, not answered early."""
    session, runner = slow_session(provider)
    reply = session.send(f"USER {ALICE}\r\nPASS alice-secret\r\nRETR 1\r\nNOOP\r\n".encode())
    assert reply == b"+OK Send PASS\r\n"
    runner.run_one()
    assert session.take() == b""
    runner.run_one()
    assert session.take().startswith(b"+OK Logged in")
    runner.run_one()
    retr = session.take()
    assert retr.startswith(b"+OK ") and retr.endswith(b".\r\n+OK\r\n")
    session.drop()


def test_one_disk_read_serves_the_following_retrs(
    tmp_path: Path, clock: Clock, three_messages: list[bytes], provider: Provider
) -> None:
    """RETR 1 reads one message; RETR 2 reads ahead, so RETR 3 is answered at once; a DELE'd
    message is still refused."""
    session, runner = slow_session(provider)
    session.send(f"USER {ALICE}\r\nPASS alice-secret\r\n".encode())
    runner.run_all()
    assert session.take().startswith(b"+OK Logged in")
    session.send(b"RETR 1\r\n")
    runner.run_one()
    assert session.take().endswith(wire_text(three_messages[0]))
    assert session.send(b"RETR 2\r\n") == b""
    runner.run_one()
    assert session.take().endswith(wire_text(three_messages[1]))
    assert session.send(b"RETR 3\r\n").endswith(wire_text(three_messages[2]))
    assert session.send(b"DELE 1\r\n").startswith(b"+OK")
    assert session.send(b"RETR 1\r\n") == b"-ERR No such message\r\n"
    assert runner.queue == []
    session.drop()


def logged_in_to_eighty_messages(provider: Provider) -> tuple[Session, QueuedRunBlocking, bytes]:
    """A logged-in session on 80 messages of about 4 KB; its disk work waits for the test."""
    body = b"Subject: x\n\n" + b"y" * 4000 + b"\n"
    for _ in range(80):
        deliver(inbox(provider), body)
    session, runner = slow_session(provider)
    session.send(f"USER {ALICE}\r\nPASS alice-secret\r\n".encode())
    runner.run_all()
    assert session.take().startswith(b"+OK Logged in")
    return session, runner, body


def test_read_ahead_grows_from_one_message_to_the_budget(
    tmp_path: Path, clock: Clock, provider: Provider
) -> None:
    """While the client reads in order, each read takes twice as much as the one before, up to
    the budget: a client fetching a few messages does not cost the shared thread many files."""
    session, runner, body = logged_in_to_eighty_messages(provider)
    budgets, batch_sizes = [], []
    for number in range(1, 81):
        reply = session.send(b"RETR %d\r\n" % number)
        if runner.queue:
            budgets.append(runner.queue[0][2][1])
            runner.run_one()
            batch_sizes.append(len(session.server._read_ahead) + 1)
            reply = session.take()
        assert reply.endswith(wire_text(body))
    assert budgets[:6] == [0, FIRST_READ_AHEAD_BYTES, 32768, 65536, READ_AHEAD_BYTES, 131072]
    assert batch_sizes[:4] == [1, 4, 8, 16]
    assert sum(batch_sizes) == 80
    session.drop()


def test_read_ahead_starts_over_when_the_client_jumps(
    tmp_path: Path, clock: Clock, provider: Provider
) -> None:
    """Only a client asking for the message after the last one read gets a larger read-ahead;
    a jump reads the asked-for message alone, and reading on from there grows again."""
    session, runner, body = logged_in_to_eighty_messages(provider)
    read: list[list[int]] = []
    for number in (1, 2, 3, 50, 51, 52, 10):
        reply = session.send(b"RETR %d\r\n" % number)
        if reply == b"":
            runner.run_one()
            read.append([number, *sorted(session.server._read_ahead)])
            reply = session.take()
        assert reply.endswith(wire_text(body))
    assert read == [[1], [2, 3, 4, 5], [50], [51, 52, 53, 54], [10]]
    session.drop()


def logged_in_with_a_reading_runner(
    provider: Provider,
) -> tuple[Session, QueuedRunBlocking, QueuedRunBlocking]:
    """A logged-in session whose storage work and message reads wait in separate queues."""
    storage, reading = QueuedRunBlocking(), QueuedRunBlocking()
    split = dataclasses.replace(provider, run_blocking=storage, run_reading=reading)
    session = Session(POP3Factory(split))
    session.send(f"USER {ALICE}\r\nPASS alice-secret\r\n".encode())
    storage.run_all()
    assert session.take().startswith(b"+OK Logged in")
    return session, storage, reading


def test_message_reads_go_to_the_reading_runner(
    tmp_path: Path, clock: Clock, three_messages: list[bytes], provider: Provider
) -> None:
    """RETR and TOP read on ``run_reading``; the login's listing stays on ``run_blocking``."""
    session, storage, reading = logged_in_with_a_reading_runner(provider)
    assert session.send(b"RETR 1\r\n") == b""
    assert (len(storage.queue), len(reading.queue)) == (0, 1)
    reading.run_one()
    assert session.take().endswith(wire_text(three_messages[0]))
    assert session.send(b"TOP 1 0\r\n") == b"", "RETR took message 1 from the read-ahead"
    assert (len(storage.queue), len(reading.queue)) == (0, 1)
    reading.run_one()
    assert session.take() == b"+OK\r\n" + wire_text(top_text(three_messages[0], 0))
    session.drop()


def test_a_large_message_is_read_on_the_storage_pool(
    tmp_path: Path, clock: Clock, provider: Provider
) -> None:
    """The one reading thread serves every session: a message over the read-ahead budget
    is read on the storage pool instead, so it cannot hold up the others' reads."""
    large = b"Subject: big\n\n" + b"x" * READ_AHEAD_BYTES + b"\n"
    deliver(inbox(provider), large)
    session, storage, reading = logged_in_with_a_reading_runner(provider)
    assert session.send(b"RETR 1\r\n") == b""
    assert (len(storage.queue), len(reading.queue)) == (1, 0)
    storage.run_one()
    assert session.take().endswith(wire_text(large))
    session.drop()


def test_a_check_dropped_at_shutdown_is_refused_and_closes(provider: Provider) -> None:
    """A password check the stopping server never ran: -ERR [SYS/TEMP], close, no throttle."""
    stopping = dataclasses.replace(
        provider, run_hashing=lambda f, *args: defer.fail(defer.CancelledError("stopping"))
    )
    session = Session(POP3Factory(stopping))
    assert session.login() == b"-ERR [SYS/TEMP] Server shutting down\r\n"
    assert session.closed
    assert provider.throttle.failures(PEER.host, provider.now()) == 0


def test_a_first_login_makes_and_locks_the_maildir_off_the_reactor(
    tmp_path: Path, clock: Clock, provider: Provider
) -> None:
    """Making a Maildir fsyncs its parents: that waits in the pool, like the listing."""
    session, runner = slow_session(provider)
    session.send(f"USER {ALICE}\r\nPASS alice-secret\r\n".encode())
    runner.run_one()  # bcrypt
    assert not inbox(provider).exists()
    assert [f.__name__ for _, f, _ in runner.queue] == ["open_locked"]
    runner.run_one()
    assert session.take().startswith(b"+OK Logged in")
    assert maildir.POP3_LOCKS.is_locked(inbox(provider))
    session.drop()
    assert not maildir.POP3_LOCKS.is_locked(inbox(provider))


def test_login_finishing_after_a_drop_grants_nothing_and_unlocks(
    tmp_path: Path, clock: Clock, provider: Provider
) -> None:
    """A client gone before +OK gets no grant, and its maildrop lock is released."""
    session, runner = slow_session(provider)
    session.send(f"USER {ALICE}\r\nPASS alice-secret\r\n".encode())
    session.drop()
    runner.run_all()
    assert len(provider.logins) == 0
    again = Session(POP3Factory(provider))
    assert again.login().startswith(b"+OK")
    again.drop()
