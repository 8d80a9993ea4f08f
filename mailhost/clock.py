"""The server's one clock: aware UTC instants from an injected IReactorTime.

``--now`` (and later an API) moves the server's idea of time by an offset on
the reactor's clock, never by patching ``time.time``: every grant, schedule and
event reads this one object, and tests drive it with ``task.Clock``.
"""

from __future__ import annotations

from datetime import UTC, datetime

from twisted.internet.interfaces import IReactorTime


def utc_from_seconds(seconds: float) -> datetime:
    return datetime.fromtimestamp(seconds, UTC)


class ServerClock:
    """Reactor time plus an adjustable offset, read as aware UTC datetimes."""

    def __init__(self, reactor_time: IReactorTime, start: datetime | None = None) -> None:
        self.reactor_time = reactor_time
        self.offset = 0.0
        if start is not None:
            self.set(start)

    def seconds(self) -> float:
        return self.reactor_time.seconds() + self.offset

    def now(self) -> datetime:
        return utc_from_seconds(self.seconds())

    def set(self, instant: datetime) -> None:
        """From now on the clock reads ``instant`` and ticks on from there."""
        self.offset = instant.timestamp() - self.reactor_time.seconds()

    def advance(self, seconds: float) -> None:
        self.offset += seconds
