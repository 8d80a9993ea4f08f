"""Assembling the provider: listeners, shared state, the pruning timer, the blocking hop."""

from __future__ import annotations

import os
import sys
import threading
from datetime import timedelta

import pytest
from twisted.internet import defer
from twisted.internet.error import CannotListenError
from twisted.internet.testing import MemoryReactorClock
from twisted.protocols.tls import TLSMemoryBIOFactory
from twisted.python.threadpool import ThreadPool

from mailhost import service as service_module
from mailhost.blocking import run_inline, thread_pool_runner
from mailhost.config import DataDir, Listeners, ServeConfig
from mailhost.events import MAILDIR_TMP_SWEPT
from mailhost.policy import Role, Schemes
from mailhost.pop3 import POP3Factory
from mailhost.schedule import Schedule
from mailhost.service import (
    PRUNE_INTERVAL,
    BuiltOnFirstConnection,
    ListenError,
    MailhostService,
    endpoint_description,
)
from mailhost.smtp import SMTPFactory
from mailhost.testing import DEFAULT_START, QueuedRunBlocking
from mailhost.throttle import ThrottleSettings
from mailhost.tls import fingerprint_sha256
from mailhost.web import ApiSite

LISTENERS = Listeners(smtp=2525, submission=2587, pop3=2110, smtps=2465, pop3s=2995)


@pytest.fixture(autouse=True)
def inline_blocking(monkeypatch):
    """A memory reactor has no callFromThread, so blocking work (the start-up sweep) runs inline."""
    monkeypatch.setattr(
        service_module, "thread_pool_runner", lambda reactor, pool, **options: run_inline
    )


def start(tmp_path, reactor, **overrides):
    config = ServeConfig(data_dir=tmp_path, listeners=LISTENERS, now=DEFAULT_START, **overrides)
    service = MailhostService(config, reactor)
    service.startService()
    return service


def unwrapped(factory):
    if isinstance(factory, BuiltOnFirstConnection):
        factory.buildProtocol(None)
        return factory.built
    return factory.wrappedFactory if isinstance(factory, TLSMemoryBIOFactory) else factory


def test_listeners_bind_the_configured_host_and_ports(tmp_path):
    """All five listeners bind 127.0.0.1 at their ports; ready reports them by name."""
    reactor = MemoryReactorClock()
    service = start(tmp_path, reactor)
    ports: list[dict[str, int]] = []
    service.ready.addCallback(ports.append)
    bound = {
        (port, interface): type(unwrapped(factory))
        for port, factory, _, interface in reactor.tcpServers
    }
    assert bound == {
        (2525, "127.0.0.1"): SMTPFactory,
        (2587, "127.0.0.1"): SMTPFactory,
        (2110, "127.0.0.1"): POP3Factory,
        (2465, "127.0.0.1"): SMTPFactory,
        (2995, "127.0.0.1"): POP3Factory,
        (8025, "127.0.0.1"): ApiSite,
    }
    assert ports == [
        {"smtp": 2525, "submission": 2587, "pop3": 2110, "smtps": 2465, "pop3s": 2995, "http": 8025}
    ]
    service.stopService()


def test_implicit_tls_listeners_wrap_their_factories_in_tls(tmp_path):
    """smtps and pop3s are TLS from the first byte (RFC 8314); the plain three are not."""
    reactor = MemoryReactorClock()
    service = start(tmp_path, reactor)
    by_port = {port: factory for port, factory, _, _ in reactor.tcpServers}
    wrapped = {port for port, f in by_port.items() if isinstance(f, TLSMemoryBIOFactory)}
    assert wrapped == {2465, 2995}
    assert by_port[2465].wrappedFactory.role is Role.SUBMISSION
    assert isinstance(by_port[2995].wrappedFactory, POP3Factory)
    service.stopService()


def test_every_listener_shares_one_provider(tmp_path):
    """Every listener's factory (inside TLS or not) holds the same provider."""
    reactor = MemoryReactorClock()
    service = start(tmp_path, reactor)
    providers = {id(unwrapped(factory).provider) for _, factory, _, _ in reactor.tcpServers}
    assert providers == {id(service.provider)}
    service.stopService()


def test_provider_gets_tls_plaintext_rule_and_throttle_from_config(tmp_path):
    """STARTTLS/STLS use the same certificate; the plaintext rule and throttle follow config."""
    reactor = MemoryReactorClock()
    settings = ThrottleSettings(limit=3, window=timedelta(minutes=2))
    service = start(tmp_path, reactor, allow_plaintext_auth=True, throttle=settings)
    provider = service.provider
    assert provider.tls_options is not None
    assert provider.allow_plaintext_auth is True
    assert provider.throttle.settings == settings
    service.stopService()


def test_enforce_sender_reaches_the_provider_schemes(tmp_path):
    """Schemes.enforce_sender set in config is the one the provider decides with."""
    reactor = MemoryReactorClock()
    schemes = Schemes(Schedule.on(), Schedule.on(), timedelta(minutes=10), enforce_sender=True)
    service = start(tmp_path, reactor, schemes=schemes)
    assert service.provider.schemes.enforce_sender is True
    service.stopService()


def test_ready_report_names_the_certificate_and_its_fingerprint(tmp_path):
    """The ready line says where the certificate and its CA are, and the leaf's fingerprint."""
    reactor = MemoryReactorClock()
    service = start(tmp_path, reactor)
    report = service.ready_report({"smtp": 2525})
    assert report["tls"] == {
        "cert": str((tmp_path / "tls" / "cert.pem").absolute()),
        "ca": str((tmp_path / "tls" / "ca.pem").absolute()),
        "fingerprint_sha256": fingerprint_sha256(service.tls.certificate),
    }
    service.stopService()


class BusyPortReactor(MemoryReactorClock):
    """A memory reactor on which one port is already taken."""

    def __init__(self, busy: int) -> None:
        super().__init__()
        self.busy = busy

    def listenTCP(self, port, factory, backlog=50, interface=""):
        if port == self.busy:
            raise CannotListenError(interface, port, OSError(98, "Address already in use"))
        return super().listenTCP(port, factory, backlog, interface)


def test_busy_tls_port_is_named_by_its_flag(tmp_path):
    """A pop3s port in use fails ready with a ListenError naming --pop3s-port."""
    reactor = BusyPortReactor(2995)
    service = start(tmp_path, reactor)
    failures: list = []
    service.ready.addErrback(failures.append)
    [failure] = failures
    assert failure.check(ListenError)
    assert "port 2995 (--pop3s-port)" in str(failure.value)
    assert "Address already in use" in str(failure.value)
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


class RecordingReactor:
    """Keeps what pool threads hand back with callFromThread, for the test to deliver."""

    def __init__(self) -> None:
        self.calls: list = []

    def callFromThread(self, f, *args, **kwargs):
        self.calls.append((f, args, kwargs))

    def deliver(self) -> None:
        for f, args, kwargs in self.calls:
            f(*args, **kwargs)


def test_thread_pool_runner_runs_work_off_the_calling_thread():
    """Blocking work runs on a pool thread and its result comes back via callFromThread."""

    reactor = RecordingReactor()
    pool = ThreadPool(minthreads=1, maxthreads=1)
    pool.start()
    try:
        results: list[str] = []
        d = thread_pool_runner(reactor, pool)(lambda: threading.current_thread().name)
        d.addCallback(results.append)
    finally:
        pool.stop()
    reactor.deliver()
    assert results and results[0] != threading.current_thread().name


@pytest.mark.skipif(sys.platform != "linux", reason="per-thread nice values are Linux's")
def test_a_niced_runner_lowers_its_workers_priority_and_not_the_callers():
    """bcrypt's pool threads run at nice 10; the reactor thread keeps its own priority."""

    def own_nice() -> int:
        return os.getpriority(os.PRIO_PROCESS, threading.get_native_id())

    before = own_nice()
    reactor = RecordingReactor()
    pool = ThreadPool(minthreads=1, maxthreads=1)
    pool.start()
    try:
        results: list[int] = []
        thread_pool_runner(reactor, pool, nice=10)(own_nice).addCallback(results.append)
    finally:
        pool.stop()
    reactor.deliver()
    assert results == [max(before, 10)]
    assert own_nice() == before


def test_queued_jobs_are_dropped_once_a_dropping_pool_stops():
    """Password checks still queued at shutdown fail at once instead of holding it up."""

    reactor = RecordingReactor()
    pool = ThreadPool(minthreads=1, maxthreads=1)
    pool.start()
    started, release = threading.Event(), threading.Event()
    ran: list[int] = []
    run = thread_pool_runner(reactor, pool, drop_when_stopping=True)
    outcomes: list[object] = []

    def hold() -> bool:
        started.set()
        return release.wait(10)

    run(hold).addBoth(outcomes.append)
    assert started.wait(10)
    for n in range(5):
        run(ran.append, n).addBoth(outcomes.append)
    stopper = threading.Thread(target=pool.stop)
    stopper.start()
    for _ in range(10_000):
        if pool.joined:
            break
        threading.Event().wait(0.001)
    release.set()
    stopper.join(10)
    reactor.deliver()
    assert ran == []
    assert outcomes[0] is True
    assert [o.check(defer.CancelledError) for o in outcomes[1:]] == [defer.CancelledError] * 5


def test_endpoint_description_escapes_ipv6_hosts():
    """An IPv6 listen address has its colons escaped for serverFromString."""
    assert endpoint_description("::1", 25) == r"tcp:port=25:interface=\:\:1"
    assert endpoint_description("127.0.0.1", 0) == "tcp:port=0:interface=127.0.0.1"


def _leftovers(root):
    """Two stale tmp/ files (an account's, the outbox's), one fresh, one delivered; and a now."""
    from mailhost.maildir import ensure_maildir

    paths = {}
    for key, box, sub in [
        ("stale", root / "mail" / "alice@example.org", "tmp"),
        ("outbox", root / "outbox", "tmp"),
        ("fresh", root / "mail" / "bob@example.org", "tmp"),
        ("delivered", root / "mail" / "alice@example.org", "new"),
    ]:
        paths[key] = ensure_maildir(box) / sub / f"1.{key}"
        paths[key].write_bytes(b"Subject: x\n\n")
    now = max(os.stat(p).st_ctime for p in paths.values()) + 40 * 3600
    for key in ("stale", "outbox", "delivered"):
        os.utime(paths[key], (now - 37 * 3600, now - 37 * 3600))
    os.utime(paths["fresh"], (now - 3600, now - 3600))
    return paths, now


def test_start_up_sweeps_stale_tmp_files_and_reports_them(tmp_path):
    """Start-up removes tmp/ leftovers older than 36 h by wall-clock time, not the --now clock."""
    paths, now = _leftovers(tmp_path)
    reactor = MemoryReactorClock()
    reactor.advance(now)
    service = start(tmp_path, reactor)
    assert {key: path.exists() for key, path in paths.items()} == {
        "stale": False,
        "outbox": False,
        "fresh": True,
        "delivered": True,
    }
    [event] = service.provider.events.recent(MAILDIR_TMP_SWEPT)
    assert event["removed"] == 2
    assert event["maildirs"] == {
        str(tmp_path / "mail" / "alice@example.org"): 1,
        str(tmp_path / "outbox"): 1,
    }
    service.stopService()


def test_start_up_sweep_is_silent_when_nothing_is_stale(tmp_path):
    """No leftovers, no event: the log only records sweeps that removed something."""
    reactor = MemoryReactorClock()
    service = start(tmp_path, reactor)
    assert service.provider.events.recent(MAILDIR_TMP_SWEPT) == []
    service.stopService()


def test_start_up_sweep_runs_off_the_reactor_and_does_not_delay_ready(tmp_path, monkeypatch):
    """The sweep waits in the blocking pool while the listeners are already ready."""
    paths, now = _leftovers(tmp_path)
    queued = QueuedRunBlocking()
    monkeypatch.setattr(
        service_module, "thread_pool_runner", lambda reactor, pool, **options: queued
    )
    reactor = MemoryReactorClock()
    reactor.advance(now)
    service = start(tmp_path, reactor)
    ports: list = []
    service.ready.addCallback(ports.append)
    assert ports and paths["stale"].exists()
    jobs = [f.__name__ for _, f, _ in queued.queue]
    assert jobs == ["sweep_stale_deliveries", "load"], "the HTTP API's imports wait there too"
    queued.run_all()
    assert not paths["stale"].exists()
    assert service.provider.events.recent(MAILDIR_TMP_SWEPT)[0]["removed"] == 2
    service.stopService()


def test_sweep_carries_on_past_a_maildir_it_cannot_read(tmp_path, monkeypatch):
    """One unreadable tmp/ is reported as failed; the other Maildirs are still swept."""
    paths, now = _leftovers(tmp_path)
    real_sweep = service_module.sweep_tmp

    def sweep(path, now, max_age):
        if path.name == "outbox":
            raise PermissionError(13, "Permission denied")
        return real_sweep(path, now, max_age)

    monkeypatch.setattr(service_module, "sweep_tmp", sweep)
    result = service_module.sweep_stale_deliveries(DataDir(tmp_path), now)
    assert result.removed == {str(tmp_path / "mail" / "alice@example.org"): 1}
    assert result.failed == {str(tmp_path / "outbox"): "Permission denied"}
    assert paths["outbox"].exists() and not paths["stale"].exists()


def test_bcrypt_storage_and_reading_run_on_separate_pools(tmp_path, monkeypatch):
    """Password checks get their own pool, so a login storm cannot queue fsyncs behind bcrypt;
    POP3 message reads get one thread of their own."""
    runners = {}
    settings = {}

    def runner_for(reactor, pool, nice=0, drop_when_stopping=False):
        runners[pool.name] = lambda f, *args: run_inline(f, *args)
        settings[pool.name] = (pool.max, nice, drop_when_stopping)
        return runners[pool.name]

    monkeypatch.setattr(service_module, "thread_pool_runner", runner_for)
    service = start(tmp_path, MemoryReactorClock())
    assert service.provider.run_blocking is runners["mailhost-storage"]
    assert service.provider.checker().run_blocking is runners["mailhost-bcrypt"]
    assert service.provider.run_reading is runners["mailhost-reading"]
    assert settings == {
        "mailhost-storage": (service_module.STORAGE_THREADS, 0, False),
        "mailhost-reading": (1, 0, False),
        "mailhost-bcrypt": (service_module.HASHING_THREADS, service_module.HASHING_NICE, True),
    }
    service.stopService()
