"""ServerClock: the reactor's time, plus an offset, as aware UTC datetimes."""

from datetime import UTC, datetime, timedelta, timezone

from twisted.internet.task import Clock

from mailhost.clock import ServerClock, utc_from_seconds

START = datetime(2013, 9, 1, 23, 59, tzinfo=UTC)
CUTOVER = datetime(2013, 9, 2, tzinfo=UTC)


def test_a_fresh_task_clock_reads_as_the_epoch_in_utc():
    """A task.Clock at 0 s is 1970-01-01 00:00 UTC, an aware datetime."""
    now = ServerClock(Clock()).now()
    assert now == datetime(1970, 1, 1, tzinfo=UTC)
    assert now.tzinfo is UTC


def test_now_follows_the_reactor_clock():
    """Advancing the reactor's clock advances the server's."""
    reactor_clock = Clock()
    reactor_clock.advance(START.timestamp())
    clock = ServerClock(reactor_clock)
    assert clock.now() == START
    reactor_clock.advance(30)
    assert clock.now() == START + timedelta(seconds=30)


def test_set_then_ticks_on_with_the_reactor():
    """After set(instant) the clock reads instant and keeps ticking from there."""
    reactor_clock = Clock()
    reactor_clock.advance(1000)
    clock = ServerClock(reactor_clock)
    clock.set(START)
    assert clock.now() == START
    reactor_clock.advance(61)
    assert clock.now() == CUTOVER + timedelta(seconds=1)


def test_start_argument_sets_the_clock():
    """ServerClock(reactor, start) reads start at once."""
    reactor_clock = Clock()
    reactor_clock.advance(12345)
    assert ServerClock(reactor_clock, START).now() == START


def test_set_accepts_an_instant_in_another_offset():
    """An instant given with an offset is read back as the same instant in UTC."""
    clock = ServerClock(Clock())
    clock.set(datetime(2013, 9, 2, 2, 0, tzinfo=timezone(timedelta(hours=2))))
    assert clock.now() == CUTOVER
    assert clock.now().tzinfo is UTC


def test_set_keeps_microsecond_precision_near_a_cutover():
    """Setting the clock one microsecond before a cutover reads exactly that instant."""
    reactor_clock = Clock()
    reactor_clock.advance(START.timestamp())
    clock = ServerClock(reactor_clock)
    clock.set(CUTOVER - timedelta(microseconds=1))
    assert clock.now() == CUTOVER - timedelta(microseconds=1)
    reactor_clock.advance(0.000001)
    assert clock.now() == CUTOVER


def test_advance_moves_the_server_clock_only():
    """advance shifts the server's time without touching the reactor's."""
    reactor_clock = Clock()
    clock = ServerClock(reactor_clock, START)
    clock.advance(60)
    assert clock.now() == CUTOVER
    assert reactor_clock.seconds() == 0


def test_seconds_is_reactor_time_plus_offset():
    """seconds() is the reactor's seconds plus the offset."""
    reactor_clock = Clock()
    reactor_clock.advance(100)
    clock = ServerClock(reactor_clock)
    clock.advance(5)
    assert clock.seconds() == 105


def test_utc_from_seconds_is_aware_utc():
    """Unix seconds convert to an aware UTC datetime."""
    assert utc_from_seconds(START.timestamp()) == START
    assert utc_from_seconds(0).tzinfo is UTC
