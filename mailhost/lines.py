"""A line receiver that keeps replies in order and memory bounded.

Both SMTP (RFC 2920 §3.2) and POP3 (RFC 2449 §6.6) let a client pipeline
commands; the server must answer them in order. Twisted's line receivers hand
over the next line while a Deferred for the previous one is still pending, so
a delivery that waits on fsync could be overtaken by a pipelined QUIT. Here a
handler that returns a Deferred pauses line delivery until it fires; the
transport is paused too once input waits behind it, so an eager client cannot
grow the buffer (but a client that waits for its reply costs no pause/resume).

Lines end with CRLF; a bare LF is accepted as a line end too, as most servers
do. A line longer than ``max_line_length`` octets (terminator included) is
reported once through :meth:`line_too_long` and its bytes are discarded up to
the next line end, never buffered.

Bulk text (SMTP's DATA) need not go line by line: while ``text_receiver`` is
set, the whole buffer goes to it, and it says how much it took: one call per
block received instead of one per line (a 2 KB message is some 30 lines).

STARTTLS and STLS switch the same connection to TLS. Bytes the client sent
behind the command arrived in plaintext and must not be acted on as if they
came over TLS (the CVE-2011-0411 injection class): :meth:`start_tls` drops
them, and the drain loop, which reads the buffer afresh for every line, then
has nothing left to deliver.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.internet import defer, protocol
from twisted.internet.interfaces import IDelayedCall, ISSLTransport, ITLSTransport
from twisted.protocols.policies import TimeoutMixin
from twisted.python import log

from mailhost.connections import ConnectionLimiter, Refusal


class LineProtocol(protocol.Protocol, TimeoutMixin):
    max_line_length = 512
    text_receiver: Callable[[bytes], tuple[int, object]] | None = None
    """While set, takes the buffered input whole and returns (octets consumed, result);
    a Deferred result holds back what follows, as a line handler's does."""

    _buffer = b""
    _discarding = False
    _paused = False
    _draining = False
    _closed = False
    _transport_paused = False
    _admission: tuple[ConnectionLimiter, str] | None = None
    _delayed: IDelayedCall | None = None

    def dataReceived(self, data: bytes) -> None:
        if self._closed:
            return
        self.resetTimeout()
        self._buffer += data
        if self._paused:
            self._pause_transport()
        else:
            self._drain()

    def _drain(self) -> None:
        if self._draining:
            return
        self._draining = True
        try:
            while not self._paused and not self._closed:
                if self.text_receiver is not None:
                    consumed, result = self.text_receiver(self._buffer)
                    if consumed:
                        self._buffer = self._buffer[consumed:]
                    if isinstance(result, defer.Deferred):
                        self._wait(result)
                    elif not consumed:
                        break
                    continue
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

        def resume(result: object) -> object:
            self._paused = False
            self._resume_transport()
            if not self._closed and self.transport is not None:
                self._drain()
            return result

        d.addBoth(resume)
        d.addErrback(log.err, "unhandled error in a line handler")
        if self._paused and self._buffer:
            self._pause_transport()

    def _pause_transport(self) -> None:
        if not self._transport_paused and not self._closed and self.transport is not None:
            self._transport_paused = True
            self.transport.pauseProducing()

    def _resume_transport(self) -> None:
        if self._transport_paused:
            self._transport_paused = False
            self.transport.resumeProducing()

    def handle_after(
        self, delay_ms: int, idle_timeout: float, handler: Callable[..., Any], *args: Any
    ) -> defer.Deferred:
        """Run ``handler(*args)`` after ``delay_ms``; the Deferred holds back pipelined lines.

        The wait is the server's, not the client's, so the idle timer stops
        meanwhile and restarts with ``idle_timeout`` when the handler runs. A
        connection lost meanwhile cancels the wait.
        """
        self.setTimeout(None)
        d: defer.Deferred = defer.Deferred()
        self._delayed = self.callLater(delay_ms / 1000, d.callback, None)

        def handle(_: None) -> Any:
            if self._closed:
                return None
            self.setTimeout(idle_timeout)
            return handler(*args)

        return d.addCallback(handle)

    def discard_buffered_input(self) -> None:
        """Drop every byte received but not yet handled (used when TLS starts)."""
        self._buffer = b""
        self._discarding = False

    @property
    def tls_active(self) -> bool:
        """True on an implicit-TLS connection and once STARTTLS/STLS has switched."""
        return ISSLTransport.providedBy(self.transport)

    def tls_available(self, options: Any) -> bool:
        """Whether this connection could switch to TLS now (and so may offer it)."""
        return (
            options is not None and not self.tls_active and ITLSTransport.providedBy(self.transport)
        )

    def start_tls(self, options: Any) -> None:
        """Switch to TLS after the go-ahead reply, dropping whatever plaintext followed it.

        The reply must already be written: the transport sends it before the
        handshake. Nothing received before this call is handled afterwards.
        """
        self.discard_buffered_input()
        self.transport.startTLS(options)

    def write_line(self, line: bytes) -> None:
        self.transport.write(line + b"\r\n")

    def close(self) -> None:
        """Stop handling input, send what is queued, then close.

        A transport left paused would never read the peer's TLS close_notify,
        so a TLS connection would never finish closing: resume it first.
        """
        self._closed = True
        self.setTimeout(None)
        self._resume_transport()
        self.transport.loseConnection()

    def connectionMade(self) -> None:
        """Switch Nagle off: small multi-line replies would otherwise wait on delayed ACKs."""
        set_no_delay = getattr(self.transport, "setTcpNoDelay", None)
        if set_no_delay is not None:
            set_no_delay(True)

    def admit(self, limiter: ConnectionLimiter, ip: str) -> Refusal | None:
        """Take a place in ``limiter`` for this connection, released when it is lost."""
        refusal = limiter.admit(ip)
        if refusal is None:
            self._admission = (limiter, ip)
        return refusal

    def connectionLost(self, reason: object = protocol.connectionDone) -> None:
        self._closed = True
        self.setTimeout(None)
        if self._delayed is not None and self._delayed.active():
            self._delayed.cancel()
        if self._admission is not None:
            limiter, ip = self._admission
            self._admission = None
            limiter.release(ip)

    def line_received(self, line: bytes) -> defer.Deferred | None:
        raise NotImplementedError

    def line_too_long(self) -> None:
        raise NotImplementedError
