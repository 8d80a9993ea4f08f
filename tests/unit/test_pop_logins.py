"""PopLoginTable: who logged in to POP3 from where, and whether that still counts."""

from datetime import UTC, datetime, timedelta

import pytest

from mailhost.pop_logins import Grant, PopLoginTable, normalise_ip

T0 = datetime(2013, 9, 1, 23, 50, tzinfo=UTC)
WINDOW = timedelta(minutes=10)
MICROSECOND = timedelta(microseconds=1)


def _table_with(*ips: str, max_entries: int = 100) -> PopLoginTable:
    table = PopLoginTable(max_entries=max_entries)
    for offset, ip in enumerate(ips):
        table.record(ip, f"user{offset}@example.org", T0 + timedelta(seconds=offset))
    return table


# --- address normalisation ------------------------------------------------------------------


def test_an_ipv4_mapped_address_normalises_to_ipv4():
    """``::ffff:127.0.0.2`` is the IPv4 address it carries."""
    assert normalise_ip("::ffff:127.0.0.2") == "127.0.0.2"


def test_ipv6_normalises_to_the_compressed_lowercase_form():
    """Different spellings of one IPv6 address normalise to the same text."""
    assert normalise_ip("2001:DB8:0:0:0:0:0:1") == "2001:db8::1"


def test_brackets_and_surrounding_space_are_ignored():
    """A bracketed IPv6 peer address names the same address."""
    assert normalise_ip(" [::1] ") == "::1"


@pytest.mark.parametrize("text", ["", "localhost", "127.0.0.256", "1.2.3", "::g"])
def test_normalise_refuses_what_is_not_an_ip(text):
    """Text that is no IP address raises ValueError."""
    with pytest.raises(ValueError):
        normalise_ip(text)


# --- record and lookup ----------------------------------------------------------------------


def test_a_recorded_login_grants_for_its_address():
    """After a login from X, a lookup for X inside the window returns that login."""
    table = PopLoginTable()
    table.record("127.0.0.2", "alice@example.org", T0)
    assert table.grant_for("127.0.0.2", T0 + timedelta(seconds=42), WINDOW) == Grant(
        "127.0.0.2", "alice@example.org", T0
    )


def test_record_returns_the_grant_it_stored():
    """record hands back the grant, keyed by the normalised address."""
    grant = PopLoginTable().record("::ffff:127.0.0.2", "alice@example.org", T0)
    assert grant == Grant("127.0.0.2", "alice@example.org", T0)


def test_a_grant_is_live_one_microsecond_before_the_window_ends():
    """The last instant inside the window still grants."""
    table = _table_with("127.0.0.2")
    assert table.grant_for("127.0.0.2", T0 + WINDOW - MICROSECOND, WINDOW) is not None


def test_a_grant_is_dead_exactly_when_the_window_ends():
    """The window is exclusive: at granted_at + window nothing is granted."""
    table = _table_with("127.0.0.2")
    assert table.grant_for("127.0.0.2", T0 + WINDOW, WINDOW) is None


def test_a_grant_is_live_at_the_login_instant():
    """The login instant itself is inside the window."""
    table = _table_with("127.0.0.2")
    assert table.grant_for("127.0.0.2", T0, WINDOW) is not None


def test_a_lookup_before_the_login_gets_nothing():
    """A login does not authorise anything that happened before it."""
    table = _table_with("127.0.0.2")
    assert table.grant_for("127.0.0.2", T0 - MICROSECOND, WINDOW) is None


def test_a_relogin_refreshes_the_grant():
    """A second login restarts the window and names the newer account."""
    table = PopLoginTable()
    table.record("127.0.0.2", "alice@example.org", T0)
    table.record("127.0.0.2", "bob@example.org", T0 + timedelta(minutes=5))
    grant = table.grant_for("127.0.0.2", T0 + timedelta(minutes=12), WINDOW)
    assert grant == Grant("127.0.0.2", "bob@example.org", T0 + timedelta(minutes=5))


def test_another_address_gets_nothing():
    """A login from one address grants nothing to a neighbour."""
    table = _table_with("127.0.0.2")
    assert table.grant_for("127.0.0.3", T0, WINDOW) is None


def test_a_mapped_lookup_matches_an_ipv4_login():
    """SMTP seeing ``::ffff:127.0.0.2`` finds the POP3 login from ``127.0.0.2``."""
    table = _table_with("127.0.0.2")
    assert table.grant_for("::ffff:127.0.0.2", T0, WINDOW) is not None


def test_an_ipv4_lookup_matches_a_mapped_login():
    """SMTP seeing ``127.0.0.2`` finds the POP3 login from ``::ffff:127.0.0.2``."""
    table = _table_with("::ffff:127.0.0.2")
    assert table.grant_for("127.0.0.2", T0, WINDOW) is not None


def test_ipv6_addresses_compare_in_compressed_form():
    """An IPv6 login matches a lookup spelled differently for the same address."""
    table = _table_with("2001:db8:0:0:0:0:0:1")
    assert table.grant_for("2001:DB8::1", T0, WINDOW) is not None


def test_ipv6_neighbours_in_the_same_prefix_get_nothing():
    """No prefix matching: another address in the same /64 gets no grant."""
    table = _table_with("2001:db8::1")
    assert table.grant_for("2001:db8::2", T0, WINDOW) is None


@pytest.mark.parametrize("ip", ["", "not-an-ip", "127.0.0.256", "::g"])
def test_a_garbage_address_gets_none(ip):
    """Looking up text that is no IP address answers None, never raises."""
    table = _table_with("127.0.0.2")
    assert table.grant_for(ip, T0, WINDOW) is None
    assert table.last_login(ip) is None


def test_recording_a_garbage_address_is_refused():
    """record raises ValueError for text that is no IP address."""
    with pytest.raises(ValueError):
        PopLoginTable().record("not-an-ip", "alice@example.org", T0)


def test_last_login_returns_an_expired_login():
    """last_login explains refusals, so it returns a login whose window is over."""
    table = _table_with("127.0.0.2")
    assert table.grant_for("127.0.0.2", T0 + WINDOW, WINDOW) is None
    assert table.last_login("127.0.0.2") == Grant("127.0.0.2", "user0@example.org", T0)


# --- bounds and pruning ---------------------------------------------------------------------


def test_max_entries_below_one_is_refused():
    """A table that can hold nothing is a configuration error."""
    with pytest.raises(ValueError):
        PopLoginTable(max_entries=0)


def test_past_max_entries_the_oldest_login_goes_first():
    """A full table forgets its oldest login to make room."""
    table = _table_with("10.0.0.1", "10.0.0.2", "10.0.0.3", max_entries=2)
    assert len(table) == 2
    assert table.last_login("10.0.0.1") is None
    assert table.last_login("10.0.0.2") is not None
    assert table.last_login("10.0.0.3") is not None


def test_a_refreshed_login_counts_as_newest_for_eviction():
    """Re-logging in moves an address to the back of the eviction queue."""
    table = _table_with("10.0.0.1", "10.0.0.2", max_entries=2)
    table.record("10.0.0.1", "user0@example.org", T0 + timedelta(seconds=10))
    table.record("10.0.0.3", "user3@example.org", T0 + timedelta(seconds=11))
    assert table.last_login("10.0.0.2") is None
    assert table.last_login("10.0.0.1") is not None
    assert table.last_login("10.0.0.3") is not None


def test_a_refresh_does_not_grow_the_table():
    """One address holds one entry however often it logs in."""
    table = PopLoginTable()
    for minute in range(5):
        table.record("127.0.0.2", "alice@example.org", T0 + timedelta(minutes=minute))
    assert len(table) == 1


def test_entries_are_listed_oldest_first():
    """entries() lists every login in recording order."""
    table = _table_with("10.0.0.1", "10.0.0.2")
    assert [g.ip for g in table.entries()] == ["10.0.0.1", "10.0.0.2"]


def test_prune_frees_only_stale_entries():
    """Pruning drops logins whose window has run out and keeps live ones."""
    table = PopLoginTable()
    table.record("10.0.0.1", "old@example.org", T0)
    table.record("10.0.0.2", "new@example.org", T0 + timedelta(minutes=5))
    assert table.prune(T0 + WINDOW, WINDOW) == 1
    assert [g.ip for g in table.entries()] == ["10.0.0.2"]


def test_prune_keeps_an_entry_one_microsecond_before_expiry():
    """An entry still live at ``now`` survives pruning."""
    table = _table_with("10.0.0.1")
    assert table.prune(T0 + WINDOW - MICROSECOND, WINDOW) == 0
    assert len(table) == 1


@pytest.mark.parametrize(
    "now",
    [T0, T0 + WINDOW - MICROSECOND, T0 + WINDOW, T0 + WINDOW + timedelta(seconds=1)],
    ids=["login", "last-live", "expiry", "after"],
)
def test_prune_never_changes_a_lookup_answer(now):
    """Whatever pruning removes, every lookup answers as it did before."""
    ips = ["10.0.0.1", "10.0.0.2", "10.0.0.3", "10.0.0.9"]
    table = _table_with(*ips[:3])
    before = {ip: table.grant_for(ip, now, WINDOW) for ip in ips}
    table.prune(now, WINDOW)
    assert {ip: table.grant_for(ip, now, WINDOW) for ip in ips} == before


def test_clear_forgets_every_login():
    """clear empties the table."""
    table = _table_with("10.0.0.1", "10.0.0.2")
    table.clear()
    assert len(table) == 0
    assert table.grant_for("10.0.0.1", T0, WINDOW) is None


# --- Grant ----------------------------------------------------------------------------------


def test_grant_expires_one_window_after_the_login():
    """expires_at is the login instant plus the window."""
    assert Grant("127.0.0.2", "a@example.org", T0).expires_at(WINDOW) == T0 + WINDOW


def test_grant_seconds_left_counts_down_to_zero():
    """seconds_left shrinks with time and never goes negative."""
    grant = Grant("127.0.0.2", "a@example.org", T0)
    assert grant.seconds_left(T0 + timedelta(seconds=42), WINDOW) == 558.0
    assert grant.seconds_left(T0 + WINDOW + timedelta(hours=1), WINDOW) == 0.0
