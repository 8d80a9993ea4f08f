"""Durable Maildir storage, and the POP3 view of a Maildir.

Delivery follows the Maildir protocol with the fsyncs that make "250" mean
"on disk": write ``tmp/<name>``, fsync the file, link it into ``new/`` (a link,
unlike a rename, fails rather than replace a file of the same name), unlink
the ``tmp/`` name, fsync ``new/``. A crash before the rename leaves only a ``tmp/`` file, which no
reader lists and :func:`sweep_tmp` removes once it is 36 hours old. These
functions block; callers run them through ``run_blocking``.

File names are ``<seconds>.M<micro>P<pid>Q<counter>.<host>,S=<size>,W=<size
with CRLF line ends>`` (Dovecot's fields, so POP3 can list sizes without
reading every file); the part before any ``:`` flags is the message's stable
unique id (POP3 UIDL).

:class:`PopMailbox` is what one POP3 session sees: a snapshot taken at login,
deletions only marked until QUIT commits them (RFC 1939 §6), sizes counted as
POP3 sends them (CRLF). :data:`POP3_LOCKS` keeps one session per maildrop.
"""

from __future__ import annotations

import fcntl
import functools
import hashlib
import itertools
import os
import re
import socket
import stat
import threading
import time
from dataclasses import dataclass
from pathlib import Path

SUBDIRS = ("tmp", "new", "cur")
READ_CHUNK = 1 << 20
_counter = itertools.count(1)


def ensure_maildir(path: Path) -> Path:
    """Create ``tmp/ new/ cur/`` as needed, durably: each new directory's parent is fsync'd.

    Without that, a crash after the first delivery to a new account could
    lose the directory entry, and the fsync'd message with it.
    """
    wanted = [path / sub for sub in SUBDIRS]
    if all(d.is_dir() for d in wanted):
        return path
    missing = [d for d in reversed(path.parents) if not d.exists()]
    missing += [d for d in [path, *wanted] if not d.exists()]
    for directory in missing:
        directory.mkdir(exist_ok=True)
    for parent in dict.fromkeys(d.parent for d in missing):
        _fsync_dir(parent)
    return path


_ensured: set[str] = set()
_ensure_lock = threading.Lock()


def _ensure_once(maildir: Path) -> None:
    """:func:`ensure_maildir` once per Maildir and process, with no system call after that.

    The lock makes a delivery that finds another thread making the same new
    Maildir wait until its parents are fsync'd, rather than reply 250 for a
    message whose directory entry is not yet on disk.
    """
    key = os.fspath(maildir)
    if key in _ensured:
        return
    with _ensure_lock:
        if key not in _ensured:
            ensure_maildir(maildir)
            _ensured.add(key)


def unique_name() -> str:
    now = time.time_ns()
    pid, host = _process_part()
    return f"{now // 10**9}.M{(now // 1000) % 10**6:06d}P{pid}Q{next(_counter)}.{host}"


@functools.cache
def _process_part() -> tuple[int, str]:
    """The pid and the escaped host name, once per process: two system calls a
    delivery otherwise, each a hand-over of the GIL under load."""
    return os.getpid(), socket.gethostname().replace("/", "\\057").replace(":", "\\072")


os.register_at_fork(after_in_child=_process_part.cache_clear)


def _fsync_dir(path: Path | str) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def deliver(maildir: Path, message: bytes) -> str:
    """Store ``message`` durably in ``maildir``; returns the file name in ``new/``.

    The Maildir is checked (and made) once per process, not before every
    delivery: three ``stat`` calls fewer for each. Should it have been removed
    since, the open or the link finds a directory missing and it is made again.
    Paths are plain strings here: pathlib's joins were a tenth of the GIL
    time an SMTP message took.
    """
    _ensure_once(maildir)
    name = f"{unique_name()},S={len(message)},W={pop3_size(message)}"
    root = os.fspath(maildir)
    tmp, new = f"{root}/tmp/{name}", f"{root}/new"
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC
    try:
        fd = os.open(tmp, flags, 0o600)
    except FileNotFoundError:
        _ensure_again(maildir)
        fd = os.open(tmp, flags, 0o600)
    try:
        try:
            view = memoryview(message)
            while view:
                written = os.write(fd, view)
                view = view[written:]
            os.fsync(fd)
        finally:
            os.close(fd)
        try:
            os.link(tmp, f"{new}/{name}")
        except FileNotFoundError:
            _ensure_again(maildir)
            os.link(tmp, f"{new}/{name}")
    finally:
        os.unlink(tmp)
    _fsync_dir(new)
    return name


def _ensure_again(maildir: Path) -> None:
    _ensured.discard(os.fspath(maildir))
    _ensure_once(maildir)


STALE_TMP_AGE = 36 * 3600
"""Seconds after which a ``tmp/`` file is a leftover (the Maildir convention's 36 hours)."""


def sweep_tmp(maildir: Path, now: float, max_age: float = STALE_TMP_AGE) -> list[str]:
    """Remove ``tmp/`` files untouched for ``max_age`` seconds before ``now``; returns their names.

    A crash between creating ``tmp/<name>`` and the rename into ``new/`` leaves
    the file behind; no reader lists ``tmp/`` and no 250 was sent for it, so
    it can only be removed. "Untouched" means atime, mtime and ctime are all
    older, so a delivery in progress, or a file just copied in with an old
    mtime, is left alone. ``now`` is wall-clock seconds,
    the clock file times are in. new/ and cur/ are never touched. A file that
    cannot be removed raises (OSError); one that vanished meanwhile is skipped.
    Blocks.
    """
    cutoff = now - max_age
    removed: list[str] = []
    try:
        with os.scandir(maildir / "tmp") as scan:
            entries = list(scan)
    except (FileNotFoundError, NotADirectoryError):
        return removed
    for entry in entries:
        try:
            st = entry.stat(follow_symlinks=False)
        except FileNotFoundError:
            continue
        if not stat.S_ISREG(st.st_mode) or max(st.st_atime, st.st_mtime, st.st_ctime) >= cutoff:
            continue
        try:
            os.unlink(entry.path)
        except FileNotFoundError:
            continue
        removed.append(entry.name)
    return removed


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


def message_files(path: Path) -> list[tuple[str, str]]:
    """``(subdir, name)`` of every message a reader may see (new/ and cur/), in POP3 order.

    Blocks. tmp/ holds unfinished deliveries and dotfiles are not messages.
    """
    ensure_maildir(path)
    found = []
    for subdir in ("new", "cur"):
        with os.scandir(path / subdir) as entries:
            for entry in entries:
                if not entry.name.startswith(".") and entry.is_file():
                    found.append((subdir, entry.name))
    found.sort(key=lambda item: (_name_order(item[1]), item[0]))
    return found


@dataclass(frozen=True)
class PopMessage:
    subdir: str
    name: str
    uid: str
    size: int


class MailboxInUse(Exception):
    """The maildrop already has a POP3 session (RFC 2449 §8.1.2 IN-USE)."""


LOCK_FILE = ".mailhost-pop3.lock"


class MailboxLock:
    """One session's hold on a maildrop; releasing it twice is harmless."""

    def __init__(self, fd: int) -> None:
        self._fd: int | None = fd

    @property
    def held(self) -> bool:
        return self._fd is not None

    def release(self) -> None:
        if self._fd is not None:
            fd, self._fd = self._fd, None
            fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)


class MailboxLocks:
    """Exclusive locks on maildrops (RFC 1939 §4): ``flock`` on a file in the Maildir.

    An flock excludes every other open of the file, in this process (plain and
    TLS listeners alike) and in any other process on the same data directory,
    and the kernel drops it if the process dies. Taking it never blocks.
    """

    def acquire(self, maildir: Path) -> MailboxLock:
        ensure_maildir(maildir)
        fd = os.open(maildir / LOCK_FILE, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise MailboxInUse(str(maildir)) from None
        return MailboxLock(fd)

    def is_locked(self, maildir: Path) -> bool:
        try:
            fd = os.open(maildir / LOCK_FILE, os.O_RDWR | os.O_CLOEXEC)
        except FileNotFoundError:
            return False
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        finally:
            os.close(fd)
        return False


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
        messages = [
            PopMessage(subdir, name, pop3_uid(name), _stored_pop3_size(path / subdir / name))
            for subdir, name in message_files(path)
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
        """The stored octets of message ``number``.

        ``os.read`` sized from the listing: three system calls where
        ``Path.read_bytes`` makes nine, and every one lets the reactor thread's
        GIL go to another thread and come back. A read asks for at most
        :data:`READ_CHUNK` octets, so a wrong size in a file's name costs no
        memory, and a short read means the end of the file.
        """
        message = self.messages[number - 1]
        fd = os.open(f"{self.path}/{message.subdir}/{message.name}", os.O_RDONLY | os.O_CLOEXEC)
        try:
            want = min(message.size, READ_CHUNK) + 1
            parts = [os.read(fd, want)]
            while len(parts[-1]) == want:
                want = READ_CHUNK
                parts.append(os.read(fd, want))
        finally:
            os.close(fd)
        return b"".join(parts)

    def read_ahead(self, number: int, budget: int) -> dict[int, bytes]:
        """Message ``number`` and the live ones after it, while their sizes fit ``budget``.

        Clients fetch in order, so one trip to the disk thread serves the next
        RETRs too: a trip costs far more than reading a small file.
        """
        found = {number: self.read(number)}
        spent = len(found[number])
        for later in range(number + 1, len(self.messages) + 1):
            if later in self._deleted:
                continue
            spent += self.messages[later - 1].size
            if spent > budget:
                break
            try:
                found[later] = self.read(later)
            except OSError:
                break
        return found

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
