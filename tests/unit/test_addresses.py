"""Strict mailbox and path parsing: no routing hints ever reach another domain."""

import pytest

from mailhost.addresses import (
    Address,
    AddressError,
    account_name,
    check_domain,
    parse_mailbox,
    parse_path,
)

D = "foreign.example"  # a domain the server does not serve
R = "mail.example.org"  # the server's own name
IP = "192.0.2.25"  # the server's address

# nmap smtp-open-relay.nse recipients (PROTOCOLS.md §2.10) that carry a domain: each must
# parse to a mailbox of the *last* domain, with any routing syntax left in the local part.
RELAY_BATTERY = [
    (f"<relaytest@{D}>", "relaytest", D),
    (f"<antispam@{R}>", "antispam", R),
    (f"<antispam@[{IP}]>", "antispam", f"[{IP}]"),
    (f"<relaytest%{D}@[{IP}]>", f"relaytest%{D}", f"[{IP}]"),
    (f"<relaytest%{D}@{R}>", f"relaytest%{D}", R),
    (f'<"relaytest@{D}"@[{IP}]>', f'"relaytest@{D}"', f"[{IP}]"),
    (f"<@[{IP}]:relaytest@{D}>", "relaytest", D),
    (f"<@{R}:relaytest@{D}>", "relaytest", D),
    (f"<{D}!relaytest@[{IP}]>", f"{D}!relaytest", f"[{IP}]"),
    (f"<{D}!relaytest@{R}>", f"{D}!relaytest", R),
]

# The battery's spellings that are not RFC 5321 paths at all.
RELAY_BATTERY_INVALID = [
    f'<"relaytest@{D}">',  # quoted local part, no domain
    f'<"relaytest%{D}">',  # quoted local part, no domain
    f"<relaytest@{D}@[{IP}]>",  # unquoted @ inside the local part
    f"<relaytest@{D}@{R}>",  # unquoted @ inside the local part
    f"<{D}!relaytest>",  # bang path, no domain
]


@pytest.mark.parametrize(
    ("path", "local", "domain"), RELAY_BATTERY, ids=[c[0] for c in RELAY_BATTERY]
)
def test_relay_battery_spellings_parse_to_the_last_domain(path, local, domain):
    """Percent hacks, bang paths, quoted @ and source routes never change the domain."""
    assert parse_path(path) == Address(local, domain)


@pytest.mark.parametrize("path", RELAY_BATTERY_INVALID)
def test_relay_battery_spellings_without_a_valid_domain_are_rejected(path):
    """A battery spelling that is no local-part@domain is a syntax error."""
    with pytest.raises(AddressError):
        parse_path(path)


def test_a_source_route_with_several_hops_is_dropped():
    """``<@a,@b:user@c>`` is the mailbox user@c."""
    assert parse_path(f"<@a.example,@{R}:relaytest@{D}>") == Address("relaytest", D)


def test_the_null_path_is_none():
    """``<>`` is the null reverse-path."""
    assert parse_path("<>") is None


@pytest.mark.parametrize("text", [f"relaytest@{D}", f"<relaytest@{D}", f"relaytest@{D}>", "", "<"])
def test_a_path_needs_angle_brackets(text):
    """A path without its angle brackets is refused."""
    with pytest.raises(AddressError):
        parse_path(text)


def test_an_unquoted_double_at_is_rejected():
    """``a@b@host`` is not a mailbox: the local part may not hold a bare @."""
    with pytest.raises(AddressError):
        parse_mailbox("a@b@host.example")


def test_a_quoted_local_part_keeps_its_at():
    """A quoted ``"a@b"`` stays one local part of the final domain."""
    assert parse_mailbox('"a@b"@host.example') == Address('"a@b"', "host.example")


def test_a_quoted_plain_local_part_is_unquoted():
    """``"alice"@x`` is the same mailbox as ``alice@x``."""
    assert parse_mailbox('"alice"@example.org') == Address("alice", "example.org")


def test_a_quoted_local_part_with_escapes_is_kept_quoted():
    """Quoted text that needs its quotes keeps them, escapes included."""
    assert parse_mailbox(r'"a\"b"@example.org').local == r'"a\"b"'


def test_a_trailing_dot_domain_is_rejected():
    """``user@example.org.`` is not RFC 5321 domain syntax."""
    with pytest.raises(AddressError):
        parse_path("<relaytest@example.org.>")


def test_an_upper_case_domain_is_lowercased():
    """Domains compare case-insensitively; the local part keeps its case."""
    assert parse_path("<RelayTest@MAIL.Example.ORG>") == Address("RelayTest", "mail.example.org")


def test_an_ipv6_literal_parses():
    """``[IPv6:...]`` is an address literal, its tag normalised and hex lowercased."""
    address = parse_path("<postmaster@[ipv6:2001:DB8::1]>")
    assert address == Address("postmaster", "[IPv6:2001:db8::1]")
    assert address.is_address_literal


def test_an_ipv4_literal_parses():
    """``[192.0.2.25]`` is an address literal."""
    address = parse_mailbox(f"postmaster@[{IP}]")
    assert address.domain == f"[{IP}]"
    assert address.is_address_literal


@pytest.mark.parametrize(
    "domain", ["[999.1.1.1]", "[IPv6:zz::1]", "[192.0.2.25", "[]", "[IPv6:192.0.2.25]", "[::1]"]
)
def test_a_bad_address_literal_is_rejected(domain):
    """Literals must hold a valid IPv4 address or a tagged IPv6 address."""
    with pytest.raises(AddressError):
        parse_mailbox(f"postmaster@{domain}")


@pytest.mark.parametrize(
    "text",
    [
        "@example.org",
        ".alice@example.org",
        "alice.@example.org",
        "al..ice@example.org",
        "al ice@example.org",
        "al(ice)@example.org",
        "alice",
        "alice@",
        "alice@-example.org",
        "alice@exa_mple.org",
        '"unterminated@example.org',
    ],
)
def test_malformed_mailboxes_are_rejected(text):
    """Anything outside RFC 5321 Mailbox syntax raises AddressError."""
    with pytest.raises(AddressError):
        parse_mailbox(text)


@pytest.mark.parametrize("text", ["rené@example.org", "rene@exämple.org", "<ré@example.org>"])
def test_non_ascii_is_rejected(text):
    """Without SMTPUTF8, non-ASCII addresses are refused."""
    with pytest.raises(AddressError):
        parse_path(text) if text.startswith("<") else parse_mailbox(text)


def test_a_local_part_of_64_octets_is_accepted():
    """RFC 5321 §4.5.3.1.1: a local part may be 64 octets."""
    assert parse_mailbox("l" * 64 + "@example.org").local == "l" * 64


def test_a_local_part_of_65_octets_is_rejected():
    """A local part longer than 64 octets is refused."""
    with pytest.raises(AddressError, match="64"):
        parse_mailbox("l" * 65 + "@example.org")


def test_a_domain_of_255_octets_is_accepted():
    """RFC 5321 §4.5.3.1.2: a domain may be 255 octets."""
    domain = ".".join(["a" * 63] * 4)
    assert len(domain) == 255
    assert parse_mailbox("x@" + domain).domain == domain


def test_a_domain_of_256_octets_is_rejected():
    """A domain longer than 255 octets is refused."""
    domain = ".".join(["a" * 63] * 3 + ["b" * 62, "c"])
    assert len(domain) == 256
    with pytest.raises(AddressError, match="255"):
        parse_mailbox("x@" + domain)


def test_a_path_of_256_octets_is_accepted():
    """RFC 5321 §4.5.3.1.3: a path may be 256 octets including the brackets."""
    path = "<" + "l" * 62 + "@" + ".".join(["a" * 63] * 3) + ">"
    assert len(path) == 256
    assert parse_path(path) is not None


def test_a_path_of_257_octets_is_rejected():
    """A path longer than 256 octets is refused."""
    path = "<" + "l" * 63 + "@" + ".".join(["a" * 63] * 3) + ">"
    assert len(path) == 257
    with pytest.raises(AddressError, match="256"):
        parse_path(path)


def test_address_error_is_a_value_error():
    """Callers that catch ValueError also catch a bad address."""
    assert issubclass(AddressError, ValueError)


def test_an_address_prints_as_local_at_domain():
    """str(Address) is the mailbox text."""
    assert str(Address("alice", "example.org")) == "alice@example.org"


def test_check_domain_lowercases_a_name():
    """check_domain returns the lowercased domain."""
    assert check_domain("Example.ORG") == "example.org"


# --- account names --------------------------------------------------------------------------


def test_account_name_is_lowercased_and_stripped():
    """An account key is the whole mailbox in lower case."""
    assert account_name("  Alice@Example.ORG\n") == "alice@example.org"


@pytest.mark.parametrize(
    "text",
    [
        "a/b@example.org",
        "../etc@example.org",
        '"a b"@example.org',
        '"a@b"@example.org',
        "alice@[127.0.0.1]",
        "alice@[IPv6:::1]",
        "alice",
        "",
    ],
)
def test_account_name_rejects_unsafe_or_unusual_forms(text):
    """Accounts are plain dot-atoms at a domain name: no '/', no quotes, no literals."""
    with pytest.raises(AddressError):
        account_name(text)
