"""The hop that keeps blocking work (bcrypt, fsync) off the reactor thread.

Code that must block takes a ``run_blocking(f, *args) -> Deferred`` argument:
production passes :func:`thread_pool_runner` (``deferToThreadPool`` on the
injected reactor, never the global one), unit tests pass :func:`run_inline`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.internet import defer
from twisted.internet.interfaces import IReactorFromThreads
from twisted.internet.threads import deferToThreadPool
from twisted.python.threadpool import ThreadPool

RunBlocking = Callable[..., defer.Deferred]


def run_inline(f: Callable[..., Any], *args: Any, **kwargs: Any) -> defer.Deferred:
    """Run ``f`` now, on this thread, as a Deferred (for tests)."""
    return defer.maybeDeferred(f, *args, **kwargs)


def thread_pool_runner(reactor: IReactorFromThreads, pool: ThreadPool) -> RunBlocking:
    def run_blocking(f: Callable[..., Any], *args: Any, **kwargs: Any) -> defer.Deferred:
        return deferToThreadPool(reactor, pool, f, *args, **kwargs)

    return run_blocking
