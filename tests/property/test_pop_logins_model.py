"""PopLoginTable against a plain dict model: record, look up, prune, let time pass."""

from datetime import UTC, datetime, timedelta

from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

from mailhost.pop_logins import PopLoginTable

T0 = datetime(2013, 9, 1, 23, 50, tzinfo=UTC)
WINDOW = timedelta(seconds=60)
MAX_ENTRIES = 3

# Spellings paired with the address they name, so the model keys without normalise_ip.
SPELLINGS = {
    "127.0.0.2": "127.0.0.2",
    "::ffff:127.0.0.2": "127.0.0.2",
    "127.0.0.3": "127.0.0.3",
    "10.0.0.1": "10.0.0.1",
    "::1": "::1",
    "0:0::1": "::1",
    "2001:db8::1": "2001:db8::1",
    "2001:DB8:0:0:0:0:0:1": "2001:db8::1",
    "2001:db8::2": "2001:db8::2",
}
ips = st.sampled_from(sorted(SPELLINGS))
accounts = st.sampled_from(["alice@example.org", "bob@example.org"])
# Steps that land exactly on a window's end, a microsecond either side of it, or anywhere.
MICROSECOND = timedelta(microseconds=1)
steps = st.one_of(
    st.sampled_from([MICROSECOND, WINDOW - MICROSECOND, WINDOW, WINDOW / 2]),
    st.integers(0, 90).map(lambda s: timedelta(seconds=s)),
)


class PopLoginTableModel(RuleBasedStateMachine):
    """The model: address -> (account, login instant, login order); evict the lowest order."""

    def __init__(self) -> None:
        super().__init__()
        self.table = PopLoginTable(max_entries=MAX_ENTRIES)
        self.now = T0
        self.logins: dict[str, tuple[str, datetime, int]] = {}
        self.order = 0

    @rule(ip=ips, account=accounts)
    def record(self, ip: str, account: str) -> None:
        grant = self.table.record(ip, account, self.now)
        assert (grant.ip, grant.account, grant.granted_at) == (SPELLINGS[ip], account, self.now)
        self.order += 1
        self.logins[SPELLINGS[ip]] = (account, self.now, self.order)
        while len(self.logins) > MAX_ENTRIES:
            oldest = min(self.logins, key=lambda key: self.logins[key][2])
            del self.logins[oldest]

    @rule(step=steps)
    def let_time_pass(self, step: timedelta) -> None:
        self.now += step

    @rule(ip=ips)
    def look_up(self, ip: str) -> None:
        expected = self.logins.get(SPELLINGS[ip])
        grant = self.table.grant_for(ip, self.now, WINDOW)
        if expected is None or not expected[1] <= self.now < expected[1] + WINDOW:
            assert grant is None
        else:
            assert grant is not None
            assert (grant.ip, grant.account, grant.granted_at) == (
                SPELLINGS[ip],
                expected[0],
                expected[1],
            )

    @rule(ip=ips)
    def last_login(self, ip: str) -> None:
        expected = self.logins.get(SPELLINGS[ip])
        grant = self.table.last_login(ip)
        if expected is None:
            assert grant is None
        else:
            assert grant is not None
            assert (grant.account, grant.granted_at) == expected[:2]

    @rule(ip=st.sampled_from(["", "not-an-ip", "127.0.0.256"]))
    def look_up_garbage(self, ip: str) -> None:
        assert self.table.grant_for(ip, self.now, WINDOW) is None

    @rule()
    def prune(self) -> None:
        stale = [key for key, (_, at, _) in self.logins.items() if at + WINDOW <= self.now]
        assert self.table.prune(self.now, WINDOW) == len(stale)
        for key in stale:
            del self.logins[key]

    @invariant()
    def same_entries_in_the_same_order(self) -> None:
        assert len(self.table) <= MAX_ENTRIES
        in_order = sorted(self.logins, key=lambda key: self.logins[key][2])
        assert [g.ip for g in self.table.entries()] == in_order


TestPopLoginTableModel = PopLoginTableModel.TestCase
