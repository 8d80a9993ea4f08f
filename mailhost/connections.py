"""How many connections the provider holds, in total and per client address.

Every listener shares one :class:`ConnectionLimiter`, so a client cannot
escape its share by spreading over SMTP, submission and POP3. A connection
over the limit is refused at the greeting (``421 4.7.0`` / ``-ERR
[SYS/TEMP]``) and closed, which bounds memory and file descriptors whatever
clients do. Pure: no clock, no I/O.
"""

from __future__ import annotations

from collections import Counter
from enum import Enum

from mailhost.pop_logins import normalise_ip

DEFAULT_MAX_CONNECTIONS = 1000
DEFAULT_MAX_CONNECTIONS_PER_IP = 100


class Refusal(Enum):
    TOTAL = "the server is at its connection limit"
    PER_IP = "too many connections from your address"


class ConnectionLimiter:
    def __init__(
        self,
        max_total: int = DEFAULT_MAX_CONNECTIONS,
        max_per_ip: int = DEFAULT_MAX_CONNECTIONS_PER_IP,
    ) -> None:
        self.max_total = max_total
        self.max_per_ip = max_per_ip
        self.total = 0
        self._per_ip: Counter[str] = Counter()

    @staticmethod
    def _key(ip: str) -> str:
        try:
            return normalise_ip(ip)
        except ValueError:
            return ip

    def admit(self, ip: str) -> Refusal | None:
        """Count a new connection from ``ip``, or say why it is refused (and count nothing)."""
        key = self._key(ip)
        if self.total >= self.max_total:
            return Refusal.TOTAL
        if self._per_ip[key] >= self.max_per_ip:
            return Refusal.PER_IP
        self.total += 1
        self._per_ip[key] += 1
        return None

    def release(self, ip: str) -> None:
        key = self._key(ip)
        if self._per_ip[key] > 0:
            self._per_ip[key] -= 1
            self.total -= 1
        if self._per_ip[key] == 0:
            del self._per_ip[key]

    def from_ip(self, ip: str) -> int:
        return self._per_ip.get(self._key(ip), 0)
