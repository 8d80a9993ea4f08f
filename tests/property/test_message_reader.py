"""DATA text taken in blocks: the same message whatever the chunking, and the RFC's reading."""

from __future__ import annotations

import itertools

from hypothesis import given, settings
from hypothesis import strategies as st

from mailhost.smtp import MessageReader

MAX_LINE = 40
MAX_PENDING = 64


def read(stream: bytes, cuts: list[int], max_size: int = 10_000) -> tuple[int, MessageReader]:
    """Feed ``stream`` as a line receiver would, arriving in pieces cut at ``cuts``.

    Returns how many octets of the stream the message took (the rest belongs to
    the next command) and the reader; -1 if the final dot never came.
    """
    reader = MessageReader(max_size, MAX_LINE, MAX_PENDING)
    buffer, taken = b"", 0
    edges = [0, *sorted(set(c for c in cuts if 0 < c < len(stream))), len(stream)]
    for start, end in itertools.pairwise(edges):
        buffer += stream[start:end]
        consumed, ended = reader.feed_block(buffer)
        buffer = buffer[consumed:]
        taken += consumed
        if ended:
            return taken, reader
    return -1, reader


def expected(lines: list[bytes]) -> bytes:
    """RFC 5321 §4.5.2 transparency undone, CRLF stored as LF."""
    return b"".join((line[1:] if line.startswith(b".") else line) + b"\n" for line in lines)


line_text = st.binary(max_size=MAX_LINE - 3).filter(lambda b: b"\r" not in b and b"\n" not in b)
stuffed = line_text.map(lambda b: b"." + b if b.startswith(b".") else b)
noisy = st.lists(
    st.sampled_from([b"a", b".", b"\r", b"\n", b"\r\n", b"\r\n.", b"xyz", b"bare lf line\n" * 3])
)


@settings(max_examples=300, deadline=None)
@given(st.lists(stuffed, max_size=30), st.lists(st.integers(0, 2000)), st.binary(max_size=20))
def test_a_message_reads_the_same_in_any_chunking(lines, cuts, after):
    """Dot-stuffed lines come back unstuffed, and the octets after the final dot are not taken."""
    message = b"".join(line + b"\r\n" for line in lines) + b".\r\n"
    taken, reader = read(message + after, cuts)
    assert taken == len(message)
    assert not reader.refused
    assert reader.content() == expected(lines)
    assert reader.size == sum(len(line) + 2 for line in expected(lines).split(b"\n")[:-1])


@settings(max_examples=300, deadline=None)
@given(noisy, st.lists(st.integers(0, 400)))
def test_arbitrary_text_gives_one_outcome_whatever_the_chunking(pieces, cuts):
    """Bare CR and LF, stuffed dots and over-long lines: chunking never changes the result."""
    stream = b"".join(pieces) + b"\r\n.\r\n"
    whole_taken, whole = read(stream, [])
    taken, reader = read(stream, cuts)
    assert taken == whole_taken
    assert reader.refused == whole.refused
    assert reader.content() == whole.content()
    assert taken != -1


def test_a_bare_lf_is_text_and_only_crlf_dot_crlf_ends():
    """<LF>.<LF> does not end DATA (RFC 5321 §4.1.1.4); the bare LF is kept as a line end."""
    taken, reader = read(b"a\n.\nb\r\n.\r\nQUIT\r\n", [2, 3, 4])
    assert taken == len(b"a\n.\nb\r\n.\r\n")
    assert reader.content() == b"a\n.\nb\n"


def test_bare_lf_text_past_the_pending_bound_is_refused_however_it_arrives():
    """One CRLF line of many LF-ended ones: refused whole or in pieces, never by chance."""
    stream = b"a\n" * 40 + b"\r\n.\r\n"
    for cuts in ([], [70], [10, 20, 30]):
        taken, reader = read(stream, cuts)
        assert taken == len(stream)
        assert reader.long_line, cuts


def test_a_partial_line_past_the_pending_bound_is_dropped_not_buffered():
    """A line that never ends is refused once it outgrows the bound; the dot still ends DATA."""
    reader = MessageReader(10_000, MAX_LINE, MAX_PENDING)
    consumed, ended = reader.feed_block(b"ok\r\n" + b"x" * (MAX_PENDING + 10))
    assert (consumed, ended) == (4 + MAX_PENDING + 10, False)
    assert reader.long_line and reader.content() == b""
    consumed, ended = reader.feed_block(b"more x\r\n.\r\n")
    assert (consumed, ended) == (len(b"more x\r\n.\r\n"), True)


def test_past_the_size_limit_nothing_more_is_kept():
    """Over max_size the reader drops what it held and only counts."""
    taken, reader = read(b"12345678\r\nmore\r\n.\r\n", [3, 11], max_size=10)
    assert taken == len(b"12345678\r\nmore\r\n.\r\n")
    assert reader.too_big and reader.content() == b""
