"""What the POP3 and SMTP sides share: one realm, one login table, one clock, one log.

A :class:`Provider` is built once per server (by ``service.py``, or by
``testing.make_provider`` in tests) and handed to both protocol factories.
``schemes`` is replaced as a whole when a scheme is switched at run time, so a
decision always sees one consistent set.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from twisted.cred.portal import Portal
from twisted.internet import defer

from mailhost.accounts import Accounts, BcryptChecker
from mailhost.blocking import RunBlocking
from mailhost.clock import ServerClock
from mailhost.config import DataDir, Limits
from mailhost.connections import ConnectionLimiter
from mailhost.events import EventLog
from mailhost.faults import FaultRegistry
from mailhost.policy import Schemes
from mailhost.pop_logins import PopLoginTable
from mailhost.throttle import AuthThrottle


@dataclass(eq=False)
class Provider:
    data: DataDir
    clock: ServerClock
    accounts: Accounts
    logins: PopLoginTable
    events: EventLog
    schemes: Schemes
    run_blocking: RunBlocking
    run_hashing: RunBlocking | None = None
    """Where bcrypt runs; ``run_blocking`` when not given."""
    run_reading: RunBlocking | None = None
    """Where POP3 sessions read messages; ``run_blocking`` when not given. The server
    gives it one thread: a read is a string of short system calls, each one a chance
    for another thread to take the GIL, and eight sessions reading at once on eight
    threads kept the reactor thread waiting for it. A message larger than
    ``pop3.READ_AHEAD_BYTES`` is read on ``run_blocking`` instead, so it does not hold
    up the other sessions' reads."""
    limits: Limits = field(default_factory=Limits)
    hostname: str = "localhost"
    configured_domains: tuple[str, ...] = ()
    tls_options: Any = None
    """An OpenSSL server context factory for STARTTLS/STLS; None offers no TLS."""
    allow_plaintext_auth: bool = False
    """Accept passwords without TLS from non-loopback peers too."""
    throttle: AuthThrottle = field(default_factory=AuthThrottle)
    faults: FaultRegistry = field(default_factory=FaultRegistry)
    connections: ConnectionLimiter | None = None
    """Shared by every listener; made from ``limits`` when not given."""
    storing: set[defer.Deferred] = field(default_factory=set)
    """Deliveries under way (see :meth:`track_storing`)."""

    def __post_init__(self) -> None:
        if self.connections is None:
            self.connections = ConnectionLimiter(
                self.limits.max_connections, self.limits.max_connections_per_ip
            )

    def track_storing(self, d: defer.Deferred) -> defer.Deferred:
        """Count ``d`` (a delivery's) as under way until it fires; returns it."""
        self.storing.add(d)

        def done(result: object) -> object:
            self.storing.discard(d)
            return result

        return d.addBoth(done)

    def stored_all(self) -> defer.Deferred:
        """Fires once every delivery under way now has finished, stored or failed; the
        deliveries' own results go on down their chains untouched."""
        return defer.DeferredList(list(self.storing))

    def now(self) -> datetime:
        return self.clock.now()

    def local_domains(self) -> frozenset[str]:
        """The configured domains, or else the domains of the current accounts."""
        if self.configured_domains:
            return frozenset(self.configured_domains)
        return self.accounts.domains()

    def counted_check(self, ip: str, check: Callable[..., Any], *args: Any) -> defer.Deferred:
        """Run a password check (a Deferred), counted by the throttle against ``ip`` until done."""
        self.throttle.begin_check(ip)
        d = defer.maybeDeferred(check, *args)

        def done(result: object) -> object:
            self.throttle.end_check(ip)
            return result

        return d.addBoth(done)

    def checker(self) -> BcryptChecker:
        return BcryptChecker(self.accounts, self.run_hashing or self.run_blocking)

    def portal(self, realm: object) -> Portal:
        return Portal(realm, [self.checker()])
