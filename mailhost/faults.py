"""Deterministic faults a test can ask for: "the next 2 RCPTs get 451", "drop after DATA".

Theory of operation: a test (through the HTTP API or the pytest fixture)
adds :class:`Fault` rules to the shared :class:`FaultRegistry`. Before the
protocols handle a command they ask :meth:`FaultRegistry.take` with the
protocol and the command word; the first matching rule applies and uses up
one of its ``times`` (``None``: until cleared). Nothing is random, so a test
that asks for a fault gets exactly that fault. Pure: no clock, no I/O.

Actions:

* ``reply``: answer the command with ``code`` and ``text`` instead of handling it;
* ``delay``: handle it, but only after ``delay_ms``;
* ``drop``: close the connection without a reply (for ``DATA``: after the
  message has been received, before it is stored or answered).

Command words are the protocol's own (``MAIL``, ``RCPT``, ``DATA``, ``AUTH``,
``EHLO``… for SMTP; ``USER``, ``PASS``, ``RETR``, ``DELE``… for POP3), or
``*`` for any command.
"""

from __future__ import annotations

import itertools
from dataclasses import asdict, dataclass, replace
from typing import Any

PROTOCOLS = ("smtp", "pop3")
ACTIONS = ("reply", "delay", "drop")


class FaultError(ValueError):
    """A fault specification that cannot be used; names the field."""

    def __init__(self, field: str, message: str) -> None:
        self.field = field
        super().__init__(f"{field}: {message}")


@dataclass(frozen=True)
class Fault:
    id: str
    protocol: str
    command: str
    action: str
    code: int | None = None
    text: str | None = None
    delay_ms: int = 0
    times: int | None = 1
    """How many more commands it applies to; None until cleared."""

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def _check(spec: dict[str, Any]) -> dict[str, Any]:
    protocol = spec.get("protocol")
    if protocol not in PROTOCOLS:
        raise FaultError("protocol", f"expected one of {', '.join(PROTOCOLS)}")
    command = spec.get("command")
    if not isinstance(command, str) or not (command == "*" or command.isalpha()):
        raise FaultError("command", "expected a command word such as RCPT or RETR, or *")
    action = spec.get("action", "reply")
    if action not in ACTIONS:
        raise FaultError("action", f"expected one of {', '.join(ACTIONS)}")
    code = spec.get("code")
    text = spec.get("text")
    if action == "reply":
        if protocol == "smtp" and not (isinstance(code, int) and 400 <= code <= 599):
            raise FaultError("code", "an SMTP reply fault needs a 4xx or 5xx code")
        if text is not None and (not isinstance(text, str) or not text.isprintable()):
            raise FaultError("text", "expected printable text without line breaks")
    delay_ms = spec.get("delay_ms", 0)
    if not isinstance(delay_ms, int) or not 0 <= delay_ms <= 600_000:
        raise FaultError("delay_ms", "expected milliseconds from 0 to 600000")
    if action == "delay" and delay_ms == 0:
        raise FaultError("delay_ms", "a delay fault needs delay_ms greater than zero")
    times = spec.get("times", 1)
    if times is not None and (not isinstance(times, int) or times < 1):
        raise FaultError("times", "expected a count of at least 1, or null for until cleared")
    return {
        "protocol": protocol,
        "command": command.upper(),
        "action": action,
        "code": code,
        "text": text,
        "delay_ms": delay_ms,
        "times": times,
    }


class FaultRegistry:
    def __init__(self) -> None:
        self._faults: dict[str, Fault] = {}
        self._ids = itertools.count(1)

    def add(self, spec: dict[str, Any]) -> Fault:
        """Validate and add a rule; raises :class:`FaultError` naming the bad field."""
        fault = Fault(id=str(next(self._ids)), **_check(spec))
        self._faults[fault.id] = fault
        return fault

    def list(self) -> list[Fault]:
        return list(self._faults.values())

    def clear(self, fault_id: str | None = None) -> bool:
        """Remove one rule (False if there is none by that id), or all of them."""
        if fault_id is None:
            self._faults.clear()
            return True
        return self._faults.pop(fault_id, None) is not None

    def take(self, protocol: str, command: str) -> Fault | None:
        """The first rule for this command, using up one of its times."""
        if not self._faults:
            return None
        word = command.upper()
        for fault in self._faults.values():
            if fault.protocol == protocol and fault.command in (word, "*"):
                if fault.times is not None:
                    if fault.times <= 1:
                        del self._faults[fault.id]
                    else:
                        self._faults[fault.id] = replace(fault, times=fault.times - 1)
                return fault
        return None
