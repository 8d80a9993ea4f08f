"""Per-address counting of failed authentications, to slow password guessing.

Theory of operation: every failed SMTP AUTH or POP3 login from address X is
recorded with its instant. While X's failures inside the last ``window``
*plus its checks still in progress* reach ``limit``, further attempts from X
are refused *without checking the password* (``454 4.7.0`` /
``-ERR [SYS/TEMP]``). Counting checks in progress matters: a failure is only
known once bcrypt has run, so without it a guesser opening many connections
at once would get all their guesses checked before the first failure lands.
As old failures age out of the window the address is let in again, so the
block decays by itself. A success does not wipe the count (a guesser who
finds one password keeps his record) and never touches another address's.

Addresses are counted as the client's IPv4 address, or its IPv6 /64 (one
IPv6 host usually owns a whole /64, so per-address buckets would be free to
multiply). Like the login table it is pure: ``now`` is an argument, and
memory is bounded by ``max_addresses``; when full, an address that is not
blocked is forgotten before one that is.
"""

from __future__ import annotations

import ipaddress
import itertools
from collections import Counter, OrderedDict, deque
from dataclasses import dataclass
from datetime import datetime, timedelta

from mailhost.pop_logins import normalise_ip

DEFAULT_LIMIT = 10
DEFAULT_WINDOW = timedelta(minutes=10)
DEFAULT_MAX_ADDRESSES = 100_000
IPV6_PREFIX = 64
EVICTION_SCAN = 64


@dataclass(frozen=True)
class ThrottleSettings:
    limit: int = DEFAULT_LIMIT
    window: timedelta = DEFAULT_WINDOW


class AuthThrottle:
    def __init__(
        self,
        settings: ThrottleSettings | None = None,
        max_addresses: int = DEFAULT_MAX_ADDRESSES,
    ) -> None:
        self.settings = settings or ThrottleSettings()
        self.max_addresses = max_addresses
        self._failures: OrderedDict[str, deque[datetime]] = OrderedDict()
        self._in_flight: Counter[str] = Counter()

    @staticmethod
    def _key(ip: str) -> str:
        try:
            address = ipaddress.ip_address(normalise_ip(ip))
        except ValueError:
            return ip
        if address.version == 6:
            return str(ipaddress.ip_network(f"{address}/{IPV6_PREFIX}", strict=False))
        return str(address)

    def _recent(self, key: str, now: datetime) -> deque[datetime]:
        failures = self._failures.get(key)
        if failures is None:
            return deque()
        horizon = now - self.settings.window
        while failures and failures[0] <= horizon:
            failures.popleft()
        if not failures:
            del self._failures[key]
        return failures

    def record_failure(self, ip: str, now: datetime) -> int:
        """Count one failure; returns the failures now inside the window."""
        key = self._key(ip)
        failures = self._recent(key, now)
        failures.append(now)
        self._failures[key] = failures
        self._failures.move_to_end(key)
        while len(failures) > self.settings.limit:
            failures.popleft()
        if len(self._failures) > self.max_addresses:
            self._forget_one()
        return len(failures)

    def _forget_one(self) -> None:
        """Drop the oldest address that is not blocked (among the oldest few), else the oldest."""
        for key in itertools.islice(self._failures, EVICTION_SCAN):
            if len(self._failures[key]) < self.settings.limit:
                del self._failures[key]
                return
        self._failures.popitem(last=False)

    def begin_check(self, ip: str) -> None:
        """A password check from ``ip`` has started; it counts until :meth:`end_check`."""
        self._in_flight[self._key(ip)] += 1

    def end_check(self, ip: str) -> None:
        key = self._key(ip)
        self._in_flight[key] -= 1
        if self._in_flight[key] <= 0:
            del self._in_flight[key]

    def failures(self, ip: str, now: datetime) -> int:
        return len(self._recent(self._key(ip), now))

    def is_blocked(self, ip: str, now: datetime) -> bool:
        key = self._key(ip)
        return len(self._recent(key, now)) + self._in_flight[key] >= self.settings.limit

    def retry_after(self, ip: str, now: datetime) -> timedelta:
        """How long until the address drops below the limit (zero when not blocked)."""
        failures = self._recent(self._key(ip), now)
        if len(failures) < self.settings.limit:
            return timedelta(0)
        oldest_that_counts = failures[len(failures) - self.settings.limit]
        return oldest_that_counts + self.settings.window - now
