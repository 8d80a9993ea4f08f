"""SASL responses and the PLAIN message, shared by SMTP AUTH and POP3 AUTH."""

import pytest

from mailhost.sasl import PlainCredentials, SaslError, decode_response, parse_plain


def test_equals_sign_is_the_empty_response():
    """'=' stands for an empty initial response (RFC 4954 §4)."""
    assert decode_response("=") == b""


def test_base64_is_decoded_strictly():
    """Valid base64 decodes (surrounding spaces tolerated); garbage or bad padding is refused."""
    assert decode_response(" YWJj ") == b"abc"
    assert decode_response(b"YWJj") == b"abc"
    for bad in ("not base64!", "YW!j", "YWJ"):
        with pytest.raises(SaslError):
            decode_response(bad)


def test_plain_splits_the_three_fields():
    """PLAIN is authzid NUL authcid NUL password; anything else is not a PLAIN message."""
    assert parse_plain(b"\0alice\0pw") == PlainCredentials("", "alice", b"pw")
    assert parse_plain(b"alice\0alice\0pw") == PlainCredentials("alice", "alice", b"pw")
    for bad in (b"alice\0pw", b"a\0b\0c\0d", b"", b"\0\0pw", b"\0alice\0", b"\0\xff\0pw"):
        assert parse_plain(bad) is None


def test_authzid_must_be_empty_or_the_authcid():
    """Nobody may act as another user through the authzid."""
    assert PlainCredentials("", "alice", b"pw").acts_as_self()
    assert PlainCredentials("Alice", "alice", b"pw").acts_as_self()
    assert not PlainCredentials("bob", "alice", b"pw").acts_as_self()
