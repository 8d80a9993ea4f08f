"""Properties of policy.decide over generated requests, schedules, grants and instants."""

from datetime import UTC, datetime, timedelta

from hypothesis import given
from hypothesis import strategies as st

from mailhost.policy import SMTP_AFTER_POP, SMTP_AUTH, Recipient, Request, Role, Schemes, decide
from mailhost.pop_logins import Grant
from mailhost.schedule import Schedule

T0 = datetime(2013, 9, 1, 23, 50, tzinfo=UTC)
MICROSECOND = timedelta(microseconds=1)

# Spellings paired with what they mean, so the oracle does not reuse the code under test.
IP_SPELLINGS = {
    "127.0.0.2": "127.0.0.2",
    "::ffff:127.0.0.2": "127.0.0.2",
    "[127.0.0.2]": "127.0.0.2",
    "127.0.0.3": "127.0.0.3",
    "::1": "::1",
    "0:0:0:0:0:0:0:1": "::1",
    "2001:db8::1": "2001:db8::1",
    "2001:DB8:0:0:0:0:0:1": "2001:db8::1",
    "2001:db8::2": "2001:db8::2",
    "not-an-ip": None,
    "": None,
    "127.0.0.256": None,
}
ips = st.sampled_from(sorted(IP_SPELLINGS))
accounts = st.one_of(st.none(), st.sampled_from(["alice@example.org", ""]), st.text(max_size=8))
windows = st.one_of(
    st.sampled_from([timedelta(0), timedelta(minutes=1), timedelta(minutes=10)]),
    st.integers(-60, 3600).map(lambda s: timedelta(seconds=s)),
)


def _near(reference: timedelta) -> st.SearchStrategy[timedelta]:
    """Offsets that hit a boundary exactly, miss it by a microsecond, or land anywhere."""
    return st.one_of(
        st.sampled_from([reference - MICROSECOND, reference, reference + MICROSECOND]),
        st.integers(-3600, 3600).map(lambda s: timedelta(seconds=s)),
    )


@st.composite
def schedules(draw: st.DrawFn, now: datetime) -> Schedule:
    kind = draw(st.sampled_from(["on", "off", "until"]))
    if kind == "on":
        return Schedule.on()
    if kind == "off":
        return Schedule.off()
    return Schedule.until(now + draw(_near(timedelta(0))))


@st.composite
def cases(draw: st.DrawFn) -> tuple[Request, Schemes, Grant | None, datetime]:
    """A request, the schemes, the grant handed in, and the instant to decide at."""
    now = T0 + timedelta(microseconds=draw(st.integers(-(10**10), 10**10)))
    schemes = Schemes(draw(schedules(now)), draw(schedules(now)), draw(windows))
    request = Request(
        peer_ip=draw(ips),
        role=draw(st.sampled_from(Role)),
        account=draw(accounts),
        recipient=draw(st.one_of(st.none(), st.sampled_from(Recipient))),
    )
    grant = None
    if draw(st.booleans()):
        grant = Grant(
            ip=draw(st.one_of(st.just(request.peer_ip), ips)),
            account=draw(st.sampled_from(["alice@example.org", "bob@example.org"])),
            granted_at=now - draw(_near(schemes.pop_window)),
        )
    return request, schemes, grant, now


KNOWN_REPLIES = {(250, "2.1.0"), (250, "2.1.5"), (530, "5.7.0"), (550, "5.7.1"), (550, "5.1.1")}


def _on(schedule: Schedule, now: datetime) -> bool:
    return schedule.enabled and (schedule.off_at is None or now < schedule.off_at)


def _authorised(request: Request, schemes: Schemes, grant: Grant | None, now: datetime) -> bool:
    if request.account is not None and _on(schemes.smtp_auth, now):
        return True
    if grant is None or not _on(schemes.smtp_after_pop, now):
        return False
    same_ip = IP_SPELLINGS[grant.ip] is not None and (
        IP_SPELLINGS[grant.ip] == IP_SPELLINGS[request.peer_ip]
    )
    return same_ip and grant.granted_at <= now < grant.granted_at + schemes.pop_window


@given(cases())
def test_decide_is_total_and_answers_with_a_known_reply(case):
    """Every input gets a Decision with a known code pair, 250 exactly when allowed."""
    request, schemes, grant, now = case
    decision = decide(request, schemes, grant, now)
    assert (decision.code, decision.enhanced) in KNOWN_REPLIES
    assert decision.allowed == (decision.code == 250)
    assert isinstance(decision.reason, str)
    assert decision.reason


@given(cases())
def test_decide_never_relays_or_submits_without_a_live_authorisation(case):
    """A remote recipient, or anything on submission, needs SMTP-Auth or a live same-IP grant."""
    request, schemes, grant, now = case
    decision = decide(request, schemes, grant, now)
    if decision.allowed and (
        request.role is Role.SUBMISSION or request.recipient is Recipient.REMOTE
    ):
        assert _authorised(request, schemes, grant, now)


@given(cases())
def test_decide_credits_the_scheme_that_actually_authorised(case):
    """An allowed decision naming a scheme names one that was on and applicable at now."""
    request, schemes, grant, now = case
    decision = decide(request, schemes, grant, now)
    if decision.scheme == SMTP_AUTH:
        assert request.account is not None and _on(schemes.smtp_auth, now)
        assert decision.account == request.account
    elif decision.scheme == SMTP_AFTER_POP:
        assert grant is not None and _authorised(
            Request(request.peer_ip, request.role), schemes, grant, now
        )
        assert decision.account == grant.account
    else:
        assert decision.scheme is None


@given(cases())
def test_decide_allows_every_authorised_request_but_unknown_mailboxes(case):
    """With a live authorisation only an unknown local mailbox is refused."""
    request, schemes, grant, now = case
    decision = decide(request, schemes, grant, now)
    if _authorised(request, schemes, grant, now):
        assert decision.allowed == (request.recipient is not Recipient.UNKNOWN_LOCAL)


@given(cases())
def test_unknown_local_mailboxes_are_always_550_5_1_1(case):
    """No input makes an unknown local recipient acceptable."""
    request, schemes, grant, now = case
    unknown = Request(request.peer_ip, request.role, request.account, Recipient.UNKNOWN_LOCAL)
    decision = decide(unknown, schemes, grant, now)
    assert (decision.allowed, decision.code, decision.enhanced) == (False, 550, "5.1.1")


@given(cases())
def test_the_mx_port_always_accepts_local_recipients(case):
    """Local delivery on the MX port never depends on the schemes."""
    request, schemes, grant, now = case
    local = Request(request.peer_ip, Role.MX, request.account, Recipient.LOCAL)
    decision = decide(local, schemes, grant, now)
    assert (decision.allowed, decision.code, decision.enhanced) == (True, 250, "2.1.5")
