"""Durable Maildir storage, and the POP3 view of a Maildir.

Delivery follows the Maildir protocol with the fsyncs that make "250" mean
"on disk": write ``tmp/<name>``, fsync the file, rename it into ``new/``, fsync
``new/``. A crash before the rename leaves only a ``tmp/`` file, which no
reader lists. These functions block; callers run them through ``run_blocking``.

File names are ``<seconds>.M<micro>P<pid>Q<counter>.<host>,S=<size>,W=<size
with CRLF line ends>`` (Dovecot's fields, so POP3 can list sizes without
reading every file); the part before any ``:`` flags is the message's stable
unique id (POP3 UIDL).

:class:`PopMailbox` is what one POP3 session sees: a snapshot taken at login,
deletions only marked until QUIT commits them (RFC 1939 §6), sizes counted as
POP3 sends them (CRLF). :data:`POP3_LOCKS` keeps one session per maildrop.
"""

from __future__ import annotations

import hashlib
import itertools
import os
import re
import socket
import time
from dataclasses import dataclass
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
    return f"{now // 10**9}.M{(now // 1000) % 10**6:06d}P{os.getpid()}Q{next(_counter)}.{host}"


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def deliver(maildir: Path, message: bytes) -> str:
    """Store ``message`` durably in ``maildir``; returns the file name in ``new/``."""
    ensure_maildir(maildir)
    name = f"{unique_name()},S={len(message)},W={pop3_size(message)}"
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


def pop3_size(data: bytes) -> int:
    """Octets of ``data`` as POP3 sends it: every line ended by CRLF, before dot-stuffing.

    Messages are stored with LF line ends (Maildir convention); RFC 1939 §11
    sizes count the CRLF form, so each bare LF adds one octet, and an
    unterminated last line gets the CRLF that transmission adds.
    """
    size = len(data) + data.count(b"\n") - data.count(b"\r\n")
    if data and not data.endswith(b"\n"):
        size += 1 if data.endswith(b"\r") else 2
    return size


MAX_POP3_UID = 70  # RFC 1939 §7 UIDL: 1 to 70 characters in 0x21..0x7E


def pop3_uid(filename: str) -> str:
    """The UIDL of a Maildir file: its unique part, or a digest when that is unfit for POP3.

    The unique part survives flag changes and the move from new/ to cur/, so
    the UIDL is stable across sessions. A long host name or non-ASCII name
    would break RFC 1939's limits, so those are replaced by a digest of
    themselves (still stable).
    """
    uid = uid_of(filename)
    if 0 < len(uid) <= MAX_POP3_UID and all(0x21 <= ord(c) <= 0x7E for c in uid):
        return uid
    return hashlib.sha256(uid.encode("utf-8", "surrogateescape")).hexdigest()[:40]


def _name_order(name: str) -> tuple[object, ...]:
    """Digit runs compare as numbers, so ``M99`` sorts before ``M100`` within one second."""
    return tuple(int(part) if part.isdigit() else part for part in re.split(r"(\d+)", name))


_WIRE_SIZE = re.compile(r",W=([0-9]+)")


def _stored_pop3_size(path: Path) -> int:
    """The POP3 size from the name's ``,W=`` field (Dovecot's convention), else by reading."""
    match = _WIRE_SIZE.search(uid_of(path.name))
    if match:
        return int(match.group(1))
    return pop3_size(path.read_bytes())


@dataclass(frozen=True)
class PopMessage:
    subdir: str
    name: str
    uid: str
    size: int


class MailboxInUse(Exception):
    """The maildrop already has a POP3 session (RFC 2449 §8.1.2 IN-USE)."""


class MailboxLock:
    """One session's hold on a maildrop; releasing it twice is harmless."""

    def __init__(self, registry: MailboxLocks, key: str) -> None:
        self._registry = registry
        self._key = key
        self.held = True

    def release(self) -> None:
        if self.held:
            self.held = False
            self._registry.release(self._key)


class MailboxLocks:
    """In-process exclusive locks on maildrops, keyed by absolute path (RFC 1939 §4).

    Keyed by path rather than by listener, so every POP3 factory of a process
    (plain and TLS ports, several providers on one data directory) excludes the
    others. The reactor thread is the only caller, so no thread lock is needed.
    """

    def __init__(self) -> None:
        self._held: set[str] = set()

    def acquire(self, maildir: Path) -> MailboxLock:
        key = os.path.abspath(maildir)
        if key in self._held:
            raise MailboxInUse(key)
        self._held.add(key)
        return MailboxLock(self, key)

    def release(self, key: str) -> None:
        self._held.discard(key)

    def is_locked(self, maildir: Path) -> bool:
        return os.path.abspath(maildir) in self._held


POP3_LOCKS = MailboxLocks()


class PopMailbox:
    """A POP3 session's snapshot of one Maildir: DELE only marks, :meth:`commit` removes.

    RFC 1939 §6 removes messages only in the UPDATE state (after QUIT); a
    session that ends any other way leaves the Maildir untouched. Messages are
    numbered from 1 in file-name order of new/ and cur/ as they were at open;
    tmp/ holds unfinished deliveries and is never listed. Methods that touch
    the disk (:meth:`scan`, :meth:`read`, :meth:`commit`) block.
    """

    def __init__(self, path: Path, messages: list[PopMessage]) -> None:
        self.path = path
        self.messages = tuple(messages)
        self._deleted: set[int] = set()

    @classmethod
    def scan(cls, path: Path) -> PopMailbox:
        ensure_maildir(path)
        found = []
        for subdir in ("new", "cur"):
            with os.scandir(path / subdir) as entries:
                for entry in entries:
                    if not entry.name.startswith(".") and entry.is_file():
                        found.append((subdir, entry.name))
        found.sort(key=lambda item: (_name_order(item[1]), item[0]))
        messages = [
            PopMessage(subdir, name, pop3_uid(name), _stored_pop3_size(path / subdir / name))
            for subdir, name in found
        ]
        return cls(path, messages)

    def message(self, number: int) -> PopMessage | None:
        """Message ``number`` (1-based), or None when out of range or marked deleted."""
        if number < 1 or number > len(self.messages) or number in self._deleted:
            return None
        return self.messages[number - 1]

    def live(self) -> list[tuple[int, PopMessage]]:
        return [
            (number, message)
            for number, message in enumerate(self.messages, 1)
            if number not in self._deleted
        ]

    def totals(self) -> tuple[int, int]:
        """Count and octets of the messages not marked deleted (STAT)."""
        live = self.live()
        return len(live), sum(message.size for _, message in live)

    def read(self, number: int) -> bytes:
        message = self.messages[number - 1]
        return (self.path / message.subdir / message.name).read_bytes()

    def delete(self, number: int) -> bool:
        """Mark ``number`` for removal at commit; False if there is no such live message."""
        if self.message(number) is None:
            return False
        self._deleted.add(number)
        return True

    def undelete_all(self) -> None:
        self._deleted.clear()

    @property
    def deleted(self) -> frozenset[int]:
        return frozenset(self._deleted)

    def commit(self) -> list[str]:
        """Remove the marked files durably; returns the names that could not be removed.

        A file already gone counts as removed: the client asked for it to go.
        """
        failed: list[str] = []
        removed: dict[str, list[str]] = {}
        for number in sorted(self._deleted):
            message = self.messages[number - 1]
            try:
                os.unlink(self.path / message.subdir / message.name)
            except FileNotFoundError:
                pass
            except OSError:
                failed.append(message.name)
                continue
            removed.setdefault(message.subdir, []).append(message.name)
        for subdir, names in sorted(removed.items()):
            try:
                _fsync_dir(self.path / subdir)
            except OSError:
                failed.extend(names)
        self._deleted.clear()
        return failed
