"""Schedule: on, off, and on-until-a-cutover, read at an explicit ``now``."""

from datetime import UTC, datetime, timedelta, timezone

import pytest

from mailhost.config import parse_state
from mailhost.schedule import Schedule, format_instant

CUTOVER = datetime(2013, 9, 2, tzinfo=UTC)
MICROSECOND = timedelta(microseconds=1)


def test_on_is_on_at_any_instant():
    """A scheme that is on stays on, before and long after any date."""
    schedule = Schedule.on()
    assert schedule.is_on(CUTOVER - timedelta(days=3650))
    assert schedule.is_on(CUTOVER + timedelta(days=3650))


def test_off_is_never_on():
    """A scheme that is off is off at every instant."""
    schedule = Schedule.off()
    assert not schedule.is_on(CUTOVER - timedelta(days=3650))
    assert not schedule.is_on(CUTOVER)


def test_until_is_on_one_microsecond_before_the_cutover():
    """The last instant before the cutover still belongs to the 'on' period."""
    assert Schedule.until(CUTOVER).is_on(CUTOVER - MICROSECOND)


def test_until_is_off_exactly_at_the_cutover():
    """The cutover instant itself is excluded from the 'on' period."""
    assert not Schedule.until(CUTOVER).is_on(CUTOVER)


def test_until_stays_off_after_the_cutover():
    """Once past the cutover the scheme never comes back on."""
    assert not Schedule.until(CUTOVER).is_on(CUTOVER + timedelta(days=1))


def test_until_stores_the_cutover_in_utc():
    """A cutover given with an offset is kept as the same instant in UTC."""
    schedule = Schedule.until(datetime(2013, 9, 2, 2, 0, tzinfo=timezone(timedelta(hours=2))))
    assert schedule.off_at == CUTOVER
    assert schedule.off_at.tzinfo is UTC


def test_until_compares_against_now_in_any_offset():
    """``now`` given in another offset is compared as the same instant."""
    berlin = timezone(timedelta(hours=2))
    schedule = Schedule.until(CUTOVER)
    assert schedule.is_on(datetime(2013, 9, 2, 1, 59, 59, 999999, tzinfo=berlin))
    assert not schedule.is_on(datetime(2013, 9, 2, 2, 0, tzinfo=berlin))


def test_a_naive_cutover_is_refused():
    """A cutover without a time zone is ambiguous and cannot be built directly."""
    with pytest.raises(ValueError, match="aware"):
        Schedule(enabled=True, off_at=datetime(2013, 9, 2))


def test_an_off_scheme_with_a_cutover_is_refused():
    """'Off until' has no meaning, so such a schedule cannot be built."""
    with pytest.raises(ValueError, match="off"):
        Schedule(enabled=False, off_at=CUTOVER)


def test_describe_on():
    """A plain 'on' scheme describes itself as 'on'."""
    assert Schedule.on().describe(CUTOVER) == "on"


def test_describe_off():
    """A plain 'off' scheme describes itself as 'off'."""
    assert Schedule.off().describe(CUTOVER) == "off"


def test_describe_before_the_cutover_names_the_date():
    """Before the cutover the text says until when the scheme is on."""
    schedule = Schedule.until(CUTOVER)
    assert schedule.describe(CUTOVER - MICROSECOND) == "on until 2013-09-02 00:00 UTC"


def test_describe_from_the_cutover_says_off_since():
    """From the cutover on the text says since when the scheme is off."""
    schedule = Schedule.until(CUTOVER)
    assert schedule.describe(CUTOVER) == "off since 2013-09-02 00:00 UTC"
    assert schedule.describe(CUTOVER + timedelta(days=30)) == "off since 2013-09-02 00:00 UTC"


def test_format_instant_shows_seconds_only_when_there_are_some():
    """Whole minutes print as HH:MM; a cutover with seconds prints them too."""
    assert format_instant(CUTOVER) == "2013-09-02 00:00 UTC"
    assert format_instant(CUTOVER + timedelta(seconds=30)) == "2013-09-02 00:00:30 UTC"


def test_format_instant_converts_to_utc():
    """An instant in another offset is shown as UTC."""
    berlin = datetime(2013, 9, 2, 2, 0, tzinfo=timezone(timedelta(hours=2)))
    assert format_instant(berlin) == "2013-09-02 00:00 UTC"


def test_off_since_is_none_before_the_cutover():
    """Before the cutover there is no 'off since' date to report."""
    assert Schedule.until(CUTOVER).off_since(CUTOVER - MICROSECOND) is None


def test_off_since_is_the_cutover_once_it_has_passed():
    """From the cutover on, 'off since' is the cutover instant."""
    assert Schedule.until(CUTOVER).off_since(CUTOVER) == CUTOVER


def test_off_since_is_none_for_plain_on_and_off():
    """Only a scheduled cutover has an 'off since' date."""
    assert Schedule.on().off_since(CUTOVER) is None
    assert Schedule.off().off_since(CUTOVER) is None


@pytest.mark.parametrize(
    "schedule",
    [
        Schedule.on(),
        Schedule.off(),
        Schedule.until(CUTOVER),
        Schedule.until(datetime(2013, 9, 1, 23, 59, 30, tzinfo=UTC)),
    ],
    ids=["on", "off", "until-midnight", "until-with-seconds"],
)
def test_spec_round_trips_through_parse_state(schedule):
    """The command-line form of a schedule parses back to the same schedule."""
    assert parse_state(schedule.spec(), "--smtp-auth") == schedule


def test_spec_round_trips_a_sub_second_cutover():
    """A cutover with a fraction of a second keeps it through spec and parse."""
    schedule = Schedule.until(datetime(2013, 9, 1, 23, 59, 59, 500000, tzinfo=UTC))
    assert parse_state(schedule.spec(), "--smtp-auth") == schedule


def test_spec_texts():
    """The spec texts are the documented STATE forms."""
    assert Schedule.on().spec() == "on"
    assert Schedule.off().spec() == "off"
    assert Schedule.until(CUTOVER).spec() == "until:2013-09-02T00:00:00Z"
