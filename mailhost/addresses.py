"""Strict RFC 5321 mailbox and path syntax.

A relay decision is only as good as the address it is made on, so parsing is
strict and does no routing: the percent hack (``user%other@here``), bang paths
(``other!user@here``) and quoted local parts (``"user@other"@here``) are plain
local parts of *this* domain, never hints to forward elsewhere. Source routes
(``<@a,@b:user@c>``) are parsed and ignored as RFC 5321 §4.1.1.3 and
§C allow, so the mailbox that counts is the last one. Domains and address
literals compare case-insensitively; accounts are lowercased.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass

MAX_LOCAL_PART = 64  # RFC 5321 §4.5.3.1.1
MAX_DOMAIN = 255  # RFC 5321 §4.5.3.1.2
MAX_PATH = 256  # RFC 5321 §4.5.3.1.3, including the angle brackets

_ATEXT = r"[A-Za-z0-9!#$%&'*+\-/=?^_`{|}~]"
_DOT_STRING = re.compile(rf"{_ATEXT}+(?:\.{_ATEXT}+)*\Z")
_QUOTED_STRING = re.compile(r'"(?:[\x20\x21\x23-\x5b\x5d-\x7e]|\\[\x20-\x7e])*"\Z')
_SUB_DOMAIN = r"[A-Za-z0-9](?:[A-Za-z0-9\-]*[A-Za-z0-9])?"
_DOMAIN = re.compile(rf"{_SUB_DOMAIN}(?:\.{_SUB_DOMAIN})*\Z")
_AT_DOMAIN = rf"@(?:{_SUB_DOMAIN}(?:\.{_SUB_DOMAIN})*|\[[^\]\s]+\])"
_ROUTE = re.compile(rf"{_AT_DOMAIN}(?:,{_AT_DOMAIN})*:")


class AddressError(ValueError):
    """Text that is not a mailbox or path in RFC 5321 syntax."""


@dataclass(frozen=True)
class Address:
    """A mailbox: ``local`` as it must be written, ``domain`` lowercased."""

    local: str
    domain: str

    def __str__(self) -> str:
        return f"{self.local}@{self.domain}"

    @property
    def is_address_literal(self) -> bool:
        return self.domain.startswith("[")


def check_domain(domain: str) -> str:
    if len(domain) > MAX_DOMAIN:
        raise AddressError("domain longer than 255 octets")
    if domain.startswith("["):
        if not domain.endswith("]"):
            raise AddressError("unterminated address literal")
        inner = domain[1:-1]
        try:
            if "%" in inner:
                raise ValueError("zone IDs are not part of RFC 5321 address literals")
            if inner[:5].lower() == "ipv6:":
                ipaddress.IPv6Address(inner[5:])
                return "[IPv6:" + inner[5:].lower() + "]"
            ipaddress.IPv4Address(inner)
        except ValueError:
            raise AddressError(f"bad address literal {domain!r}") from None
        return domain
    if not _DOMAIN.match(domain):
        raise AddressError(f"bad domain {domain!r}")
    return domain.lower()


def _split_mailbox(text: str) -> tuple[str, str]:
    """Split at the ``@`` that ends the local part (quoted parts may hold ``@``)."""
    if text.startswith('"'):
        end = 1
        while end < len(text):
            if text[end] == "\\":
                end += 2
                continue
            if text[end] == '"':
                break
            end += 1
        local, rest = text[: end + 1], text[end + 1 :]
        if not rest.startswith("@"):
            raise AddressError("a mailbox needs local-part@domain")
        return local, rest[1:]
    local, sep, domain = text.rpartition("@")
    if not sep:
        raise AddressError("a mailbox needs local-part@domain")
    return local, domain


def _canonical_local(local: str) -> str:
    if _QUOTED_STRING.match(local):
        inner = re.sub(r"\\(.)", r"\1", local[1:-1])
        if _DOT_STRING.match(inner):
            return inner
        return local
    if _DOT_STRING.match(local):
        return local
    raise AddressError(f"bad local part {local!r}")


def parse_mailbox(text: str) -> Address:
    """Parse ``local-part@domain`` (no angle brackets)."""
    if not text.isascii():
        raise AddressError("non-ASCII address (SMTPUTF8 is not offered)")
    local, domain = _split_mailbox(text)
    if not local:
        raise AddressError("empty local part")
    if len(local) > MAX_LOCAL_PART:
        raise AddressError("local part longer than 64 octets")
    return Address(_canonical_local(local), check_domain(domain))


def parse_path(text: str) -> Address | None:
    """Parse a reverse- or forward-path ``<…>``; the null path ``<>`` is None."""
    if len(text) > MAX_PATH:
        raise AddressError("path longer than 256 octets")
    if not (text.startswith("<") and text.endswith(">")):
        raise AddressError("a path must be written <local-part@domain>")
    inner = text[1:-1]
    if inner == "":
        return None
    route = _ROUTE.match(inner)
    if route:
        inner = inner[route.end() :]
    return parse_mailbox(inner)


def account_name(text: str) -> str:
    """The account key for a mailbox: parsed strictly, then lowercased."""
    address = parse_mailbox(text.strip())
    if address.is_address_literal:
        raise AddressError("an account needs a domain name, not an address literal")
    if address.local.startswith('"') or "/" in address.local or address.local.startswith("."):
        raise AddressError("an account's local part must be a plain dot-atom without '/'")
    return str(address).lower()
