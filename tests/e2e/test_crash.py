"""Crash durability: real processes SIGKILLed at seeded moments, then the disk is checked.

SIGKILL stops a process between any two instructions but keeps what it had
handed to the kernel, so these tests prove the ordering that durability rests
on — a 250 only after the rename into new/, unlinks only in UPDATE, the
account file replaced by rename — not the fsyncs against a power cut.
Timing is seeded (``random.Random``) and every loop is bounded in count and
time; the kernel's scheduling still varies, so the properties are checked for
whatever happened, and the counts of what happened are only bounded below.
"""

from __future__ import annotations

import hashlib
import os
import poplib
import random
import re
import signal
import smtplib
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from email.parser import BytesHeaderParser
from email.policy import compat32
from pathlib import Path
from typing import Any

import pytest

from mailhost.accounts import AccountFile, hash_password, parse_users, verify_password
from mailhost.maildir import deliver, pop3_size, pop3_uid
from mailhost.testing import TEST_COST, read_ready_report

pytestmark = pytest.mark.e2e

SEED = 20130902
HOST = "127.0.0.1"
ACCOUNT = "alice@example.org"
PASSWORD = "alice-secret"
SENDER = "tester@crash.example"
EPHEMERAL = (
    *("--smtp-port", "0", "--submission-port", "0", "--pop3-port", "0"),
    *("--smtps-port", "0", "--pop3s-port", "0", "--http-port", "0"),
)
READY_TIMEOUT = 20.0
SMTP_ROUNDS = 3
SMTP_CLIENTS = 4
MAX_MESSAGES_PER_CLIENT = 400
ROUND_SECONDS = 4.0
ACCOUNT_ROUNDS = 6
RETR_SAMPLE = 40
USERS_LINE = re.compile(r"^[^:\s]+@[^:\s]+:\{BLF-CRYPT\}\$2b\$\d\d\$[./A-Za-z0-9]{53}$")


def mailhost_command(*args: str) -> list[str]:
    return [sys.executable, "-m", "mailhost", *args]


class Processes:
    """Every process a test starts; killed by PID, reaped and its pipes closed."""

    def __init__(self, log_dir: Path) -> None:
        self.log_dir = log_dir
        self.started: list[subprocess.Popen[Any]] = []

    def spawn(self, args: list[str], **kwargs: Any) -> subprocess.Popen[Any]:
        """Start ``args`` with stderr in a log file, so a chatty server never fills a pipe."""
        log = self.log_dir / f"process-{len(self.started)}.log"
        with open(log, "wb") as err:
            process = subprocess.Popen(
                args, stderr=err, env={**os.environ, "PYTHONUNBUFFERED": "1"}, **kwargs
            )
        self.started.append(process)
        return process

    def serve(self, data: Path) -> dict[str, int]:
        """Start ``mailhost serve`` on ephemeral ports; returns the ports of its ready line."""
        process = self.spawn(
            mailhost_command("serve", "--data", str(data), *EPHEMERAL),
            stdout=subprocess.PIPE,
            text=True,
        )
        assert process.stdout is not None
        report = read_ready_report(process.stdout, READY_TIMEOUT)
        if report is not None:
            return report["ports"]
        self.kill(process)
        raise AssertionError(f"mailhost serve never became ready: {self.log_dir}")

    @staticmethod
    def kill(process: subprocess.Popen[Any]) -> None:
        if process.poll() is None:
            os.kill(process.pid, signal.SIGKILL)
        process.wait(timeout=10)
        for pipe in (process.stdin, process.stdout):
            if pipe is not None:
                pipe.close()

    def kill_all(self) -> None:
        for process in self.started:
            self.kill(process)


@pytest.fixture
def processes(tmp_path: Path) -> Iterator[Processes]:
    started = Processes(tmp_path)
    yield started
    started.kill_all()


def make_data(tmp_path: Path) -> Path:
    data = tmp_path / "data"
    AccountFile(data / "users").add(ACCOUNT, PASSWORD, cost=TEST_COST)
    return data


def make_message(rng: random.Random, tag: str, large: bool) -> bytes:
    """A message whose headers carry its tag and a digest of its body (LF line ends).

    Large ones (150 to 450 KB) take many TCP writes; some lines start with a dot,
    so dot-stuffing is on the path too.
    """
    lines = []
    for _ in range(rng.randint(2000, 6000) if large else rng.randint(1, 30)):
        line = rng.randbytes(38).hex()
        lines.append("." + line if rng.random() < 0.05 else line)
    body = ("\n".join(lines) + "\n").encode("ascii")
    head = (
        f"From: <{SENDER}>\nTo: <{ACCOUNT}>\nSubject: crash {tag}\n"
        f"Message-ID: <{tag}@crash.example>\nX-Body-SHA256: {hashlib.sha256(body).hexdigest()}\n"
    )
    return head.encode("ascii") + b"\n" + body


def intact_tag(data: bytes, name: str | None = None) -> str:
    """The tag of a stored message, after checking it is whole: size field and body digest."""
    if name is not None:
        size = re.search(r",S=([0-9]+)", name)
        assert size and int(size.group(1)) == len(data), f"{name}: size field does not match"
    data = data.replace(b"\r\n", b"\n")
    head, blank, body = data.partition(b"\n\n")
    assert blank, f"{name}: no end of header"
    headers = BytesHeaderParser(policy=compat32).parsebytes(head + b"\n\n")
    digest = headers["X-Body-SHA256"]
    assert digest == hashlib.sha256(body).hexdigest(), f"{name}: body digest does not match"
    return str(headers["Message-ID"]).strip("<>").removesuffix("@crash.example")


def stored(box: Path) -> dict[str, Path]:
    """Every file a reader may see (new/ and cur/), by name."""
    return {p.name: p for sub in ("new", "cur") for p in sorted((box / sub).iterdir())}


def pop_listing(port: int, rng: random.Random) -> tuple[dict[str, int], dict[str, bytes]]:
    """UIDL → LIST size, and UIDL → bytes of a sample retrieved, in one session ended by QUIT."""
    client = pop_session(port)
    try:
        uids = dict(line.decode().split() for line in client.uidl()[1])
        sizes = dict(line.decode().split() for line in client.list()[1])
        listing = {uid: int(sizes[number]) for number, uid in uids.items()}
        sample = rng.sample(sorted(uids), min(len(uids), RETR_SAMPLE))
        bodies = {uids[n]: b"\n".join(client.retr(int(n))[1]) + b"\n" for n in sample}
        client.quit()
    finally:
        client.close()
    return listing, bodies


def check_pop_matches_disk(port: int, box: Path, rng: random.Random) -> dict[str, Path]:
    """POP3 lists exactly new/ and cur/, with their sizes, and what it retrieves is intact."""
    files = stored(box)
    listing, bodies = pop_listing(port, rng)
    expected = {pop3_uid(name): pop3_size(path.read_bytes()) for name, path in files.items()}
    assert listing == expected
    for leftover in (box / "tmp").iterdir():
        # A kill between link() into new/ and unlink() of tmp/ leaves a second name for the
        # same file: harmless. Anything else in tmp/ must never be listed.
        if leftover.name in files:
            assert leftover.samefile(files[leftover.name])
        else:
            assert pop3_uid(leftover.name) not in listing
    for data in bodies.values():
        intact_tag(data)
    return files


def send_until_killed(
    port: int,
    rng: random.Random,
    prefix: str,
    deadline: float,
    acked: list[str],
    refused: list[str],
) -> None:
    """Send numbered messages on one SMTP session; record each one whose DATA got 250.

    smtplib sends bytes as given, so line ends go out as CRLF (a bare LF ends no line).
    """
    try:
        with smtplib.SMTP(HOST, port, timeout=5) as client:
            for n in range(MAX_MESSAGES_PER_CLIENT):
                if time.monotonic() > deadline:
                    return
                tag = f"{prefix}.n{n}"
                message = make_message(rng, tag, rng.random() < 0.15)
                client.sendmail(SENDER, [ACCOUNT], message.replace(b"\n", b"\r\n"))
                acked.append(tag)
    except smtplib.SMTPServerDisconnected:
        return  # the server was killed; what was in flight may or may not be stored
    except smtplib.SMTPException as e:  # a subclass of OSError, so caught before it
        refused.append(f"{prefix}: {e!r}")  # a live server said no: the test is wrong
    except OSError:
        return  # reset or refused: killed too


def test_every_acknowledged_message_survives_sigkill_exactly_once(processes, tmp_path):
    """Each message whose DATA got 250 survives SIGKILLs once and whole; tmp/ is never listed."""
    data = make_data(tmp_path)
    box = data / "mail" / ACCOUNT
    rng = random.Random(SEED)
    acked: list[str] = []
    refused: list[str] = []
    per_round: list[int] = []
    for round_no in range(SMTP_ROUNDS):
        ports = processes.serve(data)
        deadline = time.monotonic() + ROUND_SECONDS
        before = len(acked)
        clients = [
            threading.Thread(
                target=send_until_killed,
                args=(
                    ports["smtp"],
                    random.Random(rng.random()),
                    f"r{round_no}.c{c}",
                    deadline,
                    acked,
                    refused,
                ),
            )
            for c in range(SMTP_CLIENTS)
        ]
        for client in clients:
            client.start()
        time.sleep(rng.uniform(0.2, 1.5))  # the moment of the crash
        processes.kill(processes.started[-1])
        for client in clients:
            client.join(timeout=max(0.0, deadline - time.monotonic()) + 10)
            assert not client.is_alive()
        per_round.append(len(acked) - before)

    assert not refused
    assert sum(per_round) > 0, per_round
    # What a crash mid-write leaves: a truncated copy in tmp/, which no reader may list.
    left_by_kills = len(list((box / "tmp").iterdir()))
    name = next(iter(stored(box)))
    planted = box / "tmp" / f"9{name}"
    planted.write_bytes((box / "new" / name).read_bytes()[:100])

    ports = processes.serve(data)
    files = check_pop_matches_disk(ports["pop3"], box, rng)
    assert planted.exists(), "a fresh tmp/ file is no stale leftover"
    tags = Counter(intact_tag(path.read_bytes(), name) for name, path in files.items())
    assert all(count == 1 for count in tags.values()), tags.most_common(3)
    missing = [tag for tag in acked if tag not in tags]
    assert not missing, f"acknowledged but lost: {missing[:5]}"
    print(f"acknowledged per round {per_round}; stored {len(tags)}; tmp/ left {left_by_kills}")


def pop_session(port: int) -> poplib.POP3:
    client = poplib.POP3(HOST, port, timeout=10)
    try:
        client.user(ACCOUNT)
        client.pass_(PASSWORD)
    except BaseException:
        client.close()
        raise
    return client


def fill(box: Path, rng: random.Random, count: int, prefix: str) -> None:
    for n in range(count):
        deliver(box, make_message(rng, f"{prefix}.n{n}", rng.random() < 0.2))


def test_pop3_deletes_only_at_quit_and_a_crash_in_update_damages_nothing(processes, tmp_path):
    """SIGKILL before QUIT keeps all mail; one during UPDATE removes only DELE'd ones, whole."""
    data = make_data(tmp_path)
    box = data / "mail" / ACCOUNT
    rng = random.Random(SEED + 1)
    fill(box, rng, 12, "start")
    before = {intact_tag(p.read_bytes(), n) for n, p in stored(box).items()}

    ports = processes.serve(data)
    client = pop_session(ports["pop3"])
    try:
        for number in rng.sample(range(1, 13), 6):
            client.dele(number)
        processes.kill(processes.started[-1])
    finally:
        client.close()
    assert {intact_tag(p.read_bytes(), n) for n, p in stored(box).items()} == before

    outcomes = Counter()
    for round_no in range(5):
        fill(box, rng, 4, f"top-up{round_no}")
        ports = processes.serve(data)
        client = pop_session(ports["pop3"])
        try:
            uids = dict(line.decode().split() for line in client.uidl()[1])
            tags = {pop3_uid(n): intact_tag(p.read_bytes(), n) for n, p in stored(box).items()}
            doomed = rng.sample(sorted(uids, key=int), rng.randint(1, len(uids)))
            for number in doomed:
                client.dele(int(number))
            kept = {tags[uid] for number, uid in uids.items() if number not in doomed}
            marked = {tags[uids[number]] for number in doomed}
            client.sock.sendall(b"QUIT\r\n")
            if round_no % 2:
                client.file.readline()  # kill just after +OK: UPDATE is done
            else:
                time.sleep(rng.uniform(0, 0.003))  # kill somewhere in UPDATE
            processes.kill(processes.started[-1])
        finally:
            client.close()
        after = {intact_tag(p.read_bytes(), n) for n, p in stored(box).items()}
        assert kept <= after, "a message not marked for deletion was lost"
        assert after <= kept | marked
        outcomes[len(after & marked)] += 1
        if round_no % 2:
            assert not after & marked, "+OK came before the deletions were done"

    ports = processes.serve(data)
    check_pop_matches_disk(ports["pop3"], box, rng)
    print(f"marked messages left after a kill in UPDATE: {dict(outcomes)}")


def users_file_state(path: Path) -> dict[str, str]:
    """The users file parsed, after checking every line is whole (comment or a bcrypt line)."""
    text = path.read_text(encoding="utf-8")
    assert text.endswith("\n")
    for line in text.splitlines():
        assert line.startswith("#") or USERS_LINE.match(line), f"damaged line {line!r}"
    return parse_users(text)


def test_account_file_is_old_or_new_under_sigkill(processes, tmp_path):
    """A user add/passwd killed at any moment leaves the users file whole: old or new version."""
    data = make_data(tmp_path)
    users = data / "users"
    first = hash_password("first", cost=TEST_COST)
    with open(users, "a", encoding="utf-8") as f:  # a file of some size: not one tiny write
        f.writelines(f"user{n}@example.org:{first}\n" for n in range(200))
    rng = random.Random(SEED + 2)
    passwords = {f"user{n}@example.org": "first" for n in range(200)}
    passwords[ACCOUNT] = PASSWORD

    def run(args: list[str], password: str) -> subprocess.Popen[Any]:
        process = processes.spawn(
            mailhost_command("user", *args, "--password-stdin", "--cost", "4", "--data", str(data)),
            stdin=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
        )
        assert process.stdin is not None
        process.stdin.write(password.encode() + b"\n")
        process.stdin.close()
        return process

    started = time.monotonic()
    baseline = run(["add", "baseline@example.org"], "base")
    assert baseline.wait(timeout=30) == 0
    duration = time.monotonic() - started
    passwords["baseline@example.org"] = "base"

    outcomes = Counter()
    leftovers: set[Path] = set()
    for round_no in range(ACCOUNT_ROUNDS):
        add = f"new{round_no}@example.org"
        change = rng.choice(sorted(passwords))
        workers = [
            run(["add", add], f"pw{round_no}"),
            run(["passwd", change], f"changed{round_no}"),
        ]
        began = time.monotonic()
        if round_no % 2:
            # Aim at the write itself: kill both soon after a new temp file appears.
            deadline = began + 3 * duration
            while time.monotonic() < deadline and set(data.glob(".users.*")) <= leftovers:
                time.sleep(0)
            time.sleep(rng.uniform(0, 0.002))
            moments = [time.monotonic()] * len(workers)
        else:
            moments = sorted(began + rng.uniform(0.5, 1.2) * duration for _ in workers)
        for process, moment in zip(rng.sample(workers, len(workers)), moments, strict=True):
            time.sleep(max(0.0, moment - time.monotonic()))
            processes.kill(process)
        outcomes["killed mid-write"] += not set(data.glob(".users.*")) <= leftovers
        leftovers = set(data.glob(".users.*"))
        state = users_file_state(users)
        assert set(passwords) <= set(state), "an account no one touched was lost"
        assert set(state) <= {*passwords, add}
        if add in state:
            passwords[add] = f"pw{round_no}"
            outcomes["add done"] += 1
        stored_hash = state[change]
        if verify_password(f"changed{round_no}".encode(), stored_hash):
            passwords[change] = f"changed{round_no}"
            outcomes["passwd done"] += 1
        else:
            assert verify_password(passwords[change].encode(), stored_hash)
    print(f"{ACCOUNT_ROUNDS} rounds of {duration:.2f} s commands: {dict(outcomes)}")
