"""The line receiver under both protocols: splitting, limits, ordering, pausing, closing."""

from __future__ import annotations

from twisted.internet import defer
from twisted.internet.testing import StringTransport

from mailhost.lines import LineProtocol


class Recorder(LineProtocol):
    max_line_length = 16

    def __init__(self) -> None:
        self.lines: list[bytes] = []
        self.too_long = 0
        self.pending: dict[bytes, defer.Deferred] = {}

    def line_received(self, line: bytes) -> defer.Deferred | None:
        self.lines.append(line)
        if line.startswith(b"WAIT"):
            self.pending[line] = defer.Deferred()
            return self.pending[line]
        if line == b"DISCARD":
            self.discard_buffered_input()
        return None

    def line_too_long(self) -> None:
        self.too_long += 1


def connect() -> tuple[Recorder, StringTransport]:
    protocol, transport = Recorder(), StringTransport()
    protocol.makeConnection(transport)
    return protocol, transport


def test_crlf_and_bare_lf_both_end_a_line():
    """Lines end with CRLF; a bare LF is accepted too; a partial line waits for its end."""
    protocol, _ = connect()
    protocol.dataReceived(b"one\r\ntwo\nthr")
    protocol.dataReceived(b"ee\r\n")
    assert protocol.lines == [b"one", b"two", b"three"]


def test_an_overlong_line_is_reported_once_and_its_bytes_dropped():
    """A line past the limit is reported once, discarded up to its end, and later lines go on."""
    protocol, _ = connect()
    protocol.dataReceived(b"x" * 40)
    protocol.dataReceived(b"y" * 40 + b"\r\nok\r\n")
    assert protocol.too_long == 1
    assert protocol.lines == [b"ok"]
    assert len(protocol._buffer) == 0


def test_lines_behind_a_pending_reply_wait_and_the_transport_pauses():
    """While a handler's Deferred is pending, later lines wait and reading is paused."""
    protocol, transport = connect()
    protocol.dataReceived(b"WAIT 1\r\nNEXT\r\n")
    assert protocol.lines == [b"WAIT 1"]
    assert transport.producerState == "paused"
    protocol.pending[b"WAIT 1"].callback(None)
    assert protocol.lines == [b"WAIT 1", b"NEXT"]
    assert transport.producerState == "producing"


def test_reading_pauses_only_once_input_waits_behind_a_pending_reply():
    """A client that waits for its reply costs no pause; one that sends on is paused."""
    protocol, transport = connect()
    protocol.dataReceived(b"WAIT 1\r\n")
    assert transport.producerState == "producing"
    protocol.dataReceived(b"NE")
    assert transport.producerState == "paused"
    assert protocol.lines == [b"WAIT 1"]
    protocol.pending[b"WAIT 1"].callback(None)
    protocol.dataReceived(b"XT\r\n")
    assert protocol.lines == [b"WAIT 1", b"NEXT"]
    assert transport.producerState == "producing"


def test_closing_while_paused_resumes_the_transport_first():
    """close() resumes a paused transport, or a TLS peer's close_notify would never be read."""
    protocol, transport = connect()
    protocol.dataReceived(b"WAIT 1\r\nmore")
    assert transport.producerState == "paused"
    protocol.close()
    assert transport.producerState == "producing"
    assert transport.disconnecting
    protocol.pending[b"WAIT 1"].callback(None)
    assert transport.producerState == "producing"


def test_discarding_buffered_input_drops_what_followed():
    """discard_buffered_input (used when TLS starts) drops lines received in the same write."""
    protocol, _ = connect()
    protocol.dataReceived(b"DISCARD\r\nINJECTED\r\n")
    protocol.dataReceived(b"LATER\r\n")
    assert protocol.lines == [b"DISCARD", b"LATER"]


def test_input_after_close_is_ignored():
    """Once closing, nothing more is handled or buffered."""
    protocol, _ = connect()
    protocol.close()
    protocol.dataReceived(b"QUIT\r\n" * 100)
    assert protocol.lines == []
    assert protocol._buffer == b""
