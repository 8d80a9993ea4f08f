"""The HTTP API in memory: raw HTTP through the real Site over StringTransport, a fake clock."""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import pytest
from twisted.internet.address import IPv4Address
from twisted.internet.error import ConnectionDone
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure

from mailhost import delivery, policy
from mailhost.accounts import verify_password
from mailhost.policy import Recipient, Role
from mailhost.schedule import Schedule
from mailhost.testing import DEFAULT_START, make_provider
from mailhost.web import ApiSite

ALICE = "alice@example.org"
BOB = "bob@example.org"
PEER = IPv4Address("TCP", "127.0.0.1", 40000)


@dataclass
class Response:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


class Exchange:
    """One request on its own connection; the reply may come later (long polls)."""

    def __init__(self, site: ApiSite, raw: bytes) -> None:
        self.transport = StringTransport(peerAddress=PEER)
        self.protocol = site.buildProtocol(PEER)
        self.protocol.makeConnection(self.transport)
        self.protocol.dataReceived(raw)

    def response(self) -> Response | None:
        data = self.transport.value()
        if not data:
            return None
        head, _, body = data.partition(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        headers = {}
        for line in lines[1:]:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        return Response(int(lines[0].split()[1]), headers, body)

    def disconnect(self) -> None:
        self.protocol.connectionLost(Failure(ConnectionDone()))


class Client:
    def __init__(self, site: ApiSite) -> None:
        self.site = site

    def send(
        self, method: str, path: str, body: Any = None, headers: dict[str, str] | None = None
    ) -> Exchange:
        data = (
            body if isinstance(body, bytes) else b"" if body is None else json.dumps(body).encode()
        )
        fields = {"Host": "127.0.0.1:8025", "Connection": "close", "Content-Length": len(data)}
        if data:
            fields["Content-Type"] = "application/json"
        fields.update(headers or {})
        head = f"{method} {path} HTTP/1.1\r\n"
        for name, value in fields.items():
            head += f"{name}: {value}\r\n"
        return Exchange(self.site, head.encode() + b"\r\n" + data)

    def __call__(self, method: str, path: str, body: Any = None, **kw: Any) -> Response:
        response = self.send(method, path, body, **kw).response()
        assert response is not None, "no reply"
        return response


@pytest.fixture
def provider(tmp_path, clock):
    return make_provider(tmp_path, clock)


@pytest.fixture
def site(provider, clock):
    return ApiSite(provider, clock)


@pytest.fixture
def api(site):
    return Client(site)


def store(provider, to=(ALICE,), subject="hello", account=BOB, sender=BOB, ip="127.0.0.2"):
    """Deliver one message as SMTP would (Received header, event), authorised by SMTP-Auth."""
    origin = delivery.Origin(ip, Role.SUBMISSION, "client.example", "ESMTPA", account)
    destinations = tuple(
        delivery.Destination(a, Recipient.LOCAL, a)
        if a.endswith("@example.org")
        else delivery.Destination(a, Recipient.REMOTE)
        for a in to
    )
    decision = delivery.decide(provider, origin, sender, destinations[0])
    content = (
        f"From: Bob <{sender}>\nTo: {', '.join(to)}\nSubject: {subject}\n\nHi there.\n"
    ).encode()
    results: list[str] = []
    delivery.store(
        provider, origin, delivery.Envelope(sender, destinations), content, decision
    ).addCallback(results.append)
    return results[0]


# --- general -------------------------------------------------------------------------


def test_health_says_ok(api):
    """GET /api/health answers {"ok": true}."""
    response = api("GET", "/api/health")
    assert (response.status, response.json()) == (200, {"ok": True})
    assert response.headers["content-type"].startswith("application/json")


def test_unknown_path_is_404_json(api):
    """A path the API does not have is a 404 with the error shape."""
    response = api("GET", "/api/nothing")
    assert response.status == 404
    assert response.json()["field"] is None


def test_wrong_method_is_405_with_allow(api):
    """A known path with the wrong method is 405 and says which methods exist."""
    response = api("PATCH", "/api/accounts")
    assert response.status == 405
    assert set(response.headers["allow"].split(", ")) == {"GET", "POST"}
    assert "error" in response.json()


def test_bad_json_is_400(api):
    """A body that is not JSON is a 400, not a crash."""
    response = api("POST", "/api/accounts", b"{not json")
    assert response.status == 400
    assert response.json()["field"] is None


def test_a_json_array_body_is_400(api):
    """The body must be a JSON object."""
    assert api("POST", "/api/faults", b"[1]").status == 400


# --- accounts ------------------------------------------------------------------------


def test_accounts_are_listed(api):
    """GET /api/accounts lists every account address."""
    assert api("GET", "/api/accounts").json() == {"accounts": [ALICE, BOB]}


def test_account_is_created_at_the_usual_cost(api, provider):
    """POST creates the account (201) with the cost most accounts already have."""
    response = api("POST", "/api/accounts", {"address": "Carol@Example.org", "password": "pw"})
    assert (response.status, response.json()) == (201, {"address": "carol@example.org"})
    stored = provider.accounts.get("carol@example.org")
    assert stored.startswith("{BLF-CRYPT}$2b$04$")
    assert verify_password(b"pw", stored)


def test_duplicate_account_is_409(api):
    """Creating an existing account is a 409 naming the address."""
    response = api("POST", "/api/accounts", {"address": ALICE, "password": "pw"})
    assert response.status == 409
    assert response.json()["field"] == "address"


def test_bad_address_is_400(api):
    """An address that is not one is a 400 naming the field."""
    response = api("POST", "/api/accounts", {"address": "not an address", "password": "pw"})
    assert (response.status, response.json()["field"]) == (400, "address")


def test_empty_password_is_400(api):
    """An empty password is a 400 naming the password field."""
    response = api("POST", "/api/accounts", {"address": "c@example.org", "password": ""})
    assert (response.status, response.json()["field"]) == (400, "password")


def test_account_is_deleted(api, provider):
    """DELETE removes the account (204)."""
    assert api("DELETE", f"/api/accounts/{BOB}").status == 204
    assert BOB not in provider.accounts


def test_deleting_an_unknown_account_is_404(api):
    """DELETE of an account that does not exist is a 404."""
    assert api("DELETE", "/api/accounts/nobody@example.org").status == 404


def test_password_is_changed(api, provider):
    """PUT …/password sets a new password (204)."""
    assert api("PUT", f"/api/accounts/{ALICE}/password", {"password": "new"}).status == 204
    assert verify_password(b"new", provider.accounts.get(ALICE))


def test_password_of_unknown_account_is_404(api):
    """Changing the password of an unknown account is a 404."""
    response = api("PUT", "/api/accounts/x@example.org/password", {"password": "new"})
    assert response.status == 404


# --- messages ------------------------------------------------------------------------


def test_mailbox_summary_reads_the_stored_headers(api, provider):
    """A summary has the envelope, headers, size, server-clock time and the scheme."""
    store(provider)
    [summary] = api("GET", f"/api/mailboxes/{ALICE}/messages").json()["messages"]
    assert summary["envelope_from"] == BOB
    assert summary["envelope_to"] == [ALICE]
    assert summary["subject"] == "hello"
    assert summary["from"] == f"Bob <{BOB}>"
    assert summary["to"] == ALICE
    assert summary["scheme"] == "smtp-auth"
    assert summary["authorised_account"] == BOB
    assert summary["received_at"] == DEFAULT_START.isoformat()
    assert summary["uid"] == summary["id"]
    assert summary["size"] > 0


def test_outbox_summary_uses_the_envelope_lines(api, provider):
    """Outbox messages take their envelope from X-Envelope-From/To."""
    store(provider, to=("x@remote.example", "y@remote.example"))
    [summary] = api("GET", "/api/outbox/messages").json()["messages"]
    assert summary["envelope_from"] == BOB
    assert summary["envelope_to"] == ["x@remote.example", "y@remote.example"]


def test_messages_are_filtered_by_subject_from_and_to(api, provider):
    """subject is a substring; from and to are addresses; all must match."""
    store(provider, subject="Invoice 42")
    store(provider, subject="other")
    base = f"/api/mailboxes/{ALICE}/messages"
    assert len(api("GET", base + "?subject=invoice").json()["messages"]) == 1
    assert len(api("GET", base + f"?from={BOB}").json()["messages"]) == 2
    assert api("GET", base + "?to=someone@example.org").json()["messages"] == []


def test_message_detail_has_headers_body_and_raw(api, provider):
    """GET …/messages/<id> adds headers, the decoded body and the raw text."""
    store(provider)
    [summary] = api("GET", f"/api/mailboxes/{ALICE}/messages").json()["messages"]
    message = api("GET", f"/api/mailboxes/{ALICE}/messages/{summary['id']}").json()
    assert message["body"] == "Hi there.\n"
    assert ["Subject", "hello"] in message["headers"]
    assert message["headers"][0][0] == "Return-Path"
    assert message["raw"].startswith("Return-Path: <bob@example.org>\n")


def test_message_raw_format_is_rfc822(api, provider):
    """?format=raw returns the stored bytes as message/rfc822."""
    store(provider)
    [summary] = api("GET", f"/api/mailboxes/{ALICE}/messages").json()["messages"]
    response = api("GET", f"/api/mailboxes/{ALICE}/messages/{summary['id']}?format=raw")
    assert response.headers["content-type"] == "message/rfc822"
    assert response.body.startswith(b"Return-Path: <bob@example.org>\n")


def test_unknown_message_is_404(api):
    """A message id that is not in the box is a 404."""
    assert api("GET", f"/api/mailboxes/{ALICE}/messages/nope").status == 404


def test_unknown_mailbox_is_404(api):
    """A mailbox that is neither an account nor a Maildir is a 404."""
    assert api("GET", "/api/mailboxes/nobody@example.org/messages").status == 404


def test_message_is_deleted(api, provider):
    """DELETE …/messages/<id> removes that message; a second time it is a 404."""
    store(provider)
    [summary] = api("GET", f"/api/mailboxes/{ALICE}/messages").json()["messages"]
    path = f"/api/mailboxes/{ALICE}/messages/{summary['id']}"
    assert api("DELETE", path).status == 204
    assert api("DELETE", path).status == 404


def test_all_messages_are_deleted(api, provider):
    """DELETE …/messages empties the box."""
    store(provider)
    store(provider)
    assert api("DELETE", f"/api/mailboxes/{ALICE}/messages").status == 204
    assert api("GET", f"/api/mailboxes/{ALICE}/messages").json() == {"messages": []}


# --- long poll -----------------------------------------------------------------------


def test_wait_is_answered_by_a_delivery_during_the_wait(api, site, provider, clock):
    """A waiting request answers as soon as enough matching mail is stored."""
    exchange = api.send("GET", f"/api/mailboxes/{ALICE}/messages?wait=30&count=2")
    store(provider)
    clock.advance(5)
    assert exchange.response() is None
    store(provider, to=(BOB,))  # another box: does not count
    store(provider)
    response = exchange.response()
    assert response is not None
    assert len(response.json()["messages"]) == 2
    assert site.resource.waiters == set()


def test_wait_times_out_with_what_matched(api, provider, clock):
    """When the wait runs out the reply has what matched so far, possibly fewer."""
    store(provider)
    exchange = api.send("GET", f"/api/mailboxes/{ALICE}/messages?wait=10&count=3")
    clock.advance(9.9)
    assert exchange.response() is None
    clock.advance(0.2)
    response = exchange.response()
    assert (response.status, len(response.json()["messages"])) == (200, 1)


def test_wait_longer_than_a_minute_is_400(api):
    """wait is bounded to 60 seconds."""
    response = api("GET", f"/api/mailboxes/{ALICE}/messages?wait=61")
    assert (response.status, response.json()["field"]) == (400, "wait")


def test_bad_count_is_400(api):
    """count must be a whole number of at least 1."""
    response = api("GET", "/api/outbox/messages?wait=1&count=0")
    assert (response.status, response.json()["field"]) == (400, "count")


def test_a_client_that_leaves_is_forgotten(api, site, provider, clock):
    """Disconnecting during a wait cancels its timer and its subscription."""
    exchange = api.send("GET", f"/api/mailboxes/{ALICE}/messages?wait=30")
    resource = site.resource
    assert len(resource.waiters) == 1
    exchange.disconnect()
    assert resource.waiters == set()
    store(provider)
    clock.advance(31)
    assert exchange.transport.value() == b""


# --- POP logins, schemes, clock ------------------------------------------------------


def test_pop_logins_are_listed_with_their_window(api, provider, clock):
    """Each POP3 login shows its time left; after the window it is no longer live."""
    provider.logins.record("127.0.0.2", ALICE, provider.now())
    [login] = api("GET", "/api/pop-logins").json()["pop_logins"]
    assert login == {
        "ip": "127.0.0.2",
        "account": ALICE,
        "granted_at": DEFAULT_START.isoformat(),
        "seconds_left": 600.0,
        "live": True,
    }
    api("POST", "/api/clock/advance", {"seconds": 600})
    [login] = api("GET", "/api/pop-logins").json()["pop_logins"]
    assert (login["live"], login["seconds_left"]) == (False, 0.0)


def test_schemes_are_shown_with_descriptions(api, provider):
    """GET /api/schemes has the specs, window, sender rule, now and descriptions."""
    assert api("GET", "/api/schemes").json() == {
        "smtp-auth": "on",
        "smtp-after-pop": "on",
        "pop-window": 600,
        "enforce-sender": False,
        "now": DEFAULT_START.isoformat(),
        "describe": {"smtp-auth": "on", "smtp-after-pop": "on"},
    }


def test_schemes_are_replaced_as_a_whole(api, provider):
    """PUT changes only the given fields, in a new Schemes value."""
    before = provider.schemes
    state = api(
        "PUT", "/api/schemes", {"smtp-after-pop": "until:2013-09-02", "pop-window": "5m"}
    ).json()
    assert state["smtp-after-pop"] == "until:2013-09-02T00:00:00Z"
    assert state["describe"]["smtp-after-pop"] == "on until 2013-09-02 00:00 UTC"
    assert state["pop-window"] == 300
    assert provider.schemes is not before
    assert provider.schemes.smtp_auth == before.smtp_auth


def test_pop_window_may_be_a_number(api, provider):
    """pop-window takes seconds as a number too."""
    api("PUT", "/api/schemes", {"pop-window": 30})
    assert provider.schemes.pop_window == timedelta(seconds=30)


def test_bad_scheme_state_is_400_and_changes_nothing(api, provider):
    """A bad value names its field, and no other field of the request is applied."""
    before = provider.schemes
    response = api("PUT", "/api/schemes", {"pop-window": "5m", "smtp-auth": "sometimes"})
    assert (response.status, response.json()["field"]) == (400, "smtp-auth")
    assert provider.schemes is before


def test_unknown_scheme_field_is_400(api):
    """A field the schemes do not have is named in the 400."""
    response = api("PUT", "/api/schemes", {"smtp-magic": "on"})
    assert (response.status, response.json()["field"]) == (400, "smtp-magic")


def test_clock_is_shown(api):
    """GET /api/clock has the server time and the offset from the reactor clock."""
    clock = api("GET", "/api/clock").json()
    assert clock == {"now": DEFAULT_START.isoformat(), "offset": 0.0}


def test_clock_is_set(api, provider):
    """PUT /api/clock moves the server clock to the instant given."""
    assert api("PUT", "/api/clock", {"now": "2020-01-01"}).json()["now"] == (
        "2020-01-01T00:00:00+00:00"
    )
    assert provider.now().year == 2020


def test_bad_clock_instant_is_400(api):
    """An instant that does not parse is a 400 naming now."""
    response = api("PUT", "/api/clock", {"now": "yesterday"})
    assert (response.status, response.json()["field"]) == (400, "now")


def test_negative_advance_is_400(api):
    """The clock only moves forward through advance."""
    response = api("POST", "/api/clock/advance", {"seconds": -1})
    assert (response.status, response.json()["field"]) == (400, "seconds")


def test_advance_past_the_window_makes_decide_refuse(api, provider):
    """Crossing the POP window by the API clock turns a relay into a refusal."""
    provider.logins.record("127.0.0.2", ALICE, provider.now())
    origin = delivery.Origin("127.0.0.2", Role.SUBMISSION)
    remote = delivery.Destination("x@remote.example", Recipient.REMOTE)
    assert delivery.decide(provider, origin, ALICE, remote).allowed
    api("POST", "/api/clock/advance", {"seconds": 600})
    assert not delivery.decide(provider, origin, ALICE, remote).allowed


def test_advance_past_a_cutover_makes_decide_refuse(api, provider):
    """Crossing a scheme's cutover by the API clock switches it off."""
    api("PUT", "/api/schemes", {"smtp-auth": "until:2013-09-02"})
    origin = delivery.Origin("127.0.0.3", Role.SUBMISSION, smtp_auth_account=ALICE)
    remote = delivery.Destination("x@remote.example", Recipient.REMOTE)
    assert delivery.decide(provider, origin, ALICE, remote).scheme == policy.SMTP_AUTH
    api("POST", "/api/clock/advance", {"seconds": 60})
    assert not delivery.decide(provider, origin, ALICE, remote).allowed
    described = api("GET", "/api/schemes").json()["describe"]["smtp-auth"]
    assert described == "off since 2013-09-02 00:00 UTC"


# --- events and faults ---------------------------------------------------------------


def test_events_follow_a_cursor(api, provider):
    """after, kind and limit select events; cursor is the last seq returned."""
    for n in range(3):
        provider.events.emit("a", provider.now(), n=n)
    provider.events.emit("b", provider.now())
    first = api("GET", "/api/events?kind=a&limit=2").json()
    assert [e["n"] for e in first["events"]] == [0, 1]
    rest = api("GET", f"/api/events?after={first['cursor']}").json()
    assert [e["kind"] for e in rest["events"]] == ["a", "b"]
    assert api("GET", f"/api/events?after={rest['cursor']}").json() == {
        "events": [],
        "cursor": rest["cursor"],
    }


def test_bad_event_cursor_is_400(api):
    """after must be a whole number."""
    assert api("GET", "/api/events?after=-1").json()["field"] == "after"


def test_fault_is_added_and_listed(api):
    """POST /api/faults adds a rule (201); GET lists it."""
    spec = {"protocol": "smtp", "command": "rcpt", "code": 451, "times": 2}
    fault = api("POST", "/api/faults", spec)
    assert fault.status == 201
    assert fault.json()["command"] == "RCPT"
    assert api("GET", "/api/faults").json() == {"faults": [fault.json()]}


def test_bad_fault_is_400_naming_the_field(api):
    """A fault spec the registry refuses is a 400 with its field."""
    response = api("POST", "/api/faults", {"protocol": "imap", "command": "X"})
    assert (response.status, response.json()["field"]) == (400, "protocol")


def test_fault_is_removed(api):
    """DELETE /api/faults/<id> removes it; again it is a 404."""
    fault_id = api("POST", "/api/faults", {"protocol": "pop3", "command": "RETR"}).json()["id"]
    assert api("DELETE", f"/api/faults/{fault_id}").status == 204
    assert api("DELETE", f"/api/faults/{fault_id}").status == 404


def test_all_faults_are_removed(api, provider):
    """DELETE /api/faults clears every rule."""
    api("POST", "/api/faults", {"protocol": "pop3", "command": "RETR"})
    assert api("DELETE", "/api/faults").status == 204
    assert provider.faults.list() == []


# --- reset and token -----------------------------------------------------------------


def test_reset_restores_a_clean_start_and_keeps_accounts(api, provider, tmp_path):
    """Reset empties every box and the tables, restores schemes and clock, keeps accounts."""
    store(provider)
    store(provider, to=("x@remote.example",))
    provider.logins.record("127.0.0.2", ALICE, provider.now())
    provider.throttle.record_failure("127.0.0.9", provider.now())
    api("POST", "/api/faults", {"protocol": "pop3", "command": "RETR"})
    api("PUT", "/api/schemes", {"smtp-auth": "off"})
    api("POST", "/api/clock/advance", {"seconds": 99})
    assert api("POST", "/api/reset").status == 204
    assert api("GET", f"/api/mailboxes/{ALICE}/messages").json()["messages"] == []
    assert api("GET", "/api/outbox/messages").json()["messages"] == []
    assert len(provider.logins) == 0
    assert provider.faults.list() == []
    assert provider.throttle.failures("127.0.0.9", provider.now()) == 0
    assert provider.events.recent() == []
    assert provider.schemes.smtp_auth == Schedule.on()
    assert provider.now() == DEFAULT_START
    assert provider.accounts.addresses() == [ALICE, BOB]
    assert (tmp_path / "events.jsonl").read_text().count("\n") > 0


def test_reset_waits_for_a_delivery_under_way(api, provider):
    """A message whose delivery is still on the pool is stored, then removed by the reset;
    its events go with it."""
    from mailhost.testing import QueuedRunBlocking

    storage = QueuedRunBlocking()
    provider.run_blocking = storage
    origin = delivery.Origin("127.0.0.2", Role.MX, "client.example")
    alice = delivery.Destination(ALICE, Recipient.LOCAL, ALICE)
    stored: list[str] = []
    delivery.store(
        provider, origin, delivery.Envelope(BOB, (alice,)), b"Subject: s\n\nbody\n", None
    ).addCallback(stored.append)
    exchange = api.send("POST", "/api/reset")
    assert (exchange.response(), len(storage.queue)) == (None, 1)
    storage.run_one()  # the delivery: the message is on disk
    assert stored and storage.queue, "the reset's own clean-up is queued behind it"
    storage.run_all()
    assert exchange.response().status == 204
    assert list((provider.data.mailbox(ALICE) / "new").iterdir()) == []
    assert provider.events.recent() == []
    assert provider.storing == set()


def test_reset_can_wipe_accounts(api, provider):
    """accounts=wipe removes every account too."""
    assert api("POST", "/api/reset", {"accounts": "wipe"}).status == 204
    assert provider.accounts.addresses() == []


def test_reset_with_a_bad_accounts_choice_is_400(api):
    """accounts is keep or wipe."""
    response = api("POST", "/api/reset", {"accounts": "some"})
    assert (response.status, response.json()["field"]) == (400, "accounts")


def test_token_is_required_when_configured(provider, clock):
    """With a token, a request without it (or with another) is a 401."""
    api = Client(ApiSite(provider, clock, token="s3cret"))
    assert api("GET", "/api/health").status == 401
    wrong = api("GET", "/api/health", headers={"Authorization": "Bearer nope"})
    assert wrong.status == 401
    assert wrong.headers["www-authenticate"].startswith("Bearer")


def test_token_is_accepted(provider, clock):
    """With the right bearer token the request goes through."""
    api = Client(ApiSite(provider, clock, token="s3cret"))
    response = api("GET", "/api/health", headers={"Authorization": "Bearer s3cret"})
    assert response.status == 200


def test_a_failing_handler_is_a_500_json(api, provider, monkeypatch):
    """An unexpected error becomes a 500 with the error shape; the server keeps serving."""

    def broken() -> list[str]:
        raise RuntimeError("boom")

    monkeypatch.setattr(provider.accounts, "addresses", broken)
    response = api("GET", "/api/accounts")
    assert (response.status, response.json()["error"]) == (500, "internal error")
    assert api("GET", "/api/health").status == 200


# --- browsers, oversized bodies, odd input ------------------------------------------------------


def test_a_request_from_another_web_origin_is_refused(api, provider):
    """A page on another site cannot drive the API (CSRF): a foreign Origin gets 403."""
    response = api(
        "POST", "/api/reset", {"accounts": "wipe"}, headers={"Origin": "https://evil.example"}
    )
    assert (response.status, response.json()["field"]) == (403, "Origin")
    assert provider.accounts.addresses() == [ALICE, BOB]


def test_the_dashboards_own_origin_is_accepted(api):
    """The dashboard, served from this listener, sends its own origin and is let through."""
    response = api("GET", "/api/health", headers={"Origin": "http://127.0.0.1:8025"})
    assert response.status == 200


def test_a_body_that_is_not_declared_json_is_refused(api, provider):
    """A form-style body (what a cross-site form can send without a preflight) gets 415."""
    response = api(
        "POST", "/api/reset", b'{"accounts": "wipe"}', headers={"Content-Type": "text/plain"}
    )
    assert (response.status, response.json()["field"]) == (415, "Content-Type")
    assert provider.accounts.addresses() == [ALICE, BOB]


def test_a_host_name_other_than_localhost_is_refused_without_a_token(api):
    """DNS rebinding reaches 127.0.0.1 under a foreign name; without a token that is 403."""
    response = api("GET", "/api/accounts", headers={"Host": "rebind.evil.example:8025"})
    assert (response.status, response.json()["field"]) == (403, "Host")
    assert api("GET", "/api/health", headers={"Host": "localhost:8025"}).status == 200


def test_with_a_token_any_host_name_may_be_used(provider, clock):
    """A token already proves the caller, so the server may be reached under any name."""
    api = Client(ApiSite(provider, clock, token="sekrit"))
    response = api(
        "GET", "/api/health", headers={"Host": "mail.test", "Authorization": "Bearer sekrit"}
    )
    assert response.status == 200


def test_an_oversized_body_is_refused_before_it_is_read(site):
    """A declared body over 1 MiB gets 413 at once, and the connection closes."""
    head = (
        b"POST /api/reset HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        b"Content-Length: 400000000\r\n\r\n"
    )
    exchange = Exchange(site, head + b"{")
    response = exchange.response()
    assert response is not None and response.status == 413
    assert exchange.transport.disconnecting


def test_an_unauthorised_body_is_refused_before_it_is_read(provider, clock):
    """Without the token, a request with a body is answered 401 before its bytes are taken."""
    site = ApiSite(provider, clock, token="sekrit")
    head = (
        b"POST /api/reset HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        b"Content-Length: 1000000\r\n\r\n"
    )
    exchange = Exchange(site, head + b"{")
    response = exchange.response()
    assert response is not None and response.status == 401
    assert exchange.transport.disconnecting


def test_non_ascii_digits_in_numbers_are_a_bad_request(api):
    """'²' is a digit to str.isdigit but not a number here: 400 naming the parameter."""
    response = api("GET", "/api/events?after=%C2%B2")
    assert (response.status, response.json()["field"]) == (400, "after")


def test_a_token_with_surrounding_spaces_still_matches(provider, clock):
    """A token given with stray spaces (from a file or env) is compared without them."""
    api = Client(ApiSite(provider, clock, token=" sekrit "))
    assert api("GET", "/api/health", headers={"Authorization": "Bearer sekrit"}).status == 200


# --- work off the reactor, bounded long polls ------------------------------------------


def test_summaries_are_built_in_the_worker_thread(api, provider, monkeypatch):
    """A listing reads and parses nothing on the reactor: no summary exists until the
    queued work runs, and only then does the reply go out."""
    from mailhost.testing import QueuedRunBlocking
    from mailhost.web import api as api_module

    store(provider)
    built: list[str] = []
    original = api_module.summarise_file

    def counting(path):
        built.append(path.name)
        return original(path)

    monkeypatch.setattr(api_module, "summarise_file", counting)
    queued = QueuedRunBlocking()
    provider.run_blocking = queued
    exchange = api.send("GET", f"/api/mailboxes/{ALICE}/messages")
    assert (exchange.response(), built, len(queued.queue)) == (None, [], 1)
    queued.run_all()
    response = exchange.response()
    assert (response.status, len(response.json()["messages"]), len(built)) == (200, 1, 1)


def test_message_detail_is_parsed_in_the_worker_thread(api, provider, monkeypatch):
    """The full parse of one message waits for the queued work too."""
    from mailhost.testing import QueuedRunBlocking
    from mailhost.web import api as api_module

    store(provider)
    [summary] = api("GET", f"/api/mailboxes/{ALICE}/messages").json()["messages"]
    message_id = summary["id"]
    parsed: list[str] = []
    original = api_module.detail

    def counting(name, raw):
        parsed.append(name)
        return original(name, raw)

    monkeypatch.setattr(api_module, "detail", counting)
    queued = QueuedRunBlocking()
    provider.run_blocking = queued
    exchange = api.send("GET", f"/api/mailboxes/{ALICE}/messages/{message_id}")
    assert (exchange.response(), parsed) == (None, [])
    queued.run_all()
    response = exchange.response()
    assert (response.status, response.json()["id"], len(parsed)) == (200, message_id, 1)


def test_a_large_message_is_listed_from_its_header(api, provider):
    """A stored message with a 5 MB body is summarised with its full size."""
    box = provider.data.mailbox(ALICE)
    (box / "new").mkdir(parents=True, exist_ok=True)
    body = b"x" * 76 + b"\n"
    raw = b"From: bob@example.org\nSubject: big\n\n" + body * (5 * 1024 * 1024 // len(body))
    (box / "new" / "1378079940.M1P2.host").write_bytes(raw)
    [summary] = api("GET", f"/api/mailboxes/{ALICE}/messages").json()["messages"]
    assert (summary["subject"], summary["size"]) == ("big", len(raw))


def test_too_many_waiters_is_503(api, monkeypatch):
    """Long polls are capped per box and in all; past a cap the reply is a 503 at once."""
    from mailhost.web import api as api_module

    monkeypatch.setattr(api_module, "MAX_WAITERS_PER_BOX", 2)
    monkeypatch.setattr(api_module, "MAX_WAITERS", 3)
    held = [api.send("GET", f"/api/mailboxes/{ALICE}/messages?wait=30") for _ in range(2)]
    assert [e.response() for e in held] == [None, None]
    refused = api("GET", f"/api/mailboxes/{ALICE}/messages?wait=30")
    assert (refused.status, refused.json()) == (
        503,
        {"error": "too many waiting requests", "field": None},
    )
    held.append(api.send("GET", f"/api/mailboxes/{BOB}/messages?wait=30"))
    assert held[-1].response() is None
    assert api("GET", "/api/outbox/messages?wait=30").status == 503
    held[0].disconnect()
    assert api.send("GET", "/api/outbox/messages?wait=30").response() is None


def test_one_delivery_scans_the_box_once_for_all_its_waiters(api, site, provider, monkeypatch):
    """Ten waiters on a box cost one scan per delivery, and all of them get its result."""
    from mailhost.web import api as api_module

    scans: list[object] = []
    original = api_module.summarise_box

    def counting(path):
        scans.append(path)
        return original(path)

    monkeypatch.setattr(api_module, "summarise_box", counting)
    waiting = [api.send("GET", f"/api/mailboxes/{ALICE}/messages?wait=30") for _ in range(10)]
    scans.clear()
    store(provider)
    assert len(scans) == 1
    assert {e.response().status for e in waiting} == {200}
    assert site.resource.waiters == set() and site.resource.watches == {}


def test_deliveries_during_a_scan_are_coalesced(api, provider, monkeypatch):
    """Deliveries while a scan runs mark the box dirty: one more scan follows, not one each."""
    from mailhost.testing import QueuedRunBlocking
    from mailhost.web import api as api_module

    waiting = [
        api.send("GET", f"/api/mailboxes/{ALICE}/messages?wait=30&count=4") for _ in range(5)
    ]
    queued = QueuedRunBlocking()
    inline = provider.run_blocking

    def scans_queued(f, *args):
        return (queued if f is api_module.summarise_box else inline)(f, *args)

    provider.run_blocking = scans_queued
    for _ in range(3):
        store(provider)
    assert len(queued.queue) == 1
    queued.run_one()
    assert len(queued.queue) == 1  # the owed rescan, for the deliveries during the first
    queued.run_one()
    assert queued.queue == []
    assert [e.response() for e in waiting] == [None] * 5
    store(provider)
    queued.run_all()
    assert [len(e.response().json()["messages"]) for e in waiting] == [4] * 5


def test_a_refused_account_value_is_400(api, provider, monkeypatch):
    """An AccountError that is neither a duplicate nor a missing account is the request's fault."""
    from mailhost.accounts import AccountError

    def refuse(*args):
        raise AccountError("the password is empty")

    monkeypatch.setattr(provider.accounts.file, "add", refuse)
    response = api("POST", "/api/accounts", {"address": "carol@example.org", "password": "x"})
    assert (response.status, response.json()["field"]) == (400, "address")
