"""Maildir delivery and the POP3 view of a Maildir."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
from twisted.mail.maildir import MaildirMailbox

from mailhost import maildir
from mailhost.maildir import (
    MailboxInUse,
    MailboxLocks,
    PopMailbox,
    deliver,
    ensure_maildir,
    pop3_size,
    pop3_uid,
)

MESSAGE = b"Subject: hi\n\nline one\n.dot line\n"


def test_deliver_lands_in_new_and_leaves_tmp_empty(tmp_path: Path) -> None:
    """A delivered message is a file in new/ with the given bytes; tmp/ holds nothing after."""
    name = deliver(tmp_path / "box", MESSAGE)
    assert (tmp_path / "box" / "new" / name).read_bytes() == MESSAGE
    assert list((tmp_path / "box" / "tmp").iterdir()) == []


@pytest.mark.parametrize(
    ("data", "size"),
    [
        (b"", 0),
        (b"a\nb\n", 6),
        (b"a\r\nb\r\n", 6),
        (b"a\r\nb\n", 6),
        (b"a\nb", 6),
        (b"a\nb\r", 6),
        (b"\n\n", 4),
    ],
)
def test_pop3_size_counts_the_crlf_form(data: bytes, size: int) -> None:
    """Sizes count each line end as CRLF, and the CRLF added to an unterminated last line."""
    assert pop3_size(data) == size


def test_pop3_uid_is_the_unique_part_of_the_name() -> None:
    """The UIDL ignores Maildir flags, so it survives new/ → cur/ with ``:2,S``."""
    assert pop3_uid("1378079940.M5P7Q1.host:2,S") == "1378079940.M5P7Q1.host"
    assert pop3_uid("1378079940.M5P7Q1.host") == "1378079940.M5P7Q1.host"


def test_pop3_uid_replaces_names_unfit_for_uidl_by_a_stable_digest() -> None:
    """RFC 1939 allows 1 to 70 printable ASCII characters; a long host name would exceed it."""
    long_name = "1378079940.M5P7Q1." + "h" * 64
    uid = pop3_uid(long_name + ":2,S")
    assert uid == pop3_uid(long_name)
    assert 0 < len(uid) <= 70
    assert all(0x21 <= ord(c) <= 0x7E for c in uid)
    assert pop3_uid("1378079940.M5P7Q1.hôst") != "1378079940.M5P7Q1.hôst"


def _put(box: Path, subdir: str, name: str, data: bytes = MESSAGE) -> Path:
    ensure_maildir(box)
    path = box / subdir / name
    path.write_bytes(data)
    return path


def test_scan_lists_new_and_cur_in_name_order_and_skips_tmp(tmp_path: Path) -> None:
    """Messages are numbered by file name across new/ and cur/; tmp/ and dotfiles are unseen."""
    box = tmp_path / "box"
    _put(box, "cur", "100.M100P1Q3.h:2,S")
    _put(box, "new", "100.M99P1Q2.h")
    _put(box, "new", "99.M5P1Q1.h")
    _put(box, "tmp", "98.M1P1Q1.h")
    _put(box, "new", ".hidden")
    mailbox = PopMailbox.scan(box)
    assert [m.uid for m in mailbox.messages] == ["99.M5P1Q1.h", "100.M99P1Q2.h", "100.M100P1Q3.h"]
    assert [m.size for m in mailbox.messages] == [pop3_size(MESSAGE)] * 3


def test_scan_of_a_missing_maildir_is_empty(tmp_path: Path) -> None:
    """An account that never received mail has an empty maildrop, not an error."""
    mailbox = PopMailbox.scan(tmp_path / "never")
    assert mailbox.totals() == (0, 0)


def test_scan_is_a_snapshot(tmp_path: Path) -> None:
    """Mail delivered after the scan is not in this session's numbering."""
    box = tmp_path / "box"
    deliver(box, MESSAGE)
    mailbox = PopMailbox.scan(box)
    deliver(box, MESSAGE)
    assert mailbox.totals() == (1, pop3_size(MESSAGE))


def test_read_ahead_takes_the_next_live_messages_within_the_budget(tmp_path: Path) -> None:
    """One read serves the following RETRs: deleted ones skipped, the budget respected."""
    box = tmp_path / "box"
    bodies = [b"Subject: %d\n\n%s\n" % (n, b"x" * 100) for n in range(1, 6)]
    for body in bodies:
        deliver(box, body)
    mailbox = PopMailbox.scan(box)
    mailbox.delete(3)
    size = mailbox.messages[0].size
    assert mailbox.read_ahead(1, 10 * size) == {
        1: bodies[0],
        2: bodies[1],
        4: bodies[3],
        5: bodies[4],
    }
    assert list(mailbox.read_ahead(2, 2 * size)) == [2, 4]
    assert list(mailbox.read_ahead(5, 1)) == [5], "the asked-for message whatever its size"


@pytest.mark.parametrize("named", [10, 10**13])
@pytest.mark.parametrize("size", [0, 1, 100, 70_000, 3_000_000])
def test_read_returns_the_whole_file_whatever_its_name_says(
    tmp_path: Path, size: int, named: int
) -> None:
    """The read is sized from the listing, at most 1 MiB at a time: a name whose W= size is
    wrong, too small or absurdly large, still reads the whole file."""
    box = tmp_path / "box"
    ensure_maildir(box)
    body = bytes(range(256)) * (size // 256) + b"z" * (size % 256)
    (box / "cur" / f"1700000000.M1P1.host,S=10,W={named}:2,").write_bytes(body)
    mailbox = PopMailbox.scan(box)
    assert mailbox.messages[0].size == named
    assert mailbox.read(1) == body


def test_delete_only_marks(tmp_path: Path) -> None:
    """DELE hides the message from the session but leaves the file (RFC 1939 §6)."""
    box = tmp_path / "box"
    name = deliver(box, MESSAGE)
    deliver(box, b"second\n")
    mailbox = PopMailbox.scan(box)
    assert mailbox.delete(1)
    assert (box / "new" / name).exists()
    assert mailbox.message(1) is None
    assert [number for number, _ in mailbox.live()] == [2]
    assert mailbox.totals() == (1, len(b"second\r\n"))
    assert not mailbox.delete(1)
    assert not mailbox.delete(3)
    assert not mailbox.delete(0)


def test_undelete_all_restores_every_mark(tmp_path: Path) -> None:
    """RSET unmarks every message."""
    box = tmp_path / "box"
    deliver(box, MESSAGE)
    mailbox = PopMailbox.scan(box)
    mailbox.delete(1)
    mailbox.undelete_all()
    assert mailbox.message(1) is not None


def test_commit_removes_only_the_marked_files(tmp_path: Path) -> None:
    """UPDATE unlinks exactly what was marked and reports no failures."""
    box = tmp_path / "box"
    gone = deliver(box, MESSAGE)
    kept = deliver(box, b"keep\n")
    mailbox = PopMailbox.scan(box)
    mailbox.delete(1)
    assert mailbox.commit() == []
    assert not (box / "new" / gone).exists()
    assert (box / "new" / kept).exists()


def test_commit_treats_an_already_removed_file_as_removed(tmp_path: Path) -> None:
    """The client asked for the message to go; someone else removing it first is no failure."""
    box = tmp_path / "box"
    name = deliver(box, MESSAGE)
    mailbox = PopMailbox.scan(box)
    mailbox.delete(1)
    (box / "new" / name).unlink()
    assert mailbox.commit() == []


def test_commit_reports_files_it_could_not_remove(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An unlink failure is reported by name, so QUIT can answer -ERR [SYS/TEMP]."""
    box = tmp_path / "box"
    name = deliver(box, MESSAGE)
    mailbox = PopMailbox.scan(box)
    mailbox.delete(1)

    def refuse(path: object) -> None:
        raise PermissionError(13, "Permission denied", str(path))

    monkeypatch.setattr(maildir.os, "unlink", refuse)
    assert mailbox.commit() == [name]
    assert (box / "new" / name).exists()


def test_read_returns_the_stored_bytes(tmp_path: Path) -> None:
    """Messages are read as bytes (twisted.mail opens them in text mode)."""
    box = tmp_path / "box"
    deliver(box, b"caf\xc3\xa9\n\xff\n")
    assert PopMailbox.scan(box).read(1) == b"caf\xc3\xa9\n\xff\n"


def test_uids_are_stable_across_scans_and_flag_renames(tmp_path: Path) -> None:
    """A message keeps its UIDL when another session scans or a reader moves it to cur/."""
    box = tmp_path / "box"
    name = deliver(box, MESSAGE)
    first = PopMailbox.scan(box).messages[0].uid
    os.rename(box / "new" / name, box / "cur" / (name + ":2,S"))
    assert PopMailbox.scan(box).messages[0].uid == first == name


def test_lock_is_exclusive_until_released(tmp_path: Path) -> None:
    """One session per maildrop: a second acquire fails until the first lock is released."""
    locks = MailboxLocks()
    lock = locks.acquire(tmp_path / "box")
    with pytest.raises(MailboxInUse):
        locks.acquire(tmp_path / "box")
    locks.acquire(tmp_path / "other")
    lock.release()
    lock.release()
    assert not locks.is_locked(tmp_path / "box")
    locks.acquire(tmp_path / "box")


def test_lock_key_is_the_absolute_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A relative and an absolute spelling of one maildrop are the same lock."""
    monkeypatch.chdir(tmp_path)
    locks = MailboxLocks()
    locks.acquire(Path("box"))
    with pytest.raises(MailboxInUse):
        locks.acquire(tmp_path / "box")


def _twisted_mailbox(box: Path) -> MaildirMailbox:
    """twisted.mail's Maildir mailbox on ``box``, with its .Trash created first."""
    MaildirMailbox(os.fsencode(box))
    deliver(box, MESSAGE)
    return MaildirMailbox(os.fsencode(box))


def test_twisted_maildir_mailbox_deletes_at_dele_but_ours_waits_for_commit(
    tmp_path: Path,
) -> None:
    """twisted.mail moves the file out of the inbox at DELE, so a dropped session loses it."""
    theirs = _twisted_mailbox(tmp_path / "theirs")
    # Its DELE mixes str and bytes path parts; with str paths it runs as designed.
    theirs.path = os.fsdecode(theirs.path)
    theirs.list = [os.fsdecode(path) for path in theirs.list]
    theirs.deleteMessage(0)
    assert list((tmp_path / "theirs" / "new").iterdir()) == []

    ours = tmp_path / "ours"
    name = deliver(ours, MESSAGE)
    mailbox = PopMailbox.scan(ours)
    mailbox.delete(1)
    assert (ours / "new" / name).exists()
    mailbox.commit()
    assert not (ours / "new" / name).exists()


def test_twisted_maildir_mailbox_reads_in_text_mode_but_ours_reads_bytes(tmp_path: Path) -> None:
    """twisted.mail decodes messages as text, so a non-UTF-8 byte breaks RETR; ours sends bytes."""
    box = tmp_path / "box"
    theirs = _twisted_mailbox(box)
    (box / "new" / os.path.basename(os.fsdecode(theirs.list[0]))).write_bytes(b"\xff\n")
    with pytest.raises(UnicodeDecodeError), theirs.getMessage(0) as message:
        message.read()
    assert PopMailbox.scan(box).read(1) == b"\xff\n"


def test_delivered_names_carry_dovecot_size_fields(tmp_path):
    """deliver() names the file with S= (stored) and W= (CRLF) sizes, as Dovecot does."""
    content = b"Subject: x\n\nline\n"
    name = deliver(tmp_path / "box", content)
    assert name.endswith(f",S={len(content)},W={pop3_size(content)}")
    [message] = PopMailbox.scan(tmp_path / "box").messages
    assert message.size == pop3_size(content)


def test_files_without_size_fields_are_sized_by_reading(tmp_path):
    """A message placed by another program (no W= in its name) still gets its POP3 size."""
    box = ensure_maildir(tmp_path / "box")
    (box / "cur" / "1700000000.other.host:2,S").write_bytes(b"a\nbb\n")
    [message] = PopMailbox.scan(box).messages
    assert message.size == 7


def test_lock_excludes_another_process(tmp_path: Path) -> None:
    """A second mailhost process on the same data directory sees the maildrop as in use."""
    import subprocess
    import sys

    lock = MailboxLocks().acquire(tmp_path / "box")
    probe = (
        "import sys; from pathlib import Path; from mailhost.maildir import MailboxLocks;"
        "print(MailboxLocks().is_locked(Path(sys.argv[1])))"
    )
    held = subprocess.run(
        [sys.executable, "-c", probe, str(tmp_path / "box")],
        capture_output=True,
        text=True,
        check=True,
    )
    lock.release()
    freed = subprocess.run(
        [sys.executable, "-c", probe, str(tmp_path / "box")],
        capture_output=True,
        text=True,
        check=True,
    )
    assert (held.stdout.strip(), freed.stdout.strip()) == ("True", "False")


def test_delivery_fsyncs_file_then_links_then_fsyncs_directory(tmp_path, monkeypatch):
    """A 250 may follow deliver(): the file is fsync'd, linked into new/, and new/ fsync'd."""
    box = maildir.ensure_maildir(tmp_path / "box")
    steps: list[str] = []
    real_fsync, real_link, real_unlink = os.fsync, os.link, os.unlink

    def fsync(fd: int) -> None:
        target = os.readlink(f"/proc/self/fd/{fd}")
        steps.append("fsync dir " + Path(target).name if os.path.isdir(target) else "fsync file")
        real_fsync(fd)

    def link(src, dst) -> None:
        steps.append(f"link {Path(src).parent.name}->{Path(dst).parent.name}")
        real_link(src, dst)

    def unlink(path, *args, **kwargs) -> None:
        steps.append(f"unlink {Path(path).parent.name}")
        real_unlink(path, *args, **kwargs)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "link", link)
    monkeypatch.setattr(os, "unlink", unlink)
    deliver(box, b"Subject: x\n\nbody\n")
    assert steps == ["fsync file", "link tmp->new", "unlink tmp", "fsync dir new"]


def test_first_delivery_to_a_new_account_makes_its_maildir_durably(tmp_path, monkeypatch):
    """No Maildir yet: delivery makes it, fsyncing each parent, and stores the message."""
    synced: list[Path | str] = []
    real_fsync_dir = maildir._fsync_dir

    def fsync_dir(path: Path | str) -> None:
        synced.append(path)
        real_fsync_dir(path)

    monkeypatch.setattr(maildir, "_fsync_dir", fsync_dir)
    box = tmp_path / "mail" / "alice@example.org"
    name = deliver(box, b"first\n")
    assert (box / "new" / name).read_bytes() == b"first\n"
    assert {tmp_path / "mail", box, box / "new"} <= {Path(path) for path in synced}
    assert (box / "cur").is_dir()


def test_delivery_remakes_a_missing_new_directory(tmp_path):
    """new/ removed after a delivery made the Maildir: the link is retried once it is whole."""
    box = tmp_path / "box"
    first = deliver(box, b"first\n")
    (box / "new" / first).unlink()
    (box / "new").rmdir()
    name = deliver(box, b"body\n")
    assert (box / "new" / name).read_bytes() == b"body\n"
    assert list((box / "tmp").iterdir()) == []


def test_delivery_remakes_a_removed_maildir(tmp_path):
    """The whole Maildir removed after a delivery made it: the next delivery makes it again."""
    box = tmp_path / "box"
    deliver(box, b"first\n")
    shutil.rmtree(box)
    name = deliver(box, b"second\n")
    assert (box / "new" / name).read_bytes() == b"second\n"


def test_a_maildir_is_checked_once_per_process_under_a_lock(tmp_path, monkeypatch):
    """The first delivery makes the Maildir holding the lock (a second thread waits for its
    fsyncs); later deliveries check nothing."""
    calls: list[bool] = []
    real = maildir.ensure_maildir

    def ensure(path: Path) -> Path:
        calls.append(maildir._ensure_lock.locked())
        return real(path)

    monkeypatch.setattr(maildir, "ensure_maildir", ensure)
    for _ in range(3):
        deliver(tmp_path / "box", b"x\n")
    assert calls == [True]


def test_a_forked_child_names_files_with_its_own_pid():
    """The pid read once per process is read again in a forked child."""
    maildir.unique_name()
    read_end, write_end = os.pipe()
    child = os.fork()
    if child == 0:
        try:
            os.write(write_end, maildir.unique_name().encode())
        finally:
            os._exit(0)
    os.close(write_end)
    name = os.read(read_end, 4096).decode()
    os.close(read_end)
    os.waitpid(child, 0)
    assert f"P{child}Q" in name


def test_delivery_never_replaces_a_message_of_the_same_name(tmp_path, monkeypatch):
    """Should a name repeat (clock stepped back, PID reused), delivery fails, losing nothing."""
    box = maildir.ensure_maildir(tmp_path / "box")
    monkeypatch.setattr(maildir, "unique_name", lambda: "1.M000001P1Q1.host")
    first = deliver(box, b"first\n")
    with pytest.raises(FileExistsError):
        deliver(box, b"other\n")
    assert (box / "new" / first).read_bytes() == b"first\n"
    assert list((box / "tmp").iterdir()) == []


def test_first_delivery_makes_new_directories_durable(tmp_path, monkeypatch):
    """Creating an account's Maildir fsyncs every parent whose entries changed."""
    synced: list[Path] = []
    monkeypatch.setattr(maildir, "_fsync_dir", synced.append)
    maildir.ensure_maildir(tmp_path / "mail" / "alice@example.org")
    assert set(synced) == {tmp_path, tmp_path / "mail", tmp_path / "mail" / "alice@example.org"}
    synced.clear()
    maildir.ensure_maildir(tmp_path / "mail" / "alice@example.org")
    assert synced == []


HOURS = 3600.0


def _aged(box: Path, subdir: str, name: str, age: float, now: float) -> Path:
    """A file whose atime and mtime are ``age`` seconds before ``now`` (ctime is the real now)."""
    path = _put(box, subdir, name)
    os.utime(path, (now - age, now - age))
    return path


def test_sweep_removes_only_tmp_files_older_than_the_threshold(tmp_path: Path) -> None:
    """Leftovers of interrupted deliveries go after 36 hours; fresher ones may still be written."""
    box = tmp_path / "box"
    now = os.stat(_put(box, "tmp", "probe")).st_ctime + 40 * HOURS
    os.unlink(box / "tmp" / "probe")
    _aged(box, "tmp", "1.stale", 37 * HOURS, now)
    _aged(box, "tmp", "2.fresh", 1 * HOURS, now)
    assert maildir.sweep_tmp(box, now=now, max_age=36 * HOURS) == ["1.stale"]
    assert sorted(p.name for p in (box / "tmp").iterdir()) == ["2.fresh"]


def test_sweep_never_touches_new_or_cur(tmp_path: Path) -> None:
    """Only tmp/ holds leftovers; new/ and cur/ hold delivered mail, however old."""
    box = tmp_path / "box"
    now = os.stat(ensure_maildir(box) / "new").st_ctime + 100 * HOURS
    kept = [
        _aged(box, "new", "1.old", 99 * HOURS, now),
        _aged(box, "cur", "2.old:2,S", 99 * HOURS, now),
    ]
    assert maildir.sweep_tmp(box, now=now) == []
    assert all(path.exists() for path in kept)


def test_sweep_waits_for_every_file_time(tmp_path: Path) -> None:
    """A file with an old mtime but a recent ctime (just copied in, say) is not yet stale."""
    box = tmp_path / "box"
    real_now = os.stat(_put(box, "tmp", "1.copied")).st_ctime
    os.utime(box / "tmp" / "1.copied", (real_now - 99 * HOURS, real_now - 99 * HOURS))
    assert maildir.sweep_tmp(box, now=real_now) == []
    assert maildir.sweep_tmp(box, now=real_now + 36 * HOURS + 60) == ["1.copied"]


def test_sweep_default_threshold_is_36_hours(tmp_path: Path) -> None:
    """The Maildir convention's 36 hours, measured from the newest file time."""
    box = tmp_path / "box"
    ctime = os.stat(_put(box, "tmp", "1.left")).st_ctime
    newest = max(ctime, os.stat(box / "tmp" / "1.left").st_mtime)
    assert maildir.sweep_tmp(box, now=newest + 36 * HOURS - 1) == []
    assert maildir.sweep_tmp(box, now=newest + 36 * HOURS + 1) == ["1.left"]


def test_sweep_skips_directories_and_missing_maildirs(tmp_path: Path) -> None:
    """Only regular files are removed; a Maildir without tmp/ has nothing to sweep."""
    box = ensure_maildir(tmp_path / "box")
    (box / "tmp" / "sub").mkdir()
    now = os.stat(box / "tmp" / "sub").st_ctime + 99 * HOURS
    assert maildir.sweep_tmp(box, now=now) == []
    assert (box / "tmp" / "sub").is_dir()
    assert maildir.sweep_tmp(tmp_path / "absent", now=now) == []


def test_sweep_leaves_a_delivery_in_progress_alone(tmp_path: Path) -> None:
    """A tmp/ file being written now is younger than any threshold, so delivery never races it."""
    box = ensure_maildir(tmp_path / "box")
    fd = os.open(box / "tmp" / "1.writing", os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        os.write(fd, b"Subject: half")
        now = os.fstat(fd).st_ctime
        assert maildir.sweep_tmp(box, now=now) == []
    finally:
        os.close(fd)
    assert (box / "tmp" / "1.writing").exists()
