"""Assembling the provider: listeners, shared state, the pruning timer, the blocking hop."""

from __future__ import annotations

import threading
from datetime import timedelta

from twisted.internet.testing import MemoryReactorClock
from twisted.python.threadpool import ThreadPool

from mailhost.blocking import thread_pool_runner
from mailhost.config import Listeners, ServeConfig
from mailhost.pop3 import POP3Factory
from mailhost.service import PRUNE_INTERVAL, MailhostService, endpoint_description
from mailhost.smtp import SMTPFactory
from mailhost.testing import DEFAULT_START


def start(tmp_path, reactor):
    config = ServeConfig(
        data_dir=tmp_path, listeners=Listeners(2525, 2587, 2110), now=DEFAULT_START
    )
    service = MailhostService(config, reactor)
    service.startService()
    return service


def test_listeners_bind_the_configured_host_and_ports(tmp_path):
    """SMTP, submission and POP3 listen on 127.0.0.1 at their ports; ready reports them."""
    reactor = MemoryReactorClock()
    service = start(tmp_path, reactor)
    ports: list[dict[str, int]] = []
    service.ready.addCallback(ports.append)
    bound = {(port, interface): type(factory) for port, factory, _, interface in reactor.tcpServers}
    assert bound == {
        (2525, "127.0.0.1"): SMTPFactory,
        (2587, "127.0.0.1"): SMTPFactory,
        (2110, "127.0.0.1"): POP3Factory,
    }
    assert ports == [{"smtp": 2525, "submission": 2587, "pop3": 2110}]
    service.stopService()


def test_both_smtp_listeners_and_pop3_share_one_provider(tmp_path):
    """Every listener's factory holds the same provider, so a POP login is seen by SMTP."""
    reactor = MemoryReactorClock()
    service = start(tmp_path, reactor)
    providers = {id(factory.provider) for _, factory, _, _ in reactor.tcpServers}
    assert providers == {id(service.provider)}
    service.stopService()


def test_now_starts_the_server_clock_there(tmp_path):
    """--now sets the server clock; it then ticks with the reactor."""
    reactor = MemoryReactorClock()
    service = start(tmp_path, reactor)
    assert service.provider.now() == DEFAULT_START
    reactor.advance(30)
    assert service.provider.now() == DEFAULT_START + timedelta(seconds=30)
    service.stopService()


def test_pruning_timer_frees_expired_logins_only(tmp_path):
    """The timer drops logins past the window and keeps live ones; lookups never need it."""
    reactor = MemoryReactorClock()
    service = start(tmp_path, reactor)
    logins = service.provider.logins
    logins.record("127.0.0.2", "alice@example.org", service.provider.now())
    reactor.advance(PRUNE_INTERVAL)
    assert len(logins) == 1
    logins.record("127.0.0.3", "bob@example.org", service.provider.now())
    reactor.advance(600 - PRUNE_INTERVAL)
    assert [g.ip for g in logins.entries()] == ["127.0.0.3"]
    service.stopService()


def test_thread_pool_runner_runs_work_off_the_calling_thread():
    """Blocking work runs on a pool thread and its result comes back via callFromThread."""

    class RecordingReactor:
        def __init__(self) -> None:
            self.calls: list = []

        def callFromThread(self, f, *args, **kwargs):
            self.calls.append((f, args, kwargs))

    reactor = RecordingReactor()
    pool = ThreadPool(minthreads=1, maxthreads=1)
    pool.start()
    try:
        results: list[str] = []
        d = thread_pool_runner(reactor, pool)(lambda: threading.current_thread().name)
        d.addCallback(results.append)
    finally:
        pool.stop()
    for f, args, kwargs in reactor.calls:
        f(*args, **kwargs)
    assert results and results[0] != threading.current_thread().name


def test_endpoint_description_escapes_ipv6_hosts():
    """An IPv6 listen address has its colons escaped for serverFromString."""
    assert endpoint_description("::1", 25) == r"tcp:port=25:interface=\:\:1"
    assert endpoint_description("127.0.0.1", 0) == "tcp:port=0:interface=127.0.0.1"
