"""Stored messages as the API shows them: pure functions from a file name and its bytes.

A stored message starts with the lines delivery wrote: ``Return-Path`` and
``Delivered-To`` for a local copy, ``X-Envelope-From``/``X-Envelope-To`` for
the outbox copy, then mailhost's ``Received`` header whose comment names the
scheme that let the message in. Everything here is read back from those
headers, so the API needs no index beside the Maildir and shows what a
POP3 client would see. No clock, and no I/O except :func:`summarise_file`,
which is blocking and runs in the worker thread: it reads only the header
block, so listing a box of large messages costs what their headers cost.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from datetime import UTC, datetime
from email import message_from_bytes
from email import policy as email_policy
from email.message import Message
from email.utils import getaddresses, parsedate_to_datetime
from pathlib import Path
from typing import Any, BinaryIO

from mailhost.maildir import pop3_uid, uid_of

_SCHEME_COMMENT = re.compile(r"\((smtp-auth|smtp-after-pop): ([^\s()]+)(?: from [^\s()]+)?\)")
_NAME_SECONDS = re.compile(r"^([0-9]+)\.(?:M([0-9]{1,6}))?")

MAX_HEADER = 256 * 1024
"""Most header bytes a summary reads: a file without a blank line is not read whole."""


def _parse(raw: bytes) -> Message:
    # compat32 keeps header values as stored (no folding or decoding surprises);
    # the body is decoded separately by :func:`body_text`.
    return message_from_bytes(raw, policy=email_policy.compat32)


def _angle(text: str) -> str:
    value = text.strip()
    if value.startswith("<") and value.endswith(">"):
        return value[1:-1]
    return value


def _unfold(value: str) -> str:
    return re.sub(r"\r?\n[ \t]+", " ", value).strip()


def _decoded(value: str) -> str:
    """A header value with RFC 2047 words decoded (best effort, never raises)."""
    try:
        return str(email_policy.default.header_factory("x", _unfold(value)))
    except Exception:  # a malformed header is shown as stored
        return _unfold(value)


def scheme_of(received: str | None) -> tuple[str | None, str | None]:
    """The scheme and account named in mailhost's Received comment, or (None, None)."""
    if not received:
        return None, None
    match = _SCHEME_COMMENT.search(_unfold(received))
    if match is None:
        return None, None
    return match.group(1), match.group(2)


def received_at(received: str | None, filename: str) -> str | None:
    """When the message was stored, by the server clock (the Received date), as ISO 8601.

    The Received date follows ``--now`` and the API clock; the file name's
    seconds (wall clock) are the fallback for a message mailhost did not write.
    """
    if received and ";" in received:
        try:
            when = parsedate_to_datetime(_unfold(received).rsplit(";", 1)[1].strip())
            if when.tzinfo is not None:
                return when.astimezone(UTC).isoformat()
        except (TypeError, ValueError, IndexError):
            pass
    match = _NAME_SECONDS.match(filename)
    if match is None:
        return None
    seconds = int(match.group(1)) + int(match.group(2) or 0) / 1_000_000
    return datetime.fromtimestamp(seconds, UTC).isoformat()


def _addresses(values: list[str]) -> list[str]:
    return [address for _, address in getaddresses([_unfold(v) for v in values]) if address]


@dataclass(frozen=True)
class Summary:
    """One message's summary; ``to_json`` is the API's shape."""

    id: str
    uid: str
    envelope_from: str | None
    envelope_to: list[str]
    subject: str | None
    from_: str | None
    to: str | None
    size: int
    received_at: str | None
    scheme: str | None
    authorised_account: str | None
    from_addresses: tuple[str, ...] = ()
    to_addresses: tuple[str, ...] = ()

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "uid": self.uid,
            "envelope_from": self.envelope_from,
            "envelope_to": self.envelope_to,
            "subject": self.subject,
            "from": self.from_,
            "to": self.to,
            "size": self.size,
            "received_at": self.received_at,
            "scheme": self.scheme,
            "authorised_account": self.authorised_account,
        }


def summarise(filename: str, raw: bytes, size: int | None = None) -> Summary:
    """The summary of a stored message from its Maildir file name and bytes.

    ``raw`` may be just the header block (the summary reads nothing else);
    ``size`` is then the whole file's size, which defaults to ``len(raw)``.
    """
    message = _parse(raw)
    envelope_from = message.get("Return-Path") or message.get("X-Envelope-From")
    envelope_to = message.get_all("Delivered-To") or message.get_all("X-Envelope-To") or []
    received = message.get("Received")
    scheme, account = scheme_of(received)
    subject = message.get("Subject")
    sender = message.get("From")
    to = message.get("To")
    return Summary(
        id=uid_of(filename),
        uid=pop3_uid(filename),
        envelope_from=None if envelope_from is None else _angle(_unfold(envelope_from)),
        envelope_to=[_angle(_unfold(a)) for a in envelope_to],
        subject=None if subject is None else _decoded(subject),
        from_=None if sender is None else _decoded(sender),
        to=None if to is None else _decoded(to),
        size=len(raw) if size is None else size,
        received_at=received_at(received, filename),
        scheme=scheme,
        authorised_account=account,
        from_addresses=tuple(_addresses(message.get_all("From") or [])),
        to_addresses=tuple(
            _addresses((message.get_all("To") or []) + (message.get_all("Cc") or []))
        ),
    )


def read_header(stream: BinaryIO, limit: int = MAX_HEADER) -> bytes:
    """The header block of a message: lines up to and including the first empty one.

    Reading stops after ``limit`` bytes, so a file with no blank line (or a
    huge header) costs at most that much memory.
    """
    lines = []
    left = limit
    while left > 0:
        line = stream.readline(left)
        if not line:
            break
        lines.append(line)
        left -= len(line)
        if line in (b"\n", b"\r\n"):
            break
    return b"".join(lines)


def summarise_file(path: Path) -> Summary:
    """Blocking: the summary of the message stored at ``path``, from its header block and size."""
    with open(path, "rb") as stream:
        header = read_header(stream)
        size = os.fstat(stream.fileno()).st_size
    return summarise(path.name, header, size)


def body_text(raw: bytes) -> str:
    """The message body as text: the first text part, decoded; else the raw body, best effort."""
    try:
        message = message_from_bytes(raw, policy=email_policy.default)
        part = message.get_body(preferencelist=("plain", "html"))
        if part is not None:
            return str(part.get_content())
    except Exception:  # malformed MIME: fall back to the bytes after the header
        pass
    _, _, body = raw.replace(b"\r\n", b"\n").partition(b"\n\n")
    return body.decode("utf-8", "replace")


def detail(filename: str, raw: bytes) -> dict[str, Any]:
    """Summary plus headers, body and the raw text: what ``GET …/messages/<id>`` returns."""
    message = _parse(raw)
    return {
        **summarise(filename, raw).to_json(),
        "headers": [[name, _unfold(str(value))] for name, value in message.items()],
        "body": body_text(raw),
        "raw": raw.decode("utf-8", "replace"),
    }


@dataclass(frozen=True)
class Filter:
    """The ``subject``/``from``/``to`` query: all given ones must hold."""

    subject: str | None = None
    sender: str | None = None
    recipient: str | None = None

    def matches(self, summary: Summary) -> bool:
        """Subject: a case-insensitive substring. from/to: an exact address, any case,
        in the envelope or the header (From; To and Cc)."""
        if self.subject is not None and self.subject.lower() not in (summary.subject or "").lower():
            return False
        if self.sender is not None:
            known = {a.lower() for a in (summary.envelope_from or "", *summary.from_addresses)}
            if self.sender.lower() not in known:
                return False
        if self.recipient is not None:
            known = {a.lower() for a in (*summary.envelope_to, *summary.to_addresses)}
            if self.recipient.lower() not in known:
                return False
        return True
