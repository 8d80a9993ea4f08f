"""The TLS identity: a constrained CA and leaf made once and reused, given files, the context."""

from __future__ import annotations

import ipaddress
import re
import ssl
import threading
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from cryptography.x509.verification import PolicyBuilder, Store, VerificationError
from OpenSSL import SSL

from mailhost.tls import (
    RENEW_BEFORE,
    VALIDITY,
    TLSError,
    ensure_self_signed,
    fingerprint_sha256,
    generate_certificate,
    load_identity,
    server_identity,
)

NOW = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
HOST = "mail.example.org"
LOOPBACK_V4, LOOPBACK_V6 = ipaddress.ip_address("127.0.0.1"), ipaddress.ip_address("::1")


def extension(certificate: x509.Certificate, kind: type) -> x509.Extension:
    return certificate.extensions.get_extension_for_class(kind)


def san(certificate: x509.Certificate) -> x509.SubjectAlternativeName:
    return extension(certificate, x509.SubjectAlternativeName).value


def ca_of(identity) -> x509.Certificate:
    return x509.load_pem_x509_certificate(identity.ca_path.read_bytes())


def pem_key(key) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def write_pair(directory, hostname=HOST, now=NOW):
    """An operator's certificate and key as PEM files."""
    made = generate_certificate(hostname, now)
    cert_path, key_path = directory / "given-cert.pem", directory / "given-key.pem"
    cert_path.write_bytes(made.certificate.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(pem_key(made.private_key))
    key_path.chmod(0o600)
    return cert_path, key_path


def verify(identity, name: x509.GeneralName, now=NOW) -> list[x509.Certificate]:
    """Path-validate the leaf against ca.pem alone, as a browser-grade client would."""
    verifier = PolicyBuilder().store(Store([ca_of(identity)])).time(now).build_server_verifier(name)
    return verifier.verify(identity.certificate, list(identity.chain))


def snapshot(directory) -> dict:
    return {p.name: (p.read_bytes(), p.stat().st_mtime_ns) for p in sorted(directory.iterdir())}


def test_first_start_writes_ca_chain_and_private_key(tmp_path):
    """Without files, ca.pem, cert.pem (leaf then CA) and a 0600 key.pem are made."""
    identity = ensure_self_signed(tmp_path / "tls", HOST, NOW)
    assert identity.generated
    assert identity.cert_path == tmp_path / "tls" / "cert.pem"
    assert identity.ca_path == tmp_path / "tls" / "ca.pem"
    assert (identity.key_path.stat().st_mode & 0o777) == 0o600
    on_disk = x509.load_pem_x509_certificates(identity.cert_path.read_bytes())
    assert on_disk == [identity.certificate, ca_of(identity)]
    assert identity.chain == (ca_of(identity),)
    listing = sorted(p.name for p in (tmp_path / "tls").iterdir())
    assert listing == [".lock", "ca.pem", "cert.pem", "key.pem"]


def test_the_ca_key_is_not_on_disk(tmp_path):
    """The only private key written is the leaf's: nobody can issue more under ca.pem."""
    identity = ensure_self_signed(tmp_path, HOST, NOW)
    ca_public = ca_of(identity).public_key()
    found = []
    for path in tmp_path.iterdir():
        data = path.read_bytes()
        for block in re.findall(rb"-----BEGIN [A-Z ]*PRIVATE KEY-----.*?-----END", data, re.S):
            found.append(serialization.load_pem_private_key(block + b" PRIVATE KEY-----\n", None))
    assert [key.public_key() for key in found] == [identity.certificate.public_key()]
    assert ca_public not in [key.public_key() for key in found]


def test_generated_leaf_names_hostname_and_loopback(tmp_path):
    """The SAN holds the hostname, localhost, 127.0.0.1 and ::1, so loopback clients verify."""
    certificate = ensure_self_signed(tmp_path, HOST, NOW).certificate
    names = san(certificate)
    assert names.get_values_for_type(x509.DNSName) == [HOST, "localhost"]
    assert names.get_values_for_type(x509.IPAddress) == [LOOPBACK_V4, LOOPBACK_V6]


def test_generated_leaf_is_a_server_certificate_not_an_authority(tmp_path):
    """The leaf is CA:FALSE, digitalSignature only, EKU serverAuth, about two years."""
    identity = ensure_self_signed(tmp_path, HOST, NOW)
    leaf = identity.certificate
    assert extension(leaf, x509.BasicConstraints).value.ca is False
    usage = extension(leaf, x509.KeyUsage).value
    assert usage.digital_signature and not usage.key_cert_sign and not usage.crl_sign
    assert list(extension(leaf, x509.ExtendedKeyUsage).value) == [ExtendedKeyUsageOID.SERVER_AUTH]
    assert leaf.issuer == ca_of(identity).subject != leaf.subject
    assert leaf.not_valid_before_utc <= NOW
    assert leaf.not_valid_after_utc == NOW + VALIDITY
    assert isinstance(leaf.public_key(), ec.EllipticCurvePublicKey)


def test_generated_ca_is_limited_to_the_servers_names(tmp_path):
    """The CA has pathlen 0, signs certificates only, under critical name constraints."""
    ca = ca_of(ensure_self_signed(tmp_path, HOST, NOW))
    constraints = extension(ca, x509.BasicConstraints).value
    assert (constraints.ca, constraints.path_length) == (True, 0)
    usage = extension(ca, x509.KeyUsage).value
    assert usage.key_cert_sign and usage.crl_sign and not usage.digital_signature
    names = extension(ca, x509.NameConstraints)
    assert names.critical
    assert names.value.excluded_subtrees is None
    assert names.value.permitted_subtrees == [
        x509.DNSName(HOST),
        x509.DNSName("localhost"),
        x509.IPAddress(ipaddress.ip_network("127.0.0.1/32")),
        x509.IPAddress(ipaddress.ip_network("::1/128")),
    ]


@pytest.mark.parametrize(
    "name",
    [x509.DNSName(HOST), x509.DNSName("localhost"), x509.IPAddress(LOOPBACK_V4)],
    ids=str,
)
def test_the_chain_verifies_against_ca_pem(tmp_path, name):
    """X.509 path validation from ca.pem accepts the leaf for each of its names."""
    identity = ensure_self_signed(tmp_path, HOST, NOW)
    assert verify(identity, name) == [identity.certificate, ca_of(identity)]


def test_name_constraints_stop_the_ca_vouching_for_other_sites(tmp_path, monkeypatch):
    """Even with the CA key in hand, a leaf for another site does not verify under ca.pem."""
    keys = []
    real = ec.generate_private_key

    def keeping(*args, **kwargs):
        keys.append(real(*args, **kwargs))
        return keys[-1]

    monkeypatch.setattr(ec, "generate_private_key", keeping)
    made = generate_certificate(HOST, NOW)
    monkeypatch.undo()
    [ca_key] = [k for k in keys if k.public_key() == made.ca.public_key()]
    forged_key = ec.generate_private_key(ec.SECP256R1())
    authority = x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key())
    forged = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "bank.example")]))
        .issuer_name(made.ca.subject)
        .public_key(forged_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(NOW - timedelta(hours=1))
        .not_valid_after(NOW + timedelta(days=30))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName("bank.example")]), False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), True)
        .add_extension(authority, False)
        .sign(ca_key, hashes.SHA256())
    )
    verifier = (
        PolicyBuilder()
        .store(Store([made.ca]))
        .time(NOW)
        .build_server_verifier(x509.DNSName("bank.example"))
    )
    with pytest.raises(VerificationError, match="name constraint"):
        verifier.verify(forged, [])


def test_an_ip_literal_hostname_is_an_ip_san_and_constraint(tmp_path):
    """A hostname that is an address is an IP SAN and a single-address name constraint."""
    identity = ensure_self_signed(tmp_path, "192.0.2.7", NOW)
    assert ipaddress.ip_address("192.0.2.7") in san(identity.certificate).get_values_for_type(
        x509.IPAddress
    )
    permitted = extension(ca_of(identity), x509.NameConstraints).value.permitted_subtrees
    assert x509.IPAddress(ipaddress.ip_network("192.0.2.7/32")) in permitted


def test_later_starts_reuse_the_files_without_rewriting_them(tmp_path):
    """A second start reads the same files: same bytes, same modification times."""
    first = ensure_self_signed(tmp_path, HOST, NOW)
    before = snapshot(tmp_path)
    again = ensure_self_signed(tmp_path, HOST, NOW + timedelta(days=100))
    assert snapshot(tmp_path) == before
    assert again.fingerprint_sha256 == first.fingerprint_sha256
    assert again.ca_path == first.ca_path


def test_an_implicit_new_hostname_keeps_the_certificate(tmp_path):
    """A machine name that changed (as in containers) does not replace what clients trust."""
    first = ensure_self_signed(tmp_path, "container-1", NOW, hostname_explicit=False)
    before = snapshot(tmp_path)
    again = ensure_self_signed(tmp_path, "container-2", NOW, hostname_explicit=False)
    assert again.fingerprint_sha256 == first.fingerprint_sha256
    assert snapshot(tmp_path) == before


def test_an_explicit_new_hostname_makes_a_new_certificate(tmp_path):
    """An operator's --hostname missing from the SAN regenerates, naming the new host."""
    first = ensure_self_signed(tmp_path, HOST, NOW)
    second = ensure_self_signed(tmp_path, "mx.example.net", NOW, hostname_explicit=True)
    assert second.fingerprint_sha256 != first.fingerprint_sha256
    assert "mx.example.net" in san(second.certificate).get_values_for_type(x509.DNSName)
    assert verify(second, x509.DNSName("mx.example.net"))


def test_an_explicit_hostname_already_named_keeps_the_certificate(tmp_path):
    """An explicit --hostname that the SAN already lists (any case) is no reason to regenerate."""
    first = ensure_self_signed(tmp_path, HOST, NOW)
    again = ensure_self_signed(tmp_path, HOST.upper(), NOW, hostname_explicit=True)
    assert again.fingerprint_sha256 == first.fingerprint_sha256


def test_a_certificate_near_expiry_is_replaced(tmp_path):
    """Within the renewal margin of notAfter, a fresh pair is made."""
    first = ensure_self_signed(tmp_path, HOST, NOW)
    still_fine = NOW + VALIDITY - RENEW_BEFORE - timedelta(days=1)
    assert ensure_self_signed(tmp_path, HOST, still_fine).fingerprint_sha256 == (
        first.fingerprint_sha256
    )
    nearly_expired = NOW + VALIDITY - RENEW_BEFORE + timedelta(days=1)
    renewed = ensure_self_signed(tmp_path, HOST, nearly_expired)
    assert renewed.fingerprint_sha256 != first.fingerprint_sha256
    assert renewed.certificate.not_valid_after_utc == nearly_expired + VALIDITY


@pytest.mark.parametrize(
    "damage", ["missing key", "garbage cert", "key of another cert", "missing ca", "other ca"]
)
def test_a_damaged_pair_is_replaced(tmp_path, damage):
    """A missing, unreadable or mismatched file is not reused: a new matching set is written."""
    first = ensure_self_signed(tmp_path, HOST, NOW)
    other = ensure_self_signed(tmp_path / "other", HOST, NOW)
    if damage == "missing key":
        first.key_path.unlink()
    elif damage == "garbage cert":
        first.cert_path.write_text("not a certificate\n")
    elif damage == "key of another cert":
        first.key_path.write_bytes(other.key_path.read_bytes())
    elif damage == "missing ca":
        first.ca_path.unlink()
    else:
        first.ca_path.write_bytes(other.ca_path.read_bytes())
    second = ensure_self_signed(tmp_path, HOST, NOW)
    assert second.fingerprint_sha256 != first.fingerprint_sha256
    assert load_identity(second.cert_path, second.key_path).certificate == second.certificate
    assert verify(second, x509.DNSName(HOST))


def test_an_old_self_signed_authority_is_replaced(tmp_path):
    """A leaf that is itself a CA (as earlier versions made) is not reused."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, HOST)])
    old = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(NOW - timedelta(hours=1))
        .not_valid_after(NOW + VALIDITY)
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(HOST)]), False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), True)
        .sign(key, hashes.SHA256())
    )
    pem = old.public_bytes(serialization.Encoding.PEM)
    (tmp_path / "cert.pem").write_bytes(pem + pem)
    (tmp_path / "ca.pem").write_bytes(pem)
    (tmp_path / "key.pem").write_bytes(pem_key(key))
    identity = ensure_self_signed(tmp_path, HOST, NOW)
    assert identity.certificate != old
    assert extension(identity.certificate, x509.BasicConstraints).value.ca is False


def test_concurrent_starts_end_with_one_pair_they_all_use(tmp_path):
    """Four simultaneous first starts agree on one certificate, the one left on disk."""
    directory = tmp_path / "tls"
    start = threading.Barrier(4)

    def first_start(_: int):
        start.wait()
        return ensure_self_signed(directory, HOST, NOW)

    with ThreadPoolExecutor(4) as pool:
        identities = list(pool.map(first_start, range(4)))
    assert len({identity.fingerprint_sha256 for identity in identities}) == 1
    on_disk = load_identity(directory / "cert.pem", directory / "key.pem")
    assert on_disk.certificate == identities[0].certificate
    assert on_disk.chain == (ca_of(identities[0]),)
    assert sorted(p.name for p in directory.iterdir()) == [".lock", "ca.pem", "cert.pem", "key.pem"]


def test_a_loosened_key_is_tightened_to_0600_on_reuse(tmp_path):
    """mailhost's own key.pem found group/world-readable is set back to 0600 and reused."""
    first = ensure_self_signed(tmp_path, HOST, NOW)
    first.key_path.chmod(0o644)
    again = ensure_self_signed(tmp_path, HOST, NOW)
    assert again.fingerprint_sha256 == first.fingerprint_sha256
    assert (again.key_path.stat().st_mode & 0o777) == 0o600
    assert again.warnings == ()


def test_fingerprint_is_the_leafs_sha256_in_openssl_form(tmp_path):
    """The fingerprint is the leaf's SHA-256 digest as colon-separated upper-case hex."""
    identity = ensure_self_signed(tmp_path, HOST, NOW)
    printed = identity.fingerprint_sha256
    assert re.fullmatch(r"([0-9A-F]{2}:){31}[0-9A-F]{2}", printed)
    assert bytes.fromhex(printed.replace(":", "")) == identity.certificate.fingerprint(
        hashes.SHA256()
    )
    assert printed != fingerprint_sha256(ca_of(identity))


def test_given_files_are_loaded_as_they_are(tmp_path):
    """--tls-cert/--tls-key are used instead of generating; nothing is written under DIR/tls."""
    cert_path, key_path = write_pair(tmp_path)
    identity = server_identity(cert_path, key_path, tmp_path / "tls", "other.example", NOW)
    assert not identity.generated
    assert identity.ca_path is None
    assert (identity.cert_path, identity.key_path) == (cert_path, key_path)
    assert identity.certificate == x509.load_pem_x509_certificate(cert_path.read_bytes())
    assert identity.warnings == ()
    assert not (tmp_path / "tls").exists()


def test_a_group_readable_given_key_is_warned_about_not_changed(tmp_path):
    """An operator's key readable by others gets a warning naming --tls-key; its mode stays."""
    cert_path, key_path = write_pair(tmp_path)
    key_path.chmod(0o640)
    identity = server_identity(cert_path, key_path, tmp_path / "tls", HOST, NOW)
    [warning] = identity.warnings
    assert warning.startswith(f"--tls-key {key_path} is readable by group or others (mode 0640)")
    assert (key_path.stat().st_mode & 0o777) == 0o640


def test_a_chain_after_the_leaf_is_kept(tmp_path):
    """Certificates after the first in --tls-cert are the chain sent after the leaf."""
    cert_path, key_path = write_pair(tmp_path)
    intermediate = generate_certificate("ca.example", NOW).ca
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


@pytest.mark.parametrize("server_name", ["localhost", HOST, "127.0.0.1", "::1"])
def test_context_completes_a_verified_handshake_with_python_ssl(tmp_path, server_name):
    """A client trusting only ca.pem verifies the server under each SAN name, with TLS 1.2+."""
    server, identity = server_connection(tmp_path)
    context = ssl.create_default_context(cafile=str(identity.ca_path))
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    client = context.wrap_bio(incoming, outgoing, server_hostname=server_name)

    def step() -> bool:
        try:
            client.do_handshake()
        except ssl.SSLWantReadError:
            return False
        return True

    pump(outgoing.read, incoming.write, server, step)
    assert client.version() in ("TLSv1.2", "TLSv1.3")
    assert "GCM" in client.cipher()[0] or "CHACHA20" in client.cipher()[0]
    served = client.getpeercert(binary_form=True)
    assert served == identity.certificate.public_bytes(serialization.Encoding.DER)


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
