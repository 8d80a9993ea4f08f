"""SMTP fed random bytes and random plausible commands, in random chunks: replies stay sound."""

from __future__ import annotations

import base64
import itertools
import re
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.internet.address import IPv4Address
from twisted.internet.error import ConnectionDone
from twisted.internet.testing import StringTransport
from twisted.logger import LogLevel, globalLogPublisher
from twisted.python import failure

from mailhost.policy import Role
from mailhost.provider import Provider
from mailhost.smtp import MAX_SASL_LINE, SMTPFactory
from mailhost.testing import make_provider

PEER = IPv4Address("TCP", "127.0.0.2", 40000)
HOSTNAME = b"mail.example.org"

REPLY = re.compile(rb"(\d{3})([ -])(.*)\Z", re.DOTALL)
ENHANCED = re.compile(rb"\d{3}[ -]([245])\.\d{1,3}\.\d{1,3} ")
# RFC 5321 §4.2: textstring = 1*(%d09 / %d32-126)
TEXTSTRING = re.compile(rb"[\t\x20-\x7e]*\Z")


# Sessions


@contextmanager
def new_provider() -> Iterator[Provider]:
    root = Path(tempfile.mkdtemp(prefix="smtp-fuzz-"))
    try:
        yield make_provider(root)
    finally:
        shutil.rmtree(root, ignore_errors=True)


@contextmanager
def logged_errors() -> Iterator[list[dict]]:
    """Every error or failure logged through twisted.logger (which twisted.python.log feeds)."""
    seen: list[dict] = []

    def observe(event: dict) -> None:
        if (
            event.get("log_failure") is not None
            or event.get("isError")
            or event.get("log_level") in (LogLevel.error, LogLevel.critical)
        ):
            seen.append(event)

    globalLogPublisher.addObserver(observe)
    try:
        yield seen
    finally:
        globalLogPublisher.removeObserver(observe)


def run_session(provider: Provider, role: Role, chunks: list[bytes]) -> bytes:
    """Write ``chunks`` one by one to a new SMTPServer, checking it after each; return output."""
    transport = StringTransport(peerAddress=PEER)
    server = SMTPFactory(provider, role).buildProtocol(PEER)
    with logged_errors() as errors:
        server.makeConnection(transport)
        for chunk in chunks:
            closed, written = transport.disconnecting, len(transport.value())
            server.dataReceived(chunk)
            if closed:
                assert len(transport.value()) == written, "a reply after the connection closed"
            # An unterminated line past the limit is dropped, never buffered; input behind
            # a closing reply is left unread.
            unread = len(chunk) if transport.disconnecting else 0
            assert len(server._buffer) <= MAX_SASL_LINE + unread
        server.connectionLost(failure.Failure(ConnectionDone()))
    assert errors == []
    output = transport.value()
    check_replies(output, transport.disconnecting)
    return output


def check_replies(output: bytes, closed: bool) -> None:
    """Each line is ``code[ -]text`` (2xx-5xx, RFC 5321 text) with an RFC 3463 code where due."""
    assert output.endswith(b"\r\n")
    lines = output[:-2].split(b"\r\n")
    assert lines[0] == b"220 " + HOSTNAME + b" ESMTP mailhost"
    in_ehlo = False
    for line in lines[1:]:
        match = REPLY.match(line)
        assert match, line
        assert 200 <= int(match[1]) <= 599, line
        assert TEXTSTRING.match(match[3]), line
        assert len(line) + 2 <= 512, line
        if line.startswith(b"250-"):
            in_ehlo = True
            continue
        if in_ehlo or match[1] in (b"334", b"354") or line == b"250 " + HOSTNAME:
            in_ehlo = False
            continue
        enhanced = ENHANCED.match(line)
        assert enhanced, line
        assert enhanced[1] == match[1][:1], line
    if closed:
        assert lines[-1][:3] in (b"221", b"421"), lines[-1]


# Strategies


@st.composite
def chunked(draw: st.DrawFn, data: bytes) -> list[bytes]:
    """``data`` cut at random points (possibly none, possibly between every byte)."""
    if not data:
        return [data]
    cuts = draw(st.lists(st.integers(1, len(data) - 1), max_size=12)) if len(data) > 1 else []
    points = [0, *sorted(set(cuts)), len(data)]
    return [data[a:b] for a, b in itertools.pairwise(points)]


def b64(text: bytes) -> str:
    return base64.b64encode(text).decode("ascii")


VERBS = [
    "HELO",
    "EHLO",
    "MAIL",
    "RCPT",
    "DATA",
    "AUTH",
    "STARTTLS",
    "RSET",
    "NOOP",
    "QUIT",
    "VRFY",
    "EXPN",
    "HELP",
]
JUNK_VERBS = ["", "XYZZY", "EHL0", "MAIL FROM", "BDAT", "\x00", "ÿ", "TURN"]
ADDRESSES = [
    "alice@example.org",
    "bob@example.org",
    "postmaster",
    "Postmaster@example.org",
    "relaytest@elsewhere.example",
    "",
    "alice@[127.0.0.1]",
    "alice@[IPv6:::1]",
    '"x y"@example.org',
    '"a\\"b>"@example.org',
    "@route.example:alice@example.org",
    "no-at-sign",
    "a@b@c",
    "x@-bad-.example",
    "a@[999.1.1.1]",
    "a@[x\ry]",
    "a" * 70 + "@example.org",
    "a@" + "b" * 260,
]
PARAMETERS = [
    "SIZE=100",
    "SIZE=99999999999",
    "SIZE=",
    "SIZE",
    "SIZE=-1",
    "BODY=8BITMIME",
    "BODY=7bit",
    "BODY=BINARYMIME",
    "AUTH=<>",
    "X-JUNK=1",
    "=",
    "NOTIFY=NEVER",
    "X\x1b=1",
]
SASL_ANSWERS = [
    b64(b"\0alice@example.org\0alice-secret"),
    b64(b"\0alice@example.org\0wrong"),
    b64(b"bob@example.org\0alice@example.org\0alice-secret"),
    b64(b"alice@example.org"),
    b64(b"alice-secret"),
    b64(b""),
    "=",
    "*",
    "not base64!",
    "",
]
junk_text = st.text(
    st.characters(codec="latin-1", exclude_characters="\r\n") | st.sampled_from('<>:@" .=\\'),
    max_size=30,
)
spaces = st.sampled_from(["", " ", "  "])


def path_command(keyword: str) -> st.SearchStrategy[str]:
    return st.builds(
        lambda colon, space, path, params: (
            f"{keyword}{colon}{space}{path}" + "".join(" " + p for p in params)
        ),
        st.sampled_from([":", "", " :"]),
        spaces,
        st.sampled_from(ADDRESSES).map(lambda a: f"<{a}>") | junk_text,
        st.lists(st.sampled_from(PARAMETERS), max_size=3),
    )


def cased(verb: str) -> st.SearchStrategy[str]:
    return st.sampled_from([verb, verb.lower(), verb.title()])


commands = st.one_of(
    st.sampled_from(VERBS).flatmap(cased),
    st.builds(lambda v, s, a: f"{v}{s}{a}", st.sampled_from(VERBS + JUNK_VERBS), spaces, junk_text),
    st.builds(
        lambda v, d: f"{v} {d}",
        st.sampled_from(["EHLO", "HELO", "ehlo"]),
        st.sampled_from(["client.example", "[127.0.0.2]", "", "x y"]),
    ),
    st.builds(lambda v, a: f"{v} {a}", cased("MAIL"), path_command("FROM")),
    st.builds(lambda v, a: f"{v} {a}", cased("RCPT"), path_command("TO")),
    st.builds(
        lambda mechanism, answer: f"AUTH {mechanism} {answer}".rstrip(),
        st.sampled_from(["PLAIN", "plain", "LOGIN", "CRAM-MD5", ""]),
        st.sampled_from(SASL_ANSWERS),
    ),
    st.sampled_from(SASL_ANSWERS),
    st.sampled_from(["NOOP " + "x" * 600, "X" * 13000, "AUTH PLAIN " + "A" * 12300]),
)
body_lines = st.lists(
    st.sampled_from(["", ".", "..", ". x", ".\r", "a", "Subject: x", "x" * 1100, "a\nb", "ÿ"]),
    max_size=6,
)
endings = st.sampled_from([b"\r\n", b"\r\n", b"\n", b"\r"])


@st.composite
def command_stream(draw: st.DrawFn) -> bytes:
    """Plausible command lines and DATA blocks (mostly after a greeting), ended CRLF, LF or CR."""
    lines: list[str] = draw(st.sampled_from([[], ["EHLO client.example"], ["HELO client"]]))
    for _ in range(draw(st.integers(0, 14))):
        if draw(st.integers(0, 5)) == 0:
            lines += ["DATA", *draw(body_lines), "."]
        else:
            lines.append(draw(commands))
    return b"".join(line.encode("latin-1") + draw(endings) for line in lines)


ROLES = st.sampled_from(list(Role))


# Properties


@settings(max_examples=150)
@given(role=ROLES, data=st.binary(max_size=600).flatmap(chunked))
def test_random_bytes_get_well_formed_replies(role: Role, data: list[bytes]) -> None:
    """Random bytes in random chunks: well-formed replies, nothing logged, bounded buffer."""
    with new_provider() as provider:
        run_session(provider, role, data)


@settings(max_examples=150)
@given(role=ROLES, data=command_stream().flatmap(chunked))
def test_plausible_commands_get_well_formed_replies(role: Role, data: list[bytes]) -> None:
    """Random plausible command streams: every reply well-formed, nothing unhandled."""
    with new_provider() as provider:
        run_session(provider, role, data)


ECHOING_COMMANDS = [
    "MAIL FROM:<a@example.org> {}",
    "MAIL FROM:<a@example.org> {}=1",
    "MAIL FROM:<a@example.org> SIZE={}",
    "MAIL FROM:<a@example.org> BODY={}",
    "MAIL FROM:<a@[{}]>",
    "MAIL FROM:<a@[IPv6:{}]>",
    "MAIL FROM:<{}@example.org>",
    "MAIL FROM:<a@{}>",
    "MAIL FROM:{}",
    "MAIL {}",
    "RCPT TO:<{}>",
    "RCPT TO:<a@[{}]>",
    "RCPT TO:<a@example.org> {}",
    "VRFY {}",
    "AUTH {}",
    "AUTH PLAIN {}",
    "{}",
]


@settings(max_examples=200)
@given(
    role=ROLES,
    command=st.sampled_from(ECHOING_COMMANDS),
    text=st.text(st.characters(codec="latin-1", exclude_characters="\n"), min_size=1, max_size=8),
)
def test_client_text_never_breaks_a_reply_line(role: Role, command: str, text: str) -> None:
    """Whatever a client puts in an argument, replies keep to RFC 5321 text (no controls)."""
    lines = ["EHLO client.example", "MAIL FROM:<x@example.org>", command.format(text), "QUIT"]
    if command.startswith("MAIL"):
        del lines[1]
    stream = b"".join(line.encode("latin-1") + b"\r\n" for line in lines)
    with new_provider() as provider:
        run_session(provider, role, [stream])


VALID_SESSION = b"".join(
    line + b"\r\n"
    for line in [
        b"EHLO client.example",
        b"AUTH PLAIN " + b64(b"\0alice@example.org\0alice-secret").encode(),
        b"MAIL FROM:<alice@example.org> SIZE=100",
        b"RCPT TO:<bob@example.org>",
        b"RCPT TO:<alice@example.org>",
        b"DATA",
        b"Subject: split",
        b"",
        b"..leading dot",
        b".",
        b"QUIT",
    ]
)


def normalised(text: bytes) -> bytes:
    return re.sub(rb"\b[0-9A-F]{12}\b", b"<id>", text)


def replies_and_files(role: Role, chunks: list[bytes]) -> tuple[bytes, list[bytes]]:
    with new_provider() as provider:
        replies = run_session(provider, role, chunks)
        stored = sorted(
            normalised(path.read_bytes())
            for path in provider.data.root.rglob("new/*")
            if path.is_file()
        )
    return normalised(replies), stored


@pytest.mark.parametrize("role", list(Role))
def test_byte_by_byte_equals_whole(role: Role) -> None:
    """A valid session written one byte at a time gets the replies it gets written whole."""
    whole = replies_and_files(role, [VALID_SESSION])
    assert whole[0].count(b"\r\n250 2.1.5 ") == 2 and b"\r\n221 " in whole[0]
    assert len(whole[1]) == 2
    one_by_one = [VALID_SESSION[i : i + 1] for i in range(len(VALID_SESSION))]
    assert replies_and_files(role, one_by_one) == whole


@settings(max_examples=30)
@given(role=ROLES, chunks=chunked(VALID_SESSION))
def test_random_chunks_equal_whole(role: Role, chunks: list[bytes]) -> None:
    """A valid session cut into random chunks gets the replies it gets written whole."""
    assert replies_and_files(role, chunks) == replies_and_files(role, [VALID_SESSION])
