"""A line receiver that keeps replies in order and memory bounded.

Both SMTP (RFC 2920 §3.2) and POP3 (RFC 2449 §6.6) let a client pipeline
commands; the server must answer them in order. Twisted's line receivers hand
over the next line while a Deferred for the previous one is still pending, so
a delivery that waits on fsync could be overtaken by a pipelined QUIT. Here a
handler that returns a Deferred pauses line delivery (and the transport, so an
eager client cannot grow the buffer) until it fires.

Lines end with CRLF; a bare LF is accepted as a line end too, as most servers
do. A line longer than ``max_line_length`` octets (terminator included) is
reported once through :meth:`line_too_long` and its bytes are discarded up to
the next line end, never buffered.
"""

from __future__ import annotations

from twisted.internet import defer, protocol
from twisted.protocols.policies import TimeoutMixin
from twisted.python import log


class LineProtocol(protocol.Protocol, TimeoutMixin):
    max_line_length = 512

    _buffer = b""
    _discarding = False
    _paused = False
    _draining = False
    _closed = False

    def dataReceived(self, data: bytes) -> None:
        self.resetTimeout()
        self._buffer += data
        self._drain()

    def _drain(self) -> None:
        if self._draining:
            return
        self._draining = True
        try:
            while not self._paused and not self._closed:
                end = self._buffer.find(b"\n")
                if end < 0:
                    if len(self._buffer) > self.max_line_length:
                        self._buffer = b""
                        if not self._discarding:
                            self._discarding = True
                            self.line_too_long()
                    break
                line, self._buffer = self._buffer[:end], self._buffer[end + 1 :]
                if self._discarding:
                    self._discarding = False
                    continue
                if len(line) + 1 > self.max_line_length:
                    self.line_too_long()
                    continue
                if line.endswith(b"\r"):
                    line = line[:-1]
                result = self.line_received(line)
                if isinstance(result, defer.Deferred):
                    self._wait(result)
        finally:
            self._draining = False

    def _wait(self, d: defer.Deferred) -> None:
        self._paused = True
        transport_paused = False

        def resume(result: object) -> object:
            self._paused = False
            if not self._closed and self.transport is not None:
                if transport_paused:
                    self.transport.resumeProducing()
                self._drain()
            return result

        d.addBoth(resume)
        d.addErrback(log.err, "unhandled error in a line handler")
        if self._paused and not self._closed and self.transport is not None:
            transport_paused = True
            self.transport.pauseProducing()

    def discard_buffered_input(self) -> None:
        """Drop every byte received but not yet handled (used when TLS starts)."""
        self._buffer = b""
        self._discarding = False

    def write_line(self, line: bytes) -> None:
        self.transport.write(line + b"\r\n")

    def close(self) -> None:
        """Stop reading, send what is queued, then close."""
        self._closed = True
        self.setTimeout(None)
        self.transport.loseConnection()

    def connectionLost(self, reason: object = protocol.connectionDone) -> None:
        self._closed = True
        self.setTimeout(None)

    def line_received(self, line: bytes) -> defer.Deferred | None:
        raise NotImplementedError

    def line_too_long(self) -> None:
        raise NotImplementedError
