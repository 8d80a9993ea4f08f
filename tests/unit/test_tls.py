"""The TLS identity: a self-signed certificate made once and reused, given files, the context."""

from __future__ import annotations

import ipaddress
import re
import ssl
from datetime import UTC, datetime, timedelta

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from OpenSSL import SSL

from mailhost.tls import (
    RENEW_BEFORE,
    VALIDITY,
    TLSError,
    ensure_self_signed,
    fingerprint_sha256,
    generate_self_signed,
    load_identity,
    server_identity,
)

NOW = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
HOST = "mail.example.org"


def san(certificate: x509.Certificate) -> x509.SubjectAlternativeName:
    return certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName).value


def write_pair(directory, hostname=HOST, now=NOW):
    """An operator's certificate and key as PEM files."""
    certificate, key = generate_self_signed(hostname, now)
    cert_path, key_path = directory / "given-cert.pem", directory / "given-key.pem"
    cert_path.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_path, key_path


def test_first_start_writes_a_self_signed_certificate_and_private_key(tmp_path):
    """Without files, cert.pem and a 0600 key.pem are made under the directory."""
    identity = ensure_self_signed(tmp_path / "tls", HOST, NOW)
    assert identity.generated
    assert identity.cert_path == tmp_path / "tls" / "cert.pem"
    assert (identity.key_path.stat().st_mode & 0o777) == 0o600
    on_disk = x509.load_pem_x509_certificate(identity.cert_path.read_bytes())
    assert on_disk == identity.certificate
    assert sorted(p.name for p in (tmp_path / "tls").iterdir()) == ["cert.pem", "key.pem"]


def test_generated_certificate_names_hostname_and_loopback(tmp_path):
    """The SAN holds the hostname, localhost, 127.0.0.1 and ::1, so loopback clients verify."""
    certificate = ensure_self_signed(tmp_path, HOST, NOW).certificate
    names = san(certificate)
    assert names.get_values_for_type(x509.DNSName) == [HOST, "localhost"]
    assert names.get_values_for_type(x509.IPAddress) == [
        ipaddress.ip_address("127.0.0.1"),
        ipaddress.ip_address("::1"),
    ]


def test_generated_certificate_is_its_own_authority_for_two_years(tmp_path):
    """CA:TRUE with keyCertSign lets clients use cert.pem as a CA file; it lasts about two years."""
    certificate = ensure_self_signed(tmp_path, HOST, NOW).certificate
    constraints = certificate.extensions.get_extension_for_class(x509.BasicConstraints).value
    usage = certificate.extensions.get_extension_for_class(x509.KeyUsage).value
    assert constraints.ca
    assert usage.digital_signature and usage.key_cert_sign
    assert certificate.issuer == certificate.subject
    assert certificate.not_valid_before_utc <= NOW
    assert certificate.not_valid_after_utc == NOW + VALIDITY
    assert isinstance(certificate.public_key(), ec.EllipticCurvePublicKey)


def test_an_ip_literal_hostname_is_an_ip_san(tmp_path):
    """A hostname that is an address goes into the SAN as an IP, not a DNS name."""
    certificate = ensure_self_signed(tmp_path, "192.0.2.7", NOW).certificate
    assert ipaddress.ip_address("192.0.2.7") in san(certificate).get_values_for_type(x509.IPAddress)


def test_later_starts_reuse_the_certificate_without_rewriting_it(tmp_path):
    """A second start reads the same files: same bytes, same modification times."""
    first = ensure_self_signed(tmp_path, HOST, NOW)
    before = {p: (p.read_bytes(), p.stat().st_mtime_ns) for p in (first.cert_path, first.key_path)}
    again = ensure_self_signed(tmp_path, HOST, NOW + timedelta(days=100))
    after = {p: (p.read_bytes(), p.stat().st_mtime_ns) for p in (again.cert_path, again.key_path)}
    assert after == before
    assert again.fingerprint_sha256 == first.fingerprint_sha256


def test_a_new_hostname_makes_a_new_certificate(tmp_path):
    """Changing --hostname regenerates, since the old certificate does not name the new host."""
    first = ensure_self_signed(tmp_path, HOST, NOW)
    second = ensure_self_signed(tmp_path, "mx.example.net", NOW)
    assert second.fingerprint_sha256 != first.fingerprint_sha256
    assert "mx.example.net" in san(second.certificate).get_values_for_type(x509.DNSName)


def test_a_certificate_near_expiry_is_replaced(tmp_path):
    """Within the renewal margin of notAfter, a fresh certificate is made."""
    first = ensure_self_signed(tmp_path, HOST, NOW)
    still_fine = NOW + VALIDITY - RENEW_BEFORE - timedelta(days=1)
    assert ensure_self_signed(tmp_path, HOST, still_fine).fingerprint_sha256 == (
        first.fingerprint_sha256
    )
    nearly_expired = NOW + VALIDITY - RENEW_BEFORE + timedelta(days=1)
    renewed = ensure_self_signed(tmp_path, HOST, nearly_expired)
    assert renewed.fingerprint_sha256 != first.fingerprint_sha256
    assert renewed.certificate.not_valid_after_utc == nearly_expired + VALIDITY


@pytest.mark.parametrize("damage", ["missing key", "garbage cert", "key of another cert"])
def test_a_damaged_pair_is_replaced(tmp_path, damage):
    """A missing, unreadable or mismatched file is not reused: a new pair is written."""
    first = ensure_self_signed(tmp_path, HOST, NOW)
    if damage == "missing key":
        first.key_path.unlink()
    elif damage == "garbage cert":
        first.cert_path.write_text("not a certificate\n")
    else:
        elsewhere = tmp_path / "elsewhere"
        elsewhere.mkdir()
        _, other_key = write_pair(elsewhere)
        first.key_path.write_bytes(other_key.read_bytes())
    second = ensure_self_signed(tmp_path, HOST, NOW)
    assert second.fingerprint_sha256 != first.fingerprint_sha256
    assert load_identity(second.cert_path, second.key_path).certificate == second.certificate


def test_fingerprint_is_sha256_in_openssl_form(tmp_path):
    """The fingerprint is cryptography's SHA-256 digest as colon-separated upper-case hex."""
    certificate = ensure_self_signed(tmp_path, HOST, NOW).certificate
    printed = fingerprint_sha256(certificate)
    assert re.fullmatch(r"([0-9A-F]{2}:){31}[0-9A-F]{2}", printed)
    assert bytes.fromhex(printed.replace(":", "")) == certificate.fingerprint(hashes.SHA256())


def test_given_files_are_loaded_as_they_are(tmp_path):
    """--tls-cert/--tls-key are used instead of generating; nothing is written under DIR/tls."""
    cert_path, key_path = write_pair(tmp_path)
    identity = server_identity(cert_path, key_path, tmp_path / "tls", "other.example", NOW)
    assert not identity.generated
    assert (identity.cert_path, identity.key_path) == (cert_path, key_path)
    assert identity.certificate == x509.load_pem_x509_certificate(cert_path.read_bytes())
    assert not (tmp_path / "tls").exists()


def test_a_chain_after_the_leaf_is_kept(tmp_path):
    """Certificates after the first in --tls-cert are the chain sent after the leaf."""
    cert_path, key_path = write_pair(tmp_path)
    intermediate, _ = generate_self_signed("ca.example", NOW)
    with cert_path.open("ab") as f:
        f.write(intermediate.public_bytes(serialization.Encoding.PEM))
    identity = load_identity(cert_path, key_path)
    assert identity.chain == (intermediate,)
    assert identity.server_options().extraCertChain


def test_mismatched_key_is_an_error_naming_tls_key(tmp_path):
    """A key that is not the certificate's is refused, naming --tls-key and --tls-cert."""
    cert_path, _ = write_pair(tmp_path)
    other = tmp_path / "other"
    other.mkdir()
    _, other_key = write_pair(other)
    with pytest.raises(TLSError) as error:
        load_identity(cert_path, other_key)
    assert error.value.flag == "--tls-key"
    assert "does not match the certificate in --tls-cert" in str(error.value)


@pytest.mark.parametrize(
    ("broken", "flag", "message"),
    [
        ("cert-missing", "--tls-cert", "cannot read"),
        ("cert-garbage", "--tls-cert", "not a PEM certificate"),
        ("key-missing", "--tls-key", "cannot read"),
        ("key-garbage", "--tls-key", "not a PEM private key"),
    ],
)
def test_unreadable_files_are_errors_naming_the_flag(tmp_path, broken, flag, message):
    """A missing or non-PEM file is reported with its flag and path, not a traceback."""
    cert_path, key_path = write_pair(tmp_path)
    target = cert_path if broken.startswith("cert") else key_path
    if broken.endswith("missing"):
        target.unlink()
    else:
        target.write_text("-----BEGIN NOTHING-----\n")
    with pytest.raises(TLSError) as error:
        load_identity(cert_path, key_path)
    assert error.value.flag == flag
    assert str(error.value).startswith(f"{flag} {target}: {message}")


def test_encrypted_key_is_refused_with_a_reason(tmp_path):
    """A passphrase-protected key cannot be used unattended; the error says so."""
    cert_path, key_path = write_pair(tmp_path)
    key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.BestAvailableEncryption(b"secret"),
        )
    )
    with pytest.raises(TLSError, match="encrypted"):
        load_identity(cert_path, key_path)


def test_unwritable_directory_is_an_error_naming_data(tmp_path):
    """When DIR/tls cannot be created the error names --data and the directory."""
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(TLSError) as error:
        ensure_self_signed(blocker / "tls", HOST, NOW)
    assert error.value.flag == "--data"


class ServerRefused(Exception):
    """The server side of an in-memory handshake raised, with OpenSSL's reason."""


def pump(client_send, client_receive, server: SSL.Connection, client_step) -> None:
    """Shuttle handshake bytes between an in-memory client and server until both finish."""
    server_done = client_done = False
    for _ in range(20):
        if not client_done:
            client_done = client_step()
        data = client_send()
        if data:
            server.bio_write(data)
        if not server_done:
            try:
                server.do_handshake()
                server_done = True
            except SSL.WantReadError:
                pass
            except SSL.Error as e:
                raise ServerRefused(str(e)) from e
        try:
            data = server.bio_read(65536)
        except SSL.WantReadError:
            data = b""
        if data:
            client_receive(data)
        if client_done and server_done:
            return
    raise AssertionError("handshake did not finish")


def server_connection(tmp_path) -> tuple[SSL.Connection, object]:
    identity = ensure_self_signed(tmp_path, HOST, datetime.now(UTC))
    server = SSL.Connection(identity.server_options().getContext(), None)
    server.set_accept_state()
    return server, identity


def test_context_completes_a_verified_handshake_with_python_ssl(tmp_path):
    """A client trusting cert.pem as its CA verifies the server as localhost and gets TLS 1.2+."""
    server, identity = server_connection(tmp_path)
    context = ssl.create_default_context(cafile=str(identity.cert_path))
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    client = context.wrap_bio(incoming, outgoing, server_hostname="localhost")

    def step() -> bool:
        try:
            client.do_handshake()
        except ssl.SSLWantReadError:
            return False
        return True

    pump(outgoing.read, incoming.write, server, step)
    assert client.version() in ("TLSv1.2", "TLSv1.3")
    assert "GCM" in client.cipher()[0] or "CHACHA20" in client.cipher()[0]


def legacy_client(min_version: int, max_version: int, ciphers: bytes) -> SSL.Connection:
    """A pyOpenSSL client allowed old protocols (security level 0), to see the server refuse."""
    context = SSL.Context(SSL.TLS_CLIENT_METHOD)
    context.set_min_proto_version(min_version)
    context.set_max_proto_version(max_version)
    context.set_cipher_list(ciphers)
    client = SSL.Connection(context, None)
    client.set_connect_state()
    return client


def handshake_with(server: SSL.Connection, client: SSL.Connection) -> None:
    def step() -> bool:
        try:
            client.do_handshake()
        except SSL.WantReadError:
            return False
        return True

    def send() -> bytes:
        try:
            return client.bio_read(65536)
        except SSL.WantReadError:
            return b""

    pump(send, client.bio_write, server, step)


def test_context_refuses_tls_1_1(tmp_path):
    """A client offering at most TLS 1.1 is refused by the server itself: the floor is TLS 1.2."""
    server, _ = server_connection(tmp_path)
    client = legacy_client(SSL.TLS1_VERSION, SSL.TLS1_1_VERSION, b"DEFAULT:@SECLEVEL=0")
    with pytest.raises(ServerRefused, match="unsupported protocol"):
        handshake_with(server, client)


def test_context_refuses_cbc_ciphers_on_tls_1_2(tmp_path):
    """A TLS 1.2 client offering only non-AEAD (CBC) suites gets no shared cipher."""
    server, _ = server_connection(tmp_path)
    client = legacy_client(
        SSL.TLS1_2_VERSION, SSL.TLS1_2_VERSION, b"ECDHE-ECDSA-AES128-SHA:ECDHE-ECDSA-AES256-SHA"
    )
    with pytest.raises(ServerRefused, match="no shared cipher"):
        handshake_with(server, client)
