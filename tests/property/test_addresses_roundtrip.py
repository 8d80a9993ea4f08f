"""Mailbox and path parsing: printing a parsed address and parsing it again changes nothing."""

from __future__ import annotations

import re
import string

from hypothesis import given, settings
from hypothesis import strategies as st

from mailhost.addresses import Address, AddressError, parse_mailbox, parse_path

# RFC 5321 §4.1.2 / §4.1.3, written out independently of the module under test.
ATEXT = string.ascii_letters + string.digits + "!#$%&'*+-/=?^_`{|}~"
QTEXT = "".join(chr(c) for c in range(0x20, 0x7F) if chr(c) not in '"\\')
DOMAIN = re.compile(r"[a-z0-9](?:[a-z0-9-]*[a-z0-9])?(?:\.[a-z0-9](?:[a-z0-9-]*[a-z0-9])?)*\Z")
IPV4_LITERAL = re.compile(r"\[\d{1,3}(?:\.\d{1,3}){3}\]\Z")
IPV6_LITERAL = re.compile(r"\[IPv6:[0-9a-f:.]+\]\Z")

atoms = st.text(ATEXT, min_size=1, max_size=8)
dot_atoms = st.lists(atoms, min_size=1, max_size=3).map(".".join)
quoted_parts = st.lists(
    st.sampled_from(QTEXT)
    | st.sampled_from([chr(c) for c in range(0x20, 0x7F)]).map("\\{}".format),
    max_size=12,
).map(lambda parts: '"' + "".join(parts) + '"')
local_parts = (dot_atoms | quoted_parts).filter(lambda local: len(local) <= 64)

labels = st.from_regex(r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,8}[A-Za-z0-9])?", fullmatch=True)
domain_names = st.lists(labels, min_size=1, max_size=4).map(".".join)
ipv4_literals = st.ip_addresses(v=4).map(lambda ip: f"[{ip}]")
ipv6_literals = st.builds(
    lambda tag, ip, case: f"[{tag}:{case(ip)}]",
    st.sampled_from(["IPv6", "ipv6", "IPV6"]),
    st.ip_addresses(v=6).flatmap(lambda ip: st.sampled_from([ip.compressed, ip.exploded])),
    st.sampled_from([str.lower, str.upper]),
)
domains = domain_names | ipv4_literals | ipv6_literals

mailboxes = st.builds("{}@{}".format, local_parts, domains)

# Text near the grammar, so that both outcomes are common; and anything at all.
EDITS = st.sampled_from(['"', "\\", "@", ".", "[", "]", ":", "%", " ", "<", ">", "-", "A", "\x7f"])


def edited(text: str, position: int, char: str, edit: str) -> str:
    """``text`` with one character inserted, replaced or deleted (or left alone)."""
    at = position % (len(text) + 1)
    if edit == "insert":
        return text[:at] + char + text[at:]
    if edit == "replace":
        return text[:at] + char + text[at + 1 :]
    if edit == "delete":
        return text[:at] + text[at + 1 :]
    return text


near_miss = st.builds(
    edited,
    mailboxes,
    st.integers(0, 300),
    EDITS,
    st.sampled_from(["insert", "replace", "delete", "none"]),
)
near_literals = st.builds(
    "{}@[{}]".format, local_parts, st.text(st.sampled_from("0123456789abcdefIPv:.%x "), max_size=16)
)
any_text = near_miss | near_literals | st.text(max_size=40)


def is_rfc5321(address: Address) -> bool:
    """An address as RFC 5321 writes it: dot-atom or quoted local part; domain or literal."""
    local_ok = re.fullmatch(rf"[{re.escape(ATEXT)}]+(?:\.[{re.escape(ATEXT)}]+)*", address.local)
    quoted_ok = re.fullmatch(r'"(?:[\x20\x21\x23-\x5b\x5d-\x7e]|\\[\x20-\x7e])*"', address.local)
    domain = address.domain
    domain_ok = DOMAIN.match(domain) or IPV4_LITERAL.match(domain) or IPV6_LITERAL.match(domain)
    return bool((local_ok or quoted_ok) and domain_ok)


@settings(max_examples=300)
@given(mailboxes)
def test_parse_print_parse_is_stable(text: str) -> None:
    """A valid mailbox parses, and its printed form parses to the same address."""
    address = parse_mailbox(text)
    assert parse_mailbox(str(address)) == address
    assert is_rfc5321(address)


@settings(max_examples=200)
@given(local_parts, domain_names)
def test_domains_fold_and_dot_atoms_stay(local: str, domain: str) -> None:
    """The domain is compared lowercased; a dot-atom local part is kept exactly as written."""
    address = parse_mailbox(f"{local}@{domain}")
    assert address.domain == domain.lower()
    if not local.startswith('"'):
        assert address.local == local


@settings(max_examples=200)
@given(mailboxes.filter(lambda text: len(text) <= 254))
def test_a_path_is_its_mailbox_in_brackets(text: str) -> None:
    """``<mailbox>`` parses as a path to the same address as the bare mailbox."""
    assert parse_path(f"<{text}>") == parse_mailbox(text)


@settings(max_examples=500)
@given(any_text)
def test_any_text_parses_or_raises_address_error(text: str) -> None:
    """Arbitrary text is a mailbox (which round-trips and is RFC 5321) or an AddressError."""
    for parse, candidate in ((parse_mailbox, text), (parse_path, f"<{text}>"), (parse_path, text)):
        try:
            address = parse(candidate)
        except AddressError:
            continue
        if address is None:
            assert candidate == "<>"
            continue
        assert is_rfc5321(address), (candidate, address)
        assert parse_mailbox(str(address)) == address


@settings(max_examples=100)
@given(
    st.ip_addresses(v=6),
    st.text(st.characters(codec="ascii", exclude_characters="%"), min_size=1, max_size=10),
)
def test_an_ipv6_literal_with_a_zone_id_is_refused(ip: object, zone: str) -> None:
    """RFC 5321 IPv6 literals have no ``%zone`` suffix: ``a@[IPv6:fe80::1%eth0]`` is an error."""
    for text in (f"a@[IPv6:{ip}%{zone}]", f"<a@[IPv6:{ip}%{zone}]>"):
        try:
            address = (parse_path if text.startswith("<") else parse_mailbox)(text)
        except AddressError:
            continue
        raise AssertionError(f"{text!r} parsed as {address!r}")
