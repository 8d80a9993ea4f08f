"""The HTTP edge of mailhost: the JSON API and the live dashboard on twisted.web."""

from __future__ import annotations

import io
import json
from typing import Any

from twisted.web.resource import IResource, getChildForRequest
from twisted.web.server import Request, Site

from mailhost.provider import Provider
from mailhost.web.api import MAX_BODY, ApiResource
from mailhost.web.static import DashboardResource


class BoundedRequest(Request):
    """A request whose body is refused before it is read when too large or unauthorised.

    twisted.web stores a whole body (large ones in a temporary file, written
    on the reactor thread) before any resource sees the request; a client
    could fill the disk without a token. Here the declared length and the
    token are checked when the headers are complete, bodies stay in memory
    (at most ``MAX_BODY``), and a refusal closes the connection at once.
    """

    refused = False

    def gotLength(self, length: int | None) -> None:
        self.content = io.BytesIO()
        self.received = 0
        if length is not None and length > MAX_BODY:
            self.refuse_early(413, f"the request body is larger than {MAX_BODY} bytes")
        elif length and not self.channel.site.resource.authorised(self):
            self.refuse_early(401, "this API needs Authorization: Bearer <token>")

    def handleContentChunk(self, data: bytes) -> None:
        if self.refused:
            return
        self.received += len(data)
        if self.received > MAX_BODY:
            self.refuse_early(413, f"the request body is larger than {MAX_BODY} bytes")
            return
        self.content.write(data)

    def refuse_early(self, status: int, message: str) -> None:
        self.refused = True
        self.content = io.BytesIO()
        reason = {401: b"Unauthorized", 413: b"Content Too Large"}[status]
        body = json.dumps({"error": message, "field": None}).encode()
        head = [
            b"HTTP/1.1 %d %s" % (status, reason),
            b"Content-Type: application/json; charset=utf-8",
            b"Content-Length: %d" % len(body),
            b"Connection: close",
        ]
        if status == 401:
            head.append(b'WWW-Authenticate: Bearer realm="mailhost"')
        self.channel.transport.write(b"\r\n".join(head) + b"\r\n\r\n" + body)
        self.channel.transport.loseConnection()

    def process(self) -> None:
        if not self.refused:
            super().process()


class ApiSite(Site):
    """The HTTP listener's factory: the API (``resource``) under ``/api/``, the dashboard
    everywhere else. It keeps ``provider`` like the SMTP and POP3 factories, and writes no
    access log: the event log already records what matters."""

    noisy = False
    requestFactory = BoundedRequest

    def __init__(self, provider: Provider, reactor: Any, token: str | None = None) -> None:
        super().__init__(ApiResource(provider, token), reactor=reactor)
        self.provider = provider
        self.dashboard = DashboardResource()

    def getResourceFor(self, request: Request) -> IResource:
        if (request.postpath or [])[:1] == [b"api"]:
            return super().getResourceFor(request)
        request.site = self
        request.sitepath = request.prepath[:]
        return getChildForRequest(self.dashboard, request)

    def log(self, request: Request) -> None:
        pass


def api_site(provider: Provider, reactor: Any, token: str | None = None) -> ApiSite:
    return ApiSite(provider, reactor, token)
