"""The dashboard: one page and its two assets, served next to the API on the same listener.

``/`` is the page and ``/dashboard/<file>`` its script and style sheet; the site
(:class:`mailhost.web.ApiSite`) hands every ``/api/...`` request to the API
unchanged and everything else to :class:`DashboardResource`. The files ship inside the
package and are read once, when the listener is built, so serving them never
touches the disk on the reactor. They hold no secrets and need no token; the
API behind them keeps its own Bearer rule.
"""

from __future__ import annotations

from importlib import resources
from typing import Any

from twisted.web.resource import Resource
from twisted.web.server import Request

DASHBOARD_FILES = {
    "index.html": "text/html; charset=utf-8",
    "app.js": "text/javascript; charset=utf-8",
    "style.css": "text/css; charset=utf-8",
}
"""The dashboard's files and their content types."""

SECURITY_HEADERS = {
    b"content-security-policy": (
        b"default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        b"connect-src 'self'; form-action 'none'; base-uri 'none'; frame-ancestors 'none'"
    ),
    b"x-content-type-options": b"nosniff",
    b"referrer-policy": b"no-referrer",
    b"cache-control": b"no-cache",
}


def dashboard_files() -> dict[str, bytes]:
    """Blocking: the dashboard's files from the installed package, by name."""
    folder = resources.files("mailhost.web").joinpath("dashboard")
    return {name: folder.joinpath(name).read_bytes() for name in DASHBOARD_FILES}


class DashboardResource(Resource):
    """``/`` and ``/dashboard/<file>``: the dashboard's files; anything else is a 404."""

    isLeaf = True

    def __init__(self, files: dict[str, bytes] | None = None) -> None:
        super().__init__()
        self.files = dashboard_files() if files is None else files

    def render(self, request: Request) -> Any:
        segments = request.postpath or []
        name = self._file_name(segments)
        if name is None or name not in self.files:
            return self._plain(request, 404, b"not found\n")
        if request.method not in (b"GET", b"HEAD"):
            request.setHeader(b"allow", b"GET, HEAD")
            return self._plain(request, 405, b"method not allowed\n")
        for header, value in SECURITY_HEADERS.items():
            request.setHeader(header, value)
        request.setHeader(b"content-type", DASHBOARD_FILES[name].encode("ascii"))
        return self.files[name]

    @staticmethod
    def _file_name(segments: list[bytes]) -> str | None:
        if segments in ([], [b""], [b"index.html"]):
            return "index.html"
        if len(segments) == 2 and segments[0] == b"dashboard":
            return segments[1].decode("ascii", "replace")
        return None

    @staticmethod
    def _plain(request: Request, status: int, text: bytes) -> bytes:
        request.setResponseCode(status)
        request.setHeader(b"content-type", b"text/plain; charset=utf-8")
        request.setHeader(b"x-content-type-options", b"nosniff")
        return text
