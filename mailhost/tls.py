"""The server's TLS identity: a certificate, its key, and the server context built from them.

Theory of operation: an operator may bring a certificate and key
(``--tls-cert``/``--tls-key``, PEM); they are loaded and checked to match, and
any problem is reported naming the flag. Without them mailhost makes its own,
as mkcert does: a throwaway authority whose key lives only in memory for the
moment it signs one leaf certificate, and is then dropped. The authority is
name-constrained to the leaf's own names (the hostname, localhost, 127.0.0.1,
::1), so trusting ``ca.pem`` lets a client verify this server and nothing
else, even for someone who reads ``key.pem``; the leaf itself is CA:FALSE, as
NSS insists. Clients may instead pin the leaf's SHA-256 fingerprint, printed
at start-up.

Later starts reuse the files unless one is missing or unreadable, the key does
not match, the leaf is not one mailhost made under ``ca.pem``, it expires
within :data:`RENEW_BEFORE`, or an *explicitly* given hostname is not among its
names. A hostname guessed from the machine is not enough, since containers get
a new one every run and clients would lose their trust each time. An
``flock`` on ``DIR/tls/.lock`` serialises check, generation and writing, so
concurrent starts end with one pair that all of them use. Clients check
validity against their own clock, so ``now`` here is wall-clock time, not the
adjustable server clock. Key generation blocks; it happens once, before
anything listens.

The server context offers TLS 1.2 and 1.3 only, with forward-secret AEAD
ciphers (TLS 1.3 suites are AEAD by definition).
"""

from __future__ import annotations

import contextlib
import fcntl
import ipaddress
import os
import stat
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
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
CA_FILE = "ca.pem"
CERT_FILE = "cert.pem"
KEY_FILE = "key.pem"
LOCK_FILE = ".lock"
KEY_MODE = 0o600

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
    """A leaf certificate (with any chain that followed it in the file) and its private key."""

    cert_path: Path
    key_path: Path
    certificate: x509.Certificate
    private_key: PrivateKey
    chain: tuple[x509.Certificate, ...] = ()
    generated: bool = False
    """True when mailhost made (or reused its own) certificate."""
    ca_path: Path | None = None
    """The authority clients should trust (mailhost's own ``ca.pem``); None for given files."""
    warnings: tuple[str, ...] = ()
    """Problems worth telling the operator about that do not stop the server."""

    @property
    def fingerprint_sha256(self) -> str:
        """The leaf's fingerprint, which is what a client pins."""
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


def _ascii_hostname(hostname: str) -> str:
    return hostname.rstrip(".").encode("idna").decode("ascii").lower()


def _san_entries(hostname: str) -> list[x509.GeneralName]:
    names: list[x509.GeneralName] = []
    for name in (hostname, *LOOPBACK_NAMES):
        try:
            address = ipaddress.ip_address(name)
        except ValueError:
            entry: x509.GeneralName = x509.DNSName(_ascii_hostname(name))
        else:
            entry = x509.IPAddress(address)
        if entry not in names:
            names.append(entry)
    names.extend(x509.IPAddress(ip) for ip in LOOPBACK_IPS if x509.IPAddress(ip) not in names)
    return names


def _permitted_subtrees(hostname: str) -> list[x509.GeneralName]:
    """The SAN names as name constraints: each IP becomes a single-address network."""
    subtrees: list[x509.GeneralName] = []
    for entry in _san_entries(hostname):
        if isinstance(entry, x509.IPAddress):
            subtrees.append(x509.IPAddress(ipaddress.ip_network(entry.value)))
        else:
            subtrees.append(entry)
    return subtrees


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


def _key_usage(*, digital_signature: bool = False, cert_sign: bool = False) -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=digital_signature,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=cert_sign,
        crl_sign=cert_sign,
        encipher_only=False,
        decipher_only=False,
    )


@dataclass(frozen=True)
class Generated:
    """A fresh leaf, its key and the authority that signed it; the authority's key is gone."""

    certificate: x509.Certificate
    private_key: PrivateKey
    ca: x509.Certificate


def generate_certificate(hostname: str, now: datetime) -> Generated:
    """A name-constrained throwaway CA and a server leaf it signed, both EC P-256.

    The CA key is a local variable: it is never serialised, so once this
    returns nobody can issue another certificate under ``ca.pem``.
    """
    ascii_name = _ascii_hostname(hostname)
    not_before, not_after = now - CLOCK_SKEW, now + VALIDITY
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_public = ca_key.public_key()
    ca_name = x509.Name(
        [
            x509.NameAttribute(NameOID.COMMON_NAME, f"mailhost CA for {ascii_name}"[:64]),
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "mailhost self-signed"),
        ]
    )
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_public)
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(_key_usage(cert_sign=True), critical=True)
        .add_extension(
            x509.NameConstraints(
                permitted_subtrees=_permitted_subtrees(hostname), excluded_subtrees=None
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_public), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    # A common name is optional with a SAN; one cut short would fall outside the constraints.
    subject = [x509.NameAttribute(NameOID.COMMON_NAME, ascii_name)] if len(ascii_name) <= 64 else []
    subject.append(x509.NameAttribute(NameOID.ORGANIZATION_NAME, "mailhost self-signed"))
    leaf = (
        x509.CertificateBuilder()
        .subject_name(x509.Name(subject))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.SubjectAlternativeName(_san_entries(hostname)), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(_key_usage(digital_signature=True), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_public), critical=False
        )
        .sign(ca_key, hashes.SHA256())
    )
    return Generated(leaf, key, ca)


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


def _loose_mode(path: Path, mask: int) -> int | None:
    """The file's permission bits when any in ``mask`` is set, else None."""
    try:
        mode = stat.S_IMODE(path.stat().st_mode)
    except OSError:
        return None
    return mode if mode & mask else None


def _tighten_key(key_path: Path) -> tuple[str, ...]:
    """Bring mailhost's own key back to 0600 if something loosened it."""
    mode = _loose_mode(key_path, 0o777 & ~KEY_MODE)
    if mode is None:
        return ()
    try:
        os.chmod(key_path, KEY_MODE)
    except OSError as e:
        return (f"{key_path} has mode {mode:04o} and cannot be made 0600: {e.strerror or e}",)
    return ()


def _reusable(
    directory: Path, hostname: str, now: datetime, hostname_explicit: bool
) -> TLSIdentity | None:
    """The pair under ``directory`` if it is mailhost's own, whole and still good, else None."""
    cert_path, key_path, ca_path = directory / CERT_FILE, directory / KEY_FILE, directory / CA_FILE
    try:
        identity = load_identity(cert_path, key_path)
        cas = x509.load_pem_x509_certificates(ca_path.read_bytes())
    except (TLSError, OSError, ValueError):
        return None
    leaf = identity.certificate
    if len(cas) != 1 or identity.chain != (cas[0],):
        return None
    ca = cas[0]
    try:
        is_ca = leaf.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
        leaf.verify_directly_issued_by(ca)
    except (x509.ExtensionNotFound, ValueError, TypeError, InvalidSignature):
        return None
    if is_ca:
        return None  # an older self-signed authority: replace it with a constrained pair
    expires = min(leaf.not_valid_after_utc, ca.not_valid_after_utc)
    if expires - RENEW_BEFORE <= now or leaf.not_valid_before_utc > now:
        return None
    if hostname_explicit and not names_hostname(leaf, hostname):
        return None
    return TLSIdentity(
        cert_path,
        key_path,
        leaf,
        identity.private_key,
        (ca,),
        generated=True,
        ca_path=ca_path,
        warnings=_tighten_key(key_path),
    )


@contextlib.contextmanager
def _locked(directory: Path) -> Iterator[None]:
    """An exclusive flock on ``directory``/.lock, released when the block ends (or we die)."""
    fd = os.open(directory / LOCK_FILE, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def _pem(certificate: x509.Certificate) -> bytes:
    return certificate.public_bytes(serialization.Encoding.PEM)


def ensure_self_signed(
    directory: Path, hostname: str, now: datetime, *, hostname_explicit: bool = True
) -> TLSIdentity:
    """Reuse ``directory``'s ca.pem/cert.pem/key.pem when still good, else make and write new.

    ``hostname_explicit`` says whether the operator chose ``hostname``; only
    then does its absence from the certificate call for a new one.
    """
    reused = _reusable(directory, hostname, now, hostname_explicit)
    if reused is not None:
        return reused
    cert_path, key_path, ca_path = directory / CERT_FILE, directory / KEY_FILE, directory / CA_FILE
    try:
        directory.mkdir(parents=True, exist_ok=True)
        with _locked(directory):
            # Another start may have written a good pair while we waited for the lock.
            reused = _reusable(directory, hostname, now, hostname_explicit)
            if reused is not None:
                return reused
            made = generate_certificate(hostname, now)
            key_pem = made.private_key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
            _write_atomically(key_path, key_pem, KEY_MODE)
            _write_atomically(cert_path, _pem(made.certificate) + _pem(made.ca), 0o644)
            _write_atomically(ca_path, _pem(made.ca), 0o644)
    except OSError as e:
        raise TLSError(
            "--data", directory, f"cannot write the certificate: {e.strerror or e}"
        ) from None
    return TLSIdentity(
        cert_path,
        key_path,
        made.certificate,
        made.private_key,
        (made.ca,),
        generated=True,
        ca_path=ca_path,
    )


def server_identity(
    cert_path: Path | None,
    key_path: Path | None,
    directory: Path,
    hostname: str,
    now: datetime,
    *,
    hostname_explicit: bool = True,
) -> TLSIdentity:
    """The operator's certificate when given, otherwise mailhost's own under ``directory``."""
    if cert_path is not None and key_path is not None:
        identity = load_identity(cert_path, key_path)
        mode = _loose_mode(key_path, 0o044)
        if mode is None:
            return identity
        warning = (
            f"{KEY_FLAG} {key_path} is readable by group or others (mode {mode:04o});"
            " consider chmod 600"
        )
        return replace(identity, warnings=(warning,))
    return ensure_self_signed(directory, hostname, now, hostname_explicit=hostname_explicit)
