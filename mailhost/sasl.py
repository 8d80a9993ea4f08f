"""The SASL pieces SMTP AUTH (RFC 4954) and POP3 AUTH (RFC 5034) share.

Responses are strict base64, with ``=`` standing for an empty response; the
PLAIN message is ``authzid NUL authcid NUL password`` (RFC 4616 §2). Acting
as another user (an authzid other than the authcid) is not offered.
"""

from __future__ import annotations

import binascii
from dataclasses import dataclass


class SaslError(ValueError):
    """A response that is not valid base64."""


def decode_response(text: bytes | str) -> bytes:
    """Decode one base64 client response; ``=`` is the empty response."""
    raw = text.encode("latin-1") if isinstance(text, str) else text
    raw = raw.strip()
    if raw == b"=":
        return b""
    try:
        return binascii.a2b_base64(raw, strict_mode=True)
    except binascii.Error:
        raise SaslError("cannot decode the base64 response") from None


@dataclass(frozen=True)
class PlainCredentials:
    authzid: str
    authcid: str
    password: bytes

    def acts_as_self(self) -> bool:
        return self.authzid in ("", self.authcid) or self.authzid.lower() == self.authcid.lower()


def parse_plain(message: bytes) -> PlainCredentials | None:
    """The fields of a PLAIN message, or None when it is not one."""
    parts = message.split(b"\0")
    if len(parts) != 3 or not parts[1] or not parts[2]:
        return None
    authzid, authcid, password = parts
    try:
        return PlainCredentials(authzid.decode("utf-8"), authcid.decode("utf-8"), password)
    except UnicodeDecodeError:
        return None
