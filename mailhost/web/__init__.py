"""The HTTP edge of mailhost: the JSON API (and, later, the dashboard) on twisted.web."""

from __future__ import annotations

from typing import Any

from twisted.web.server import Request, Site

from mailhost.provider import Provider
from mailhost.web.api import ApiResource


class ApiSite(Site):
    """The HTTP listener's factory. It keeps ``provider`` like the SMTP and POP3 factories,
    and writes no access log: the event log already records what matters."""

    noisy = False

    def __init__(self, provider: Provider, reactor: Any, token: str | None = None) -> None:
        super().__init__(ApiResource(provider, token), reactor=reactor)
        self.provider = provider

    def log(self, request: Request) -> None:
        pass


def api_site(provider: Provider, reactor: Any, token: str | None = None) -> ApiSite:
    return ApiSite(provider, reactor, token)
