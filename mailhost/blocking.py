"""The hop that keeps blocking work (bcrypt, fsync) off the reactor thread.

Code that must block takes a ``run_blocking(f, *args) -> Deferred`` argument:
production passes :func:`thread_pool_runner` (``deferToThreadPool`` on the
injected reactor, never the global one), unit tests pass :func:`run_inline`.
"""

from __future__ import annotations

import contextlib
import os
import sys
import threading
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


def thread_pool_runner(
    reactor: IReactorFromThreads, pool: ThreadPool, nice: int = 0, drop_when_stopping: bool = False
) -> RunBlocking:
    """Run jobs on ``pool``.

    With ``nice``, its threads yield the CPU to the reactor's: bcrypt keeps every
    core busy during a login storm; a niced worker thread still gets all the CPU
    no one else wants, but the reactor thread (nice 0) is scheduled first when it
    wakes, so idle sessions keep answering at once.

    With ``drop_when_stopping``, jobs still queued when the pool stops fail with
    ``CancelledError`` instead of running: Twisted's pool runs every queued job
    before it lets its threads go, and a login storm's queue of password checks
    would hold up shutdown for seconds.
    """
    watched = pool if drop_when_stopping else None

    def run_blocking(f: Callable[..., Any], *args: Any, **kwargs: Any) -> defer.Deferred:
        if nice or watched is not None:
            return deferToThreadPool(reactor, pool, _in_worker, watched, nice, f, *args, **kwargs)
        return deferToThreadPool(reactor, pool, f, *args, **kwargs)

    return run_blocking


_thread_nice = threading.local()


def _in_worker(
    watched: ThreadPool | None, nice: int, f: Callable[..., Any], *args: Any, **kwargs: Any
) -> Any:
    """Run ``f`` on a worker thread: not at all once ``watched`` is stopping; after raising
    this thread's nice value to ``nice`` (once per thread; Linux only, where
    ``setpriority(PRIO_PROCESS, tid)`` changes one thread, not the whole process)."""
    if watched is not None and watched.joined:
        raise defer.CancelledError("the server is stopping")
    if nice and sys.platform == "linux" and getattr(_thread_nice, "value", 0) != nice:
        tid = threading.get_native_id()
        with contextlib.suppress(OSError):
            os.setpriority(os.PRIO_PROCESS, tid, max(nice, os.getpriority(os.PRIO_PROCESS, tid)))
        _thread_nice.value = nice
    return f(*args, **kwargs)
