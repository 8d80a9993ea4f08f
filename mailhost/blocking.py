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
    reactor: IReactorFromThreads, pool: ThreadPool, nice: int = 0
) -> RunBlocking:
    """Run jobs on ``pool``; with ``nice``, its threads yield the CPU to the reactor's.

    bcrypt keeps every core busy during a login storm; a niced worker thread
    still gets all the CPU no one else wants, but the reactor thread (nice 0)
    is scheduled first when it wakes, so idle sessions keep answering at once.
    """

    def run_blocking(f: Callable[..., Any], *args: Any, **kwargs: Any) -> defer.Deferred:
        if nice:
            return deferToThreadPool(reactor, pool, _niced, nice, f, *args, **kwargs)
        return deferToThreadPool(reactor, pool, f, *args, **kwargs)

    return run_blocking


_thread_nice = threading.local()


def _niced(nice: int, f: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """Run ``f`` after raising this thread's nice value to ``nice`` (once per thread; Linux only).

    On Linux ``setpriority(PRIO_PROCESS, tid)`` changes one thread; elsewhere it
    would change the whole process, so there it is not done.
    """
    if sys.platform == "linux" and getattr(_thread_nice, "value", 0) != nice:
        tid = threading.get_native_id()
        with contextlib.suppress(OSError):
            os.setpriority(os.PRIO_PROCESS, tid, max(nice, os.getpriority(os.PRIO_PROCESS, tid)))
        _thread_nice.value = nice
    return f(*args, **kwargs)
