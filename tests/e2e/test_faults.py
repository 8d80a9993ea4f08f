"""Faults as real clients see them: smtplib and poplib against the in-process server."""

from __future__ import annotations

import poplib
import smtplib
import time
from typing import Any

import pytest
from twisted.internet.threads import blockingCallFromThread

from mailhost.accounts import DEMO_ACCOUNTS

pytestmark = pytest.mark.e2e

CLIENT = "127.0.0.2"
ALICE = "alice@example.org"
MESSAGE = "From: bob@far.example\r\nTo: alice@example.org\r\nSubject: faults\r\n\r\nHello.\r\n"


def add_fault(server: Any, **spec: Any) -> None:
    """Add a rule on the reactor thread, where the protocols read the registry."""
    blockingCallFromThread(server.reactor, server.service.provider.faults.add, spec)


def test_smtplib_sees_451_on_rcpt_then_succeeds(start_server):
    """A one-time 451 on RCPT refuses the first sendmail; the retry is delivered."""
    server = start_server()
    add_fault(server, protocol="smtp", command="RCPT", code=451)
    with server.smtp(CLIENT) as client:
        with pytest.raises(smtplib.SMTPRecipientsRefused) as refused:
            client.sendmail("bob@far.example", [ALICE], MESSAGE)
        assert refused.value.recipients[ALICE] == (451, b"4.3.0 Fault injected")
        assert client.sendmail("bob@far.example", [ALICE], MESSAGE) == {}
    assert len(server.stored(ALICE)) == 1


def test_smtplib_sees_the_connection_drop_after_data(start_server):
    """A drop on DATA takes the whole message, then closes: smtplib sees a disconnect."""
    server = start_server()
    add_fault(server, protocol="smtp", command="DATA", action="drop")
    client = server.smtp(CLIENT)
    with pytest.raises(smtplib.SMTPServerDisconnected):
        client.sendmail("bob@far.example", [ALICE], MESSAGE)
    client.close()
    assert server.stored(ALICE) == []


def test_poplib_retr_gets_sys_temp(start_server):
    """A reply fault on RETR reaches poplib as error_proto carrying -ERR [SYS/TEMP]."""
    server = start_server()
    with server.smtp(CLIENT) as client:
        client.sendmail("bob@far.example", [ALICE], MESSAGE)
    add_fault(server, protocol="pop3", command="RETR")
    client = server.pop3(CLIENT)
    try:
        client.user(ALICE)
        client.pass_(DEMO_ACCOUNTS[ALICE])
        with pytest.raises(poplib.error_proto) as refused:
            client.retr(1)
        assert refused.value.args[0] == b"-ERR [SYS/TEMP] Fault injected"
        assert b"Subject: faults" in client.retr(1)[1]
    finally:
        client.quit()


def test_smtp_noop_reply_waits_for_the_delay(start_server):
    """A 200 ms delay on NOOP holds the reply back at least that long, then answers it."""
    server = start_server()
    add_fault(server, protocol="smtp", command="NOOP", action="delay", delay_ms=200)
    with server.smtp(CLIENT) as client:
        started = time.monotonic()
        assert client.noop() == (250, b"2.0.0 Ok")
        elapsed = time.monotonic() - started
    assert 0.19 <= elapsed < 10
