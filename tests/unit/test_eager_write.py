"""EagerWriteServer: a reply leaves at once when nothing is queued; otherwise Twisted's way."""

from __future__ import annotations

import socket
from collections.abc import Iterator

import pytest
from twisted.internet import tcp
from twisted.internet.interfaces import IPullProducer
from twisted.internet.protocol import Protocol
from twisted.internet.testing import MemoryReactor
from zope.interface import implementer

from mailhost.eager_write import EagerWriteServer, send_eagerly


@pytest.fixture
def pair() -> Iterator[tuple[EagerWriteServer, socket.socket, MemoryReactor]]:
    ours, peer = socket.socketpair()
    ours.setblocking(False)
    peer.settimeout(5)
    reactor = MemoryReactor()
    transport = EagerWriteServer(ours, Protocol(), ("127.0.0.2", 40000), None, 1, reactor)
    yield transport, peer, reactor
    ours.close()
    peer.close()


def test_a_small_write_is_sent_without_waiting_for_the_reactor(pair):
    transport, peer, reactor = pair
    transport.write(b"250 2.0.0 Ok\r\n")
    assert peer.recv(100) == b"250 2.0.0 Ok\r\n"
    assert transport not in reactor.getWriters()


def test_what_the_kernel_does_not_take_is_queued_in_order(pair):
    transport, peer, reactor = pair
    transport.write(b"a" * 4_000_000)
    assert transport in reactor.getWriters(), "the rest waits for writability"
    transport.write(b"tail")
    assert transport._tempDataLen > 0, "a later write queues behind the rest, never jumps it"
    received = bytearray()
    while len(received) < 4_000_004:
        received += peer.recv(1 << 20)
        transport.doWrite()
    assert received == b"a" * 4_000_000 + b"tail"


def test_a_write_to_a_gone_peer_is_left_to_twisted_to_report(pair):
    transport, peer, reactor = pair
    peer.close()
    transport.write(b"hello\r\n")
    transport.write(b"again\r\n")
    assert transport in reactor.getWriters()
    assert transport.doWrite() is not None, "the queued write meets the error: connection lost"


def test_a_pull_producer_is_still_asked_for_more(pair):
    """With a pull producer Twisted's queued path runs: it resumes the producer when drained."""
    transport, peer, reactor = pair
    asked: list[int] = []

    @implementer(IPullProducer)
    class Chunks:
        def resumeProducing(self) -> None:
            asked.append(1)
            if len(asked) <= 3:
                transport.write(b"chunk\r\n")
            else:
                transport.unregisterProducer()

        def stopProducing(self) -> None:
            pass

    transport.registerProducer(Chunks(), False)
    for _ in range(5):
        if transport in reactor.getWriters():
            transport.doWrite()
    assert peer.recv(100) == b"chunk\r\n" * 3


def test_nothing_goes_out_after_an_abort(pair):
    transport, peer, _ = pair
    transport._aborting = True
    transport.write(b"late\r\n")
    peer.setblocking(False)
    with pytest.raises(BlockingIOError):
        peer.recv(100)


def test_listening_ports_get_the_eager_transport():
    port = tcp.Port(0, None, interface="127.0.0.1", reactor=MemoryReactor())
    send_eagerly(port)
    assert port.transport is EagerWriteServer
    send_eagerly(object())  # anything else is left alone
