"""Per-address counting of failed authentications, to slow password guessing.

Theory of operation: every failed SMTP AUTH or POP3 login from address X is
recorded with its instant. While X has ``limit`` or more failures inside the
last ``window``, further attempts from X are refused *without checking the
password* (``454 4.7.0`` / ``-ERR [SYS/TEMP]``); as old failures age out of
the window the address is let in again, so the block decays by itself. A
success does not wipe the count (a guesser who finds one password keeps his
record) and never touches another address's count. Like the login table it
is pure: ``now`` is an argument, and memory is bounded by ``max_addresses``.
"""

from __future__ import annotations

from collections import OrderedDict, deque
from dataclasses import dataclass
from datetime import datetime, timedelta

from mailhost.pop_logins import normalise_ip

DEFAULT_LIMIT = 10
DEFAULT_WINDOW = timedelta(minutes=10)
DEFAULT_MAX_ADDRESSES = 100_000


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

    @staticmethod
    def _key(ip: str) -> str:
        try:
            return normalise_ip(ip)
        except ValueError:
            return ip

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
        while len(self._failures) > self.max_addresses:
            self._failures.popitem(last=False)
        return len(failures)

    def failures(self, ip: str, now: datetime) -> int:
        return len(self._recent(self._key(ip), now))

    def is_blocked(self, ip: str, now: datetime) -> bool:
        return self.failures(ip, now) >= self.settings.limit

    def retry_after(self, ip: str, now: datetime) -> timedelta:
        """How long until the address drops below the limit (zero when not blocked)."""
        failures = self._recent(self._key(ip), now)
        if len(failures) < self.settings.limit:
            return timedelta(0)
        oldest_that_counts = failures[len(failures) - self.settings.limit]
        return oldest_that_counts + self.settings.window - now
