"""The HTTP API: JSON over twisted.web, an adapter onto the shared Provider.

Theory of operation: one leaf :class:`ApiResource` routes ``/api/...`` by
method and path segments to a handler. A handler validates its input (an
:class:`ApiError` names the bad field and becomes a 4xx JSON reply), calls
what the provider already offers, and returns ``(status, payload)`` or a
Deferred of it. Rules live below this layer: accounts in ``accounts.py``,
schedules in ``config.py``/``schedule.py``, faults in ``faults.py``; message
parsing is in :mod:`mailhost.web.messages`. Reading, parsing and removing
messages goes through ``provider.run_blocking`` (bcrypt through the hashing
runner), and only finished summaries come back to the reactor, so a slow disk
or a large message never stalls SMTP or POP3. What stays on the reactor is
cheap metadata: account lookups ``stat`` the users file (and re-read it when
it changed), and a mailbox lookup checks that its directory exists.

Waiting for mail (``?wait=S``) is a long poll without polling: one
subscription to the event log wakes the box a message was stored in, which
scans once in the worker thread and hands the result to all its waiters; a
reactor timer bounds the wait, a client that goes away is forgotten at once,
and the number of waiters is capped per box and in total.
"""

from __future__ import annotations

import dataclasses
import hmac
import ipaddress
import json
import math
import os
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

from twisted.internet import defer
from twisted.internet.interfaces import IDelayedCall
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request

from mailhost import events
from mailhost.accounts import AccountError, check_password_text
from mailhost.addresses import AddressError, account_name
from mailhost.config import ConfigError, parse_duration, parse_instant, parse_state
from mailhost.faults import FaultError
from mailhost.maildir import message_files, uid_of
from mailhost.policy import SMTP_AFTER_POP, SMTP_AUTH, Schemes
from mailhost.provider import Provider
from mailhost.throttle import AuthThrottle
from mailhost.web.messages import Filter, Summary, detail, summarise_file

MAX_BODY = 1024 * 1024
MAX_WAIT = 60.0
"""Longest long poll, in seconds: a client never hangs on the server."""
DEFAULT_EVENT_LIMIT = 1000
MAX_EVENT_LIMIT = 10_000
MAX_WAITERS_PER_BOX = 64
MAX_WAITERS = 512
"""Long polls held at once, per box and in all: each holds a connection and a timer."""

Payload = dict[str, Any] | bytes | None
Reply = tuple[int, Payload]


class ApiError(Exception):
    """A request the API refuses: HTTP status, a sentence, and the field at fault (or None)."""

    def __init__(self, status: int, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.field = field


def _bad(field: str | None, message: str) -> ApiError:
    return ApiError(400, message, field)


# --- request helpers -------------------------------------------------------------------


def json_body(request: Request) -> dict[str, Any]:
    """The request body as a JSON object; an empty body is ``{}``."""
    content = request.content
    raw = content.read(MAX_BODY + 1) if content is not None else b""
    if len(raw) > MAX_BODY:
        raise ApiError(413, f"the request body is larger than {MAX_BODY} bytes")
    if not raw.strip():
        return {}
    content_type = (request.getHeader(b"content-type") or b"").split(b";")[0].strip().lower()
    if content_type != b"application/json":
        raise ApiError(415, "send the body as Content-Type: application/json", "Content-Type")
    try:
        value = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        raise _bad(None, "the request body is not valid JSON (UTF-8)") from None
    if not isinstance(value, dict):
        raise _bad(None, "the request body must be a JSON object")
    return value


def check_browser_origin(request: Request, token_required: bool) -> None:
    """Keep web pages from driving the API (CSRF) or reading it (DNS rebinding).

    A request a browser sends from another site carries that site's ``Origin``;
    only this server's own origin (the dashboard) is accepted. Without a token,
    the ``Host`` must also be an IP literal or ``localhost``: a rebinding page
    reaches 127.0.0.1 under its own domain name, which is refused here.
    """
    host = (request.getHeader(b"host") or b"").decode("latin-1").strip()
    origin = request.getHeader(b"origin")
    if origin is not None and origin.decode("latin-1") not in (
        f"http://{host}",
        f"https://{host}",
    ):
        raise ApiError(403, "requests from other web origins are not accepted", "Origin")
    if token_required:
        return
    name = host.rsplit(":", 1)[0] if not host.endswith("]") else host
    name = name.strip("[]").lower()
    if name == "localhost":
        return
    try:
        ipaddress.ip_address(name)
    except ValueError:
        raise ApiError(
            403, "address this server by IP or as localhost (or set an API token)", "Host"
        ) from None


def query(request: Request, name: str) -> str | None:
    values = (request.args or {}).get(name.encode())
    if not values:
        return None
    try:
        return values[-1].decode("utf-8")
    except UnicodeDecodeError:
        raise _bad(name, "not valid UTF-8") from None


def query_number(request: Request, name: str, default: float, low: float, high: float) -> float:
    text = query(request, name)
    if text is None:
        return default
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not (low <= value <= high):
        raise _bad(name, f"expected a number from {low:g} to {high:g}")
    return value


def query_int(request: Request, name: str, default: int, low: int, high: int) -> int:
    text = query(request, name)
    if text is None:
        return default
    if not re.fullmatch(r"[0-9]+", text.strip()) or not (low <= int(text) <= high):
        raise _bad(name, f"expected a whole number from {low} to {high}")
    return int(text)


def text_field(body: dict[str, Any], name: str) -> str:
    value = body.get(name)
    if not isinstance(value, str):
        raise _bad(name, f"{name} is required, as a string")
    return value


def is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


# --- views of provider state -----------------------------------------------------------


def schemes_json(schemes: Schemes, provider: Provider) -> dict[str, Any]:
    now = provider.now()
    return {
        SMTP_AUTH: schemes.smtp_auth.spec(),
        SMTP_AFTER_POP: schemes.smtp_after_pop.spec(),
        "pop-window": int(schemes.pop_window.total_seconds()),
        "enforce-sender": schemes.enforce_sender,
        "now": now.isoformat(),
        "describe": {
            SMTP_AUTH: schemes.smtp_auth.describe(now),
            SMTP_AFTER_POP: schemes.smtp_after_pop.describe(now),
        },
    }


def changed_schemes(schemes: Schemes, body: dict[str, Any]) -> Schemes:
    """``schemes`` with the fields of a ``PUT /api/schemes`` body applied; all or nothing."""
    changes: dict[str, Any] = {}
    for key, value in body.items():
        if key in (SMTP_AUTH, SMTP_AFTER_POP):
            if not isinstance(value, str):
                raise _bad(key, "expected on, off or until:<ISO date or datetime>")
            attribute = "smtp_auth" if key == SMTP_AUTH else "smtp_after_pop"
            changes[attribute] = parse_state(value, key)
        elif key == "pop-window":
            if not (isinstance(value, str) or (is_number(value) and value == int(value))):
                raise _bad(key, "expected seconds (600) or a duration such as 10m")
            text = value if isinstance(value, str) else str(int(value))
            changes["pop_window"] = parse_duration(text, key)
        elif key == "enforce-sender":
            if not isinstance(value, bool):
                raise _bad(key, "expected true or false")
            changes["enforce_sender"] = value
        else:
            raise _bad(key, f"unknown setting {key!r}")
    return dataclasses.replace(schemes, **changes)


# --- blocking file work (run through provider.run_blocking) -----------------------------


def summarise_box(path: Path) -> list[Summary]:
    """Blocking: the summary of every message in the Maildir, in POP3 order.

    Each file's header block and ``stat`` size are all that is read. This
    lists the box itself rather than through ``PopMailbox.scan``, which reads
    a whole file to size it when its name carries no ``,W=``.
    """
    summaries = []
    for subdir, name in message_files(path):
        try:
            summaries.append(summarise_file(path / subdir / name))
        except FileNotFoundError:  # removed meanwhile (POP3 QUIT, another API call)
            continue
    return summaries


def find_file(path: Path, message_id: str) -> Path | None:
    """Blocking: the file of the message whose unique name is ``message_id``."""
    for subdir in ("new", "cur"):
        folder = path / subdir
        if not folder.is_dir():
            continue
        with os.scandir(folder) as entries:
            for entry in entries:
                if not entry.name.startswith(".") and uid_of(entry.name) == message_id:
                    return folder / entry.name
    return None


def read_message(path: Path, message_id: str, raw: bool = False) -> bytes | dict[str, Any] | None:
    """Blocking: one message as stored (``raw``) or fully parsed, or None if it is gone.

    The parse happens here too: a large message's MIME tree is built in the
    worker thread, not on the reactor.
    """
    found = find_file(path, message_id)
    if found is None:
        return None
    try:
        data = found.read_bytes()
    except FileNotFoundError:
        return None
    return data if raw else detail(found.name, data)


def remove_message(path: Path, message_id: str) -> bool:
    found = find_file(path, message_id)
    if found is None:
        return False
    found.unlink(missing_ok=True)
    return True


def empty_maildir(path: Path) -> int:
    """Blocking: remove every delivered message (new/ and cur/); tmp/ is left to deliveries
    in progress. No fsync: emptying is for tests, and a crash only brings messages back."""
    removed = 0
    for subdir in ("new", "cur"):
        folder = path / subdir
        try:
            entries = list(os.scandir(folder))
        except FileNotFoundError:
            continue
        for entry in entries:
            if not entry.name.startswith(".") and entry.is_file():
                try:
                    os.unlink(entry.path)
                    removed += 1
                except FileNotFoundError:
                    continue
    return removed


def empty_all(root: Path, outbox: Path) -> int:
    """Blocking: :func:`empty_maildir` over every account's Maildir and the outbox."""
    mail = root / "mail"
    boxes = [p for p in mail.iterdir() if p.is_dir()] if mail.is_dir() else []
    return sum(empty_maildir(p) for p in [*boxes, outbox])


# --- long poll -------------------------------------------------------------------------


class _Wait:
    """One ``?wait=`` request: answered from its box's scans once enough match, or at expiry."""

    def __init__(
        self,
        api: ApiResource,
        request: Request,
        watch: _Watch,
        matching: Filter,
        count: int,
        wait: float,
    ) -> None:
        self.api = api
        self.watch = watch
        self.matching = matching
        self.count = count
        self.result: defer.Deferred[Reply] = defer.Deferred()
        self.expired = False
        api.waiters.add(self)
        watch.waiters.add(self)
        self.timer: IDelayedCall | None = api.provider.clock.reactor_time.callLater(
            wait, self._expire
        )
        request.notifyFinish().addBoth(lambda _: self._forget())

    def _forget(self) -> None:
        self.api.waiters.discard(self)
        self.watch.discard(self)
        if self.timer is not None and self.timer.active():
            self.timer.cancel()
        self.timer = None

    def _expire(self) -> None:
        # Answer from a fresh scan, not the last one: mail may have been removed
        # (POP3, the API) without an event. Scans are coalesced, so this is cheap.
        self.timer = None
        self.expired = True
        self.watch.scan()

    def offer(self, summaries: list[Summary]) -> None:
        """A finished scan of the box: reply if enough match or the time is up."""
        if self.result.called:
            return
        matched = [s for s in summaries if self.matching.matches(s)]
        if self.expired or len(matched) >= self.count:
            self._forget()
            self.result.callback((200, {"messages": [s.to_json() for s in matched]}))

    def fail(self, failure: Failure) -> None:
        self._forget()
        if not self.result.called:
            self.result.errback(failure)


class _Watch:
    """The waiters of one box and its scans: at most one runs, and one more is owed.

    A delivery while a scan runs only marks the box dirty, so a burst of
    deliveries to a box with many waiters costs two scans, not one per
    delivery per waiter.
    """

    def __init__(self, api: ApiResource, box: _Box) -> None:
        self.api = api
        self.box = box
        self.waiters: set[_Wait] = set()
        self.scanning = False
        self.dirty = False

    def concerns(self, event: dict[str, Any]) -> bool:
        if self.box.account is None:
            return bool(event.get("relayed"))
        return self.box.account in (event.get("mailboxes") or ())

    def scan(self) -> None:
        if self.scanning:
            self.dirty = True
            return
        self.scanning = True
        self.dirty = False
        d = self.api.provider.run_blocking(summarise_box, self.box.path)
        d.addCallbacks(self._scanned, self._failed)

    def _scanned(self, summaries: list[Summary]) -> None:
        self.scanning = False
        for waiter in list(self.waiters):
            waiter.offer(summaries)
        self._next()

    def _failed(self, failure: Failure) -> None:
        self.scanning = False
        for waiter in list(self.waiters):
            waiter.fail(failure)
        self._next()

    def _next(self) -> None:
        if self.dirty and self.waiters:
            self.scan()
        elif not self.waiters:
            self.dirty = False
            self.api.watches.pop(self.box, None)

    def discard(self, waiter: _Wait) -> None:
        self.waiters.discard(waiter)
        if not self.waiters and not self.scanning:
            self.api.watches.pop(self.box, None)


@dataclasses.dataclass(frozen=True)
class _Box:
    path: Path
    account: str | None
    """The local account, or None for the outbox."""


# --- the resource ----------------------------------------------------------------------

Handler = Callable[..., "Reply | defer.Deferred[Reply]"]


class ApiResource(Resource):
    """``/api/...`` for one provider. ``token``: the bearer token every request needs."""

    isLeaf = True
    log = Logger()

    def __init__(self, provider: Provider, token: str | None = None) -> None:
        super().__init__()
        self.provider = provider
        self.token = token.strip() if token is not None and token.strip() else None
        self.initial_schemes = provider.schemes
        self.initial_offset = provider.clock.offset
        self.waiters: set[_Wait] = set()
        self.watches: dict[_Box, _Watch] = {}
        provider.events.subscribe(self._on_event)
        P = None  # a path parameter
        self.routes: list[tuple[bytes, tuple[str | None, ...], Handler]] = [
            (b"GET", ("health",), self.health),
            (b"GET", ("accounts",), self.list_accounts),
            (b"POST", ("accounts",), self.add_account),
            (b"DELETE", ("accounts", P), self.remove_account),
            (b"PUT", ("accounts", P, "password"), self.set_password),
            (b"GET", ("mailboxes", P, "messages"), self.list_mailbox),
            (b"DELETE", ("mailboxes", P, "messages"), self.empty_mailbox),
            (b"GET", ("mailboxes", P, "messages", P), self.get_mailbox_message),
            (b"DELETE", ("mailboxes", P, "messages", P), self.remove_mailbox_message),
            (b"GET", ("outbox", "messages"), self.list_outbox),
            (b"DELETE", ("outbox", "messages"), self.empty_outbox),
            (b"GET", ("outbox", "messages", P), self.get_outbox_message),
            (b"DELETE", ("outbox", "messages", P), self.remove_outbox_message),
            (b"GET", ("pop-logins",), self.pop_logins),
            (b"GET", ("schemes",), self.get_schemes),
            (b"PUT", ("schemes",), self.put_schemes),
            (b"GET", ("clock",), self.get_clock),
            (b"PUT", ("clock",), self.put_clock),
            (b"POST", ("clock", "advance"), self.advance_clock),
            (b"GET", ("events",), self.list_events),
            (b"GET", ("faults",), self.list_faults),
            (b"POST", ("faults",), self.add_fault),
            (b"DELETE", ("faults",), self.clear_faults),
            (b"DELETE", ("faults", P), self.remove_fault),
            (b"POST", ("reset",), self.reset),
        ]

    # dispatch

    def render(self, request: Request) -> Any:
        d = defer.maybeDeferred(self._dispatch, request)
        d.addErrback(self._error_reply)
        d.addCallback(lambda reply: self._send(request, *reply))
        d.addErrback(lambda f: self.log.failure("could not send an API reply", f))
        return NOT_DONE_YET

    def authorised(self, request: Request) -> bool:
        if self.token is None:
            return True
        given = request.getHeader(b"authorization") or b""
        scheme, _, credential = given.partition(b" ")
        expected = self.token.encode("utf-8")
        return scheme.lower() == b"bearer" and hmac.compare_digest(credential.strip(), expected)

    def _dispatch(self, request: Request) -> Reply | defer.Deferred[Reply]:
        check_browser_origin(request, self.token is not None)
        if not self.authorised(request):
            request.setHeader(b"www-authenticate", b'Bearer realm="mailhost"')
            raise ApiError(401, "this API needs Authorization: Bearer <token>")
        try:
            segments = [s.decode("utf-8") for s in request.postpath or []]
        except UnicodeDecodeError:
            raise ApiError(404, "no such resource") from None
        if segments and segments[-1] == "":
            segments.pop()
        if not segments or segments[0] != "api":
            raise ApiError(404, "no such resource")
        path = segments[1:]
        allowed = []
        for method, pattern, handler in self.routes:
            params = _match(pattern, path)
            if params is None:
                continue
            if method == request.method:
                return handler(request, *params)
            allowed.append(method)
        if allowed:
            request.setHeader(b"allow", b", ".join(allowed))
            raise ApiError(405, f"method {request.method.decode('ascii', 'replace')} not allowed")
        raise ApiError(404, "no such resource")

    def _error_reply(self, failure: Failure) -> Reply:
        if failure.check(ApiError):
            e = failure.value
            return e.status, {"error": e.message, "field": e.field}
        self.log.failure("API request failed", failure)
        return 500, {"error": "internal error", "field": None}

    def _send(self, request: Request, status: int, payload: Payload) -> None:
        if request.finished or request.channel is None:  # the client went away
            return
        request.setResponseCode(status)
        if payload is None:
            data = b""
        elif isinstance(payload, bytes):
            data = payload
            request.setHeader(b"content-type", b"message/rfc822")
        else:
            data = json.dumps(payload, ensure_ascii=False).encode("utf-8")
            request.setHeader(b"content-type", b"application/json; charset=utf-8")
        if status != 204:
            request.setHeader(b"content-length", str(len(data)).encode("ascii"))
            request.write(data)
        request.finish()

    def _on_event(self, event: dict[str, Any]) -> None:
        if event.get("kind") != events.MESSAGE_STORED:
            return
        for watch in list(self.watches.values()):
            if watch.concerns(event):
                watch.scan()

    # health and accounts

    def health(self, request: Request) -> Reply:
        return 200, {"ok": True}

    def list_accounts(self, request: Request) -> Reply:
        return 200, {"accounts": self.provider.accounts.addresses()}

    def _hashing(self, f: Callable[..., Any], *args: Any) -> defer.Deferred:
        run = self.provider.run_hashing or self.provider.run_blocking
        d = run(f, *args)

        def refused(failure: Failure) -> None:
            failure.trap(AccountError)
            message = str(failure.value)
            if "already exists" in message:
                status = 409
            elif message.startswith("no account"):
                status = 404
            else:  # a refused value (the address, the password): the request is at fault
                status = 400
            raise ApiError(status, message, "address")

        return d.addErrback(refused)

    def _account(self, address: object, field: str = "address") -> str:
        if not isinstance(address, str):
            raise _bad(field, "address is required, as a string")
        try:
            return account_name(address)
        except AddressError as e:
            raise _bad(field, f"{address!r} is not an address: {e}") from None

    def _password(self, body: dict[str, Any]) -> str:
        password = text_field(body, "password")
        try:
            check_password_text(password)
        except AccountError as e:
            raise _bad("password", str(e)) from None
        return password

    def add_account(self, request: Request) -> defer.Deferred[Reply]:
        body = json_body(request)
        name = self._account(body.get("address"))
        password = self._password(body)
        if name in self.provider.accounts:
            raise ApiError(409, f"account {name} already exists", "address")
        cost = self.provider.accounts.usual_cost()
        d = self._hashing(self.provider.accounts.file.add, name, password, cost)
        return d.addCallback(lambda added: (201, {"address": added}))

    def _known_account(self, address: str) -> str:
        try:
            name = account_name(address)
        except AddressError:
            name = None
        if name is None or name not in self.provider.accounts:
            raise ApiError(404, f"no account {address}", "address")
        return name

    def remove_account(self, request: Request, address: str) -> defer.Deferred[Reply]:
        name = self._known_account(address)
        d = self._hashing(self.provider.accounts.file.remove, name)
        return d.addCallback(lambda _: (204, None))

    def set_password(self, request: Request, address: str) -> defer.Deferred[Reply]:
        name = self._known_account(address)
        password = self._password(json_body(request))
        cost = self.provider.accounts.usual_cost()
        d = self._hashing(self.provider.accounts.file.set_password, name, password, cost)
        return d.addCallback(lambda _: (204, None))

    # messages

    def _mailbox(self, address: str) -> _Box:
        """An account's Maildir, or one mail was delivered to (postmaster needs no account)."""
        try:
            name = account_name(address)
        except AddressError:
            name = None
        if name is not None:
            path = self.provider.data.mailbox(name)
            if name in self.provider.accounts or path.is_dir():
                return _Box(path, name)
        raise ApiError(404, f"no mailbox {address}", "address")

    def _outbox(self) -> _Box:
        return _Box(self.provider.data.outbox, None)

    def _list(self, request: Request, box: _Box) -> Reply | defer.Deferred[Reply]:
        wait = query_number(request, "wait", 0.0, 0.0, MAX_WAIT)
        count = query_int(request, "count", 1, 1, 100_000)
        matching = Filter(query(request, "subject"), query(request, "from"), query(request, "to"))
        if wait > 0:
            watch = self.watches.get(box)
            if len(self.waiters) >= MAX_WAITERS or (
                watch is not None and len(watch.waiters) >= MAX_WAITERS_PER_BOX
            ):
                raise ApiError(503, "too many waiting requests")
            if watch is None:
                watch = self.watches[box] = _Watch(self, box)
            waiter = _Wait(self, request, watch, matching, count, wait)
            watch.scan()
            return waiter.result

        def listed(summaries: list[Summary]) -> Reply:
            return 200, {"messages": [s.to_json() for s in summaries if matching.matches(s)]}

        return self.provider.run_blocking(summarise_box, box.path).addCallback(listed)

    def _get(self, request: Request, box: _Box, message_id: str) -> defer.Deferred[Reply]:
        form = query(request, "format")
        if form not in (None, "json", "raw"):
            raise _bad("format", "expected json or raw")

        def found(message: bytes | dict[str, Any] | None) -> Reply:
            if message is None:
                raise ApiError(404, f"no message {message_id}", "id")
            return 200, message

        d = self.provider.run_blocking(read_message, box.path, message_id, form == "raw")
        return d.addCallback(found)

    def _remove(self, box: _Box, message_id: str) -> defer.Deferred[Reply]:
        def removed(done: bool) -> Reply:
            if not done:
                raise ApiError(404, f"no message {message_id}", "id")
            return 204, None

        return self.provider.run_blocking(remove_message, box.path, message_id).addCallback(removed)

    def _empty(self, box: _Box) -> defer.Deferred[Reply]:
        return self.provider.run_blocking(empty_maildir, box.path).addCallback(
            lambda _: (204, None)
        )

    def list_mailbox(self, request: Request, address: str) -> Reply | defer.Deferred[Reply]:
        return self._list(request, self._mailbox(address))

    def empty_mailbox(self, request: Request, address: str) -> defer.Deferred[Reply]:
        return self._empty(self._mailbox(address))

    def get_mailbox_message(
        self, request: Request, address: str, message_id: str
    ) -> defer.Deferred[Reply]:
        return self._get(request, self._mailbox(address), message_id)

    def remove_mailbox_message(
        self, request: Request, address: str, message_id: str
    ) -> defer.Deferred[Reply]:
        return self._remove(self._mailbox(address), message_id)

    def list_outbox(self, request: Request) -> Reply | defer.Deferred[Reply]:
        return self._list(request, self._outbox())

    def empty_outbox(self, request: Request) -> defer.Deferred[Reply]:
        return self._empty(self._outbox())

    def get_outbox_message(self, request: Request, message_id: str) -> defer.Deferred[Reply]:
        return self._get(request, self._outbox(), message_id)

    def remove_outbox_message(self, request: Request, message_id: str) -> defer.Deferred[Reply]:
        return self._remove(self._outbox(), message_id)

    # POP logins, schemes, clock, events, faults

    def pop_logins(self, request: Request) -> Reply:
        now = self.provider.now()
        window = self.provider.schemes.pop_window
        return 200, {
            "pop_logins": [
                {
                    "ip": grant.ip,
                    "account": grant.account,
                    "granted_at": grant.granted_at.isoformat(),
                    "seconds_left": grant.seconds_left(now, window),
                    "live": grant.is_live(now, window),
                }
                for grant in self.provider.logins.entries()
            ]
        }

    def get_schemes(self, request: Request) -> Reply:
        return 200, schemes_json(self.provider.schemes, self.provider)

    def put_schemes(self, request: Request) -> Reply:
        try:
            schemes = changed_schemes(self.provider.schemes, json_body(request))
        except ConfigError as e:
            raise _bad(e.flag, str(e)) from None
        self.provider.schemes = schemes
        return 200, schemes_json(schemes, self.provider)

    def _clock(self) -> dict[str, Any]:
        return {"now": self.provider.now().isoformat(), "offset": self.provider.clock.offset}

    def get_clock(self, request: Request) -> Reply:
        return 200, self._clock()

    def put_clock(self, request: Request) -> Reply:
        text = text_field(json_body(request), "now")
        try:
            instant = parse_instant(text, "now")
        except ConfigError as e:
            raise _bad("now", str(e)) from None
        self.provider.clock.set(instant)
        return 200, self._clock()

    def advance_clock(self, request: Request) -> Reply:
        seconds = json_body(request).get("seconds")
        if not is_number(seconds) or not math.isfinite(seconds) or seconds < 0:
            raise _bad("seconds", "expected a number of seconds, 0 or more")
        self.provider.clock.advance(float(seconds))
        return 200, self._clock()

    def list_events(self, request: Request) -> Reply:
        after = query_int(request, "after", 0, 0, 2**63)
        limit = query_int(request, "limit", DEFAULT_EVENT_LIMIT, 1, MAX_EVENT_LIMIT)
        found = self.provider.events.recent(query(request, "kind"), after)[:limit]
        return 200, {"events": found, "cursor": found[-1]["seq"] if found else after}

    def list_faults(self, request: Request) -> Reply:
        return 200, {"faults": [f.to_json() for f in self.provider.faults.list()]}

    def add_fault(self, request: Request) -> Reply:
        try:
            fault = self.provider.faults.add(json_body(request))
        except FaultError as e:
            raise _bad(e.field, str(e)) from None
        return 201, fault.to_json()

    def clear_faults(self, request: Request) -> Reply:
        self.provider.faults.clear()
        return 204, None

    def remove_fault(self, request: Request, fault_id: str) -> Reply:
        if not self.provider.faults.clear(fault_id):
            raise ApiError(404, f"no fault {fault_id}", "id")
        return 204, None

    # reset

    def reset(self, request: Request) -> defer.Deferred[Reply]:
        """Back to a clean start: in-memory state at once, then, once the deliveries under way
        have finished, messages (and accounts)."""
        accounts = json_body(request).get("accounts", "keep")
        if accounts not in ("keep", "wipe"):
            raise _bad("accounts", "expected keep or wipe")
        provider = self.provider
        provider.logins.clear()
        provider.faults.clear()
        provider.throttle = AuthThrottle(
            provider.throttle.settings, provider.throttle.max_addresses
        )
        provider.events.forget()
        provider.schemes = self.initial_schemes
        provider.clock.offset = self.initial_offset
        data = provider.data

        def empty(_: object) -> defer.Deferred:
            provider.events.forget()  # and the events of the deliveries waited for
            return provider.run_blocking(empty_all, data.root, data.outbox)

        # A delivery still under way would land its message after the reset.
        d = provider.stored_all().addCallback(empty)
        if accounts == "wipe":
            d.addCallback(lambda _: self._hashing(_remove_all_accounts, provider.accounts.file))
        return d.addCallback(lambda _: (204, None))


def _remove_all_accounts(account_file: Any) -> None:
    for name in sorted(account_file.read()):
        account_file.remove(name)


def _match(pattern: tuple[str | None, ...], path: list[str]) -> list[str] | None:
    if len(pattern) != len(path):
        return None
    params = []
    for expected, segment in zip(pattern, path, strict=True):
        if expected is None:
            if not segment:
                return None
            params.append(segment)
        elif expected != segment:
            return None
    return params
