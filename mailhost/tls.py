"""The server's TLS identity: a certificate, its key, and the server context built from them.

Theory of operation: an operator may bring a certificate and key
(``--tls-cert``/``--tls-key``, PEM); they are loaded and checked to match, and
any problem is reported naming the flag. Without them mailhost makes its own,
once: a self-signed certificate under ``DIR/tls/`` that is also its own
authority (CA:TRUE, keyCertSign), so a client can trust exactly this server by
adding ``cert.pem`` as a CA file, or pin it by the SHA-256 fingerprint printed at
start-up. Later starts reuse it unless it is missing, unreadable, does not match
its key, expires within :data:`RENEW_BEFORE`, or does not name the configured
hostname. Clients check validity against their own clock, so ``now`` here is
wall-clock time, not the adjustable server clock. Key generation blocks; it
happens once, before anything listens.

The server context offers TLS 1.2 and 1.3 only, with forward-secret AEAD
ciphers (TLS 1.3 suites are AEAD by definition).
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import tempfile
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.types import CertificateIssuerPrivateKeyTypes
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from twisted.internet.ssl import AcceptableCiphers, CertificateOptions, TLSVersion

CERT_FLAG = "--tls-cert"
KEY_FLAG = "--tls-key"
VALIDITY = timedelta(days=730)
RENEW_BEFORE = timedelta(days=30)
CLOCK_SKEW = timedelta(hours=1)
"""notBefore is backdated this much so a client whose clock lags still accepts the certificate."""
MODERN_CIPHERS = "ECDHE+AESGCM:ECDHE+CHACHA20"
LOOPBACK_NAMES = ("localhost",)
LOOPBACK_IPS = (ipaddress.ip_address("127.0.0.1"), ipaddress.ip_address("::1"))

PrivateKey = CertificateIssuerPrivateKeyTypes


class TLSError(Exception):
    """A certificate or key mailhost cannot use; names the flag (or the file) at fault."""

    def __init__(self, flag: str, path: Path, reason: str) -> None:
        self.flag = flag
        self.path = path
        self.reason = reason
        super().__init__(f"{flag} {path}: {reason}")


@dataclass(frozen=True)
class TLSIdentity:
    """A certificate (with any chain that followed it in the file) and its private key."""

    cert_path: Path
    key_path: Path
    certificate: x509.Certificate
    private_key: PrivateKey
    chain: tuple[x509.Certificate, ...] = ()
    generated: bool = False
    """True when mailhost made (or reused its own) self-signed certificate."""

    @property
    def fingerprint_sha256(self) -> str:
        return fingerprint_sha256(self.certificate)

    def server_options(self) -> CertificateOptions:
        return server_options(self)


def fingerprint_sha256(certificate: x509.Certificate) -> str:
    """Colon-separated upper-case hex, as ``openssl x509 -fingerprint -sha256`` prints it."""
    return certificate.fingerprint(hashes.SHA256()).hex(":").upper()


def server_options(identity: TLSIdentity) -> CertificateOptions:
    """A server context factory: TLS 1.2 or later, forward-secret AEAD ciphers only."""
    # pyOpenSSL takes cryptography's objects directly (its own X509/PKey are deprecated).
    return CertificateOptions(
        privateKey=identity.private_key,  # type: ignore[arg-type]
        certificate=identity.certificate,  # type: ignore[arg-type]
        extraCertChain=list(identity.chain),  # type: ignore[arg-type]
        raiseMinimumTo=TLSVersion.TLSv1_2,
        acceptableCiphers=AcceptableCiphers.fromOpenSSLCipherString(MODERN_CIPHERS),
    )


def _public_bytes(key: object) -> bytes:
    return key.public_bytes(  # type: ignore[attr-defined]
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def _key_matches(certificate: x509.Certificate, private_key: PrivateKey) -> bool:
    return _public_bytes(certificate.public_key()) == _public_bytes(private_key.public_key())


def load_identity(cert_path: Path, key_path: Path) -> TLSIdentity:
    """Load an operator's PEM certificate (leaf first, then any chain) and its unencrypted key."""
    try:
        cert_data = cert_path.read_bytes()
    except OSError as e:
        raise TLSError(CERT_FLAG, cert_path, f"cannot read: {e.strerror or e}") from None
    try:
        certificates = x509.load_pem_x509_certificates(cert_data)
    except ValueError:
        raise TLSError(CERT_FLAG, cert_path, "not a PEM certificate") from None
    try:
        key_data = key_path.read_bytes()
    except OSError as e:
        raise TLSError(KEY_FLAG, key_path, f"cannot read: {e.strerror or e}") from None
    try:
        private_key = serialization.load_pem_private_key(key_data, password=None)
    except TypeError:
        raise TLSError(KEY_FLAG, key_path, "the key is encrypted; give it unencrypted") from None
    except (ValueError, UnsupportedAlgorithm):
        raise TLSError(KEY_FLAG, key_path, "not a PEM private key") from None
    leaf, *chain = certificates
    if not _key_matches(leaf, private_key):  # type: ignore[arg-type]
        raise TLSError(KEY_FLAG, key_path, f"does not match the certificate in {CERT_FLAG}")
    return TLSIdentity(cert_path, key_path, leaf, private_key, tuple(chain))  # type: ignore[arg-type]


def _san_entries(hostname: str) -> list[x509.GeneralName]:
    names: list[x509.GeneralName] = []
    for name in (hostname, *LOOPBACK_NAMES):
        try:
            address = ipaddress.ip_address(name)
        except ValueError:
            entry: x509.GeneralName = x509.DNSName(name.encode("idna").decode("ascii").lower())
        else:
            entry = x509.IPAddress(address)
        if entry not in names:
            names.append(entry)
    names.extend(x509.IPAddress(ip) for ip in LOOPBACK_IPS if x509.IPAddress(ip) not in names)
    return names


def names_hostname(certificate: x509.Certificate, hostname: str) -> bool:
    """Whether the certificate's subjectAltName lists ``hostname`` (a name or an IP)."""
    try:
        san = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return False
    wanted = _san_entries(hostname)[0]
    if isinstance(wanted, x509.DNSName):
        return wanted.value in {n.lower() for n in san.get_values_for_type(x509.DNSName)}
    return wanted in san


def generate_self_signed(hostname: str, now: datetime) -> tuple[x509.Certificate, PrivateKey]:
    """An EC P-256 key and a certificate for it that is its own authority."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name(
        [
            x509.NameAttribute(NameOID.COMMON_NAME, hostname[:64]),
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "mailhost self-signed"),
        ]
    )
    public = key.public_key()
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(public)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - CLOCK_SKEW)
        .not_valid_after(now + VALIDITY)
        .add_extension(x509.SubjectAlternativeName(_san_entries(hostname)), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(public), critical=False)
        .sign(key, hashes.SHA256())
    )
    return certificate, key


def _write_atomically(path: Path, data: bytes, mode: int) -> None:
    """Temp file in the same directory, fsync, rename: readers see the old file or the new one."""
    fd, temp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(temp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temp)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def _reusable(cert_path: Path, key_path: Path, hostname: str, now: datetime) -> TLSIdentity | None:
    try:
        identity = load_identity(cert_path, key_path)
    except TLSError:
        return None
    certificate = identity.certificate
    if certificate.not_valid_after_utc - RENEW_BEFORE <= now:
        return None
    if certificate.not_valid_before_utc > now:
        return None
    if not names_hostname(certificate, hostname):
        return None
    return TLSIdentity(cert_path, key_path, certificate, identity.private_key, generated=True)


def ensure_self_signed(directory: Path, hostname: str, now: datetime) -> TLSIdentity:
    """Reuse ``directory``'s cert.pem/key.pem when still good for ``hostname``, else make new."""
    cert_path = directory / "cert.pem"
    key_path = directory / "key.pem"
    reused = _reusable(cert_path, key_path, hostname, now)
    if reused is not None:
        return reused
    certificate, key = generate_self_signed(hostname, now)
    key_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    try:
        directory.mkdir(parents=True, exist_ok=True)
        _write_atomically(key_path, key_pem, 0o600)
        _write_atomically(cert_path, certificate.public_bytes(serialization.Encoding.PEM), 0o644)
    except OSError as e:
        raise TLSError(
            "--data", directory, f"cannot write the certificate: {e.strerror or e}"
        ) from None
    return TLSIdentity(cert_path, key_path, certificate, key, generated=True)


def server_identity(
    cert_path: Path | None, key_path: Path | None, directory: Path, hostname: str, now: datetime
) -> TLSIdentity:
    """The operator's certificate when given, otherwise mailhost's own under ``directory``."""
    if cert_path is not None and key_path is not None:
        return load_identity(cert_path, key_path)
    return ensure_self_signed(directory, hostname, now)
