"""When an authorisation scheme is switched on.

A scheme is either on, off, or on until an instant (scheduled off). The
schedule is a value: it never reads a clock, so every caller passes the
``now`` it decides at, and crossing a cutover needs no restart and no timer.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime


def format_instant(instant: datetime) -> str:
    """Render an aware instant the way replies, logs and the CLI show it."""
    utc = instant.astimezone(UTC)
    if utc.second or utc.microsecond:
        return utc.strftime("%Y-%m-%d %H:%M:%S UTC")
    return utc.strftime("%Y-%m-%d %H:%M UTC")


@dataclass(frozen=True)
class Schedule:
    """On, off, or on until ``off_at`` (an aware UTC instant, exclusive)."""

    enabled: bool
    off_at: datetime | None = None

    def __post_init__(self) -> None:
        if self.off_at is not None:
            if self.off_at.tzinfo is None:
                raise ValueError("a schedule's cutover must be an aware datetime")
            if not self.enabled:
                raise ValueError("a scheme that is off has no cutover")

    @classmethod
    def on(cls) -> Schedule:
        return cls(enabled=True)

    @classmethod
    def off(cls) -> Schedule:
        return cls(enabled=False)

    @classmethod
    def until(cls, instant: datetime) -> Schedule:
        return cls(enabled=True, off_at=instant.astimezone(UTC))

    def is_on(self, now: datetime) -> bool:
        if not self.enabled:
            return False
        return self.off_at is None or now < self.off_at

    def off_since(self, now: datetime) -> datetime | None:
        """The cutover, once it has passed; None for a plain on/off scheme."""
        if self.off_at is not None and now >= self.off_at:
            return self.off_at
        return None

    def describe(self, now: datetime) -> str:
        if not self.enabled:
            return "off"
        if self.off_at is None:
            return "on"
        if now >= self.off_at:
            return f"off since {format_instant(self.off_at)}"
        return f"on until {format_instant(self.off_at)}"

    def spec(self) -> str:
        """The command-line form (``on``, ``off``, ``until:…``) that parses back to this."""
        if not self.enabled:
            return "off"
        if self.off_at is None:
            return "on"
        return "until:" + self.off_at.isoformat().replace("+00:00", "Z")
