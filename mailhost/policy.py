"""Who may send: the one decision both SMTP listeners, the log and the docs render.

Theory of operation. Every MAIL and RCPT command becomes a :class:`Request`
(client address, listener role, the SMTP-authenticated account if any, the
recipient's kind). :func:`decide` weighs it against the schemes' schedules at
``now`` and the most recent POP3 login from the client's address, and returns
a :class:`Decision`: allowed or not, the SMTP reply code and enhanced status
code, the scheme that authorised it, and a sentence a person can read.

An *authorisation* is either

* SMTP-Auth: the session authenticated, and SMTP-Auth is on at ``now``; or
* SMTP-after-POP: a POP3 login from exactly this address is inside the window
  at ``now``, and SMTP-after-POP is on at ``now``.

Roles (RFC 6409 §3.1, §4.3): the MX listener accepts mail for local accounts
from anyone and needs an authorisation to relay elsewhere (``550 5.7.1``); the
submission listener needs an authorisation for everything (``530 5.7.0``).
An unknown local recipient is ``550 5.1.1`` whoever asks.

``decide`` is total and pure: it re-checks the grant's address and window
itself, so a caller handing it a stale or foreign grant cannot open a relay.
"""

from __future__ import annotations

import enum
import ipaddress
from dataclasses import dataclass
from datetime import datetime, timedelta

from mailhost.pop_logins import Grant, normalise_ip
from mailhost.schedule import Schedule, format_instant

SMTP_AUTH = "smtp-auth"
SMTP_AFTER_POP = "smtp-after-pop"
SCHEME_TITLES = {SMTP_AUTH: "SMTP-Auth", SMTP_AFTER_POP: "SMTP-after-POP"}
SENDER_UNBOUND = (
    "the sender cannot be checked: SMTP-after-POP vouches for an address, not for a person"
)


class Role(enum.Enum):
    MX = "smtp"
    SUBMISSION = "submission"


class Recipient(enum.Enum):
    LOCAL = "local"
    UNKNOWN_LOCAL = "unknown-local"
    REMOTE = "remote"


@dataclass(frozen=True)
class Schemes:
    """Both schemes' schedules and the SMTP-after-POP window."""

    smtp_auth: Schedule
    smtp_after_pop: Schedule
    pop_window: timedelta
    enforce_sender: bool = False
    """SMTP-Auth sessions may only send as their own address (553 5.7.1 otherwise)."""

    def schedule(self, scheme: str) -> Schedule:
        return self.smtp_auth if scheme == SMTP_AUTH else self.smtp_after_pop


@dataclass(frozen=True)
class Request:
    """One MAIL (``recipient`` None) or RCPT command to decide on."""

    peer_ip: str
    role: Role
    account: str | None = None
    recipient: Recipient | None = None
    sender: str | None = None
    """The reverse-path of the transaction ("" for <>), known from MAIL on."""


@dataclass(frozen=True)
class Decision:
    allowed: bool
    code: int
    enhanced: str
    reason: str
    scheme: str | None = None
    account: str | None = None

    @property
    def relay_by_ip_only(self) -> bool:
        """True when only the client's address vouched for this message."""
        return self.allowed and self.scheme == SMTP_AFTER_POP


@dataclass(frozen=True)
class _Authorisation:
    scheme: str
    account: str
    reason: str


def _seconds(delta: timedelta) -> str:
    return f"{int(delta.total_seconds())} s"


def _authorise(
    request: Request, schemes: Schemes, grant: Grant | None, now: datetime
) -> _Authorisation | None:
    if request.account is not None and schemes.smtp_auth.is_on(now):
        return _Authorisation(
            SMTP_AUTH, request.account, f"authenticated as {request.account} (SMTP-Auth)"
        )
    if (
        grant is not None
        and schemes.smtp_after_pop.is_on(now)
        and grant.is_live(now, schemes.pop_window)
        and _same_ip(grant.ip, request.peer_ip)
    ):
        ago = _seconds(now - grant.granted_at)
        reason = (
            f"{grant.ip} logged in to POP3 as {grant.account} {ago} ago, "
            f"window {_seconds(schemes.pop_window)} (SMTP-after-POP)"
        )
        if schemes.enforce_sender:
            reason += "; " + SENDER_UNBOUND
        return _Authorisation(SMTP_AFTER_POP, grant.account, reason)
    return None


def _same_ip(a: str, b: str) -> bool:
    try:
        return normalise_ip(a) == normalise_ip(b)
    except ValueError:
        return False


def _scheme_state(scheme: str, schedule: Schedule, now: datetime) -> str | None:
    """How a scheme that is off right now came to be off; None while it is on."""
    if schedule.is_on(now):
        return None
    title = SCHEME_TITLES[scheme]
    since = schedule.off_since(now)
    if since is not None:
        return f"{title} is off since {format_instant(since)}"
    return f"{title} is off"


def explain_refusal(request: Request, schemes: Schemes, grant: Grant | None, now: datetime) -> str:
    """Which scheme would have allowed this, and why none did.

    The text goes to whoever is connected, possibly a stranger behind the same
    address, so it never names the account that logged in (the event log does).
    """
    ip = request.peer_ip
    window = _seconds(schemes.pop_window)
    would: list[str] = []
    why_not: list[str] = []
    auth_off = _scheme_state(SMTP_AUTH, schemes.smtp_auth, now)
    if auth_off is None:
        would.append("SMTP-Auth (AUTH PLAIN or LOGIN)")
    else:
        why_not.append(auth_off)
    pop_off = _scheme_state(SMTP_AFTER_POP, schemes.smtp_after_pop, now)
    if pop_off is None:
        would.append(f"a POP3 login from {ip} in the last {window} (SMTP-after-POP)")
        if grant is not None and _same_ip(grant.ip, ip) and grant.granted_at <= now:
            age = _seconds(now - grant.granted_at)
            why_not.append(
                f"the last POP3 login from {ip} was {age} ago, outside the {window} window"
            )
    else:
        why_not.append(pop_off)
    parts = []
    if would:
        parts.append("use " + " or ".join(would))
    else:
        parts.append("no scheme can authorise sending")
    return "; ".join(why_not + parts)


def _sender_refusal(request: Request, schemes: Schemes, now: datetime) -> Decision | None:
    """With --enforce-sender, an SMTP-Auth session may use only its own address at MAIL.

    The null sender ``<>`` stays allowed: bounces and auto-replies need it.
    """
    if (
        schemes.enforce_sender
        and request.recipient is None
        and request.account is not None
        and request.sender
        and schemes.smtp_auth.is_on(now)
        and request.sender.lower() != request.account.lower()
    ):
        return Decision(
            False,
            553,
            "5.7.1",
            f"sender <{request.sender}> is not yours: authenticated as {request.account} "
            "and this server binds SMTP-Auth senders to their account",
            SMTP_AUTH,
            request.account,
        )
    return None


def plaintext_auth_allowed(peer_ip: str, tls: bool, allow_plaintext: bool = False) -> bool:
    """Passwords in the clear only over TLS or from loopback (127.0.0.0/8, ::1).

    Wider than Dovecot's remote == local rule so one machine can play several
    clients (127.0.0.2, 127.0.0.3); ``allow_plaintext`` lifts the rule.
    """
    if tls or allow_plaintext:
        return True
    try:
        return ipaddress.ip_address(normalise_ip(peer_ip)).is_loopback
    except ValueError:
        return False


def decide(request: Request, schemes: Schemes, grant: Grant | None, now: datetime) -> Decision:
    """Decide one MAIL or RCPT command. Total: every input gets a Decision."""
    if request.recipient is Recipient.UNKNOWN_LOCAL:
        return Decision(False, 550, "5.1.1", "no such mailbox here")
    refusal = _sender_refusal(request, schemes, now)
    if refusal is not None:
        return refusal
    if request.role is Role.MX and request.recipient is None:
        return Decision(True, 250, "2.1.0", "sender accepted; recipients decide relaying")
    if request.role is Role.MX and request.recipient is Recipient.LOCAL:
        return Decision(True, 250, "2.1.5", "local delivery: the MX port accepts it from anyone")
    auth = _authorise(request, schemes, grant, now)
    if auth is not None:
        code, enhanced = (250, "2.1.0") if request.recipient is None else (250, "2.1.5")
        return Decision(True, code, enhanced, auth.reason, auth.scheme, auth.account)
    if request.role is Role.SUBMISSION:
        reason = "authentication required on the submission port: " + explain_refusal(
            request, schemes, grant, now
        )
        return Decision(False, 530, "5.7.0", reason)
    reason = "relaying denied: " + explain_refusal(request, schemes, grant, now)
    return Decision(False, 550, "5.7.1", reason)
