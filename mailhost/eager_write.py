"""A TCP server transport that sends a reply at once instead of on the next loop turn.

Twisted's TCP transport queues every write, registers the socket for
writability, sends from the next turn of the reactor, then unregisters it: two
``epoll_ctl`` calls and one more pass through the reactor's dispatch for every
reply. A mail session is a string of small replies, each awaited by the
client.

:class:`EagerWriteServer` tries ``send`` straight away when nothing is queued
before it; whatever the kernel does not take (or any error) goes the usual
queued way, so ordering, back-pressure and error handling stay Twisted's.
Writes through TLS started with STARTTLS/STLS keep Twisted's path entirely, and so
do writes while a pull producer is registered: Twisted asks it for more only
when its queue empties, which an eager send would never let happen.
"""

from __future__ import annotations

from typing import Any

from twisted.internet import tcp


class EagerWriteServer(tcp.Server):
    def write(self, data: bytes) -> None:
        if (
            self.TLS
            or not data
            or not self.connected
            or self.disconnecting
            or self._aborting
            or self._writeDisconnected
            or self._tempDataLen
            or self.offset < len(self.dataBuffer)
            or (self.producer is not None and not self.streamingProducer)
        ):
            super().write(data)
            return
        try:
            sent = self.socket.send(data)
        except BlockingIOError:
            sent = 0
        except OSError:
            super().write(data)  # queued, the next send meets the error and reports it
            return
        if sent < len(data):
            super().write(data[sent:])


def send_eagerly(port: Any) -> None:
    """Make a listening TCP port hand its connections :class:`EagerWriteServer` transports."""
    if isinstance(port, tcp.Port):
        port.transport = EagerWriteServer
