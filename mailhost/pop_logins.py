"""The table of recent POP3 logins that SMTP-after-POP trusts.

Theory of operation: a successful POP3 authentication from address X records
``(X, account, now)``; a later login from X replaces the entry, refreshing the
grant. SMTP asks :meth:`PopLoginTable.grant_for` with the client's address and
the current window, and the answer is computed *at lookup*: an entry is live
while ``granted_at <= now < granted_at + window``, so correctness never depends
on a sweeper having run (relay-ctrl's approach, not DRAC's or James's).
:meth:`prune` only frees memory. The table is bounded: past ``max_entries``
the oldest logins go first.

Addresses match exactly after normalisation: an IPv4-mapped IPv6 address
(``::ffff:127.0.0.2``) is the IPv4 address it carries, and IPv6 addresses
compare in their compressed form. No prefix matching: a /64 grant would widen
the very shared-address weakness this scheme is known for.
"""

from __future__ import annotations

import functools
import ipaddress
from collections import OrderedDict
from dataclasses import dataclass
from datetime import datetime, timedelta

DEFAULT_MAX_ENTRIES = 100_000


@functools.lru_cache(maxsize=4096)
def normalise_ip(address: str) -> str:
    """The canonical text of an IP address; IPv4-mapped IPv6 becomes IPv4.

    Raises ValueError for anything that is not an IP address. Cached: every MAIL
    and RCPT looks up its client's address, and parsing it was a visible share
    of the reactor's time under load.
    """
    text = address.strip()
    if text.startswith("[") and text.endswith("]"):
        text = text[1:-1]
    ip = ipaddress.ip_address(text.split("%", 1)[0])
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return ip.compressed


@dataclass(frozen=True)
class Grant:
    """One POP3 login that may authorise sending from ``ip``."""

    ip: str
    account: str
    granted_at: datetime

    def expires_at(self, window: timedelta) -> datetime:
        return self.granted_at + window

    def is_live(self, now: datetime, window: timedelta) -> bool:
        return self.granted_at <= now < self.granted_at + window

    def seconds_left(self, now: datetime, window: timedelta) -> float:
        return max(0.0, (self.expires_at(window) - now).total_seconds())


class PopLoginTable:
    """Recent POP3 logins keyed by normalised client address."""

    def __init__(self, max_entries: int = DEFAULT_MAX_ENTRIES) -> None:
        if max_entries < 1:
            raise ValueError("max_entries must be at least 1")
        self.max_entries = max_entries
        self._grants: OrderedDict[str, Grant] = OrderedDict()

    def __len__(self) -> int:
        return len(self._grants)

    def record(self, ip: str, account: str, now: datetime) -> Grant:
        key = normalise_ip(ip)
        grant = Grant(ip=key, account=account, granted_at=now)
        self._grants.pop(key, None)
        self._grants[key] = grant
        while len(self._grants) > self.max_entries:
            self._grants.popitem(last=False)
        return grant

    def grant_for(self, ip: str, now: datetime, window: timedelta) -> Grant | None:
        grant = self.last_login(ip)
        if grant is not None and grant.is_live(now, window):
            return grant
        return None

    def last_login(self, ip: str) -> Grant | None:
        """The most recent login from ``ip``, live or not (for explaining refusals)."""
        try:
            return self._grants.get(normalise_ip(ip))
        except ValueError:
            return None

    def entries(self) -> list[Grant]:
        """Every recorded login, oldest first, live or not."""
        return list(self._grants.values())

    def prune(self, now: datetime, window: timedelta) -> int:
        """Forget entries whose window has run out; returns how many went."""
        stale = [ip for ip, g in self._grants.items() if g.expires_at(window) <= now]
        for ip in stale:
            del self._grants[ip]
        return len(stale)

    def clear(self) -> None:
        self._grants.clear()
