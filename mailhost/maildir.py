"""Durable Maildir storage.

Delivery follows the Maildir protocol with the fsyncs that make "250" mean
"on disk": write ``tmp/<name>``, fsync the file, rename it into ``new/``, fsync
``new/``. A crash before the rename leaves only a ``tmp/`` file, which no
reader lists. These functions block; callers run them through ``run_blocking``.

File names are ``<seconds>.M<micro>P<pid>Q<counter>.<host>``; the part before
any ``:`` flags is the message's stable unique id (POP3 UIDL).
"""

from __future__ import annotations

import itertools
import os
import socket
import time
from pathlib import Path

SUBDIRS = ("tmp", "new", "cur")
_counter = itertools.count(1)


def ensure_maildir(path: Path) -> Path:
    for sub in SUBDIRS:
        (path / sub).mkdir(parents=True, exist_ok=True)
    return path


def unique_name() -> str:
    now = time.time_ns()
    host = socket.gethostname().replace("/", "\\057").replace(":", "\\072")
    return f"{now // 10**9}.M{(now // 1000) % 10**6}P{os.getpid()}Q{next(_counter)}.{host}"


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def deliver(maildir: Path, message: bytes) -> str:
    """Store ``message`` durably in ``maildir``; returns the file name in ``new/``."""
    ensure_maildir(maildir)
    name = unique_name()
    tmp = maildir / "tmp" / name
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        view = memoryview(message)
        while view:
            written = os.write(fd, view)
            view = view[written:]
        os.fsync(fd)
    except BaseException:
        os.close(fd)
        tmp.unlink(missing_ok=True)
        raise
    os.close(fd)
    os.rename(tmp, maildir / "new" / name)
    _fsync_dir(maildir / "new")
    return name


def deliver_all(maildirs: list[Path], message: bytes) -> list[str]:
    """Deliver one message to several Maildirs; returns only when all are durable."""
    return [deliver(path, message) for path in maildirs]


def uid_of(filename: str) -> str:
    return filename.split(":", 1)[0]
