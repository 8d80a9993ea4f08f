"""policy.decide: who may send what, on which listener, and the reason given."""

from datetime import UTC, datetime, timedelta

import pytest

from mailhost.policy import (
    SENDER_UNBOUND,
    SMTP_AFTER_POP,
    SMTP_AUTH,
    Decision,
    Recipient,
    Request,
    Role,
    Schemes,
    decide,
    plaintext_auth_allowed,
)
from mailhost.pop_logins import Grant
from mailhost.schedule import Schedule

CUTOVER = datetime(2013, 9, 2, tzinfo=UTC)
NOW = datetime(2013, 9, 1, 23, 59, tzinfo=UTC)
WINDOW = timedelta(seconds=600)
MICROSECOND = timedelta(microseconds=1)
ALICE = "alice@example.org"
CLIENT = "127.0.0.2"
NEIGHBOUR = "127.0.0.3"

BOTH_ON = Schemes(Schedule.on(), Schedule.on(), WINDOW)
BOTH_OFF = Schemes(Schedule.off(), Schedule.off(), WINDOW)
AUTH_ONLY = Schemes(Schedule.on(), Schedule.off(), WINDOW)
POP_ONLY = Schemes(Schedule.off(), Schedule.on(), WINDOW)


def _request(
    role: Role = Role.MX,
    recipient: Recipient | None = Recipient.REMOTE,
    account: str | None = None,
    peer_ip: str = CLIENT,
) -> Request:
    return Request(peer_ip=peer_ip, role=role, account=account, recipient=recipient)


def _grant(ip: str = CLIENT, age: timedelta = timedelta(seconds=42)) -> Grant:
    return Grant(ip=ip, account=ALICE, granted_at=NOW - age)


def _refused(decision: Decision, code: int, enhanced: str) -> None:
    assert not decision.allowed
    assert (decision.code, decision.enhanced) == (code, enhanced)
    assert decision.scheme is None


# --- the MX listener ------------------------------------------------------------------------


@pytest.mark.parametrize("schemes", [BOTH_ON, BOTH_OFF], ids=["schemes-on", "schemes-off"])
def test_mx_accepts_a_local_recipient_from_anyone(schemes):
    """Mail for a local account is accepted on the MX port without authorisation."""
    decision = decide(_request(recipient=Recipient.LOCAL), schemes, None, NOW)
    assert decision.allowed
    assert (decision.code, decision.enhanced) == (250, "2.1.5")
    assert decision.scheme is None


def test_mx_accepts_any_sender_at_mail():
    """MAIL on the MX port is accepted; relaying is decided per recipient."""
    decision = decide(_request(recipient=None), BOTH_OFF, None, NOW)
    assert decision.allowed
    assert (decision.code, decision.enhanced) == (250, "2.1.0")


def test_mx_refuses_to_relay_without_authorisation():
    """A remote recipient on the MX port without authorisation is 550 5.7.1."""
    decision = decide(_request(), BOTH_ON, None, NOW)
    _refused(decision, 550, "5.7.1")
    assert decision.reason.startswith("relaying denied")


@pytest.mark.parametrize("role", list(Role))
def test_an_unknown_local_recipient_is_550_5_1_1_even_when_authorised(role):
    """No authorisation makes an unknown local mailbox exist."""
    decision = decide(
        _request(role=role, recipient=Recipient.UNKNOWN_LOCAL, account=ALICE),
        BOTH_ON,
        _grant(),
        NOW,
    )
    _refused(decision, 550, "5.1.1")


# --- the submission listener ----------------------------------------------------------------


@pytest.mark.parametrize(
    "recipient",
    [None, Recipient.LOCAL, Recipient.REMOTE],
    ids=["MAIL", "RCPT-local", "RCPT-remote"],
)
def test_submission_needs_authorisation_at_mail_and_rcpt(recipient):
    """Without authorisation the submission port answers 530 5.7.0 to MAIL and every RCPT."""
    decision = decide(_request(role=Role.SUBMISSION, recipient=recipient), BOTH_ON, None, NOW)
    _refused(decision, 530, "5.7.0")
    assert decision.reason.startswith("authentication required on the submission port")


def test_submission_accepts_mail_from_an_authenticated_session():
    """An SMTP-Auth session may start a transaction on the submission port."""
    decision = decide(
        _request(role=Role.SUBMISSION, recipient=None, account=ALICE), BOTH_ON, None, NOW
    )
    assert decision.allowed
    assert (decision.code, decision.enhanced) == (250, "2.1.0")
    assert decision.scheme == SMTP_AUTH


# --- SMTP-Auth ------------------------------------------------------------------------------


@pytest.mark.parametrize("role", list(Role))
def test_smtp_auth_authorises_relaying_while_on(role):
    """An authenticated session may send to a remote recipient while SMTP-Auth is on."""
    decision = decide(_request(role=role, account=ALICE), AUTH_ONLY, None, NOW)
    assert decision.allowed
    assert (decision.code, decision.enhanced) == (250, "2.1.5")
    assert (decision.scheme, decision.account) == (SMTP_AUTH, ALICE)
    assert not decision.relay_by_ip_only
    assert decision.reason == f"authenticated as {ALICE} (SMTP-Auth)"


def test_smtp_auth_does_not_authorise_while_off():
    """An authenticated account counts for nothing once SMTP-Auth is off."""
    decision = decide(_request(account=ALICE), POP_ONLY, None, NOW)
    _refused(decision, 550, "5.7.1")


def test_smtp_auth_authorises_one_microsecond_before_its_cutover():
    """SMTP-Auth scheduled off still authorises one microsecond before its cutover."""
    schemes = Schemes(Schedule.until(CUTOVER), Schedule.off(), WINDOW)
    assert decide(_request(account=ALICE), schemes, None, CUTOVER - MICROSECOND).allowed


def test_smtp_auth_stops_authorising_at_its_cutover():
    """SMTP-Auth scheduled off refuses from the cutover instant on."""
    schemes = Schemes(Schedule.until(CUTOVER), Schedule.off(), WINDOW)
    _refused(decide(_request(account=ALICE), schemes, None, CUTOVER), 550, "5.7.1")


def test_smtp_auth_is_credited_when_both_schemes_could_authorise():
    """An authenticated session is attributed to SMTP-Auth even with a live POP grant."""
    decision = decide(_request(account=ALICE), BOTH_ON, _grant(), NOW)
    assert decision.scheme == SMTP_AUTH


# --- SMTP-after-POP -------------------------------------------------------------------------


def test_a_live_grant_for_the_same_ip_authorises_relaying():
    """A POP3 login from the client's address inside the window lets it relay."""
    decision = decide(_request(), POP_ONLY, _grant(), NOW)
    assert decision.allowed
    assert (decision.code, decision.enhanced) == (250, "2.1.5")
    assert (decision.scheme, decision.account) == (SMTP_AFTER_POP, ALICE)
    assert decision.relay_by_ip_only


def test_a_grant_authorises_on_submission_too():
    """SMTP-after-POP satisfies the submission port's authorisation requirement."""
    decision = decide(_request(role=Role.SUBMISSION, recipient=None), POP_ONLY, _grant(), NOW)
    assert decision.allowed
    assert decision.scheme == SMTP_AFTER_POP


def test_a_grant_reason_names_address_account_age_and_window():
    """The reason tells a person who opened the window, how long ago, and how long it is."""
    decision = decide(_request(), POP_ONLY, _grant(), NOW)
    assert decision.reason == (
        f"{CLIENT} logged in to POP3 as {ALICE} 42 s ago, window 600 s (SMTP-after-POP)"
    )


def test_a_grant_authorises_one_microsecond_before_the_window_ends():
    """A grant is live until just before granted_at + window."""
    decision = decide(_request(), POP_ONLY, _grant(age=WINDOW - MICROSECOND), NOW)
    assert decision.allowed


def test_a_grant_exactly_one_window_old_does_not_authorise():
    """A grant is dead at granted_at + window (exclusive)."""
    _refused(decide(_request(), POP_ONLY, _grant(age=WINDOW), NOW), 550, "5.7.1")


def test_a_grant_for_another_ip_does_not_authorise():
    """A grant handed in for a neighbour's address opens nothing for this client."""
    _refused(decide(_request(), POP_ONLY, _grant(ip=NEIGHBOUR), NOW), 550, "5.7.1")


def test_a_grant_for_another_ip_does_not_authorise_submission():
    """A foreign grant does not satisfy the submission port either."""
    decision = decide(_request(role=Role.SUBMISSION), POP_ONLY, _grant(ip=NEIGHBOUR), NOW)
    _refused(decision, 530, "5.7.0")


def test_a_stale_grant_passed_in_directly_does_not_authorise():
    """decide re-checks the window itself, so an old grant cannot open a relay."""
    stale = _grant(age=timedelta(hours=3))
    _refused(decide(_request(), POP_ONLY, stale, NOW), 550, "5.7.1")


def test_a_grant_from_the_future_does_not_authorise():
    """A grant made after ``now`` is not live at ``now``."""
    future = _grant(age=-timedelta(seconds=1))
    _refused(decide(_request(), POP_ONLY, future, NOW), 550, "5.7.1")


def test_an_ipv4_mapped_peer_matches_an_ipv4_grant():
    """A client seen as ``::ffff:127.0.0.2`` is the address that logged in as 127.0.0.2."""
    decision = decide(_request(peer_ip="::ffff:127.0.0.2"), POP_ONLY, _grant(), NOW)
    assert decision.allowed


def test_a_garbage_peer_address_is_not_authorised_by_a_grant():
    """An unparsable peer address never matches a grant."""
    decision = decide(_request(peer_ip="unknown"), POP_ONLY, _grant(), NOW)
    _refused(decision, 550, "5.7.1")


def test_a_grant_does_not_authorise_while_smtp_after_pop_is_off():
    """A live login counts for nothing once SMTP-after-POP is off."""
    _refused(decide(_request(), AUTH_ONLY, _grant(), NOW), 550, "5.7.1")


def test_a_grant_authorises_one_microsecond_before_the_schemes_cutover():
    """SMTP-after-POP scheduled off still authorises one microsecond before its cutover."""
    schemes = Schemes(Schedule.off(), Schedule.until(CUTOVER), WINDOW)
    now = CUTOVER - MICROSECOND
    grant = Grant(CLIENT, ALICE, now - timedelta(seconds=1))
    assert decide(_request(), schemes, grant, now).allowed


def test_a_grant_stops_authorising_at_the_schemes_cutover():
    """From the cutover on, even a fresh login from the same address does not authorise."""
    schemes = Schemes(Schedule.off(), Schedule.until(CUTOVER), WINDOW)
    grant = Grant(CLIENT, ALICE, CUTOVER - timedelta(seconds=1))
    _refused(decide(_request(), schemes, grant, CUTOVER), 550, "5.7.1")


# --- reason texts ---------------------------------------------------------------------------


def test_a_refusal_names_both_schemes_while_both_are_on():
    """The relay refusal tells the client each way it could have been authorised."""
    reason = decide(_request(), BOTH_ON, None, NOW).reason
    assert reason == (
        "relaying denied: use SMTP-Auth (AUTH PLAIN or LOGIN) or a POP3 login from "
        f"{CLIENT} in the last 600 s (SMTP-after-POP)"
    )


def test_a_refusal_after_a_cutover_says_off_since_the_date():
    """A scheme scheduled off is reported as off since its cutover date."""
    schemes = Schemes(Schedule.on(), Schedule.until(CUTOVER), WINDOW)
    reason = decide(_request(), schemes, None, CUTOVER + timedelta(hours=1)).reason
    assert "SMTP-after-POP is off since 2013-09-02 00:00 UTC" in reason
    assert "use SMTP-Auth (AUTH PLAIN or LOGIN)" in reason
    assert "POP3 login from" not in reason


def test_a_refusal_after_smtp_auth_cutover_says_off_since_the_date():
    """SMTP-Auth scheduled off is reported as off since its cutover date."""
    schemes = Schemes(Schedule.until(CUTOVER), Schedule.on(), WINDOW)
    reason = decide(_request(account=ALICE), schemes, None, CUTOVER).reason
    assert "SMTP-Auth is off since 2013-09-02 00:00 UTC" in reason
    assert "(SMTP-after-POP)" in reason


def test_a_refusal_with_both_schemes_off_says_nothing_can_authorise():
    """With both schemes off the text says so instead of suggesting a scheme."""
    reason = decide(_request(), BOTH_OFF, None, NOW).reason
    assert reason == (
        "relaying denied: SMTP-Auth is off; SMTP-after-POP is off; no scheme can authorise sending"
    )


def test_a_refusal_mentions_an_expired_login_from_the_same_address():
    """A login that has aged out is mentioned with its age and the window, never its account."""
    stale = _grant(age=timedelta(seconds=900))
    reason = decide(_request(), POP_ONLY, stale, NOW).reason
    assert f"the last POP3 login from {CLIENT} was 900 s ago, outside the 600 s window" in reason
    assert ALICE not in reason


def test_a_refusal_does_not_mention_a_login_from_another_address():
    """A neighbour's login is none of this client's business."""
    reason = decide(_request(), POP_ONLY, _grant(ip=NEIGHBOUR), NOW).reason
    assert NEIGHBOUR not in reason
    assert ALICE not in reason


def test_a_submission_refusal_explains_the_schemes():
    """The 530 text on submission carries the same explanation as the relay refusal."""
    reason = decide(_request(role=Role.SUBMISSION), BOTH_ON, None, NOW).reason
    assert "SMTP-Auth (AUTH PLAIN or LOGIN)" in reason
    assert "(SMTP-after-POP)" in reason


def test_schemes_schedule_looks_up_by_scheme_name():
    """Schemes.schedule returns the schedule for each scheme's name."""
    schemes = Schemes(Schedule.on(), Schedule.off(), WINDOW)
    assert schemes.schedule(SMTP_AUTH) == Schedule.on()
    assert schemes.schedule(SMTP_AFTER_POP) == Schedule.off()


# --- sender binding (enforce_sender) ----------------------------------------------------------

ENFORCING = Schemes(Schedule.on(), Schedule.on(), WINDOW, enforce_sender=True)


def _mail(sender: str, account: str | None = ALICE, role: Role = Role.MX) -> Request:
    return Request(peer_ip=CLIENT, role=role, account=account, recipient=None, sender=sender)


@pytest.mark.parametrize("role", list(Role))
def test_enforce_sender_refuses_another_address_at_mail_with_553(role):
    """An SMTP-Auth session sending as someone else gets 553 5.7.1 on either listener."""
    decision = decide(_mail("bob@example.org", role=role), ENFORCING, None, NOW)
    assert (decision.allowed, decision.code, decision.enhanced) == (False, 553, "5.7.1")
    assert "not yours" in decision.reason
    assert ALICE in decision.reason


def test_enforce_sender_accepts_the_own_address_in_any_case():
    """The account's own address passes, compared case-insensitively."""
    assert decide(_mail("Alice@Example.org", role=Role.SUBMISSION), ENFORCING, None, NOW).allowed


def test_without_enforce_sender_another_address_is_accepted():
    """Sender binding is off by default: an authenticated session may use any sender."""
    assert decide(_mail("bob@example.org", role=Role.SUBMISSION), BOTH_ON, None, NOW).allowed


def test_enforce_sender_does_not_apply_to_unauthenticated_sessions():
    """Without SMTP-Auth there is no account to bind to; the MX takes any sender."""
    assert decide(_mail("bob@example.org", account=None), ENFORCING, None, NOW).allowed


def test_enforce_sender_does_not_apply_while_smtp_auth_is_off():
    """A session whose SMTP-Auth no longer counts is not bound by it either."""
    schemes = Schemes(Schedule.off(), Schedule.on(), WINDOW, enforce_sender=True)
    assert decide(_mail("bob@example.org"), schemes, None, NOW).allowed


def test_enforce_sender_with_a_pop_grant_says_the_sender_cannot_be_checked():
    """SMTP-after-POP vouches for an address, so the authorisation's reason says so."""
    request = _mail("anyone@else.example", account=None, role=Role.SUBMISSION)
    decision = decide(request, ENFORCING, _grant(), NOW)
    assert decision.allowed
    assert decision.scheme == SMTP_AFTER_POP
    assert SENDER_UNBOUND in decision.reason


def test_a_pop_grant_reason_without_enforce_sender_says_nothing_about_senders():
    """The unbound-sender note appears only when sender binding is asked for."""
    request = _mail("anyone@else.example", account=None, role=Role.SUBMISSION)
    assert SENDER_UNBOUND not in decide(request, BOTH_ON, _grant(), NOW).reason


# --- plaintext authentication ------------------------------------------------------------------


@pytest.mark.parametrize(
    "peer", ["127.0.0.1", "127.0.0.2", "127.255.0.9", "::1", "::ffff:127.0.0.2"]
)
def test_plaintext_auth_is_allowed_from_loopback_without_tls(peer):
    """Any loopback peer (127.0.0.0/8, ::1, also IPv4-mapped) counts as secure."""
    assert plaintext_auth_allowed(peer, tls=False)


@pytest.mark.parametrize("peer", ["192.0.2.10", "10.0.0.1", "2001:db8::1", "::ffff:192.0.2.10"])
def test_plaintext_auth_is_refused_from_elsewhere_without_tls(peer):
    """A non-loopback peer may not send a password in the clear."""
    assert not plaintext_auth_allowed(peer, tls=False)


def test_plaintext_auth_is_allowed_over_tls_from_anywhere():
    """TLS protects the password whatever the peer."""
    assert plaintext_auth_allowed("192.0.2.10", tls=True)


def test_plaintext_auth_is_allowed_everywhere_when_the_operator_says_so():
    """allow_plaintext lifts the rule."""
    assert plaintext_auth_allowed("192.0.2.10", tls=False, allow_plaintext=True)


def test_plaintext_auth_from_a_garbage_peer_address_is_refused():
    """An address that cannot be parsed is not loopback."""
    assert not plaintext_auth_allowed("not-an-ip", tls=False)


def test_enforce_sender_lets_an_authenticated_session_send_with_the_null_sender():
    """<> (bounces, auto-replies) belongs to nobody, so sender binding does not refuse it."""
    assert decide(_mail("", role=Role.SUBMISSION), ENFORCING, None, NOW).allowed
