"""AuthThrottle: failed logins per address over a sliding window, pure and bounded."""

from datetime import UTC, datetime, timedelta

from mailhost.throttle import AuthThrottle, ThrottleSettings

NOW = datetime(2013, 9, 1, 23, 59, tzinfo=UTC)
WINDOW = timedelta(minutes=10)
SECOND = timedelta(seconds=1)
IP = "192.0.2.10"
OTHER = "192.0.2.11"


def throttle(limit=3, max_addresses=100):
    return AuthThrottle(ThrottleSettings(limit=limit, window=WINDOW), max_addresses=max_addresses)


def fail(t, ip=IP, times=1, at=NOW):
    for _ in range(times):
        t.record_failure(ip, at)


def test_an_address_below_the_limit_is_not_blocked():
    """limit - 1 failures leave the address free."""
    t = throttle()
    fail(t, times=2)
    assert not t.is_blocked(IP, NOW)


def test_the_limit_th_failure_blocks_the_address():
    """Blocking starts when the count reaches the limit."""
    t = throttle()
    fail(t, times=2)
    assert t.record_failure(IP, NOW) == 3
    assert t.is_blocked(IP, NOW)


def test_another_address_is_not_affected():
    """Counts are per address."""
    t = throttle()
    fail(t, times=3)
    assert not t.is_blocked(OTHER, NOW)
    assert t.failures(OTHER, NOW) == 0


def test_failures_older_than_the_window_do_not_count():
    """Spread-out failures never reach the limit: the window slides."""
    t = throttle()
    fail(t, at=NOW)
    fail(t, at=NOW + WINDOW - SECOND)
    fail(t, at=NOW + WINDOW)
    assert t.failures(IP, NOW + WINDOW) == 2
    assert not t.is_blocked(IP, NOW + WINDOW)


def test_the_block_decays_once_the_oldest_counted_failure_leaves_the_window():
    """Blocked one moment before the window has passed, free at the moment it has."""
    t = throttle()
    fail(t, times=3)
    assert t.is_blocked(IP, NOW + WINDOW - SECOND)
    assert not t.is_blocked(IP, NOW + WINDOW)


def test_retry_after_is_zero_when_not_blocked():
    """An address that may try now has nothing to wait for."""
    t = throttle()
    fail(t, times=2)
    assert t.retry_after(IP, NOW) == timedelta(0)
    assert t.retry_after(OTHER, NOW) == timedelta(0)


def test_retry_after_counts_down_to_the_moment_the_block_ends():
    """retry_after is the time until the count drops below the limit."""
    t = throttle()
    fail(t, at=NOW)
    fail(t, at=NOW + 10 * SECOND, times=2)
    later = NOW + 60 * SECOND
    assert t.retry_after(IP, later) == WINDOW - 60 * SECOND
    assert not t.is_blocked(IP, later + t.retry_after(IP, later))


def test_retry_after_with_more_failures_than_the_limit_waits_for_the_newest_that_counts():
    """With extra failures, freedom comes when only limit - 1 remain in the window."""
    t = throttle(limit=2)
    fail(t, at=NOW)
    fail(t, at=NOW + 10 * SECOND)
    fail(t, at=NOW + 20 * SECOND)
    assert t.retry_after(IP, NOW + 20 * SECOND) == WINDOW - 10 * SECOND


def test_memory_per_address_is_bounded_by_the_limit():
    """A guesser hammering one address does not grow the record past ``limit`` instants."""
    t = throttle(limit=3)
    fail(t, times=1000)
    assert t.failures(IP, NOW) == 3
    assert t.is_blocked(IP, NOW)


def test_the_number_of_addresses_is_bounded_dropping_the_least_recent():
    """Past max_addresses, the address whose last failure is oldest is forgotten."""
    t = throttle(limit=1, max_addresses=2)
    fail(t, ip="192.0.2.1")
    fail(t, ip="192.0.2.2")
    fail(t, ip="192.0.2.1")
    fail(t, ip="192.0.2.3")
    assert t.is_blocked("192.0.2.1", NOW)
    assert not t.is_blocked("192.0.2.2", NOW)
    assert t.is_blocked("192.0.2.3", NOW)


def test_an_ipv4_mapped_address_counts_as_the_ipv4_address():
    """::ffff:a.b.c.d and a.b.c.d are one client."""
    t = throttle()
    fail(t, ip="::ffff:192.0.2.10", times=2)
    fail(t, ip=IP)
    assert t.is_blocked(IP, NOW)
    assert t.is_blocked("::ffff:192.0.2.10", NOW)


def test_ipv6_spellings_of_one_address_count_together():
    """Zero-compressed and full forms of an IPv6 address are the same key."""
    t = throttle()
    fail(t, ip="2001:db8::1", times=2)
    fail(t, ip="2001:0db8:0000:0000:0000:0000:0000:0001")
    assert t.is_blocked("2001:DB8::1", NOW)


def test_an_unparsable_address_is_counted_as_given():
    """A peer string that is not an IP address still gets its own count."""
    t = throttle()
    fail(t, ip="unix-socket", times=3)
    assert t.is_blocked("unix-socket", NOW)
    assert not t.is_blocked(IP, NOW)


def test_an_address_whose_failures_expire_is_forgotten():
    """Reading an address after its window frees its memory."""
    t = throttle()
    fail(t)
    assert t.failures(IP, NOW + WINDOW) == 0
    assert IP not in t._failures


def test_defaults_are_ten_failures_in_ten_minutes():
    """The default settings: 10 failures within 10 minutes block."""
    t = AuthThrottle()
    fail(t, times=9)
    assert not t.is_blocked(IP, NOW)
    fail(t)
    assert t.is_blocked(IP, NOW)
    assert not t.is_blocked(IP, NOW + timedelta(minutes=10))


def test_ipv6_addresses_in_one_slash_64_share_a_count():
    """An IPv6 host owns its /64; spreading guesses over it does not buy fresh counts."""
    throttle = AuthThrottle(ThrottleSettings(limit=2, window=timedelta(minutes=10)))
    throttle.record_failure("2001:db8:0:1::1", NOW)
    throttle.record_failure("2001:db8:0:1::ffff", NOW)
    assert throttle.is_blocked("2001:db8:0:1:abcd::9", NOW)
    assert not throttle.is_blocked("2001:db8:0:2::1", NOW)


def test_ipv4_mapped_addresses_stay_ipv4():
    """::ffff:192.0.2.1 is counted as 192.0.2.1, not as part of an IPv6 /64."""
    throttle = AuthThrottle(ThrottleSettings(limit=1, window=timedelta(minutes=10)))
    throttle.record_failure("::ffff:192.0.2.1", NOW)
    assert throttle.is_blocked("192.0.2.1", NOW)
    assert not throttle.is_blocked("192.0.2.2", NOW)


def test_checks_in_progress_count_towards_the_limit():
    """begin_check holds a place until end_check, so parallel guesses cannot outrun the limit."""
    throttle = AuthThrottle(ThrottleSettings(limit=2, window=timedelta(minutes=10)))
    throttle.begin_check("192.0.2.1")
    throttle.begin_check("192.0.2.1")
    assert throttle.is_blocked("192.0.2.1", NOW)
    throttle.end_check("192.0.2.1")
    assert not throttle.is_blocked("192.0.2.1", NOW)
    throttle.end_check("192.0.2.1")
    assert throttle._in_flight == {}


def test_a_full_table_forgets_an_unblocked_address_before_a_blocked_one():
    """Flooding the table with new addresses does not wipe the record of a blocked one."""
    throttle = AuthThrottle(
        ThrottleSettings(limit=2, window=timedelta(minutes=10)), max_addresses=3
    )
    throttle.record_failure("192.0.2.1", NOW)
    throttle.record_failure("192.0.2.1", NOW)
    for last in range(2, 10):
        throttle.record_failure(f"198.51.100.{last}", NOW)
    assert throttle.is_blocked("192.0.2.1", NOW)
