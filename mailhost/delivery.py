"""Between the SMTP protocol and the policy: recipients, decisions, storage.

``smtp.py`` parses commands and hands over parsed addresses; this module says
what kind of recipient an address is, asks :func:`mailhost.policy.decide`
about every MAIL and RCPT (and records each answer as an event), writes the
Received header that shows which scheme let a message in, and stores it:
one copy per local mailbox, and one copy of the whole message in the outbox
for the remote recipients (their addresses in ``X-Envelope-To:`` lines).

Stored messages use LF line ends (the Maildir convention); local copies
start with ``Return-Path:`` (RFC 5321 §4.4) and ``Delivered-To:``, the outbox
copy with its envelope in ``X-Envelope-From:``/``X-Envelope-To:``.
Nothing here speaks SMTP; nothing here blocks the reactor (the Maildir writes
go through ``provider.run_blocking``).
"""

from __future__ import annotations

import itertools
import secrets
from dataclasses import dataclass
from datetime import datetime
from email.utils import format_datetime
from pathlib import Path

from twisted.internet import defer

from mailhost import events, maildir, policy
from mailhost.addresses import Address
from mailhost.config import DataDir
from mailhost.provider import Provider

POSTMASTER = "postmaster"
NO_AUTHORISATION = "(no authorisation: local delivery)"


@dataclass(frozen=True)
class Destination:
    """A recipient as classified; ``mailbox`` is the local account whose Maildir gets it."""

    address: str
    kind: policy.Recipient
    mailbox: str | None = None


@dataclass(frozen=True)
class Origin:
    """The sending session as SMTP knows it: what decisions and the Received header need."""

    peer_ip: str
    role: policy.Role
    helo: str = ""
    protocol: str = "ESMTP"
    smtp_auth_account: str | None = None
    tls: bool = False
    """The session runs over TLS (implicit, or after STARTTLS)."""


def received_protocol(extended: bool, tls: bool, authenticated: bool) -> str:
    """The Received ``with`` keyword (RFC 3848): ESMTP plus S for TLS and A for SMTP-Auth.

    RFC 3848 has no TLS or AUTH variant of plain SMTP, and AUTH needs EHLO, so
    a HELO session is ``SMTP`` whatever else holds.
    """
    if not extended:
        return "SMTP"
    return "ESMTP" + ("S" if tls else "") + ("A" if authenticated else "")


@dataclass(frozen=True)
class Envelope:
    """One accepted transaction; ``sender`` is ``""`` for the null reverse-path."""

    sender: str
    recipients: tuple[Destination, ...]


def postmaster(provider: Provider) -> Destination:
    """The mailbox behind a bare ``<postmaster>`` (RFC 5321 §4.5.1 makes it mandatory).

    It belongs to the first local domain in sorted order, so the choice is
    stable, and is delivered even when no such account exists.
    """
    domains = sorted(provider.local_domains())
    domain = domains[0] if domains else provider.hostname.lower()
    address = f"{POSTMASTER}@{domain}"
    return Destination(address, policy.Recipient.LOCAL, address)


def classify(provider: Provider, address: Address) -> Destination:
    """Local account, unknown local, or remote; an address literal is never local.

    ``postmaster@`` a local domain is local even without an account (§4.5.1).
    """
    text = str(address)
    if address.is_address_literal or address.domain not in provider.local_domains():
        return Destination(text, policy.Recipient.REMOTE)
    account = text.lower()
    if account in provider.accounts or address.local.lower() == POSTMASTER:
        return Destination(text, policy.Recipient.LOCAL, account)
    return Destination(text, policy.Recipient.UNKNOWN_LOCAL)


def decide(
    provider: Provider, origin: Origin, sender: str, destination: Destination | None
) -> policy.Decision:
    """Decide one MAIL (``destination`` None) or RCPT, and record the decision as an event."""
    now = provider.now()
    request = policy.Request(
        peer_ip=origin.peer_ip,
        role=origin.role,
        account=origin.smtp_auth_account,
        recipient=None if destination is None else destination.kind,
        sender=sender,
    )
    decision = policy.decide(
        request, provider.schemes, provider.logins.last_login(origin.peer_ip), now
    )
    provider.events.emit(
        events.SMTP_DECISION,
        now,
        ip=origin.peer_ip,
        role=origin.role.value,
        sender=sender,
        recipient=None if destination is None else destination.address,
        smtp_auth_account=origin.smtp_auth_account,
        tls=origin.tls,
        allowed=decision.allowed,
        code=decision.code,
        enhanced=decision.enhanced,
        scheme=decision.scheme,
        authorised_account=decision.account,
        reason=decision.reason,
    )
    return decision


def authorisation_comment(authorisation: policy.Decision | None, peer_ip: str) -> str:
    """The Received comment naming the scheme that let the message in, and for whom."""
    if authorisation is None or authorisation.scheme is None:
        return NO_AUTHORISATION
    if authorisation.scheme == policy.SMTP_AFTER_POP:
        return f"({authorisation.scheme}: {authorisation.account} from {peer_ip})"
    return f"({authorisation.scheme}: {authorisation.account})"


def header_safe(text: str) -> str:
    """Client-supplied text (the HELO name) reduced to what cannot break a header or comment."""
    cleaned = "".join(c if "!" <= c <= "~" and c not in "()\\" else "?" for c in text)
    return cleaned or "unknown"


def tcp_info(peer_ip: str) -> str:
    """RFC 5321 §4.1.3 address literal for the client's address."""
    return f"[IPv6:{peer_ip}]" if ":" in peer_ip else f"[{peer_ip}]"


def received_header(
    origin: Origin,
    hostname: str,
    message_id: str,
    authorisation: policy.Decision | None,
    recipients: list[str],
    now: datetime,
) -> str:
    """The RFC 5321 §4.4 trace header, folded, LF-terminated.

    ``with`` follows RFC 3848 (see :func:`received_protocol`); the comment after the
    from-clause names the scheme that authorised the message.
    """
    lines = [
        f"Received: from {header_safe(origin.helo)} ({tcp_info(origin.peer_ip)})",
        "\t" + authorisation_comment(authorisation, origin.peer_ip),
        f"\tby {hostname} (mailhost) with {origin.protocol} id {message_id}",
    ]
    date = "; " + format_datetime(now)
    if len(recipients) == 1:
        lines.append(f"\tfor <{recipients[0]}>{date}")
    else:
        lines[-1] += date
    return "\n".join(lines) + "\n"


def copy_headers(data: DataDir, envelope: Envelope, received: str) -> list[tuple[Path, bytes]]:
    """Where each copy goes and the header lines it starts with.

    One copy per distinct local mailbox, with ``Return-Path`` as final
    delivery adds it (RFC 5321 §4.4); one outbox copy for all remote
    recipients together. The outbox is a queue, not a final delivery, so its
    envelope goes in ``X-Envelope-From``/``X-Envelope-To`` lines instead —
    lines that anything sending the outbox on must strip, since they list
    every recipient, Bcc included.
    """
    copies: list[tuple[Path, bytes]] = []
    mailboxes = dict.fromkeys(d.mailbox for d in envelope.recipients if d.mailbox is not None)
    for mailbox in mailboxes:
        head = f"Return-Path: <{envelope.sender}>\nDelivered-To: {mailbox}\n" + received
        copies.append((data.mailbox(mailbox), head.encode("ascii")))
    remote = dict.fromkeys(d.address for d in envelope.recipients if d.mailbox is None)
    if remote:
        envelope_to = "".join(f"X-Envelope-To: {a}\n" for a in remote)
        head = f"X-Envelope-From: <{envelope.sender}>\n" + envelope_to + received
        copies.append((data.outbox, head.encode("ascii")))
    return copies


def write_copies(copies: list[tuple[Path, bytes]], content: bytes) -> list[str]:
    """Blocking: deliver every copy durably, one at a time so memory holds one message."""
    return [maildir.deliver(path, head + content) for path, head in copies]


_ID_PREFIX = secrets.token_hex(3).upper()
_id_counter = itertools.count(1)


def new_message_id() -> str:
    """A queue id unique in this process and unlikely to repeat across runs.

    Six random hex digits drawn once at start, then a counter: a queue id
    needs to be unique, not secret, and a random draw per message was a
    getrandom() call per message on the reactor thread.
    """
    return f"{_ID_PREFIX}{next(_id_counter):06X}"


def store(
    provider: Provider,
    origin: Origin,
    envelope: Envelope,
    content: bytes,
    authorisation: policy.Decision | None,
) -> defer.Deferred:
    """Store ``content`` (LF line ends) for ``envelope``; fires with the queue id once durable."""
    message_id = new_message_id()
    received = received_header(
        origin,
        provider.hostname,
        message_id,
        authorisation,
        [d.address for d in envelope.recipients],
        provider.now(),
    )
    copies = copy_headers(provider.data, envelope, received)

    def stored(names: list[str]) -> str:
        provider.events.emit(
            events.MESSAGE_STORED,
            provider.now(),
            id=message_id,
            ip=origin.peer_ip,
            role=origin.role.value,
            sender=envelope.sender,
            recipients=[d.address for d in envelope.recipients],
            mailboxes=sorted({d.mailbox for d in envelope.recipients if d.mailbox}),
            relayed=[d.address for d in envelope.recipients if d.mailbox is None],
            size=len(content),
            scheme=None if authorisation is None else authorisation.scheme,
            authorised_account=None if authorisation is None else authorisation.account,
            files=names,
        )
        return message_id

    d = provider.track_storing(provider.run_blocking(write_copies, copies, content))
    return d.addCallback(stored)
