"""Faults from the registry applied by the SMTP and POP3 sessions, over StringTransport."""

from __future__ import annotations

from pathlib import Path

import pytest
from twisted.internet.address import IPv4Address
from twisted.internet.error import ConnectionDone
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.python import failure

from mailhost.events import FAULT_APPLIED
from mailhost.maildir import deliver
from mailhost.policy import Role
from mailhost.pop3 import POP3Factory
from mailhost.provider import Provider
from mailhost.smtp import SMTPFactory
from mailhost.testing import make_provider

ALICE = "alice@example.org"
PEER = IPv4Address("TCP", "127.0.0.2", 40000)
MESSAGE = b"From: bob@example.org\nSubject: hi\n\nhello\n"


class Session:
    """One connection over a StringTransport; ``send`` returns what the server wrote."""

    def __init__(self, factory: SMTPFactory | POP3Factory) -> None:
        self.transport = StringTransport(peerAddress=PEER)
        self.server = factory.buildProtocol(PEER)
        self.server.makeConnection(self.transport)
        self.greeting = self.take()

    def take(self) -> list[str]:
        value = self.transport.value().decode("latin-1")
        self.transport.clear()
        return value.splitlines()

    def send(self, *lines: str) -> list[str]:
        self.server.dataReceived("".join(line + "\r\n" for line in lines).encode("latin-1"))
        return self.take()

    def __call__(self, line: str) -> str:
        """Send one command and return its last reply line."""
        return self.send(line)[-1]

    @property
    def closed(self) -> bool:
        return self.transport.disconnecting

    def lost(self) -> None:
        """What the reactor does after loseConnection: tell the protocol it is gone."""
        self.server.connectionLost(failure.Failure(ConnectionDone()))


@pytest.fixture
def provider(tmp_path: Path, clock: Clock) -> Provider:
    return make_provider(tmp_path, reactor_clock=clock)


def smtp(provider: Provider) -> Session:
    """An SMTP session on the MX that has said EHLO."""
    session = Session(SMTPFactory(provider, Role.MX))
    session.send("EHLO client.example.net")
    return session


def stored(provider: Provider) -> list[Path]:
    new = provider.data.mailbox(ALICE) / "new"
    return sorted(new.iterdir()) if new.exists() else []


def fault_events(provider: Provider) -> list[dict]:
    return provider.events.recent(FAULT_APPLIED)


# SMTP


def test_rcpt_refused_twice_then_accepted(provider):
    """A 451 for the next two RCPTs answers exactly two of them; the third is handled."""
    provider.faults.add({"protocol": "smtp", "command": "RCPT", "code": 451, "times": 2})
    session = smtp(provider)
    session("MAIL FROM:<bob@far.example>")
    assert session("RCPT TO:<alice@example.org>") == "451 4.3.0 Fault injected"
    assert session("RCPT TO:<alice@example.org>") == "451 4.3.0 Fault injected"
    assert session("RCPT TO:<alice@example.org>") == "250 2.1.5 Ok"
    assert provider.faults.list() == []


def test_refused_rcpt_adds_no_recipient(provider):
    """A faulted RCPT is not handled at all, so DATA afterwards has no recipients."""
    provider.faults.add({"protocol": "smtp", "command": "RCPT", "code": 550})
    session = smtp(provider)
    session("MAIL FROM:<bob@far.example>")
    assert session("RCPT TO:<alice@example.org>") == "550 5.3.0 Fault injected"
    assert session("DATA") == "503 5.5.1 Error: no valid recipients"


def test_refused_mail_sets_no_sender(provider):
    """A faulted MAIL leaves no transaction behind: the next MAIL is not a nested one."""
    provider.faults.add({"protocol": "smtp", "command": "MAIL", "code": 452})
    session = smtp(provider)
    assert session("MAIL FROM:<bob@far.example>") == "452 4.3.0 Fault injected"
    assert session("RCPT TO:<alice@example.org>") == "503 5.5.1 Error: need MAIL command"
    assert session("MAIL FROM:<bob@far.example>") == "250 2.1.0 Ok"


def test_reply_text_with_its_own_enhanced_code_is_kept(provider):
    """Text that starts with an enhanced code is sent as given, with no 4.3.0 added."""
    provider.faults.add(
        {"protocol": "smtp", "command": "MAIL", "code": 450, "text": "4.7.1 Greylisted"}
    )
    session = smtp(provider)
    assert session("MAIL FROM:<bob@far.example>") == "450 4.7.1 Greylisted"


def test_a_421_reply_closes_the_connection(provider):
    """421 means the server is closing (RFC 5321 §3.8), so a 421 fault closes too."""
    provider.faults.add({"protocol": "smtp", "command": "MAIL", "code": 421})
    session = smtp(provider)
    assert session.send("MAIL FROM:<bob@far.example>", "NOOP") == ["421 4.3.0 Fault injected"]
    assert session.closed


def test_data_refused_with_452_starts_no_data_phase(provider):
    """A faulted DATA gets its reply and no 354: what follows is read as commands again."""
    provider.faults.add({"protocol": "smtp", "command": "DATA", "code": 452})
    session = smtp(provider)
    session.send("MAIL FROM:<bob@far.example>", "RCPT TO:<alice@example.org>")
    assert session("DATA") == "452 4.3.0 Fault injected"
    assert session("NOOP") == "250 2.0.0 Ok"
    assert stored(provider) == []


def test_delayed_rcpt_answers_after_the_delay_and_holds_back_pipelined_noop(provider, clock):
    """A 500 ms delay on RCPT answers it only then, and the NOOP behind it after it."""
    provider.faults.add({"protocol": "smtp", "command": "RCPT", "action": "delay", "delay_ms": 500})
    session = smtp(provider)
    session("MAIL FROM:<bob@far.example>")
    assert session.send("RCPT TO:<alice@example.org>", "NOOP") == []
    clock.advance(0.499)
    assert session.take() == []
    clock.advance(0.001)
    assert session.take() == ["250 2.1.5 Ok", "250 2.0.0 Ok"]


def test_delay_does_not_count_as_client_idleness(provider, clock):
    """A delay longer than the idle timeout is the server's wait, not the client's."""
    idle = provider.limits.smtp_idle_timeout
    provider.faults.add(
        {"protocol": "smtp", "command": "NOOP", "action": "delay", "delay_ms": int(idle * 2000)}
    )
    session = smtp(provider)
    assert session.send("NOOP") == []
    clock.advance(idle * 2)
    assert session.take() == ["250 2.0.0 Ok"]
    assert not session.closed


def test_drop_after_data_stores_nothing_and_sends_nothing_after_354(provider):
    """A drop on DATA reads the message to the final dot, then closes without a reply."""
    provider.faults.add({"protocol": "smtp", "command": "DATA", "action": "drop"})
    session = smtp(provider)
    replies = session.send("MAIL FROM:<bob@far.example>", "RCPT TO:<alice@example.org>", "DATA")
    assert replies[-1].startswith("354 ")
    assert session.send("Subject: lost", "", "never stored") == []
    assert not session.closed
    assert session.send(".") == []
    assert session.closed
    assert stored(provider) == []


def test_drop_on_a_refused_data_closes_after_the_refusal(provider):
    """DATA without recipients starts no message to wait for, so the drop happens at once."""
    provider.faults.add({"protocol": "smtp", "command": "DATA", "action": "drop"})
    session = smtp(provider)
    session("MAIL FROM:<bob@far.example>")
    assert session.send("DATA", "NOOP") == ["503 5.5.1 Error: no valid recipients"]
    assert session.closed


def test_drop_on_ehlo_closes_without_a_reply(provider):
    """A drop on EHLO closes the connection and answers nothing, pipelined lines included."""
    provider.faults.add({"protocol": "smtp", "command": "EHLO", "action": "drop"})
    session = Session(SMTPFactory(provider, Role.MX))
    assert session.send("EHLO client.example.net", "NOOP") == []
    assert session.closed


def test_lines_inside_data_are_not_commands(provider):
    """A "*" fault added during DATA leaves the message text alone; it is stored."""
    session = smtp(provider)
    session.send("MAIL FROM:<bob@far.example>", "RCPT TO:<alice@example.org>", "DATA")
    provider.faults.add({"protocol": "smtp", "command": "*", "code": 451, "times": None})
    assert session.send("Subject: kept", "", "NOOP", ".")[-1].startswith("250 2.0.0 Ok")
    assert len(stored(provider)) == 1
    assert fault_events(provider) == []


def test_sasl_responses_are_not_commands(provider):
    """A "*" fault added during an AUTH exchange does not touch the client's response."""
    session = smtp(provider)
    assert session("AUTH PLAIN") == "334 "
    provider.faults.add({"protocol": "smtp", "command": "*", "code": 451, "times": None})
    assert session("AGFsaWNlQGV4YW1wbGUub3JnAGFsaWNlLXNlY3JldA==") == (
        "235 2.7.0 Authentication successful"
    )


def test_smtp_fault_is_logged_as_an_event(provider):
    """Every applied fault is an event naming protocol, command, action, rule and peer."""
    fault = provider.faults.add({"protocol": "smtp", "command": "NOOP", "code": 451})
    smtp(provider)("NOOP")
    [event] = fault_events(provider)
    assert {k: event[k] for k in ("protocol", "command", "action", "fault_id", "ip")} == {
        "protocol": "smtp",
        "command": "NOOP",
        "action": "reply",
        "fault_id": fault.id,
        "ip": "127.0.0.2",
    }


# POP3


def pop3(provider: Provider) -> Session:
    """A POP3 session logged in as Alice, who has one message."""
    deliver(provider.data.mailbox(ALICE), MESSAGE)
    session = Session(POP3Factory(provider))
    session.send(f"USER {ALICE}")
    assert session("PASS alice-secret").startswith("+OK")
    return session


def test_retr_refused_with_sys_temp(provider):
    """A reply fault on RETR answers -ERR [SYS/TEMP]; the next RETR is handled."""
    provider.faults.add({"protocol": "pop3", "command": "RETR", "code": 451})
    session = pop3(provider)
    assert session.send("RETR 1") == ["-ERR [SYS/TEMP] Fault injected"]
    assert session.send("RETR 1")[0].startswith("+OK")


def test_pop3_reply_text_is_used_as_given(provider):
    """A POP3 reply fault with text sends that text after -ERR."""
    provider.faults.add({"protocol": "pop3", "command": "LIST", "text": "[IN-USE] busy"})
    session = pop3(provider)
    assert session.send("LIST") == ["-ERR [IN-USE] busy"]


def test_delayed_stat_holds_back_pipelined_noop(provider, clock):
    """A 250 ms delay on STAT answers it only then, and the NOOP behind it after it."""
    provider.faults.add({"protocol": "pop3", "command": "STAT", "action": "delay", "delay_ms": 250})
    session = pop3(provider)
    assert session.send("STAT", "NOOP") == []
    clock.advance(0.249)
    assert session.take() == []
    clock.advance(0.001)
    assert session.take() == [f"+OK 1 {len(MESSAGE) + 4}", "+OK"]


def test_a_pending_delay_is_cancelled_when_the_client_goes(provider, clock):
    """A client gone during a delay leaves no timer behind, and the command never runs."""
    provider.faults.add({"protocol": "pop3", "command": "DELE", "action": "delay", "delay_ms": 900})
    session = pop3(provider)
    assert session.send("DELE 1") == []
    assert clock.getDelayedCalls()
    session.lost()
    assert clock.getDelayedCalls() == []
    clock.advance(1)
    assert session.take() == []


def test_drop_on_quit_deletes_nothing(provider):
    """A drop on QUIT closes without UPDATE: the message marked for deletion stays."""
    provider.faults.add({"protocol": "pop3", "command": "QUIT", "action": "drop"})
    session = pop3(provider)
    assert session("DELE 1").startswith("+OK")
    assert session.send("QUIT") == []
    assert session.closed
    session.lost()
    assert len(stored(provider)) == 1
    again = Session(POP3Factory(provider))
    again.send(f"USER {ALICE}")
    assert again("PASS alice-secret") == f"+OK Logged in, 1 messages ({len(MESSAGE) + 4} octets)"


def test_command_refused_by_state_does_not_use_up_a_fault(provider):
    """RETR before login is refused by the session and leaves the RETR fault for later."""
    provider.faults.add({"protocol": "pop3", "command": "RETR"})
    session = Session(POP3Factory(provider))
    assert session.send("RETR 1") == ["-ERR Command not valid in this state"]
    assert len(provider.faults.list()) == 1


def test_pop3_fault_is_logged_as_an_event(provider):
    """A POP3 fault is an event with the POP3 command word and the peer."""
    fault = provider.faults.add({"protocol": "pop3", "command": "NOOP", "action": "drop"})
    pop3(provider).send("NOOP")
    [event] = fault_events(provider)
    assert {k: event[k] for k in ("protocol", "command", "action", "fault_id", "ip")} == {
        "protocol": "pop3",
        "command": "NOOP",
        "action": "drop",
        "fault_id": fault.id,
        "ip": "127.0.0.2",
    }
