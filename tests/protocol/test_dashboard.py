"""The dashboard in memory: its files through the real Site, and the API calls its script makes."""

from __future__ import annotations

import re
from importlib import resources
from typing import Any

import pytest
from twisted.internet.address import IPv4Address
from twisted.internet.testing import StringTransport

from mailhost.testing import make_clock, make_provider
from mailhost.web import ApiSite
from mailhost.web.static import DASHBOARD_FILES

PEER = IPv4Address("TCP", "127.0.0.1", 40000)
ALICE = "alice@example.org"
ASSETS = {
    "/": "text/html",
    "/index.html": "text/html",
    "/dashboard/app.js": "text/javascript",
    "/dashboard/style.css": "text/css",
}
BODIES = {("POST", "clockAdvance"): b'{"seconds": 0}', ("PUT", "schemes"): b"{}"}


def source(name: str) -> str:
    return resources.files("mailhost.web").joinpath("dashboard", name).read_text("utf-8")


def request(site: ApiSite, method: str, path: str, body: bytes = b"", **headers: str):
    """One raw HTTP exchange: (status, lower-cased headers, body)."""
    transport = StringTransport(peerAddress=PEER)
    protocol = site.buildProtocol(PEER)
    protocol.makeConnection(transport)
    head = f"{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:8025\r\nConnection: close\r\n"
    head += f"Content-Length: {len(body)}\r\n"
    if body:
        head += "Content-Type: application/json\r\n"
    head += "".join(f"{name}: {value}\r\n" for name, value in headers.items())
    protocol.dataReceived(head.encode() + b"\r\n" + body)
    raw_head, _, data = transport.value().partition(b"\r\n\r\n")
    lines = raw_head.decode("latin-1").split("\r\n")
    fields = {k.strip().lower(): v.strip() for k, _, v in (x.partition(":") for x in lines[1:])}
    return int(lines[0].split()[1]), fields, data


def script_calls() -> list[tuple[str, str, str]]:
    """(method, endpoint name, path) for every ``api(METHOD, API.name…)`` call in app.js."""
    script = source("app.js")
    table = script[script.index("const API = {") :].split("};", 1)[0]
    endpoints = dict(re.findall(r'(\w+): "(/api/[^"]*)"', table))
    calls = set(re.findall(r'api\("(GET|PUT|POST|DELETE)", API\.(\w+)', script))
    return sorted((method, name, endpoints[name]) for method, name in calls)


@pytest.fixture
def site(tmp_path: Any) -> ApiSite:
    clock = make_clock()
    return ApiSite(make_provider(tmp_path, clock), clock)


@pytest.mark.parametrize(("path", "content_type"), sorted(ASSETS.items()))
def test_page_and_assets_are_served_with_their_content_type(site, path, content_type):
    """/ and /dashboard/<file> answer 200 with the right Content-Type and nosniff."""
    status, headers, body = request(site, "GET", path)
    assert status == 200
    assert headers["content-type"].startswith(content_type)
    assert headers["x-content-type-options"] == "nosniff"
    assert body


def test_page_loads_only_its_own_assets(site):
    """The page refers to its script and style sheet on the same server."""
    _, _, body = request(site, "GET", "/")
    html = body.decode()
    assert 'src="/dashboard/app.js"' in html
    assert 'href="/dashboard/style.css"' in html


def test_content_security_policy_allows_only_the_same_origin(site):
    """The page's CSP loads scripts, styles and data from 'self' only."""
    _, headers, _ = request(site, "GET", "/")
    policy = headers["content-security-policy"]
    assert "default-src 'none'" in policy
    assert "script-src 'self'" in policy
    assert "connect-src 'self'" in policy


@pytest.mark.parametrize("name", sorted(DASHBOARD_FILES))
def test_no_file_refers_to_another_host(name):
    """No http(s):// or protocol-relative URL in the HTML, JS or CSS."""
    text = source(name)
    assert not re.search(r"https?://", text)
    assert not re.search(r"""["'(=]\s*//[a-z0-9]""", text, re.IGNORECASE)
    assert "@import" not in text


def test_unknown_dashboard_path_is_404(site):
    """A path outside /api that names no dashboard file answers 404."""
    assert request(site, "GET", "/dashboard/secret.py")[0] == 404
    assert request(site, "GET", "/nope")[0] == 404


def test_dashboard_files_refuse_other_methods(site):
    """POST to the page answers 405 with Allow: GET, HEAD."""
    status, headers, _ = request(site, "POST", "/")
    assert status == 405
    assert headers["allow"] == "GET, HEAD"


def test_api_stays_under_api(site):
    """The API still answers at /api/... next to the dashboard."""
    status, headers, body = request(site, "GET", "/api/health")
    assert status == 200
    assert headers["content-type"].startswith("application/json")
    assert body == b'{"ok": true}'


def test_page_needs_no_token_but_the_api_does(tmp_path):
    """With a token set, the page is served without one while the API answers 401."""
    clock = make_clock()
    site = ApiSite(make_provider(tmp_path, clock), clock, token="s3cret")
    assert request(site, "GET", "/")[0] == 200
    assert request(site, "GET", "/api/schemes")[0] == 401
    assert request(site, "GET", "/api/schemes", Authorization="Bearer s3cret")[0] == 200


def test_script_uses_every_endpoint_it_declares():
    """Every path in app.js's endpoint table is called somewhere in the script."""
    script = source("app.js")
    table = script[script.index("const API = {") :].split("};", 1)[0]
    declared = set(re.findall(r'(\w+): "/api/', table))
    assert declared == {name for _, name, _ in script_calls()}
    assert {"schemes", "popLogins", "events", "clockAdvance", "outbox", "mailbox"} <= declared


@pytest.mark.parametrize(
    ("method", "name", "path"), script_calls(), ids=[f"{m} {p}" for m, _, p in script_calls()]
)
def test_api_calls_of_the_script_answer(site, method, name, path):
    """Each (method, path) app.js calls answers 2xx with JSON on the server."""
    url = path.replace("{address}", ALICE)
    if name == "events":
        url += "?after=0&limit=1000"
    status, headers, body = request(site, method, url, BODIES.get((method, name), b""))
    assert 200 <= status < 300, body
    assert headers["content-type"].startswith("application/json")
