"""Parsing of command-line values, and the errors that explain bad ones."""

from datetime import UTC, datetime, timedelta

import pytest

from mailhost.config import (
    DURATION_FORMS,
    HOSTNAME_FORMS,
    INSTANT_FORMS,
    PORT_FORMS,
    STATE_FORMS,
    ConfigError,
    parse_domain,
    parse_duration,
    parse_hostname,
    parse_instant,
    parse_port,
    parse_state,
)
from mailhost.schedule import Schedule

CUTOVER = datetime(2013, 9, 2, tzinfo=UTC)


def test_config_error_names_flag_value_and_accepted_forms():
    """A ConfigError carries the flag, the bad value and the accepted forms, and says all three."""
    error = ConfigError("--pop-window", "soon", DURATION_FORMS)
    assert (error.flag, error.value, error.accepted) == ("--pop-window", "soon", DURATION_FORMS)
    assert str(error) == f"--pop-window: 'soon' is not valid; expected {DURATION_FORMS}"


def test_config_error_is_a_value_error():
    """Callers that catch ValueError also catch a bad setting."""
    assert issubclass(ConfigError, ValueError)


# --- instants -------------------------------------------------------------------------------


def test_a_bare_date_means_midnight_utc():
    """``2013-09-02`` is 00:00 UTC on that day."""
    assert parse_instant("2013-09-02") == CUTOVER


def test_a_z_datetime_is_utc():
    """A datetime ending in Z is read as UTC."""
    assert parse_instant("2013-09-01T23:59:00Z") == datetime(2013, 9, 1, 23, 59, tzinfo=UTC)


def test_a_lowercase_z_is_accepted():
    """A trailing lowercase z means UTC as well."""
    assert parse_instant("2013-09-01T23:59:00z") == datetime(2013, 9, 1, 23, 59, tzinfo=UTC)


def test_a_naive_datetime_is_utc():
    """A datetime without an offset is taken as UTC, never as local time."""
    assert parse_instant("2013-09-01T23:59:00") == datetime(2013, 9, 1, 23, 59, tzinfo=UTC)


def test_an_offset_is_converted_to_utc():
    """A datetime with an offset is the same instant, expressed in UTC."""
    instant = parse_instant("2013-09-02T02:00:00+02:00")
    assert instant == CUTOVER
    assert instant.tzinfo is UTC


def test_fractional_seconds_are_kept():
    """Sub-second precision in the text survives parsing."""
    assert parse_instant("2013-09-01T23:59:59.5Z") == CUTOVER - timedelta(milliseconds=500)


def test_instant_surrounding_whitespace_is_ignored():
    """Whitespace around an instant does not make it invalid."""
    assert parse_instant("  2013-09-02\n") == CUTOVER


@pytest.mark.parametrize("text", ["", "yesterday", "2013-13-01", "2013-09-02T25:00", "02.09.2013"])
def test_a_bad_instant_raises_config_error_naming_flag_and_forms(text):
    """A value that is no ISO 8601 date or datetime is refused with the accepted forms."""
    with pytest.raises(ConfigError) as caught:
        parse_instant(text)
    assert caught.value.flag == "--now"
    assert caught.value.accepted == INSTANT_FORMS
    assert "--now" in str(caught.value)
    assert INSTANT_FORMS in str(caught.value)


def test_a_bad_instant_names_the_given_flag():
    """The flag in the error is the one the caller passed."""
    with pytest.raises(ConfigError, match="--start"):
        parse_instant("soon", "--start")


# --- states ---------------------------------------------------------------------------------


@pytest.mark.parametrize("text", ["on", "ON", " On "])
def test_on_parses_in_any_case(text):
    """``on`` is accepted in any letter case and with surrounding spaces."""
    assert parse_state(text, "--smtp-auth") == Schedule.on()


@pytest.mark.parametrize("text", ["off", "OFF", " Off\n"])
def test_off_parses_in_any_case(text):
    """``off`` is accepted in any letter case and with surrounding spaces."""
    assert parse_state(text, "--smtp-auth") == Schedule.off()


def test_until_a_bare_date_cuts_over_at_midnight_utc():
    """``until:2013-09-02`` switches off at 2013-09-02 00:00 UTC."""
    assert parse_state("until:2013-09-02", "--smtp-after-pop") == Schedule.until(CUTOVER)


def test_until_a_datetime_with_offset_cuts_over_at_that_instant():
    """``until:`` with an offset datetime cuts over at that instant, stored in UTC."""
    schedule = parse_state("until:2013-09-02T02:00:00+02:00", "--smtp-after-pop")
    assert schedule == Schedule.until(CUTOVER)
    assert schedule.off_at.tzinfo is UTC


def test_until_prefix_is_case_insensitive():
    """``UNTIL:`` is read like ``until:``."""
    assert parse_state("UNTIL:2013-09-02", "--smtp-auth") == Schedule.until(CUTOVER)


@pytest.mark.parametrize("text", ["", "yes", "enabled", "onn", "until:", "until:soon", "until"])
def test_a_bad_state_raises_config_error_naming_flag_and_forms(text):
    """A value that is no STATE is refused with the flag and the STATE forms."""
    with pytest.raises(ConfigError) as caught:
        parse_state(text, "--smtp-after-pop")
    assert caught.value.flag == "--smtp-after-pop"
    assert caught.value.accepted == STATE_FORMS
    assert "--smtp-after-pop" in str(caught.value)
    assert STATE_FORMS in str(caught.value)


# --- durations ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("600", 600), ("30s", 30), ("10m", 600), ("2h", 7200), ("10M", 600), (" 45 ", 45)],
)
def test_accepted_durations(text, seconds):
    """Bare seconds and numbers with s, m or h are durations."""
    assert parse_duration(text, "--pop-window") == timedelta(seconds=seconds)


@pytest.mark.parametrize("text", ["0", "0s", "0m", "0h"])
def test_a_zero_duration_is_refused(text):
    """A window of no time at all is refused, and the error says why."""
    with pytest.raises(ConfigError) as caught:
        parse_duration(text, "--pop-window")
    assert caught.value.flag == "--pop-window"
    assert "longer than zero" in str(caught.value)
    assert DURATION_FORMS in str(caught.value)


@pytest.mark.parametrize("text", ["-5", "-1m"])
def test_a_negative_duration_is_refused(text):
    """A negative window is refused with the accepted forms."""
    with pytest.raises(ConfigError) as caught:
        parse_duration(text, "--pop-window")
    assert DURATION_FORMS in str(caught.value)


@pytest.mark.parametrize("text", ["", "m", "ten", "1.5m", "10d", "10 minutes", "5m30s"])
def test_a_malformed_duration_raises_config_error_naming_flag_and_forms(text):
    """Anything but a whole number with an optional s/m/h is refused."""
    with pytest.raises(ConfigError) as caught:
        parse_duration(text, "--pop-window")
    assert caught.value.flag == "--pop-window"
    assert caught.value.accepted == DURATION_FORMS
    assert "--pop-window" in str(caught.value)


# --- ports ----------------------------------------------------------------------------------


@pytest.mark.parametrize(("value", "port"), [(0, 0), ("0", 0), (2525, 2525), ("65535", 65535)])
def test_ports_from_0_to_65535_are_accepted(value, port):
    """Port numbers 0 (any free port) through 65535 are accepted, as text or int."""
    assert parse_port(value, "--smtp-port") == port


@pytest.mark.parametrize("value", [-1, 65536, "70000", "http", "", "25.5", None])
def test_a_bad_port_raises_config_error_naming_flag_and_forms(value):
    """Anything outside 0..65535 or not a number is refused with the accepted forms."""
    with pytest.raises(ConfigError) as caught:
        parse_port(value, "--smtp-port")
    assert caught.value.flag == "--smtp-port"
    assert caught.value.accepted == PORT_FORMS
    assert PORT_FORMS in str(caught.value)


# --- domains --------------------------------------------------------------------------------


def test_a_domain_is_lowercased():
    """Domains compare case-insensitively, so they are kept in lower case."""
    assert parse_domain("Example.ORG") == "example.org"


def test_a_domain_may_end_in_a_dot():
    """The fully-qualified spelling with a trailing dot names the same domain."""
    assert parse_domain("example.org.") == "example.org"


@pytest.mark.parametrize("text", ["", "[127.0.0.1]", "bad_domain.org", "-x.org", "a..org", "x y"])
def test_a_bad_domain_raises_config_error_naming_the_flag(text):
    """Address literals and malformed names are not domains."""
    with pytest.raises(ConfigError) as caught:
        parse_domain(text)
    assert caught.value.flag == "--domain"
    assert "--domain" in str(caught.value)
    assert "example.org" in caught.value.accepted


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("mail.example.org", "mail.example.org"),
        ("mail.example.org.", "mail.example.org"),
        ("localhost", "localhost"),
        ("192.0.2.7", "192.0.2.7"),
        ("bücher.example", "xn--bcher-kva.example"),
        ("a" * 63 + ".example", "a" * 63 + ".example"),
    ],
)
def test_a_hostname_is_kept_in_its_ascii_form(text, expected):
    """Valid names pass, an internationalised one as its IDNA A-label, one trailing dot dropped."""
    assert parse_hostname(text) == expected


@pytest.mark.parametrize(
    "text",
    [
        "",
        ".",
        "a..b",
        "a" * 64 + ".example",
        ".".join(["a" * 63] * 4) + "x",
        "bad_name.example",
        "-x.example",
        "x y.example",
        "mail.example.org..",
        "::1",
        "bad\udcff.example",
    ],
)
def test_a_bad_hostname_raises_config_error_naming_the_flag(text):
    """Empty or long labels, non-LDH characters and non-IDNA text are refused, not crashed on."""
    with pytest.raises(ConfigError) as caught:
        parse_hostname(text)
    assert (caught.value.flag, caught.value.accepted) == ("--hostname", HOSTNAME_FORMS)
