"""The shared connection counter."""

from mailhost.connections import ConnectionLimiter, Refusal


def test_admits_up_to_the_per_address_limit():
    """An address gets max_per_ip places; the next is refused as PER_IP."""
    limiter = ConnectionLimiter(max_total=10, max_per_ip=2)
    assert limiter.admit("127.0.0.2") is None
    assert limiter.admit("127.0.0.2") is None
    assert limiter.admit("127.0.0.2") is Refusal.PER_IP
    assert limiter.from_ip("127.0.0.2") == 2


def test_total_limit_counts_every_address():
    """The total limit applies across addresses and is reported as TOTAL."""
    limiter = ConnectionLimiter(max_total=2, max_per_ip=5)
    limiter.admit("127.0.0.2")
    limiter.admit("127.0.0.3")
    assert limiter.admit("127.0.0.4") is Refusal.TOTAL


def test_release_frees_a_place_and_forgets_idle_addresses():
    """Releasing gives the place back; an address with none left is not kept in memory."""
    limiter = ConnectionLimiter(max_total=1, max_per_ip=1)
    limiter.admit("::ffff:127.0.0.2")
    limiter.release("127.0.0.2")
    assert limiter.total == 0
    assert limiter.from_ip("127.0.0.2") == 0
    assert limiter._per_ip == {}
    assert limiter.admit("127.0.0.2") is None


def test_releasing_an_unknown_address_changes_nothing():
    """A stray release never drives the counts negative."""
    limiter = ConnectionLimiter()
    limiter.release("127.0.0.9")
    assert limiter.total == 0
