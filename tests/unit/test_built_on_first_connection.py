"""The HTTP listener's factory is made on first use, so start-up does not import twisted.web."""

from __future__ import annotations

import subprocess
import sys

from twisted.internet import defer
from twisted.internet.protocol import Factory, Protocol

from mailhost.service import BuiltOnFirstConnection


class Counting(Factory):
    protocol = Protocol

    def __init__(self) -> None:
        self.starts = self.stops = 0

    def startFactory(self) -> None:
        self.starts += 1

    def stopFactory(self) -> None:
        self.stops += 1


def test_the_factory_is_built_once_on_the_first_connection_and_stopped_with_the_listener():
    made: list[Counting] = []

    def build() -> Counting:
        made.append(Counting())
        return made[-1]

    lazy = BuiltOnFirstConnection(build)
    lazy.doStart()
    assert made == []
    first, second = lazy.buildProtocol(None), lazy.buildProtocol(None)
    assert len(made) == 1 and made[0].starts == 1
    assert first.factory is made[0] and second.factory is made[0]
    lazy.doStop()
    assert made[0].stops == 1


def test_a_listener_never_connected_to_stops_without_building():
    lazy = BuiltOnFirstConnection(lambda: (_ for _ in ()).throw(AssertionError("built")))
    lazy.doStart()
    lazy.doStop()
    assert lazy.built is None


def test_warm_up_loads_the_modules_through_the_given_runner():
    ran: list[str] = []

    def run_blocking(f, *args):
        ran.append(f.__name__)
        return defer.succeed(f(*args))

    BuiltOnFirstConnection(Counting).warm_up(run_blocking)
    assert ran == ["load"]
    assert "twisted.web.server" in sys.modules


def test_importing_the_service_does_not_import_twisted_web():
    code = "import sys, mailhost.service; print('twisted.web.server' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
