"""POP3 (RFC 1939) with CAPA and response codes (RFC 2449, RFC 3206) and SASL PLAIN (RFC 5034).

This replaces twisted.mail's POP3 rather than subclassing it: that one deletes
at DELE instead of at QUIT, reads messages in text mode, logs out idle clients
after 300 s (RFC 1939 §3 needs at least 10 minutes), advertises ``PIPELINE``,
cannot take an AUTH initial response, lets USER/PASS run again after login and
has no ``[AUTH]``/``[IN-USE]`` codes.

The wire rules that need no connection (line splitting, the TOP cut,
byte-stuffing, the PLAIN message) are plain functions below; the protocol only
sequences them. The session's maildrop comes from a twisted.cred portal whose
realm locks it; a successful login records the SMTP-after-POP grant.

TLS and passwords: STLS (RFC 2595 §4) switches to TLS in the AUTHORIZATION
state, dropping any plaintext the client sent behind it and any USER given
before it. USER/PASS and AUTH PLAIN are offered, and accepted, only where a
password may travel (:func:`mailhost.policy.plaintext_auth_allowed`), with
Dovecot's wording for the refusal. An address with too many recent failed
logins (:class:`mailhost.throttle.AuthThrottle`) is refused before the
password is checked.

CAPA reflects the current state (RFC 2595 §4 lets it change after STLS): STLS
while TLS could start, USER and SASL while a password would be accepted. That
is why it is not a constant, though RFC 2449 §5 asks for the AUTHORIZATION
capabilities to be listed in both states: STLS is gone after login because
it could no longer be used.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

from twisted.cred import error as cred_error
from twisted.cred.credentials import UsernamePassword
from twisted.cred.portal import IRealm, Portal
from twisted.internet import defer, protocol
from twisted.python import failure, log
from zope.interface import Interface, implementer

from mailhost import events, policy, sasl
from mailhost.faults import Fault
from mailhost.lines import LineProtocol
from mailhost.maildir import (
    POP3_LOCKS,
    MailboxInUse,
    MailboxLock,
    MailboxLocks,
    PopMailbox,
    PopMessage,
)
from mailhost.provider import Provider

GREETING = b"+OK mailhost POP3 server ready"
CAPABILITIES = (
    b"TOP",
    b"UIDL",
    b"USER",
    b"RESP-CODES",
    b"AUTH-RESP-CODE",
    b"PIPELINING",
    b"SASL PLAIN",
    b"IMPLEMENTATION mailhost",
)
PASSWORD_CAPABILITIES = frozenset({b"USER", b"SASL PLAIN"})
SASL_MECHANISMS = (b"PLAIN",)

AUTH_FAILED = b"-ERR [AUTH] Authentication failed"
IN_USE = b"-ERR [IN-USE] Mailbox is locked by another POP3 session"
STORAGE_FAILED = b"-ERR [SYS/TEMP] Mailbox unavailable, try again later"
PLAINTEXT_DISALLOWED = (
    b"-ERR [AUTH] Plaintext authentication disallowed on non-secure (SSL/TLS) connections"
)
THROTTLED = b"-ERR [SYS/TEMP] Too many failed logins from your address; try again later"
BUSY = b"-ERR [SYS/TEMP] Too many logins in progress from your address; try again shortly"
NO_SUCH_MESSAGE = b"-ERR No such message"
SHUTTING_DOWN = b"-ERR [SYS/TEMP] Server shutting down"
READ_AHEAD_BYTES = 128 * 1024
"""The most one RETR reads ahead for the next ones: a hand-over to the disk thread
cost more than the reading of a 4 KB message itself."""
FIRST_READ_AHEAD_BYTES = 16 * 1024
"""A session's first read takes the asked-for message alone; when the client then
asks for the message after the last one read, the next read takes this much (that
message included), and each sequential one after that twice as much, up to
:data:`READ_AHEAD_BYTES`. A client that fetches three messages costs the shared
reading thread five files, not thirty, and one that jumps about reads one at a time."""
FAULT_TEXT = "[SYS/TEMP] Fault injected"


class IPopMailbox(Interface):
    """The avatar interface a POP3 session asks the portal for: a locked :class:`Maildrop`."""


@dataclass(frozen=True)
class Maildrop:
    """The avatar: whose maildrop it is, and the session's snapshot of it."""

    account: str
    mailbox: PopMailbox


_LINE_START_DOT = re.compile(rb"\n\.")


def wire_text(data: bytes) -> bytes:
    """A stored message as RETR sends it (RFC 1939 §3): CRLF ends, leading dots doubled, ``.``.

    Works on the whole byte string (a few copies of the message) rather than
    a list of lines, which for a large message of short lines would cost
    dozens of times its size. LF and CRLF ends both count; an unterminated
    last line is ended. It runs for every RETR, so it avoids ``bytes.replace``
    with two-octet patterns: on CPython 3.11 that scans English text at about
    1 ns an octet, found or not, where ``in`` with one octet and ``re`` are
    several times faster.
    """
    text = data.replace(b"\r\n", b"\n") if b"\r" in data else data
    if text.endswith(b"\r"):
        text = text[:-1] + b"\n"
    elif text and not text.endswith(b"\n"):
        text += b"\n"
    text = _LINE_START_DOT.sub(b"\n..", text)
    if text.startswith(b"."):
        text = b"." + text
    return text.replace(b"\n", b"\r\n") + b".\r\n"


def top_text(data: bytes, body_lines: int) -> bytes:
    """RFC 1939 §7 TOP: the header, the blank line after it, then ``body_lines`` body lines."""
    text = data.replace(b"\r\n", b"\n")
    if text.startswith(b"\n"):
        end = 1
    else:
        blank = text.find(b"\n\n")
        if blank < 0:
            return text
        end = blank + 2
    for _ in range(body_lines):
        line_end = text.find(b"\n", end)
        if line_end < 0:
            return text
        end = line_end + 1
    return text[:end]


def multiline(lines: Iterable[bytes]) -> bytes:
    """RFC 1939 §3 multi-line body: CRLF line ends, a leading ``.`` doubled, ``.`` at the end."""
    stuffed = (b"." + line if line.startswith(b".") else line for line in lines)
    return b"".join(line + b"\r\n" for line in stuffed) + b".\r\n"


def capabilities(stls: bool, passwords: bool) -> list[bytes]:
    """The CAPA list: STLS while TLS could start, USER and SASL while passwords are accepted."""
    listed = [c for c in CAPABILITIES if passwords or c not in PASSWORD_CAPABILITIES]
    return [*listed, b"STLS"] if stls else listed


def parse_number(argument: bytes) -> int | None:
    """A message number or line count: decimal digits only (no sign, no spaces)."""
    if not argument.isdigit() or len(argument) > 9:
        return None
    return int(argument)


def _text(raw: bytes) -> str:
    return raw.decode("utf-8", "replace")


@implementer(IRealm)
class PopMailboxRealm:
    """Gives an authenticated account its maildrop, locked for this session.

    The avatar is a :class:`Maildrop`; the logout callable releases the
    lock. A maildrop with a session already raises :class:`MailboxInUse`.
    """

    def __init__(self, provider: Provider, locks: MailboxLocks = POP3_LOCKS) -> None:
        self.provider = provider
        self.locks = locks

    def requestAvatar(
        self, avatarId: str | bytes, mind: object, *interfaces: type[Interface]
    ) -> defer.Deferred:
        if IPopMailbox not in interfaces:
            raise NotImplementedError("PopMailboxRealm only gives IPopMailbox avatars")
        account = avatarId.decode("utf-8") if isinstance(avatarId, bytes) else avatarId
        path = self.provider.data.mailbox(account)

        def opened(
            locked: tuple[MailboxLock, PopMailbox],
        ) -> tuple[type[Interface], Maildrop, Callable[[], None]]:
            lock, mailbox = locked
            return IPopMailbox, Maildrop(account, mailbox), lock.release

        return self.provider.run_blocking(self.open_locked, path).addCallback(opened)

    def open_locked(self, path: Path) -> tuple[MailboxLock, PopMailbox]:
        """Blocking: lock the maildrop and list it. A first login makes the Maildir and
        fsyncs its parents, tens of milliseconds that must not stall the reactor."""
        lock = self.locks.acquire(path)
        try:
            return lock, PopMailbox.scan(path)
        except BaseException:
            lock.release()
            raise


class POP3Server(LineProtocol):
    """One POP3 session: AUTHORIZATION, then TRANSACTION, then UPDATE on QUIT.

    A handler that waits on the disk or on bcrypt returns its Deferred, so
    :class:`LineProtocol` holds back pipelined commands until it has answered.
    """

    def __init__(self, provider: Provider, portal: Portal) -> None:
        self.provider = provider
        self.max_line_length = provider.limits.max_command_line
        self.portal = portal
        self.callLater = provider.clock.reactor_time.callLater
        self.maildrop: Maildrop | None = None
        self._logout: Callable[[], None] | None = None
        self._user: str | None = None
        self._awaiting_sasl = False
        self._bad_commands = 0
        self._connected = False
        self._committing = False
        self._read_ahead: dict[int, bytes] = {}
        self._read_ahead_budget = 0
        self._read_ahead_next = 0  # the message after the last one read: the client's next

    @property
    def mailbox(self) -> PopMailbox:
        assert self.maildrop is not None
        return self.maildrop.mailbox

    def connectionMade(self) -> None:
        super().connectionMade()
        self._connected = True
        refusal = self.admit(self.provider.connections, self._peer_ip())
        if refusal is not None:
            self.write_line(b"-ERR [SYS/TEMP] %s; try again later" % refusal.value.encode())
            self.close()
            return
        self.setTimeout(self.provider.limits.pop3_idle_timeout)
        self.write_line(GREETING)

    def connectionLost(self, reason: object = protocol.connectionDone) -> None:
        super().connectionLost(reason)
        self._connected = False
        if not self._committing:
            self._end_session()

    def _end_session(self) -> None:
        """Release the maildrop without UPDATE: nothing marked is removed."""
        self.maildrop = None
        if self._logout is not None:
            logout, self._logout = self._logout, None
            logout()

    def timeoutConnection(self) -> None:
        self.write_line(b"-ERR Idle for too long, closing connection")
        self.close()

    def line_too_long(self) -> None:
        self._awaiting_sasl = False
        self._bad(b"-ERR line too long")

    def line_received(self, line: bytes) -> defer.Deferred | None:
        if self._awaiting_sasl:
            self._awaiting_sasl = False
            return self._sasl_response(line.strip())
        keyword, _, argument = line.partition(b" ")
        keyword = keyword.upper()
        if keyword not in TRANSACTION_COMMANDS | AUTHORIZATION_COMMANDS:
            return self._bad(b"-ERR Unknown command")
        allowed = TRANSACTION_COMMANDS if self.maildrop is not None else AUTHORIZATION_COMMANDS
        if keyword not in allowed:
            return self._bad(b"-ERR Command not valid in this state")
        handler: Callable[[bytes], defer.Deferred | None] = getattr(
            self, "do_" + keyword.decode("ascii")
        )
        fault = self.provider.faults.take("pop3", keyword.decode("ascii"))
        if fault is not None:
            result = self._apply_fault(fault, keyword, handler, argument)
        else:
            result = handler(argument)
        # Closed already (QUIT done inline): there is no input left to hold back.
        return None if self._closed else result

    def _apply_fault(
        self,
        fault: Fault,
        keyword: bytes,
        handler: Callable[[bytes], defer.Deferred | None],
        argument: bytes,
    ) -> defer.Deferred | None:
        """Do what a test asked for instead of (or before) handling the command.

        Only commands valid in the current state get here, so a fault is not
        used up by a command the session would have refused anyway. A drop
        closes without UPDATE: even on QUIT nothing marked is deleted.
        """
        self.provider.events.emit(
            events.FAULT_APPLIED,
            self.provider.now(),
            protocol="pop3",
            command=keyword.decode("ascii"),
            action=fault.action,
            fault_id=fault.id,
            ip=self._peer_ip(),
        )
        if fault.action == "reply":
            self.write_line(b"-ERR " + (fault.text or FAULT_TEXT).encode("utf-8"))
            return None
        if fault.action == "delay":
            return self.handle_after(
                fault.delay_ms, self.provider.limits.pop3_idle_timeout, handler, argument
            )
        self.close()
        return None

    def _bad(self, reply: bytes) -> None:
        self._bad_commands += 1
        if self._bad_commands >= self.provider.limits.max_bad_commands:
            self.write_line(b"-ERR Too many invalid commands, closing connection")
            self.close()
        else:
            self.write_line(reply)

    def _write_multiline(self, first: bytes, lines: Iterable[bytes]) -> None:
        self.transport.write(first + b"\r\n" + multiline(lines))

    def _peer_ip(self) -> str:
        return self.transport.getPeer().host

    # AUTHORIZATION

    def _stls_available(self) -> bool:
        return self.maildrop is None and self.tls_available(self.provider.tls_options)

    def _plaintext_auth_allowed(self) -> bool:
        return policy.plaintext_auth_allowed(
            self._peer_ip(), self.tls_active, self.provider.allow_plaintext_auth
        )

    def do_CAPA(self, argument: bytes) -> None:
        listed = capabilities(self._stls_available(), self._plaintext_auth_allowed())
        self._write_multiline(b"+OK Capability list follows", listed)

    def do_STLS(self, argument: bytes) -> None:
        """RFC 2595 §4: +OK, then TLS; a USER given in plaintext is forgotten."""
        if self.tls_active:
            self.write_line(b"-ERR TLS is already active")
            return None
        if not self._stls_available():
            self.write_line(b"-ERR TLS is not available")
            return None
        if argument.strip():
            return self._bad(b"-ERR STLS takes no arguments")
        self.write_line(b"+OK Begin TLS negotiation")
        self.start_tls(self.provider.tls_options)
        self._user = None
        return None

    def _refuse_plaintext(self) -> bool:
        """Refuse a password command where passwords may not travel; True when refused."""
        if self._plaintext_auth_allowed():
            return False
        self.provider.events.emit(
            events.POP_LOGIN_FAILED,
            self.provider.now(),
            ip=self._peer_ip(),
            account="",
            reason="plaintext-without-tls",
        )
        self.write_line(PLAINTEXT_DISALLOWED)
        return True

    def do_USER(self, argument: bytes) -> None:
        if self._refuse_plaintext():
            return None
        name = argument.strip()
        if not name:
            return self._bad(b"-ERR USER needs a mailbox name")
        self._user = _text(name)
        self.write_line(b"+OK Send PASS")
        return None

    def do_PASS(self, argument: bytes) -> defer.Deferred | None:
        if self._refuse_plaintext():
            return None
        if self._user is None:
            return self._bad(b"-ERR Send USER first")
        user, self._user = self._user, None
        return self._login(user, argument, "USER")

    def do_AUTH(self, argument: bytes) -> defer.Deferred | None:
        if self._refuse_plaintext():
            return None
        words = argument.split()
        if not words:
            self._write_multiline(b"+OK Supported SASL mechanisms", SASL_MECHANISMS)
            return None
        if words[0].upper() not in SASL_MECHANISMS or len(words) > 2:
            return self._bad(b"-ERR Unsupported authentication mechanism")
        if self._throttled("", "PLAIN"):
            return None
        if len(words) == 1:
            self._awaiting_sasl = True
            self.write_line(b"+ ")
            return None
        return self._sasl_response(words[1])

    def _sasl_response(self, response: bytes) -> defer.Deferred | None:
        if response == b"*":
            self.write_line(b"-ERR Authentication cancelled")
            return None
        try:
            message = sasl.decode_response(response)
        except sasl.SaslError:
            return self._bad(b"-ERR Invalid base64 in authentication response")
        plain = sasl.parse_plain(message)
        if plain is None or not plain.acts_as_self():
            self._login_refused(plain.authcid if plain else "", "PLAIN", "credentials")
            self.write_line(AUTH_FAILED)
            return None
        return self._login(plain.authcid, plain.password, "PLAIN")

    def _throttled(self, username: str, mechanism: str) -> bool:
        """Refuse, without checking anything, a login from an address being throttled.

        Not itself a failure for the throttle: no password was tried, and
        counting it would keep a blocked address blocked for as long as it
        keeps knocking.
        """
        ip, now = self._peer_ip(), self.provider.now()
        if not self.provider.throttle.is_blocked(ip, now):
            return False
        self._login_refused(username, mechanism, "throttled")
        failing = self.provider.throttle.retry_after(ip, now) > timedelta(0)
        self.write_line(THROTTLED if failing else BUSY)
        return True

    def _login(self, username: str, password: bytes, mechanism: str) -> defer.Deferred | None:
        if self._throttled(username, mechanism):
            return None
        credentials = UsernamePassword(username.encode("utf-8"), password)
        d = self.provider.counted_check(
            self._peer_ip(), self.portal.login, credentials, None, IPopMailbox
        )
        return d.addCallbacks(
            self._logged_in,
            self._login_failed,
            callbackArgs=(mechanism,),
            errbackArgs=(username, mechanism),
        )

    def _logged_in(
        self, avatar: tuple[type[Interface], Maildrop, Callable[[], None]], mechanism: str
    ) -> None:
        _, maildrop, logout = avatar
        if not self._connected:
            logout()
            return
        self.maildrop, self._logout = maildrop, logout
        ip = self._peer_ip()
        now = self.provider.now()
        self.provider.logins.record(ip, maildrop.account, now)
        self.provider.events.emit(
            events.POP_LOGIN, now, ip=ip, account=maildrop.account, mechanism=mechanism
        )
        count, octets = maildrop.mailbox.totals()
        self.write_line(b"+OK Logged in, %d messages (%d octets)" % (count, octets))

    def _login_failed(self, reason: failure.Failure, username: str, mechanism: str) -> None:
        if reason.check(cred_error.LoginFailed):
            reply, cause = AUTH_FAILED, "credentials"
        elif reason.check(MailboxInUse):
            reply, cause = IN_USE, "in-use"
        elif reason.check(defer.CancelledError):
            reply, cause = SHUTTING_DOWN, "shutdown"
        else:
            log.err(reason, "POP3 maildrop could not be opened")
            reply, cause = STORAGE_FAILED, "storage"
        self._login_refused(username, mechanism, cause)
        if self._connected:
            self.write_line(reply)
            if cause == "shutdown":
                self.close()

    def _login_refused(self, username: str, mechanism: str, cause: str) -> None:
        """Log a refused login; a refusal for bad credentials also counts towards the throttle."""
        if cause == "credentials":
            self.provider.throttle.record_failure(self._peer_ip(), self.provider.now())
        self.provider.events.emit(
            events.POP_LOGIN_FAILED,
            self.provider.now(),
            ip=self._peer_ip(),
            account=username,
            mechanism=mechanism,
            reason=cause,
        )

    # TRANSACTION

    def _numbers(self, argument: bytes, count: int) -> list[int] | None:
        """Exactly ``count`` numeric arguments, or None after a syntax error reply."""
        words = argument.split()
        numbers = [parse_number(word) for word in words]
        if len(words) != count or None in numbers:
            self._bad(b"-ERR Syntax error: expected %d numeric argument(s)" % count)
            return None
        return numbers  # type: ignore[return-value]

    def do_STAT(self, argument: bytes) -> None:
        self.write_line(b"+OK %d %d" % self.mailbox.totals())

    def do_LIST(self, argument: bytes) -> None:
        self._listing(argument, lambda message: b"%d" % message.size, b"octets")

    def do_UIDL(self, argument: bytes) -> None:
        self._listing(argument, lambda message: message.uid.encode("ascii"), b"unique ids")

    def _listing(self, argument: bytes, field: Callable[[PopMessage], bytes], what: bytes) -> None:
        if not argument.strip():
            self._write_multiline(
                b"+OK %s follow" % what,
                (b"%d %s" % (number, field(message)) for number, message in self.mailbox.live()),
            )
            return
        numbers = self._numbers(argument, 1)
        if numbers is None:
            return
        message = self.mailbox.message(numbers[0])
        if message is None:
            self.write_line(NO_SUCH_MESSAGE)
            return
        self.write_line(b"+OK %d %s" % (numbers[0], field(message)))

    def do_RETR(self, argument: bytes) -> defer.Deferred | None:
        numbers = self._numbers(argument, 1)
        if numbers is None:
            return None
        return self._send_message(numbers[0], lambda data: data, b"+OK %d octets")

    def do_TOP(self, argument: bytes) -> defer.Deferred | None:
        numbers = self._numbers(argument, 2)
        if numbers is None:
            return None
        number, body_lines = numbers
        return self._send_message(number, lambda data: top_text(data, body_lines), b"+OK")

    def _send_message(
        self,
        number: int,
        cut: Callable[[bytes], bytes],
        first: bytes,
    ) -> defer.Deferred | None:
        message = self.mailbox.message(number)
        if message is None:
            self.write_line(NO_SUCH_MESSAGE)
            return None
        if b"%d" in first:
            first = first % message.size

        def send(data: bytes) -> None:
            self.transport.write(first + b"\r\n" + wire_text(cut(data)))

        data = self._read_ahead.pop(number, None)
        if data is not None:
            send(data)
            return None
        return self._read_then_send(number, message, send)

    def _read_then_send(
        self, number: int, message: PopMessage, send: Callable[[bytes], None]
    ) -> defer.Deferred:
        """Read ``number`` and, while the client reads in order, more after it; then send it."""

        def read(found: dict[int, bytes]) -> None:
            self._read_ahead = found
            self._read_ahead_next = max(found) + 1
            send(found.pop(number))

        def unreadable(reason: failure.Failure) -> None:
            log.err(reason, "POP3 message could not be read")
            self.write_line(b"-ERR [SYS/TEMP] Message could not be read")

        self._read_ahead = {}
        run = self.provider.run_reading
        if run is None or message.size > READ_AHEAD_BYTES:
            run = self.provider.run_blocking  # one large read would hold up every session's
        if number != self._read_ahead_next:
            self._read_ahead_budget = 0
        budget = self._read_ahead_budget
        self._read_ahead_budget = min(READ_AHEAD_BYTES, max(2 * budget, FIRST_READ_AHEAD_BYTES))
        d = run(self.mailbox.read_ahead, number, budget)
        return d.addCallbacks(read, unreadable)

    def do_DELE(self, argument: bytes) -> None:
        numbers = self._numbers(argument, 1)
        if numbers is None:
            return
        number = numbers[0]
        if self.mailbox.delete(number):
            self._read_ahead.pop(number, None)
            self.write_line(b"+OK Message %d marked for deletion" % number)
        elif number in self.mailbox.deleted:
            self.write_line(b"-ERR Message %d already deleted" % number)
        else:
            self.write_line(NO_SUCH_MESSAGE)

    def do_RSET(self, argument: bytes) -> None:
        self.mailbox.undelete_all()
        self.write_line(b"+OK Maildrop has %d messages (%d octets)" % self.mailbox.totals())

    def do_NOOP(self, argument: bytes) -> None:
        self.write_line(b"+OK")

    def do_QUIT(self, argument: bytes) -> defer.Deferred | None:
        if self.maildrop is None:
            self.write_line(b"+OK mailhost POP3 server signing off")
            self.close()
            return None
        remaining = len(self.mailbox.live())
        self._committing = True

        def committed(failed: list[str]) -> None:
            if failed:
                self.write_line(b"-ERR [SYS/TEMP] Some deleted messages not removed")
            else:
                self.write_line(b"+OK mailhost POP3 server signing off (%d left)" % remaining)

        def not_committed(reason: failure.Failure) -> None:
            log.err(reason, "POP3 UPDATE failed")
            self.write_line(b"-ERR [SYS/TEMP] Some deleted messages not removed")

        def finish(result: None) -> None:
            self._committing = False
            self._end_session()
            if self._connected:
                self.close()

        d = self.provider.run_blocking(self.mailbox.commit)
        return d.addCallbacks(committed, not_committed).addCallback(finish)


AUTHORIZATION_COMMANDS = frozenset({b"CAPA", b"STLS", b"USER", b"PASS", b"AUTH", b"QUIT"})
TRANSACTION_COMMANDS = frozenset(
    {b"CAPA", b"STAT", b"LIST", b"UIDL", b"TOP", b"RETR", b"DELE", b"RSET", b"NOOP", b"QUIT"}
)


class POP3Factory(protocol.Factory):
    """Builds POP3 sessions on one provider; every factory shares the maildrop locks."""

    def __init__(self, provider: Provider, locks: MailboxLocks = POP3_LOCKS) -> None:
        self.provider = provider
        self.portal = provider.portal(PopMailboxRealm(provider, locks))

    def buildProtocol(self, addr: object) -> POP3Server:
        server = POP3Server(self.provider, self.portal)
        server.factory = self
        return server
