"""Assemble a running provider from a ServeConfig.

One :class:`Provider` (realm, login table, clock, event log) is shared by
every listener. Listeners are endpoint strings parsed by ``serverFromString``
in :func:`endpoint_description` and nowhere else; ``ready`` fires once all of
them listen, with the ports the kernel bound (port 0 picks a free one). The
implicit-TLS listeners (RFC 8314) are the same factories wrapped in TLS; the
same certificate serves STARTTLS/STLS on the plain ones.
The reactor is a parameter throughout; only the CLI and tests choose one.
"""

from __future__ import annotations

import importlib
import os
from dataclasses import dataclass
from datetime import datetime, timedelta
from functools import partial
from pathlib import Path
from typing import Any

from twisted.application.service import MultiService, Service
from twisted.internet import defer, endpoints
from twisted.internet.error import CannotListenError
from twisted.internet.interfaces import IListeningPort
from twisted.internet.protocol import Factory
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.protocols.tls import TLSMemoryBIOFactory
from twisted.python.threadpool import ThreadPool

from mailhost.accounts import AccountFile, Accounts
from mailhost.blocking import RunBlocking, thread_pool_runner
from mailhost.clock import ServerClock, utc_from_seconds
from mailhost.config import DataDir, ServeConfig
from mailhost.eager_write import send_eagerly
from mailhost.events import MAILDIR_TMP_SWEPT, EventLog
from mailhost.maildir import STALE_TMP_AGE, sweep_tmp
from mailhost.policy import Role
from mailhost.pop3 import POP3Factory
from mailhost.pop_logins import PopLoginTable
from mailhost.provider import Provider
from mailhost.smtp import SMTPFactory
from mailhost.throttle import AuthThrottle
from mailhost.tls import TLSIdentity, server_identity

PRUNE_INTERVAL = 60.0
STORAGE_THREADS = 8
"""fsync-bound Maildir work waits on the disk, not the CPU, so it can overlap widely."""
READING_THREADS = 1
"""POP3 message reads are served from the page cache in microseconds; one thread
keeps them from contending with each other and the reactor thread for the GIL."""
HASHING_THREADS = max(2, os.cpu_count() or 2)
"""bcrypt is CPU-bound: one thread per core; its own pool, so a login storm never
queues a delivery's fsync (or a POP3 QUIT) behind password checks."""
HASHING_NICE = 10
"""bcrypt threads run niced so the reactor thread wins the CPU whenever it has work."""
LISTENER_FLAGS = {
    "smtp": "--smtp-port",
    "submission": "--submission-port",
    "pop3": "--pop3-port",
    "smtps": "--smtps-port",
    "pop3s": "--pop3s-port",
    "http": "--http-port",
}


class ListenError(Exception):
    """A listener could not bind; names the listener, host and port."""

    def __init__(self, name: str, host: str, port: int, reason: str) -> None:
        self.name = name
        self.host = host
        self.port = port
        flag = LISTENER_FLAGS.get(name, name)
        super().__init__(f"cannot listen on {host} port {port} ({flag}): {reason}")


def endpoint_description(host: str, port: int) -> str:
    return f"tcp:port={port}:interface={host.replace(':', chr(92) + ':')}"


def build_tls_identity(config: ServeConfig, reactor: Any) -> TLSIdentity:
    """The configured certificate, or mailhost's own; validity is judged by wall-clock time."""
    return server_identity(
        config.tls.cert,
        config.tls.key,
        DataDir(config.data_dir).tls,
        config.hostname,
        utc_from_seconds(reactor.seconds()),
    )


def build_provider(
    config: ServeConfig,
    clock: ServerClock,
    run_blocking: RunBlocking,
    tls_options: Any = None,
    run_hashing: RunBlocking | None = None,
    run_reading: RunBlocking | None = None,
) -> Provider:
    data = DataDir(config.data_dir)
    data.root.mkdir(parents=True, exist_ok=True)
    return Provider(
        data=data,
        clock=clock,
        accounts=Accounts(AccountFile(data.users)),
        logins=PopLoginTable(),
        events=EventLog(data.events, schedule_writes=_writes_on(clock.reactor_time, run_blocking)),
        schemes=config.schemes,
        run_blocking=run_blocking,
        run_hashing=run_hashing,
        run_reading=run_reading,
        limits=config.limits,
        hostname=config.hostname,
        configured_domains=config.domains,
        tls_options=tls_options,
        allow_plaintext_auth=config.allow_plaintext_auth,
        throttle=AuthThrottle(config.throttle),
    )


_events_log = Logger()


EVENT_WRITE_DELAY = 0.05
"""Seconds the event log gathers events before one job writes them: a batch per
message would cost a hand-over to the pool per message."""


def _writes_on(reactor: Any, run_blocking: RunBlocking) -> Any:
    """Run the event log's writes on the storage pool, logging a failure instead of losing it."""

    def write(job: Any) -> None:
        run_blocking(job).addErrback(lambda f: _events_log.failure("writing events failed", f))

    def schedule(job: Any) -> None:
        reactor.callLater(EVENT_WRITE_DELAY, write, job)

    return schedule


def _api_site(provider: Provider, reactor: Any, config: ServeConfig) -> Factory:
    from mailhost.web import api_site

    return api_site(provider, reactor, config.api_token)


class BuiltOnFirstConnection(Factory):
    """A listener's factory made when the first client connects, not at start-up.

    twisted.web is a tenth of the server's start-up imports and the HTTP API is
    often never used; :meth:`warm_up` loads them off the reactor thread once
    the server is ready, so the first request rarely waits for them either.
    """

    noisy = False
    WARM_UP_MODULES = ("twisted.web.server", "mailhost.web")

    def __init__(self, build: Any) -> None:
        self._build = build
        self.built: Factory | None = None

    def buildProtocol(self, addr: Any) -> Any:
        if self.built is None:
            self.built = self._build()
            self.built.doStart()
        return self.built.buildProtocol(addr)

    def stopFactory(self) -> None:
        if self.built is not None:
            self.built.doStop()

    def warm_up(self, run_blocking: RunBlocking) -> defer.Deferred:
        def load() -> None:
            for name in self.WARM_UP_MODULES:
                importlib.import_module(name)

        return run_blocking(load)


@dataclass
class _Listener:
    name: str
    factory: Factory
    port: int
    host: str | None = None
    """Where it listens, when not the service's ``--host`` (the API's ``--http-host``)."""


class _ListenersService(Service):
    """Binds every listener at start; ``ready`` fires with the bound ports."""

    def __init__(self, reactor: Any, host: str, listeners: list[_Listener]) -> None:
        self.reactor = reactor
        self.host = host
        self.listeners = listeners
        self.ports: dict[str, IListeningPort] = {}
        self.ready: defer.Deferred[dict[str, int]] = defer.Deferred()

    def startService(self) -> None:
        super().startService()
        self._listen_all().chainDeferred(self.ready)

    @defer.inlineCallbacks
    def _listen_all(self) -> Any:
        for listener in self.listeners:
            host = listener.host or self.host
            endpoint = endpoints.serverFromString(
                self.reactor, endpoint_description(host, listener.port)
            )
            try:
                port = yield endpoint.listen(listener.factory)
                send_eagerly(port)
                self.ports[listener.name] = port
            except CannotListenError as e:
                yield self._stop_ports()
                reason = getattr(e.socketError, "strerror", None) or str(e.socketError)
                raise ListenError(listener.name, host, listener.port, reason) from None
        return {name: port.getHost().port for name, port in self.ports.items()}

    def _stop_ports(self) -> defer.Deferred:
        ports, self.ports = self.ports, {}
        return defer.gatherResults([defer.maybeDeferred(p.stopListening) for p in ports.values()])

    def stopService(self) -> defer.Deferred:
        super().stopService()
        return self._stop_ports()


class _ThreadPoolService(Service):
    def __init__(self, pool: ThreadPool) -> None:
        self.pool = pool

    def startService(self) -> None:
        super().startService()
        self.pool.start()

    def stopService(self) -> None:
        super().stopService()
        self.pool.stop()


class _PruneService(Service):
    """Frees memory held by expired logins; lookups never depend on it."""

    def __init__(self, reactor: Any, provider: Provider) -> None:
        self.provider = provider
        self.loop = LoopingCall(self.prune)
        self.loop.clock = reactor

    def prune(self) -> None:
        self.provider.logins.prune(self.provider.now(), self.provider.schemes.pop_window)

    def startService(self) -> None:
        super().startService()
        self.loop.start(PRUNE_INTERVAL, now=False)

    def stopService(self) -> None:
        super().stopService()
        if self.loop.running:
            self.loop.stop()


def maildirs_of(data: DataDir) -> list[Path]:
    """Every Maildir under the data directory: one per account, and the outbox. Blocks."""
    mail = data.root / "mail"
    found = sorted(p for p in mail.iterdir() if p.is_dir()) if mail.is_dir() else []
    return [*found, data.outbox] if data.outbox.is_dir() else found


@dataclass(frozen=True)
class SweepResult:
    removed: dict[str, int]
    """Maildir → how many stale tmp/ files were removed from it."""
    failed: dict[str, str]
    """Maildir → why its tmp/ could not be swept."""


def sweep_stale_deliveries(
    data: DataDir, now: float, max_age: float = STALE_TMP_AGE
) -> SweepResult:
    """Blocking: :func:`sweep_tmp` over every Maildir; one that fails does not stop the rest."""
    removed: dict[str, int] = {}
    failed: dict[str, str] = {}
    for path in maildirs_of(data):
        try:
            names = sweep_tmp(path, now, max_age)
        except OSError as e:
            failed[str(path)] = e.strerror or str(e)
            continue
        if names:
            removed[str(path)] = len(names)
    return SweepResult(removed, failed)


class _TmpSweepService(Service):
    """Once at start-up, removes tmp/ files that interrupted deliveries left behind.

    It runs on the thread pool and nothing waits for it: listeners bind and
    ``ready`` fires regardless. File times are wall-clock, so the cutoff is the
    reactor's time, not the server clock (which ``--now`` may have moved).
    """

    log = Logger()

    def __init__(self, reactor: Any, provider: Provider) -> None:
        self.reactor = reactor
        self.provider = provider

    def startService(self) -> None:
        super().startService()
        d = self.provider.run_blocking(
            sweep_stale_deliveries, self.provider.data, self.reactor.seconds()
        )
        d.addCallback(self._report)
        d.addErrback(lambda f: self.log.failure("sweeping stale tmp/ files failed", f))

    def _report(self, result: SweepResult) -> SweepResult:
        if result.removed or result.failed:
            self.provider.events.emit(
                MAILDIR_TMP_SWEPT,
                self.provider.now(),
                removed=sum(result.removed.values()),
                maildirs=result.removed,
                failed=result.failed or None,
            )
        return result


class MailhostService(MultiService):
    """The whole provider: thread pool, shared state, and the listeners."""

    def __init__(self, config: ServeConfig, reactor: Any, tls: TLSIdentity | None = None) -> None:
        super().__init__()
        self.config = config
        self.tls = tls if tls is not None else build_tls_identity(config, reactor)
        tls_options = self.tls.server_options()
        storage_pool = ThreadPool(minthreads=0, maxthreads=STORAGE_THREADS, name="mailhost-storage")
        reading_pool = ThreadPool(minthreads=0, maxthreads=READING_THREADS, name="mailhost-reading")
        hashing_pool = ThreadPool(minthreads=0, maxthreads=HASHING_THREADS, name="mailhost-bcrypt")
        for pool in (storage_pool, reading_pool, hashing_pool):
            _ThreadPoolService(pool).setServiceParent(self)
        clock = ServerClock(reactor, start=config.now)
        self.provider = build_provider(
            config,
            clock,
            thread_pool_runner(reactor, storage_pool),
            tls_options,
            run_hashing=thread_pool_runner(
                reactor, hashing_pool, nice=HASHING_NICE, drop_when_stopping=True
            ),
            run_reading=thread_pool_runner(reactor, reading_pool),
        )
        _PruneService(reactor, self.provider).setServiceParent(self)
        self.tmp_sweep = _TmpSweepService(reactor, self.provider)
        self.tmp_sweep.setServiceParent(self)
        listeners = [
            _Listener("smtp", SMTPFactory(self.provider, Role.MX), config.listeners.smtp),
            _Listener(
                "submission",
                SMTPFactory(self.provider, Role.SUBMISSION),
                config.listeners.submission,
            ),
            _Listener("pop3", POP3Factory(self.provider), config.listeners.pop3),
            _Listener(
                "smtps",
                TLSMemoryBIOFactory(
                    tls_options, False, SMTPFactory(self.provider, Role.SUBMISSION)
                ),
                config.listeners.smtps,
            ),
            _Listener(
                "pop3s",
                TLSMemoryBIOFactory(tls_options, False, POP3Factory(self.provider)),
                config.listeners.pop3s,
            ),
            _Listener(
                "http",
                BuiltOnFirstConnection(partial(_api_site, self.provider, reactor, config)),
                config.listeners.http,
                config.http_host,
            ),
        ]
        self._listeners = _ListenersService(reactor, config.host, listeners)
        self._listeners.setServiceParent(self)
        self._built_later = [
            listener.factory
            for listener in listeners
            if isinstance(listener.factory, BuiltOnFirstConnection)
        ]

    def startService(self) -> None:
        super().startService()
        self.ready.addCallback(self._warm_up)

    def _warm_up(self, ports: dict[str, int]) -> dict[str, int]:
        for factory in self._built_later:
            factory.warm_up(self.provider.run_blocking).addErrback(
                lambda f: _events_log.failure("loading the HTTP API's modules failed", f)
            )
        return ports

    @property
    def ready(self) -> defer.Deferred[dict[str, int]]:
        return self._listeners.ready

    def stopService(self) -> defer.Deferred:
        d = defer.maybeDeferred(super().stopService)
        d.addBoth(lambda result: (self.provider.events.close(), result)[1])
        return d

    def ready_report(self, ports: dict[str, int]) -> dict[str, Any]:
        """The machine-readable line printed once every listener is up."""
        now: datetime = self.provider.now()
        schemes = self.provider.schemes
        window: timedelta = schemes.pop_window
        return {
            "event": "ready",
            "host": self.config.host,
            "http_host": self.config.http_host,
            "ports": ports,
            "data": str(self.provider.data.root),
            "now": now.isoformat(),
            "schemes": {
                "smtp-auth": schemes.smtp_auth.spec(),
                "smtp-after-pop": schemes.smtp_after_pop.spec(),
                "pop-window": int(window.total_seconds()),
            },
            "domains": sorted(self.provider.local_domains()),
            "tls": {
                "cert": str(self.tls.cert_path.absolute()),
                "ca": str(self.tls.ca_path.absolute()) if self.tls.ca_path else None,
                "fingerprint_sha256": self.tls.fingerprint_sha256,
            },
        }
