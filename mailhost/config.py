"""Settings as frozen values, and the one place that parses and explains them.

Every parser raises :class:`ConfigError` naming the flag, the bad value and
the accepted forms, so the CLI can print it and exit 2 without a traceback.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta
from pathlib import Path

from mailhost.addresses import AddressError, check_domain
from mailhost.connections import DEFAULT_MAX_CONNECTIONS, DEFAULT_MAX_CONNECTIONS_PER_IP
from mailhost.policy import Schemes
from mailhost.schedule import Schedule
from mailhost.throttle import ThrottleSettings

STATE_FORMS = "on, off, or until:<ISO 8601 date or datetime> (e.g. until:2013-09-02)"
DURATION_FORMS = "seconds (600) or a number with s, m or h (30s, 10m, 2h)"
INSTANT_FORMS = "an ISO 8601 date or datetime (2013-09-01 or 2013-09-01T23:59:00Z)"
PORT_FORMS = "a number from 0 to 65535 (0 picks a free port)"

DEFAULT_MAX_MESSAGE_SIZE = 25 * 1024 * 1024
DEFAULT_POP_WINDOW = timedelta(minutes=10)


class ConfigError(ValueError):
    """A setting with a value mailhost cannot use."""

    def __init__(self, flag: str, value: object, accepted: str) -> None:
        self.flag = flag
        self.value = value
        self.accepted = accepted
        super().__init__(f"{flag}: {value!r} is not valid; expected {accepted}")


def parse_instant(text: str, flag: str = "--now") -> datetime:
    """An ISO 8601 date (00:00 UTC) or datetime; a naive datetime is UTC."""
    value = text.strip()
    try:
        if re.fullmatch(r"\d{4}-\d{2}-\d{2}", value):
            return datetime.combine(date.fromisoformat(value), time(), UTC)
        instant = datetime.fromisoformat(value.replace("z", "Z"))
    except ValueError:
        raise ConfigError(flag, text, INSTANT_FORMS) from None
    if instant.tzinfo is None:
        instant = instant.replace(tzinfo=UTC)
    return instant.astimezone(UTC)


def parse_state(text: str, flag: str) -> Schedule:
    value = text.strip()
    lowered = value.lower()
    if lowered == "on":
        return Schedule.on()
    if lowered == "off":
        return Schedule.off()
    if lowered.startswith("until:"):
        try:
            return Schedule.until(parse_instant(value[len("until:") :], flag))
        except ConfigError:
            raise ConfigError(flag, text, STATE_FORMS) from None
    raise ConfigError(flag, text, STATE_FORMS)


def parse_duration(text: str, flag: str) -> timedelta:
    match = re.fullmatch(r"\s*([0-9]+)\s*([smh]?)\s*", text.lower())
    if not match:
        raise ConfigError(flag, text, DURATION_FORMS)
    amount = int(match.group(1))
    seconds = amount * {"": 1, "s": 1, "m": 60, "h": 3600}[match.group(2)]
    if seconds <= 0:
        raise ConfigError(flag, text, "a duration longer than zero: " + DURATION_FORMS)
    return timedelta(seconds=seconds)


def parse_port(value: object, flag: str) -> int:
    text = str(value).strip()
    if not re.fullmatch(r"[0-9]{1,5}", text):
        raise ConfigError(flag, value, PORT_FORMS)
    port = int(text)
    if port > 65535:
        raise ConfigError(flag, value, PORT_FORMS)
    return port


HOST_FORMS = "an IP address such as 127.0.0.1, ::1 or 0.0.0.0 (or localhost)"


def parse_host(text: str, flag: str = "--host") -> str:
    """A listen address: an IP literal, or ``localhost``."""
    value = text.strip()
    if value.lower() == "localhost":
        return "127.0.0.1"
    try:
        return ipaddress.ip_address(value.strip("[]")).compressed
    except ValueError:
        raise ConfigError(flag, text, HOST_FORMS) from None


def is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def parse_domain(text: str, flag: str = "--domain") -> str:
    try:
        domain = check_domain(text.strip().rstrip("."))
    except AddressError:
        raise ConfigError(flag, text, "a domain name such as example.org") from None
    if domain.startswith("["):
        raise ConfigError(flag, text, "a domain name such as example.org")
    return domain


HOSTNAME_FORMS = (
    "a host name such as mail.example.org: dot-separated labels of 1-63 letters, digits or"
    " hyphens (IDNA allowed), at most 253 characters"
)
_HOSTNAME_LABEL = re.compile(r"[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?")


def parse_hostname(text: str, flag: str = "--hostname") -> str:
    """A host name for greetings and the certificate, in its ASCII (IDNA) form.

    Checked here so that a bad name is a usage error, not an encoding failure
    deep inside certificate generation.
    """
    value = text.strip()
    if value.endswith("."):
        value = value[:-1]
    try:
        ascii_name = value.encode("idna").decode("ascii")
    except UnicodeError:
        raise ConfigError(flag, text, HOSTNAME_FORMS) from None
    labels = ascii_name.split(".")
    if len(ascii_name) > 253 or not all(_HOSTNAME_LABEL.fullmatch(label) for label in labels):
        raise ConfigError(flag, text, HOSTNAME_FORMS)
    return ascii_name


def parse_positive(value: object, flag: str, what: str) -> int:
    text = str(value).strip()
    if not re.fullmatch(r"[0-9]+", text) or int(text) <= 0:
        raise ConfigError(flag, value, what)
    return int(text)


@dataclass(frozen=True)
class DataDir:
    """Where everything lives under ``--data DIR``."""

    root: Path

    @property
    def users(self) -> Path:
        return self.root / "users"

    @property
    def outbox(self) -> Path:
        return self.root / "outbox"

    @property
    def events(self) -> Path:
        return self.root / "events.jsonl"

    @property
    def tls(self) -> Path:
        """mailhost's own self-signed cert.pem and key.pem, when none is given."""
        return self.root / "tls"

    def mailbox(self, account: str) -> Path:
        return self.root / "mail" / account


@dataclass(frozen=True)
class Limits:
    """Protocol limits; each names the RFC text it follows."""

    max_message_size: int = DEFAULT_MAX_MESSAGE_SIZE
    """SIZE advertised in EHLO and enforced with 552 5.3.4 (RFC 1870)."""
    max_command_line: int = 512
    """RFC 5321 §4.5.3.1.4 and RFC 2449 §4: command line octets, CRLF included."""
    max_text_line: int = 1000
    """RFC 5321 §4.5.3.1.6: message text line octets, CRLF included."""
    max_recipients: int = 100
    """RFC 5321 §4.5.3.1.8: at least 100 must be accepted; the next gets 452 4.5.3."""
    smtp_idle_timeout: float = 300.0
    """RFC 5321 §4.5.3.2.7: a server SHOULD wait at least 5 minutes for a command."""
    pop3_idle_timeout: float = 600.0
    """RFC 1939 §3: an autologout timer MUST be at least 10 minutes."""
    max_auth_failures: int = 3
    """RFC 4954 §4: failures tolerated on one SMTP session before it is closed."""
    max_bad_commands: int = 20
    """Unknown or malformed commands on one session before 421 / -ERR and close."""
    max_data_seconds: float = 600.0
    """Total time one DATA phase may take; a slow sender past it gets 421 4.4.2."""
    max_connections: int = DEFAULT_MAX_CONNECTIONS
    """Connections over all listeners; the next is refused at the greeting."""
    max_connections_per_ip: int = DEFAULT_MAX_CONNECTIONS_PER_IP
    """Connections from one client address over all listeners."""


@dataclass(frozen=True)
class Listeners:
    """TCP ports to listen on; 0 asks the kernel for a free one."""

    smtp: int = 2525
    submission: int = 2587
    pop3: int = 2110
    smtps: int = 2465
    """Implicit-TLS submission (RFC 8314), the submission role behind TLS."""
    pop3s: int = 2995
    """Implicit-TLS POP3 (RFC 8314)."""
    http: int = 8025
    """The HTTP API (on ``ServeConfig.http_host``)."""


@dataclass(frozen=True)
class TLSConfig:
    """An operator's PEM certificate and key; both None means mailhost makes its own."""

    cert: Path | None = None
    key: Path | None = None

    def __post_init__(self) -> None:
        if (self.cert is None) != (self.key is None):
            flag, path = ("--tls-cert", self.cert) if self.key is None else ("--tls-key", self.key)
            raise ConfigError(flag, str(path), "both --tls-cert and --tls-key, or neither")


@dataclass(frozen=True)
class ServeConfig:
    data_dir: Path
    host: str = "127.0.0.1"
    listeners: Listeners = field(default_factory=Listeners)
    domains: tuple[str, ...] = ()
    """Local domains; empty means the domains of the accounts, read at each decision."""
    schemes: Schemes = field(
        default_factory=lambda: Schemes(Schedule.on(), Schedule.on(), DEFAULT_POP_WINDOW)
    )
    now: datetime | None = None
    limits: Limits = field(default_factory=Limits)
    hostname: str = "localhost"
    bcrypt_cost: int = 12
    tls: TLSConfig = field(default_factory=TLSConfig)
    allow_plaintext_auth: bool = False
    """Accept passwords without TLS from non-loopback peers too."""
    throttle: ThrottleSettings = field(default_factory=ThrottleSettings)
    http_host: str = "127.0.0.1"
    """Where the HTTP API listens; anything but loopback needs ``api_token``."""
    api_token: str | None = None
    """The bearer token every API request must carry, when set."""
    ready_file: Path | None = None
    """Where ``serve`` also writes its ready report, atomically."""

    def __post_init__(self) -> None:
        check_api_access(self.http_host, self.api_token)


def check_api_access(http_host: str, api_token: str | None) -> None:
    """The API can reset and rewrite everything, so off loopback it needs a token."""
    if api_token is not None and not api_token.strip():
        raise ConfigError("--api-token", api_token, "a non-empty token")
    if api_token is None and not is_loopback(http_host):
        raise ConfigError(
            "--api-token",
            None,
            f"a token, because --http-host {http_host} is not a loopback address",
        )
