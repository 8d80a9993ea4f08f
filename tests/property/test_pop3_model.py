"""A real POP3Server against a model maildrop: every reply and every file on disk agree."""

from __future__ import annotations

import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule
from twisted.internet.address import IPv4Address
from twisted.internet.error import ConnectionDone
from twisted.internet.testing import StringTransport
from twisted.python import failure

from mailhost import maildir
from mailhost.config import Limits
from mailhost.pop3 import POP3Factory
from mailhost.testing import make_provider

ALICE = "alice@example.org"
PASSWORD = "alice-secret"
PEER = IPv4Address("TCP", "127.0.0.2", 40000)
MAX_BAD_COMMANDS = 6

# Line text never holds CR or LF; it may start with dots, be empty, or hold 8-bit bytes.
line_text = st.lists(
    st.sampled_from([b".", b"a", b" ", b":", b"\xe9", b"\t", b"Subject"]), max_size=5
).map(b"".join)
line_end = st.sampled_from([b"\n", b"\r\n"])
last_end = st.sampled_from([b"\n", b"\r\n", b""])


def join_lines(lines: list[bytes], ends: list[bytes], last: bytes) -> bytes:
    """Lines with their ends; the last line's end may be missing."""
    ended = [*ends[: max(len(lines) - 1, 0)], last]
    return b"".join(text + end for text, end in zip(lines, ended, strict=False))


stored_messages = st.builds(
    join_lines,
    st.lists(line_text, max_size=8),
    st.lists(line_end, min_size=8, max_size=8),
    last_end,
)

# Message numbers: in range, 0, past the end, the largest accepted; junk is a syntax error.
numbers = st.integers(1, 3) | st.integers(0, 7) | st.just(999_999_999)
junk_arguments = st.sampled_from(["", "x", "-1", "+1", "1x", "1 2", "0x1", "1000000000"])
# How a command is written: its verb's case, its line end, where its bytes are split.
verb_cases = st.sampled_from([str.upper, str.lower, str.title])


def lines_of(data: bytes) -> list[bytes]:
    """The lines of a stored message: split at LF (one CR before it dropped), none trailing."""
    lines = data.replace(b"\r\n", b"\n").split(b"\n")
    if lines[-1] == b"":
        lines.pop()
    return lines


@dataclass
class Message:
    name: str
    lines: list[bytes]
    uid: str | None = None

    @property
    def size(self) -> int:
        return sum(len(line) + 2 for line in self.lines)

    def top(self, body_lines: int) -> list[bytes]:
        if b"" not in self.lines:
            return self.lines
        return self.lines[: self.lines.index(b"") + 1 + body_lines]


def unstuffed(reply: bytes) -> tuple[bytes, list[bytes]]:
    """Split a multi-line reply into its status line and its lines after un-stuffing."""
    status, _, body = reply.partition(b"\r\n")
    assert body.endswith(b".\r\n"), reply
    raw = body[: -len(b".\r\n")].split(b"\r\n")
    assert raw.pop() == b""
    for line in raw:
        assert not line.startswith(b".") or line.startswith(b".."), reply
    return status, [line[1:] if line.startswith(b".") else line for line in raw]


class POP3Maildrop(RuleBasedStateMachine):
    """POP3 replies and the Maildir on disk agree with a model maildrop after every command."""

    def __init__(self) -> None:
        super().__init__()
        self.root = Path(tempfile.mkdtemp(prefix="pop3-model-"))
        self.provider = make_provider(
            self.root,
            accounts={ALICE: PASSWORD},
            limits=Limits(max_bad_commands=MAX_BAD_COMMANDS),
        )
        self.factory = POP3Factory(self.provider)
        self.inbox = self.provider.data.mailbox(ALICE)
        self.disk: list[Message] = []
        self.snapshot: list[Message] = []
        self.deleted: set[int] = set()
        self.bad = 0
        self.transport: StringTransport | None = None
        self.server = None

    def teardown(self) -> None:
        try:
            self.drop()
        finally:
            shutil.rmtree(self.root, ignore_errors=True)

    # The wire

    def connect(self) -> None:
        self.transport = StringTransport(peerAddress=PEER)
        self.server = self.factory.buildProtocol(PEER)
        self.server.makeConnection(self.transport)
        assert self.take() == b"+OK mailhost POP3 server ready\r\n"
        assert self.send(b"USER " + ALICE.encode() + b"\r\n") == b"+OK Send PASS\r\n"
        count, octets = len(self.disk), sum(m.size for m in self.disk)
        reply = self.send(b"PASS " + PASSWORD.encode() + b"\r\n")
        assert reply == b"+OK Logged in, %d messages (%d octets)\r\n" % (count, octets)
        self.snapshot = list(self.disk)
        self.deleted = set()
        self.bad = 0

    def drop(self) -> None:
        """The client goes away without QUIT (or after the server closed)."""
        if self.server is not None:
            self.server.connectionLost(failure.Failure(ConnectionDone()))
        self.server = self.transport = None

    def take(self) -> bytes:
        assert self.transport is not None
        value = self.transport.value()
        self.transport.clear()
        return value

    def send(self, data: bytes, split: int = 0) -> bytes:
        assert self.server is not None
        if 0 < split < len(data):
            self.server.dataReceived(data[:split])
            self.server.dataReceived(data[split:])
        else:
            self.server.dataReceived(data)
        return self.take()

    def command(self, verb: str, argument: str, case=str.upper, end=b"\r\n", split=0) -> bytes:
        line = case(verb) + (" " + argument if argument else "")
        return self.send(line.encode("ascii") + end, split)

    @property
    def closed(self) -> bool:
        return self.transport is not None and self.transport.disconnecting

    # The model

    def live(self, number: int) -> Message | None:
        if 1 <= number <= len(self.snapshot) and number not in self.deleted:
            return self.snapshot[number - 1]
        return None

    def totals(self) -> tuple[int, int]:
        live = [m for n, m in enumerate(self.snapshot, 1) if n not in self.deleted]
        return len(live), sum(m.size for m in live)

    def expect_bad(self, reply: bytes, usual: bytes) -> None:
        """A malformed command: its error, or at the limit a closing error and no UPDATE."""
        self.bad += 1
        if self.bad >= MAX_BAD_COMMANDS:
            assert reply == b"-ERR Too many invalid commands, closing connection\r\n"
            assert self.closed
            self.reconnect()
        else:
            assert reply == usual + b"\r\n"
            assert not self.closed

    def reconnect(self) -> None:
        """After a session ended without UPDATE, nothing was removed; start a new one."""
        self.drop()
        self.check_disk()
        self.connect()

    def check_disk(self) -> None:
        on_disk = sorted(p.name for sub in ("new", "cur") for p in (self.inbox / sub).iterdir())
        assert on_disk == sorted(m.name for m in self.disk)
        for message in self.disk:
            data = (self.inbox / "new" / message.name).read_bytes()
            assert lines_of(data) == message.lines

    def check_uid(self, message: Message, uid: bytes) -> None:
        text = uid.decode("ascii")
        assert 1 <= len(text) <= 70 and all(0x21 <= ord(c) <= 0x7E for c in text)
        if len(message.name) <= 70:
            assert text == message.name
        if message.uid is None:
            message.uid = text
        assert message.uid == text

    # Rules

    @initialize(messages=st.lists(stored_messages, min_size=1, max_size=5) | st.just([]))
    def deliver_and_log_in(self, messages: list[bytes]) -> None:
        for data in messages:
            self.deliver(data)
        self.connect()

    @rule(data=stored_messages)
    def deliver(self, data: bytes) -> None:
        """A delivery during a session joins the maildrop, not the session's snapshot."""
        name = maildir.deliver(self.inbox, data)
        self.disk.append(Message(name, lines_of(data)))

    @rule(case=verb_cases, end=line_end, split=st.integers(0, 6))
    def stat(self, case, end, split) -> None:
        reply = self.command("STAT", "", case, end, split)
        assert reply == b"+OK %d %d\r\n" % self.totals()

    @rule(case=verb_cases, split=st.integers(0, 6))
    def noop(self, case, split) -> None:
        assert self.command("NOOP", "", case, split=split) == b"+OK\r\n"

    @rule(verb=st.sampled_from(["LIST", "UIDL"]), case=verb_cases)
    def list_all(self, verb: str, case) -> None:
        status, lines = unstuffed(self.command(verb, "", case))
        assert status == (b"+OK octets follow" if verb == "LIST" else b"+OK unique ids follow")
        live = [(n, m) for n, m in enumerate(self.snapshot, 1) if n not in self.deleted]
        assert len(lines) == len(live)
        for line, (number, message) in zip(lines, live, strict=True):
            listed_number, _, field = line.partition(b" ")
            assert listed_number == b"%d" % number
            if verb == "LIST":
                assert field == b"%d" % message.size
            else:
                self.check_uid(message, field)
        if verb == "UIDL":
            uids = [line.partition(b" ")[2] for line in lines]
            assert len(set(uids)) == len(uids)

    @rule(verb=st.sampled_from(["LIST", "UIDL"]), number=numbers, end=line_end)
    def list_one(self, verb: str, number: int, end: bytes) -> None:
        reply = self.command(verb, str(number), end=end)
        message = self.live(number)
        if message is None:
            assert reply == b"-ERR No such message\r\n"
            return
        first, _, field = reply.removesuffix(b"\r\n").rpartition(b" ")
        assert first == b"+OK %d" % number
        if verb == "LIST":
            assert field == b"%d" % message.size
        else:
            self.check_uid(message, field)

    @rule(number=numbers, split=st.integers(0, 8))
    def retr(self, number: int, split: int) -> None:
        reply = self.command("RETR", str(number), split=split)
        message = self.live(number)
        if message is None:
            assert reply == b"-ERR No such message\r\n"
            return
        status, lines = unstuffed(reply)
        assert status == b"+OK %d octets" % message.size
        assert lines == message.lines
        assert sum(len(line) + 2 for line in lines) == message.size

    @rule(number=numbers, body_lines=st.integers(0, 4) | st.just(999_999_999))
    def top(self, number: int, body_lines: int) -> None:
        reply = self.command("TOP", f"{number} {body_lines}")
        message = self.live(number)
        if message is None:
            assert reply == b"-ERR No such message\r\n"
            return
        status, lines = unstuffed(reply)
        assert status == b"+OK"
        assert lines == message.top(body_lines)

    @rule(number=numbers, case=verb_cases, end=line_end)
    def dele(self, number: int, case, end: bytes) -> None:
        reply = self.command("DELE", str(number), case, end)
        if self.live(number) is not None:
            assert reply == b"+OK Message %d marked for deletion\r\n" % number
            self.deleted.add(number)
        elif number in self.deleted:
            assert reply == b"-ERR Message %d already deleted\r\n" % number
        else:
            assert reply == b"-ERR No such message\r\n"

    @rule(case=verb_cases)
    def rset(self, case) -> None:
        self.deleted = set()
        reply = self.command("RSET", "", case)
        assert reply == b"+OK Maildrop has %d messages (%d octets)\r\n" % self.totals()

    @rule(verb=st.sampled_from(["LIST", "UIDL", "RETR", "DELE", "TOP"]), argument=junk_arguments)
    def malformed_arguments(self, verb: str, argument: str) -> None:
        if verb in ("LIST", "UIDL") and not argument:
            return
        wanted = 2 if verb == "TOP" else 1
        if verb == "TOP" and argument == "1 2":
            return
        reply = self.command(verb, argument)
        self.expect_bad(reply, b"-ERR Syntax error: expected %d numeric argument(s)" % wanted)

    @rule(verb=st.sampled_from(["USER", "PASS", "STLS", "AUTH", "XYZZY", "RETRX", ""]))
    def wrong_command(self, verb: str) -> None:
        reply = self.command(verb, "x" if verb else "")
        if verb in ("USER", "PASS", "STLS", "AUTH"):
            self.expect_bad(reply, b"-ERR Command not valid in this state")
        else:
            self.expect_bad(reply, b"-ERR Unknown command")

    @rule(case=verb_cases, end=line_end)
    def quit(self, case, end: bytes) -> None:
        """UPDATE: the marked messages go, the rest stay; the numbering starts afresh."""
        remaining = self.totals()[0]
        reply = self.command("QUIT", "", case, end)
        assert reply == b"+OK mailhost POP3 server signing off (%d left)\r\n" % remaining
        assert self.closed
        gone = {self.snapshot[n - 1].name for n in self.deleted}
        self.disk = [m for m in self.disk if m.name not in gone]
        self.reconnect()

    @rule(partial=st.sampled_from([b"", b"DELE 1", b"QUIT", b"RETR"]))
    def disconnect(self, partial: bytes) -> None:
        """A session that ends without QUIT removes nothing (RFC 1939 §6)."""
        self.send(partial)
        self.reconnect()

    @rule(marks=st.lists(numbers, min_size=1, max_size=3), partial=st.sampled_from([b"", b"QU"]))
    def drop_after_marking(self, marks: list[int], partial: bytes) -> None:
        """Messages marked with DELE survive a session that ends without QUIT."""
        for number in marks:
            self.dele(number, str.upper, b"\r\n")
        self.disconnect(partial)

    @invariant()
    def session_is_open(self) -> None:
        if self.server is not None:
            assert not self.closed


POP3Maildrop.TestCase.settings = settings(max_examples=60, stateful_step_count=30)
TestPOP3Maildrop = POP3Maildrop.TestCase
