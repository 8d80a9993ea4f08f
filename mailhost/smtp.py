"""ESMTP for the MX and submission listeners: a thin adapter over ``delivery``.

Written on :class:`mailhost.lines.LineProtocol` rather than on
``twisted.mail.smtp.ESMTP``, which answers a pipelined QUIT before the storage
Deferred fires (RFC 2920 §3.2), advertises AUTH whatever the schedule, allows
AUTH inside a transaction, has no enhanced status codes (RFC 2034) or
SIZE/8BITMIME/PIPELINING, and silently rewrites source-routed addresses.

Every decision about who may send is :func:`mailhost.delivery.decide`'s; this
module parses commands, keeps session state, enforces the protocol limits and
turns answers into replies. Replies carry RFC 3463 enhanced codes except the
greeting, the EHLO/HELO replies (RFC 2034 §3) and the 334/354 intermediates.

Line limits: a command line is at most 512 octets (RFC 5321 §4.5.3.1.4), but
an AUTH line or SASL response may reach 12288 (RFC 4954 §4), so the line
buffer is sized for the latter and the 512 is checked per command here. A
message text line is at most 1000 octets (§4.5.3.1.6).

TLS: STARTTLS (RFC 3207) is offered when the provider has TLS options and
the connection is not TLS yet; after the 220 the plaintext the client sent
behind the command is dropped and the session starts over (§4.2), so neither
injected commands nor the pre-TLS EHLO, transaction or login survive. AUTH is
offered only where a password may travel: over TLS, from loopback, or with
``allow_plaintext_auth`` (:func:`mailhost.policy.plaintext_auth_allowed`);
elsewhere AUTH gets ``538 5.7.11`` (RFC 4954 §6). An address with too many
recent failures (:class:`mailhost.throttle.AuthThrottle`) gets ``454 4.7.0``
before any password is checked.
"""

from __future__ import annotations

import base64
import math
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import timedelta

from twisted.cred import error as cred_error
from twisted.cred.credentials import UsernamePassword
from twisted.internet import defer, protocol
from twisted.internet.interfaces import IDelayedCall
from twisted.logger import Logger
from twisted.python.failure import Failure

from mailhost import delivery, events, policy, sasl
from mailhost.addresses import AddressError, parse_path
from mailhost.faults import Fault
from mailhost.lines import LineProtocol
from mailhost.provider import Provider
from mailhost.schedule import format_instant

MAX_SASL_LINE = 12288
MAX_TEXT_LINE = 1000

LOGIN_USERNAME_CHALLENGE = base64.b64encode(b"Username:").decode("ascii")
LOGIN_PASSWORD_CHALLENGE = base64.b64encode(b"Password:").decode("ascii")
BODY_TYPES = ("7BIT", "8BITMIME")

"""Event kind for a fault from :attr:`Provider.faults` applied to a command (SMTP or POP3)."""
FAULT_TEXT = "Fault injected"
_ENHANCED_CODE = re.compile(r"[245]\.[0-9]{1,3}\.[0-9]{1,3}(?: |$)")

_log = Logger()


class Refusal(Exception):
    """A command refused with ``code enhanced text``."""

    def __init__(self, code: int, enhanced: str, text: str) -> None:
        super().__init__(f"{code} {enhanced} {text}")
        self.code = code
        self.enhanced = enhanced
        self.text = text


@dataclass(frozen=True)
class PathArgument:
    """``FROM:<path>`` or ``TO:<path>`` and its ``KEY[=VALUE]`` parameters (keys upper-cased)."""

    path: str
    parameters: dict[str, str | None]


def _path_end(text: str) -> int:
    """Index of the ``>`` closing the path that starts ``text`` (quoted parts may hold ``>``)."""
    quoted = False
    index = 1
    while index < len(text):
        char = text[index]
        if quoted and char == "\\":
            index += 2
            continue
        if char == '"':
            quoted = not quoted
        elif char == ">" and not quoted:
            return index
        index += 1
    raise Refusal(501, "5.5.4", "unterminated path: expected <address>")


def parse_path_argument(argument: str, keyword: str) -> PathArgument:
    """Split a MAIL/RCPT argument; a space after the colon is tolerated, as most servers do."""
    prefix = keyword + ":"
    if argument[: len(prefix)].upper() != prefix:
        raise Refusal(501, "5.5.4", f"Syntax: {prefix}<address>")
    rest = argument[len(prefix) :].lstrip(" ")
    if not rest.startswith("<"):
        raise Refusal(501, "5.5.4", f"Syntax: {prefix}<address> (angle brackets are required)")
    end = _path_end(rest)
    path, tail = rest[: end + 1], rest[end + 1 :]
    if tail and not tail.startswith(" "):
        raise Refusal(501, "5.5.4", "parameters must follow the path after a space")
    parameters: dict[str, str | None] = {}
    for word in tail.split():
        key, has_value, value = word.partition("=")
        if not key or (has_value and not value):
            raise Refusal(501, "5.5.4", f"bad parameter {word!r}")
        parameters[key.upper()] = value if has_value else None
    return PathArgument(path, parameters)


def check_mail_parameters(
    parameters: dict[str, str | None], max_size: int, auth_offered: bool = True
) -> None:
    """SIZE (RFC 1870), BODY (RFC 6152) and AUTH (RFC 4954 §5, accepted and ignored)."""
    for key, value in parameters.items():
        if key == "SIZE":
            if value is None or not (value.isascii() and value.isdigit()):
                raise Refusal(501, "5.5.4", "SIZE needs a number of octets")
            if int(value) > max_size:
                raise Refusal(
                    552, "5.3.4", f"message size exceeds fixed maximum of {max_size} octets"
                )
        elif key == "BODY":
            if value is None or value.upper() not in BODY_TYPES:
                raise Refusal(555, "5.5.4", "BODY must be 7BIT or 8BITMIME")
        elif key != "AUTH" or not auth_offered:
            raise Refusal(555, "5.5.4", f"MAIL parameter {key} is not supported")


def data_line(line: bytes) -> bytes | None:
    """The text a DATA line carries after dot-unstuffing (RFC 5321 §4.5.2); None ends the data."""
    if line == b".":
        return None
    if line.startswith(b"."):
        return line[1:]
    return line


@dataclass
class MessageReader:
    """Collects DATA text up to the size limit, reading on to the final dot whatever happens.

    Once the message is too big or has an over-long line it can never be
    stored, so what was collected is dropped and later text is only counted.
    Lines are CRLF-delimited (RFC 5321 §4.1.1.4): a bare LF inside one is
    message text, stored as the line end it means, never an end of data.
    Text is taken in blocks of whole lines (:meth:`feed_block`); a partial line
    waits for its end unless it grows past ``max_pending`` octets, when the
    message is refused and the rest of that line discarded, never buffered.
    """

    max_size: int
    max_line: int = MAX_TEXT_LINE
    max_pending: int = MAX_SASL_LINE
    body: bytearray = field(default_factory=bytearray)
    size: int = 0
    too_big: bool = False
    long_line: bool = False
    _discarding: bool = False

    def feed(self, line: bytes) -> bool:
        """Take one line (without its CRLF); True when it was the final dot."""
        return self.feed_block(line + b"\r\n")[1]

    def feed_block(self, data: bytes) -> tuple[int, bool]:
        """Take the whole lines at the start of ``data``, which starts a line.

        Returns how many octets were consumed and whether the final dot was
        among them (then nothing after it is consumed).
        """
        pos = 0
        if self._discarding:
            end = data.find(b"\r\n")
            if end < 0:
                return len(data) - data.endswith(b"\r"), False
            pos = end + 2
            self._discarding = False
        if data.startswith(b".\r\n", pos):
            return pos + 3, True
        final = data.find(b"\r\n.\r\n", pos)
        if final >= 0:
            self._take(data[pos : final + 2])
            return final + 5, True
        last = data.rfind(b"\r\n", pos)
        stop = pos if last < 0 else last + 2
        if stop > pos:
            self._take(data[pos:stop])
        if len(data) - stop > self.max_pending:
            self.line_too_long()
            self._discarding = True
            return len(data) - data.endswith(b"\r"), False
        return stop, False

    def _take(self, lines: bytes) -> None:
        """Whole CRLF lines: unstuff dots (RFC 5321 §4.5.2), count, check, keep with LF ends.

        A CRLF line past ``max_pending`` is refused here too, not only while it is
        still partial, so how the text happened to be split never changes the answer
        (text with bare LF line ends is one long CRLF line).
        """
        if (
            len(lines) > self.max_pending
            and max(map(len, lines.split(b"\r\n"))) + 2 > self.max_pending
        ):
            self.long_line = True
        text = lines[1:] if lines.startswith(b".") else lines
        text = text.replace(b"\r\n.", b"\r\n")
        self.size += len(text)
        if self.size > self.max_size:
            self.too_big = True
        text = text.replace(b"\r\n", b"\n")
        if (
            not self.long_line
            and len(text) >= self.max_line - 1
            and max(map(len, text.split(b"\n"))) + 2 > self.max_line
        ):
            self.long_line = True
        if self.refused:
            self.body = bytearray()
        else:
            self.body += text

    def line_too_long(self) -> None:
        self.long_line = True
        self.body = bytearray()

    @property
    def refused(self) -> bool:
        return self.too_big or self.long_line

    def content(self) -> bytes:
        """The message with LF line ends, as Maildir stores it."""
        return bytes(self.body)


_UNPRINTABLE = re.compile(r"[^\t\x20-\x7e]")


def printable(text: str) -> str:
    """Text safe inside a reply line: a CR, LF or control byte from a client becomes '?'."""
    return _UNPRINTABLE.sub("?", text)


def throttled_text(retry_after: timedelta) -> str:
    """The 454 text for a throttled address, with whole seconds rounded up (never "0 s").

    No wait means the failures alone are under the limit and the checks still
    running from the address fill it: those may all be good passwords (many
    clients behind one NAT), so the text does not call them failures.
    """
    if retry_after <= timedelta(0):
        return "Too many authentications in progress from your address; try again shortly"
    seconds = math.ceil(retry_after.total_seconds())
    return f"Too many failed authentications from your address; try again in {seconds} s"


def smtp_auth_off_text(provider: Provider) -> str:
    since = provider.schemes.smtp_auth.off_since(provider.now())
    if since is None:
        return "SMTP-Auth is off"
    return f"SMTP-Auth is off since {format_instant(since)}"


class SMTPServer(LineProtocol):
    """One ESMTP session on the MX or the submission listener."""

    max_line_length = MAX_SASL_LINE

    def __init__(self, provider: Provider, role: policy.Role) -> None:
        self.provider = provider
        self.role = role
        self.callLater = provider.clock.reactor_time.callLater
        self.peer_ip = ""
        self.helo: str | None = None
        self.extended = False
        self.auth_account: str | None = None
        self.auth_failures = 0
        self.bad_commands = 0
        self._sasl: Callable[[str], defer.Deferred | None] | None = None
        self._message: MessageReader | None = None
        self._data_timer: IDelayedCall | None = None
        self._drop_after_data = False
        self._reset_transaction()
        self._commands: dict[str, Callable[[str], defer.Deferred | None]] = {
            "HELO": self.do_HELO,
            "EHLO": self.do_EHLO,
            "MAIL": self.do_MAIL,
            "RCPT": self.do_RCPT,
            "DATA": self.do_DATA,
            "AUTH": self.do_AUTH,
            "STARTTLS": self.do_STARTTLS,
            "RSET": self.do_RSET,
            "NOOP": self.do_NOOP,
            "QUIT": self.do_QUIT,
            "VRFY": self.do_VRFY,
            "EXPN": self.do_EXPN,
            "HELP": self.do_HELP,
        }

    def _reset_transaction(self) -> None:
        self.sender: str | None = None
        self.recipients: list[delivery.Destination] = []
        self.decisions: list[policy.Decision] = []

    @property
    def hostname(self) -> str:
        return self.provider.hostname

    def origin(self) -> delivery.Origin:
        tls = self.tls_active
        return delivery.Origin(
            peer_ip=self.peer_ip,
            role=self.role,
            helo=self.helo or "",
            protocol=delivery.received_protocol(self.extended, tls, self.auth_account is not None),
            smtp_auth_account=self.auth_account,
            tls=tls,
        )

    def plaintext_auth_allowed(self) -> bool:
        return policy.plaintext_auth_allowed(
            self.peer_ip, self.tls_active, self.provider.allow_plaintext_auth
        )

    def auth_offered(self) -> bool:
        """AUTH is advertised only where it would be accepted (RFC 4954 §6 on 538)."""
        return (
            self.provider.schemes.smtp_auth.is_on(self.provider.now())
            and self.plaintext_auth_allowed()
        )

    def reply(self, code: int, enhanced: str | None, text: str) -> None:
        """One reply line; client text echoed in it is reduced to printable ASCII."""
        status = f"{code} {enhanced}" if enhanced else str(code)
        self.write_line(f"{status} {printable(text)}".encode("ascii"))

    def refuse(self, refusal: Refusal) -> None:
        self.reply(refusal.code, refusal.enhanced, refusal.text)

    def bad_command(self, code: int, enhanced: str, text: str) -> None:
        """Reply to a malformed or unknown command; past the limit, give up on the client."""
        self.bad_commands += 1
        if self.bad_commands > self.provider.limits.max_bad_commands:
            self.reply(421, "4.7.0", f"{self.hostname} Error: too many bad commands, closing")
            self.close()
        else:
            self.reply(code, enhanced, text)

    def connectionMade(self) -> None:
        super().connectionMade()
        self.peer_ip = self.transport.getPeer().host
        refusal = self.admit(self.provider.connections, self.peer_ip)
        if refusal is not None:
            self.reply(421, "4.7.0", f"{self.hostname} {refusal.value}; try again later")
            self.close()
            return
        self.setTimeout(self.provider.limits.smtp_idle_timeout)
        self.reply(220, None, f"{self.hostname} ESMTP mailhost")

    def timeoutConnection(self) -> None:
        self.reply(421, "4.4.2", f"{self.hostname} Error: idle timeout, closing connection")
        self.close()

    def line_received(self, line: bytes) -> defer.Deferred | None:
        if self._sasl is not None:
            return self._sasl_line(line.decode("latin-1"))
        text = line.decode("latin-1")
        verb, _, argument = text.partition(" ")
        verb = verb.upper()
        if verb != "AUTH" and len(line) + 2 > self.provider.limits.max_command_line:
            self.bad_command(500, "5.5.2", "Line too long")
            return None
        handler = self._commands.get(verb)
        if handler is None:
            self.bad_command(500, "5.5.2", "Error: command not recognized")
            return None
        fault = self.provider.faults.take("smtp", verb)
        if fault is not None:
            return self._apply_fault(fault, verb, handler, argument)
        return handler(argument)

    def _apply_fault(
        self,
        fault: Fault,
        verb: str,
        handler: Callable[[str], defer.Deferred | None],
        argument: str,
    ) -> defer.Deferred | None:
        """Do what a test asked for instead of (or before) handling the command.

        Only whole commands get here: DATA text and SASL responses are parts
        of a command already under way. A 421 reply closes the connection, as
        the code promises (RFC 5321 §3.8), so clients react as they would to
        a real one. A drop on DATA waits for the message first, since "the
        server vanished after the final dot" is the case worth testing.
        """
        self.provider.events.emit(
            events.FAULT_APPLIED,
            self.provider.now(),
            protocol="smtp",
            command=verb,
            action=fault.action,
            fault_id=fault.id,
            ip=self.peer_ip,
        )
        if fault.action == "reply":
            assert fault.code is not None
            text = fault.text or FAULT_TEXT
            enhanced = None if _ENHANCED_CODE.match(text) else f"{fault.code // 100}.3.0"
            self.reply(fault.code, enhanced, text)
            if fault.code == 421:
                self.close()
            return None
        if fault.action == "delay":
            return self.handle_after(
                fault.delay_ms, self.provider.limits.smtp_idle_timeout, handler, argument
            )
        if verb == "DATA":
            self._drop_after_data = True
            result = handler(argument)
            if self._message is None:
                # Refused, so no message follows: drop now rather than never.
                self._drop_after_data = False
                self.close()
            return result
        self.close()
        return None

    def line_too_long(self) -> None:
        if self._sasl is not None:
            self._sasl = None
            self.reply(500, "5.5.6", "Authentication exchange line is too long")
        else:
            self.bad_command(500, "5.5.2", "Line too long")

    def do_HELO(self, argument: str) -> None:
        self._greet(argument, extended=False)

    def do_EHLO(self, argument: str) -> None:
        self._greet(argument, extended=True)

    def _greet(self, argument: str, extended: bool) -> None:
        words = argument.split()
        if not words:
            self.bad_command(501, "5.5.4", "Syntax: EHLO domain or address literal")
            return
        self.helo = words[0]
        self.extended = extended
        self._reset_transaction()
        if not extended:
            self.reply(250, None, self.hostname)
            return
        lines = [
            self.hostname,
            f"SIZE {self.provider.limits.max_message_size}",
            "8BITMIME",
            "PIPELINING",
            "ENHANCEDSTATUSCODES",
        ]
        if self.tls_available(self.provider.tls_options):
            lines.append("STARTTLS")
        if self.auth_offered():
            lines.append("AUTH PLAIN LOGIN")
        for line in lines[:-1]:
            self.write_line(f"250-{line}".encode("ascii"))
        self.write_line(f"250 {lines[-1]}".encode("ascii"))

    def do_STARTTLS(self, argument: str) -> None:
        """RFC 3207: reply 220, switch to TLS, and start the session over."""
        if self.tls_active:
            self.reply(503, "5.5.1", "Error: TLS is already active")
            return
        if not self.tls_available(self.provider.tls_options):
            self.reply(502, "5.5.1", "Error: STARTTLS is not offered")
            return
        if argument.strip():
            self.bad_command(501, "5.5.4", "Syntax: STARTTLS (no parameters)")
            return
        if self.sender is not None:
            self.reply(503, "5.5.1", "Error: STARTTLS is not allowed during a mail transaction")
            return
        self.reply(220, "2.0.0", "Ready to start TLS")
        self.start_tls(self.provider.tls_options)
        self._forget_session()

    def _forget_session(self) -> None:
        """RFC 3207 §4.2: back to just after the greeting; nothing said in plaintext counts.

        The failure counts stay: they describe the client, not the session.
        """
        self.helo = None
        self.extended = False
        self.auth_account = None
        self._sasl = None
        self._reset_transaction()

    def do_MAIL(self, argument: str) -> None:
        if self.helo is None:
            self.reply(503, "5.5.1", "Error: send HELO/EHLO first")
            return
        if self.sender is not None:
            self.reply(503, "5.5.1", "Error: nested MAIL command")
            return
        try:
            parsed = parse_path_argument(argument, "FROM")
        except Refusal as refusal:
            self.bad_command(refusal.code, refusal.enhanced, refusal.text)
            return
        try:
            address = parse_path(parsed.path)
        except AddressError as e:
            self.reply(553, "5.1.7", f"Bad sender address syntax: {e}")
            return
        try:
            if parsed.parameters and not self.extended:
                raise Refusal(555, "5.5.4", "MAIL parameters need EHLO")
            check_mail_parameters(
                parsed.parameters, self.provider.limits.max_message_size, self.auth_offered()
            )
        except Refusal as refusal:
            self.refuse(refusal)
            return
        sender = "" if address is None else str(address)
        decision = delivery.decide(self.provider, self.origin(), sender, None)
        if not decision.allowed:
            self.reply(decision.code, decision.enhanced, decision.reason)
            return
        self.sender = sender
        self.decisions.append(decision)
        self.reply(250, "2.1.0", "Ok")

    def do_RCPT(self, argument: str) -> None:
        if self.sender is None:
            self.reply(503, "5.5.1", "Error: need MAIL command")
            return
        try:
            parsed = parse_path_argument(argument, "TO")
        except Refusal as refusal:
            self.bad_command(refusal.code, refusal.enhanced, refusal.text)
            return
        if parsed.parameters:
            self.reply(555, "5.5.4", "RCPT parameters are not supported")
            return
        if parsed.path.lower() == "<postmaster>":
            destination = delivery.postmaster(self.provider)
        else:
            try:
                address = parse_path(parsed.path)
            except AddressError as e:
                self.reply(553, "5.1.3", f"Bad recipient address syntax: {e}")
                return
            if address is None:
                self.reply(553, "5.1.3", "the null path <> is not a recipient")
                return
            destination = delivery.classify(self.provider, address)
        if len(self.recipients) >= self.provider.limits.max_recipients:
            self.reply(452, "4.5.3", "Error: too many recipients")
            return
        decision = delivery.decide(self.provider, self.origin(), self.sender, destination)
        if not decision.allowed:
            self.reply(decision.code, decision.enhanced, decision.reason)
            return
        self.recipients.append(destination)
        self.decisions.append(decision)
        self.reply(250, "2.1.5", "Ok")

    def do_DATA(self, argument: str) -> None:
        if self.sender is None:
            self.reply(503, "5.5.1", "Error: need MAIL command")
            return
        if not self.recipients:
            self.reply(503, "5.5.1", "Error: no valid recipients")
            return
        if argument.strip():
            self.bad_command(501, "5.5.4", "Syntax: DATA (no arguments)")
            return
        limits = self.provider.limits
        self._message = MessageReader(
            limits.max_message_size, limits.max_text_line, self.max_line_length
        )
        self.text_receiver = self._data_text
        self._data_timer = self.callLater(
            self.provider.limits.max_data_seconds, self._data_too_slow
        )
        self.reply(354, None, "End data with <CR><LF>.<CR><LF>")

    def _data_too_slow(self) -> None:
        """A sender trickling its message (slowloris) loses the connection, and the message."""
        self._data_timer = None
        self._message = None
        self.text_receiver = None
        limit = int(self.provider.limits.max_data_seconds)
        self.reply(421, "4.4.2", f"{self.hostname} Error: DATA took longer than {limit} s, closing")
        self.close()

    def _cancel_data_timer(self) -> None:
        if self._data_timer is not None:
            if self._data_timer.active():
                self._data_timer.cancel()
            self._data_timer = None

    def connectionLost(self, reason: object = protocol.connectionDone) -> None:
        super().connectionLost(reason)
        self._cancel_data_timer()

    def _data_text(self, data: bytes) -> tuple[int, defer.Deferred | None]:
        assert self._message is not None
        consumed, ended = self._message.feed_block(data)
        if not ended:
            return consumed, None
        if self._drop_after_data:
            self._drop_message()
            return consumed, None
        return consumed, self._end_of_data()

    def _drop_message(self) -> None:
        """A drop fault on DATA: the whole message arrived; close without storing or replying."""
        self._drop_after_data = False
        self._message = None
        self.text_receiver = None
        self._cancel_data_timer()
        self._reset_transaction()
        self.close()

    def _end_of_data(self) -> defer.Deferred | None:
        """Store the message, replying only once it is durable.

        While storage runs it is the server's turn, so the idle timer stops.

        A message with a line over 1000 octets is refused with ``554 5.6.0``:
        554 because the transaction failed as a whole after the final dot
        (RFC 5321 §4.2.3), 5.6.0 because the content, not the envelope, is
        what cannot be accepted (RFC 3463 "other or undefined media error").
        """
        message, self._message = self._message, None
        self.text_receiver = None
        self._cancel_data_timer()
        assert message is not None
        sender, recipients = self.sender, tuple(self.recipients)
        assert sender is not None
        authorisation = next((d for d in self.decisions if d.scheme is not None), None)
        self._reset_transaction()
        if message.too_big:
            limit = self.provider.limits.max_message_size
            self.reply(552, "5.3.4", f"message exceeds fixed maximum of {limit} octets")
            return None
        if message.long_line:
            limit = self.provider.limits.max_text_line
            self.reply(554, "5.6.0", f"message has a line longer than {limit} octets")
            return None
        self.setTimeout(None)
        d = delivery.store(
            self.provider,
            self.origin(),
            delivery.Envelope(sender, recipients),
            message.content(),
            authorisation,
        )

        def stored(message_id: str) -> None:
            self.reply(250, "2.0.0", f"Ok: queued as {message_id}")

        def failed(failure: Failure) -> None:
            _log.failure("storing a message from {ip} failed", failure, ip=self.peer_ip)
            self.reply(451, "4.3.0", "Error: local error in processing, message not stored")

        def restart_idle_timer(_: None) -> None:
            if not self._closed:
                self.setTimeout(self.provider.limits.smtp_idle_timeout)

        return d.addCallbacks(stored, failed).addCallback(restart_idle_timer)

    def do_AUTH(self, argument: str) -> defer.Deferred | None:
        if self.auth_failures >= self.provider.limits.max_auth_failures:
            self.reply(421, "4.7.0", f"{self.hostname} Error: too many authentication failures")
            self.close()
            return None
        if not self.extended:
            self.reply(503, "5.5.1", "Error: send EHLO first")
            return None
        if not self.provider.schemes.smtp_auth.is_on(self.provider.now()):
            self.reply(502, "5.5.1", smtp_auth_off_text(self.provider))
            return None
        if self.auth_account is not None:
            self.reply(503, "5.5.1", "Error: already authenticated")
            return None
        if self.sender is not None:
            self.reply(503, "5.5.1", "Error: AUTH is not allowed during a mail transaction")
            return None
        words = argument.split()
        if not 1 <= len(words) <= 2:
            self.bad_command(501, "5.5.4", "Syntax: AUTH mechanism [initial-response]")
            return None
        mechanism = words[0].upper()
        initial = words[1] if len(words) == 2 else None
        if mechanism not in ("PLAIN", "LOGIN"):
            self.reply(504, "5.5.4", "Unrecognized authentication type (use PLAIN or LOGIN)")
            return None
        if not self.plaintext_auth_allowed():
            self.provider.events.emit(
                events.SMTP_AUTH_FAILED,
                self.provider.now(),
                ip=self.peer_ip,
                role=self.role.value,
                username="",
                mechanism=mechanism,
                reason="plaintext-without-tls",
            )
            self.reply(538, "5.7.11", "Encryption required for requested authentication mechanism")
            return None
        if self._throttled(mechanism, ""):
            return None
        if mechanism == "PLAIN":
            if initial is None:
                self._sasl = self._plain_response
                self.write_line(b"334 ")
                return None
            return self._plain_response(initial)
        if initial is None:
            self._sasl = self._login_username
            self.write_line(f"334 {LOGIN_USERNAME_CHALLENGE}".encode("ascii"))
            return None
        return self._login_username(initial)

    def _sasl_line(self, text: str) -> defer.Deferred | None:
        handler, self._sasl = self._sasl, None
        assert handler is not None
        if text.strip() == "*":
            self.reply(501, "5.7.0", "Authentication cancelled")
            return None
        return handler(text)

    def _plain_response(self, text: str) -> defer.Deferred | None:
        response = self._decode(text)
        if response is None:
            return None
        credentials = sasl.parse_plain(response)
        if credentials is None or not credentials.acts_as_self():
            self._auth_failed("PLAIN", credentials.authcid if credentials else "")
            return None
        return self._check_password("PLAIN", credentials.authcid, credentials.password)

    def _login_username(self, text: str) -> None:
        raw = self._decode(text)
        if raw is None:
            return
        username = raw.decode("utf-8", "replace")
        self._sasl = lambda reply: self._login_password(username, reply)
        self.write_line(f"334 {LOGIN_PASSWORD_CHALLENGE}".encode("ascii"))

    def _login_password(self, username: str, text: str) -> defer.Deferred | None:
        password = self._decode(text)
        if password is None:
            return None
        return self._check_password("LOGIN", username, password)

    def _decode(self, text: str) -> bytes | None:
        try:
            return sasl.decode_response(text)
        except sasl.SaslError as e:
            self.reply(501, "5.5.2", str(e))
            return None

    def _check_password(
        self, mechanism: str, username: str, password: bytes
    ) -> defer.Deferred | None:
        """Ask the checker, which runs bcrypt off the reactor thread.

        The throttle is asked again here: the address may have been blocked by
        another session while this one was prompting for the password.
        """
        if self._throttled(mechanism, username):
            return None
        credentials = UsernamePassword(username.encode("utf-8"), password)
        d = self.provider.counted_check(
            self.peer_ip, self.provider.checker().requestAvatarId, credentials
        )

        def succeeded(account: str) -> None:
            self.auth_account = account
            self.provider.events.emit(
                events.SMTP_AUTH,
                self.provider.now(),
                ip=self.peer_ip,
                role=self.role.value,
                account=account,
                mechanism=mechanism,
            )
            self.reply(235, "2.7.0", "Authentication successful")

        def failed(failure: Failure) -> None:
            if failure.check(cred_error.UnauthorizedLogin):
                self._auth_failed(mechanism, username)
                return
            if failure.check(defer.CancelledError):  # the server is stopping
                self.reply(421, "4.3.2", f"{self.hostname} Service shutting down, closing")
                self.close()
                return
            _log.failure("checking SMTP credentials failed", failure)
            self.reply(454, "4.7.0", "Temporary authentication failure")

        return d.addCallbacks(succeeded, failed)

    def _throttled(self, mechanism: str, username: str) -> bool:
        """Refuse, without checking anything, an attempt from an address being throttled.

        It counts towards this session's failures, so a client that keeps
        trying is disconnected like one that keeps guessing, but not towards
        the throttle: no password was tried, and the block should decay.
        """
        now = self.provider.now()
        throttle = self.provider.throttle
        if not throttle.is_blocked(self.peer_ip, now):
            return False
        self.auth_failures += 1
        self.provider.events.emit(
            events.SMTP_AUTH_FAILED,
            now,
            ip=self.peer_ip,
            role=self.role.value,
            username=username,
            mechanism=mechanism,
            reason="throttled",
        )
        self.reply(454, "4.7.0", throttled_text(throttle.retry_after(self.peer_ip, now)))
        return True

    def _auth_failed(self, mechanism: str, username: str) -> None:
        self.auth_failures += 1
        self.provider.throttle.record_failure(self.peer_ip, self.provider.now())
        self.provider.events.emit(
            events.SMTP_AUTH_FAILED,
            self.provider.now(),
            ip=self.peer_ip,
            role=self.role.value,
            username=username,
            mechanism=mechanism,
        )
        self.reply(535, "5.7.8", "Error: authentication failed")

    def do_RSET(self, argument: str) -> None:
        self._reset_transaction()
        self.reply(250, "2.0.0", "Ok")

    def do_NOOP(self, argument: str) -> None:
        self.reply(250, "2.0.0", "Ok")

    def do_QUIT(self, argument: str) -> None:
        self.reply(221, "2.0.0", "Bye")
        self.close()

    def do_VRFY(self, argument: str) -> None:
        """Never says whether a mailbox exists (RFC 5321 §3.5.3 allows 252)."""
        if not argument.strip():
            self.bad_command(501, "5.5.4", "Syntax: VRFY address")
            return
        self.reply(252, "2.0.0", "Cannot VRFY user, but will accept message and attempt delivery")

    def do_EXPN(self, argument: str) -> None:
        self.reply(502, "5.5.1", "EXPN is not supported")

    def do_HELP(self, argument: str) -> None:
        hidden = set()
        if not self.auth_offered():
            hidden.add("AUTH")
        if not self.tls_available(self.provider.tls_options):
            hidden.add("STARTTLS")
        offered = [command for command in self._commands if command not in hidden]
        self.reply(214, "2.0.0", "Commands: " + " ".join(offered))


class SMTPFactory(protocol.Factory):
    """Builds sessions for one listener; ``role`` says whether it is the MX or submission."""

    def __init__(self, provider: Provider, role: policy.Role) -> None:
        self.provider = provider
        self.role = role

    def buildProtocol(self, addr: object) -> SMTPServer:
        server = SMTPServer(self.provider, self.role)
        server.factory = self
        return server
