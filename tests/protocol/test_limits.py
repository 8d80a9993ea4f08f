"""Connection limits and the DATA time bound, with their reply codes."""

from __future__ import annotations

from twisted.internet.address import IPv4Address
from twisted.internet.error import ConnectionDone
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure

from mailhost.config import Limits
from mailhost.policy import Role
from mailhost.pop3 import POP3Factory
from mailhost.smtp import SMTPFactory
from mailhost.testing import make_clock, make_provider


def connect(factory, ip="127.0.0.2"):
    transport = StringTransport(peerAddress=IPv4Address("TCP", ip, 40000))
    server = factory.buildProtocol(None)
    server.makeConnection(transport)
    return server, transport


def greeting(transport) -> bytes:
    return transport.value().split(b"\r\n")[0]


def drop(server) -> None:
    server.connectionLost(Failure(ConnectionDone()))


def test_per_address_limit_refuses_at_the_greeting_across_listeners(tmp_path):
    """Past the per-address limit, SMTP answers 421 4.7.0 and POP3 -ERR [SYS/TEMP], then close."""
    provider = make_provider(tmp_path, limits=Limits(max_connections_per_ip=2))
    smtp, pop3 = SMTPFactory(provider, Role.MX), POP3Factory(provider)
    connect(smtp)
    connect(pop3)
    refused_smtp, smtp_transport = connect(smtp)
    refused_pop3, pop3_transport = connect(pop3)
    assert greeting(smtp_transport).startswith(b"421 4.7.0 ")
    assert b"too many connections from your address" in greeting(smtp_transport)
    assert greeting(pop3_transport).startswith(b"-ERR [SYS/TEMP] ")
    assert smtp_transport.disconnecting and pop3_transport.disconnecting
    drop(refused_smtp)
    drop(refused_pop3)
    assert provider.connections.from_ip("127.0.0.2") == 2


def test_a_closed_connection_frees_its_place(tmp_path):
    """When a connection ends, its address may connect again."""
    provider = make_provider(tmp_path, limits=Limits(max_connections_per_ip=1))
    smtp = SMTPFactory(provider, Role.MX)
    first, _ = connect(smtp)
    drop(first)
    _, transport = connect(smtp)
    assert greeting(transport).startswith(b"220 ")


def test_another_address_is_not_limited_by_a_busy_one(tmp_path):
    """One address at its limit does not stop another."""
    provider = make_provider(tmp_path, limits=Limits(max_connections_per_ip=1))
    smtp = SMTPFactory(provider, Role.MX)
    connect(smtp, "127.0.0.2")
    _, transport = connect(smtp, "127.0.0.3")
    assert greeting(transport).startswith(b"220 ")


def test_total_limit_refuses_everyone_past_it(tmp_path):
    """Past the total limit every address is refused with the server-wide reason."""
    provider = make_provider(tmp_path, limits=Limits(max_connections=2))
    smtp = SMTPFactory(provider, Role.MX)
    connect(smtp, "127.0.0.2")
    connect(smtp, "127.0.0.3")
    _, transport = connect(smtp, "127.0.0.4")
    assert greeting(transport) == (
        b"421 4.7.0 mail.example.org the server is at its connection limit; try again later"
    )


def test_ipv4_mapped_addresses_share_the_ipv4_count(tmp_path):
    """::ffff:127.0.0.2 counts as 127.0.0.2, so the limit cannot be dodged by address form."""
    provider = make_provider(tmp_path, limits=Limits(max_connections_per_ip=1))
    smtp = SMTPFactory(provider, Role.MX)
    connect(smtp, "127.0.0.2")
    transport = StringTransport(peerAddress=IPv4Address("TCP", "::ffff:127.0.0.2", 40000))
    smtp.buildProtocol(None).makeConnection(transport)
    assert greeting(transport).startswith(b"421 4.7.0 ")


def test_slow_sender_loses_the_connection_after_the_data_time_bound(tmp_path):
    """A sender trickling DATA past max_data_seconds gets 421 4.4.2; nothing is stored."""
    clock = make_clock()
    provider = make_provider(tmp_path, reactor_clock=clock, limits=Limits(max_data_seconds=60))
    server, transport = connect(SMTPFactory(provider, Role.MX))
    server.dataReceived(
        b"EHLO slow.example\r\nMAIL FROM:<a@b.example>\r\nRCPT TO:<alice@example.org>\r\nDATA\r\n"
    )
    for _ in range(59):
        clock.advance(1)
        server.dataReceived(b"x")
    assert not transport.disconnecting
    clock.advance(1)
    assert transport.value().splitlines()[-1] == (
        b"421 4.4.2 mail.example.org Error: DATA took longer than 60 s, closing"
    )
    assert transport.disconnecting
    server.dataReceived(b"\r\n.\r\n")
    drop(server)
    assert not list(provider.data.mailbox("alice@example.org").glob("new/*"))


def test_a_message_finished_in_time_cancels_the_data_timer(tmp_path):
    """Once the final dot arrives the DATA bound no longer applies."""
    clock = make_clock()
    provider = make_provider(tmp_path, reactor_clock=clock, limits=Limits(max_data_seconds=60))
    server, transport = connect(SMTPFactory(provider, Role.MX))
    server.dataReceived(
        b"EHLO quick.example\r\nMAIL FROM:<a@b.example>\r\nRCPT TO:<alice@example.org>\r\n"
        b"DATA\r\nSubject: x\r\n\r\nbody\r\n.\r\n"
    )
    assert transport.value().splitlines()[-1].startswith(b"250 2.0.0")
    assert clock.getDelayedCalls() and all(
        call.getTime() - clock.seconds() == 300 for call in clock.getDelayedCalls()
    )
