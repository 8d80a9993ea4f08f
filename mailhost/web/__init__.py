"""The HTTP edge of mailhost: the JSON API and the live dashboard on twisted.web."""

from __future__ import annotations

from typing import Any

from twisted.web.resource import IResource, getChildForRequest
from twisted.web.server import Request, Site

from mailhost.provider import Provider
from mailhost.web.api import ApiResource
from mailhost.web.static import DashboardResource


class ApiSite(Site):
    """The HTTP listener's factory: the API (``resource``) under ``/api/``, the dashboard
    everywhere else. It keeps ``provider`` like the SMTP and POP3 factories, and writes no
    access log: the event log already records what matters."""

    noisy = False

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
