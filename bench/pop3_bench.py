"""POP3 benchmark: mailhost side by side with Dovecot, same run, same client.

What it measures, each over ``--runs`` runs (median reported), mailhost and Dovecot in turn:

  RETR throughput  ``--sessions`` (8) concurrent sessions, each in its own client process (with
                   threads, the client's own GIL held a bare Twisted server that used a third of a
                   core near 9,000 RETR/s) and logged in to its own account whose Maildir holds
                   ``--messages`` (1,000) messages of ``--message-size`` (4,096) octets. Each
                   session logs in (USER/PASS), checks STAT, and once every session is logged in
                   they all send RETR 1..N one at a time: each RETR waits for the reply's
                   terminating ``.`` line before the next is sent (no pipelining, so a server that
                   holds back small segments - Nagle against delayed ACK - shows here). Every reply
                   is checked: ``+OK``, then exactly the expected number of octets (CRLF line ends,
                   byte-stuffed) ending in ``CRLF.CRLF``. The sessions end with QUIT and no DELE, so
                   the mailboxes are reused by the next run. The figure is RETRs over all sessions
                   per second of the RETR phase (first RETR sent to last reply read, login
                   excluded); RETR/s including the logins is reported too, and the server's CPU
                   seconds during the RETR phase (utime + stime from /proc, of the whole process
                   tree for Dovecot, reaped children included).
  logins/s         ``--login-clients`` (8) parallel clients, each on its own account hashed with
                   bcrypt at cost 12 (``{BLF-CRYPT}$2b$12$``, the same hashes for both servers)
                   and its own source address (127.0.0.2, .3, ...: mailhost counts checks in
                   progress against its per-address failed-login limit of 10), each repeating
                   connect, greeting, USER, PASS (correct: mailhost throttles failures), QUIT,
                   until ``--logins`` (48) logins were started or ``--login-seconds`` passed.
                   The figure is successful logins per second of wall time; the login latency
                   (connect to PASS +OK) and server CPU are reported with it. Each of these
                   accounts holds 10 messages, so a login also opens a small mailbox.

Setup: one set of bcrypt hashes is made (in a thread pool) and written both to mailhost's
users file (its documented ``address:{BLF-CRYPT}hash`` form) and to Dovecot's passwd-file. The
Maildirs are seeded once per script run by writing the message files directly, in mailhost's
file-name form (``<sec>.M<usec>P<pid>Q<n>.<host>,S=<size>,W=<CRLF size>``, which Dovecot reads
too), with LF line ends and no fsync (these are benchmark fixtures, not deliveries); both
servers get byte-identical files. Before the first run every account logs in once and lists
its mailbox (not timed), so Dovecot's index and uidlist exist before anything is measured.

mailhost runs as ``python -m mailhost serve`` on ephemeral loopback ports with
``--max-connections-per-ip`` raised. Dovecot (``dovecot -F``, so the benchmark owns the
master's PID) runs as a private instance from a config generated in the temporary directory:
POP3 only, on one 127.0.0.1 high port, every other listener off, ``ssl = no``, cleartext
logins allowed, passwd-file passdb, static userdb (uid/gid ``nobody``), ``maildir:~/Maildir``.
Login processes keep Dovecot's defaults (``service pop3-login``: ``service_count = 1``, i.e. a
new login process per connection, ``process_min_avail = 0``), as do ``auth_cache_size = 0``
(every login runs bcrypt) and the auth service (one process, which checks passwd-file
passwords itself). The instance needs root (its processes switch to the dovecot, dovenull and
nobody users). If Dovecot is missing or cannot be started its rows say why and mailhost's
ratios are None.

Targets, reported as pass/fail but never gating: mailhost RETR/s at least 0.75x Dovecot's, and
mailhost logins/s at cost 12 at least 1.5x Dovecot's. Prints one table and writes JSON to
bench/results/pop3-<timestamp>.json (or ``--json``) with a top-level ``summary`` list. Exit
status 0 whatever the targets say; 2 when mailhost could not be set up.

Bounds: loopback only (listeners on 127.0.0.1, clients from 127.0.0.0/8). Every process it
starts is its own child, stopped by PID (SIGTERM for mailhost and for Dovecot's master,
SIGKILL after 10 s). Every socket has a timeout (``--timeout``), every phase a time limit,
every loop a fixed count, and the whole run an overall ``--deadline`` after which remaining
runs are skipped. The temporary directory is removed at the end.
"""

from __future__ import annotations

import argparse
import contextlib
import multiprocessing
import os
import pwd
import queue
import resource
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import common

HOST = common.HOST
TERMINATOR = b"\r\n.\r\n"
DOMAIN = "example.org"
BCRYPT_COST = 12
LOGIN_MAILBOX_MESSAGES = 10
RETR_TARGET = 0.75
LOGIN_TARGET = 1.5
CLIENT_RECV = 262144
DOVECOT_USER = "nobody"
DOVECOT_INTERNAL_USER = "dovecot"
DOVECOT_LOGIN_USER = "dovenull"


class BenchError(RuntimeError):
    """A server replied wrongly, closed early or was too slow: the run's figure is not valid."""


# Messages and Maildirs


def make_message(number: int, size: int) -> bytes:
    """Message ``number`` as stored: LF line ends, exactly ``size`` octets, one dot-led line.

    Every message has the same length, so one expected reply size checks them all; the body
    has a line starting with ``.`` so the servers' byte-stuffing is exercised.
    """
    head = (
        "Return-Path: <sender@elsewhere.example>\n"
        "From: Sender <sender@elsewhere.example>\n"
        f"To: <undisclosed-recipients@{DOMAIN}>\n"
        f"Subject: POP3 benchmark message {number:07d}\n"
        f"Message-ID: <{number:07d}.pop3-bench@elsewhere.example>\n"
        "Date: Mon, 01 Jan 2024 00:00:00 +0000\n"
        "MIME-Version: 1.0\n"
        "Content-Type: text/plain; charset=us-ascii\n"
        "\n"
        ". this body line starts with a dot and is byte-stuffed on the wire\n"
    ).encode("ascii")
    filler = (b"The quick brown fox jumps over the lazy dog; pack my box with five dozen jugs" * 2)[
        :71
    ] + b"\n"
    body = bytearray(head)
    while len(body) + len(filler) < size:
        body += filler
    rest = size - len(body)
    if rest > 0:
        body += b"x" * (rest - 1) + b"\n"
    if len(body) != size:
        raise ValueError(f"--message-size {size} is too small for the headers")
    return bytes(body)


def wire_size(message: bytes) -> int:
    """Octets of a RETR reply after its first line: CRLF ends, dots doubled, ``.CRLF`` added."""
    lines = message.split(b"\n")
    if lines and lines[-1] == b"":
        lines.pop()
    stuffed = sum(len(line) + 2 + (1 if line.startswith(b".") else 0) for line in lines)
    return stuffed + 3


def crlf_size(message: bytes) -> int:
    return len(message) + message.count(b"\n") - message.count(b"\r\n")


def seed_maildir(maildir: Path, count: int, size: int, stamp: int, owner: int | None) -> None:
    """``count`` messages in ``maildir/new`` under mailhost's file names, without fsync."""
    host = socket.gethostname().replace("/", "\\057").replace(":", "\\072")
    for sub in ("tmp", "new", "cur"):
        (maildir / sub).mkdir(parents=True, exist_ok=True)
    for number in range(1, count + 1):
        data = make_message(number, size)
        name = (
            f"{stamp}.M{number:06d}P{os.getpid()}Q{number}.{host},S={len(data)},W={crlf_size(data)}"
        )
        path = maildir / "new" / name
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            os.write(fd, data)
        finally:
            os.close(fd)
    if owner is not None:
        for root, dirs, files in os.walk(maildir.parent):
            for entry in [root, *(os.path.join(root, d) for d in dirs)]:
                os.chown(entry, owner, owner)
            for name in files:
                os.chown(os.path.join(root, name), owner, owner)


def hash_passwords(passwords: dict[str, str], cost: int) -> dict[str, str]:
    """``{BLF-CRYPT}`` bcrypt hashes, made in parallel (bcrypt releases the GIL)."""
    import bcrypt

    def one(password: str) -> str:
        return "{BLF-CRYPT}" + bcrypt.hashpw(password.encode(), bcrypt.gensalt(cost)).decode()

    with ThreadPoolExecutor(max_workers=os.cpu_count() or 2) as pool:
        hashed = list(pool.map(one, passwords.values()))
    return dict(zip(passwords, hashed, strict=True))


def passwd_lines(hashes: dict[str, str]) -> str:
    return "".join(f"{address}:{stored}\n" for address, stored in hashes.items())


# The load generator


class PopClient:
    """A blocking POP3 client with TCP_NODELAY: one command at a time, large reads."""

    def __init__(self, port: int, timeout: float, source: str | None = None) -> None:
        self.sock = socket.create_connection(
            (HOST, port), timeout=timeout, source_address=(source, 0) if source else None
        )
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.buffer = b""

    def line(self) -> bytes:
        while b"\r\n" not in self.buffer:
            chunk = self.sock.recv(4096)
            if not chunk:
                raise BenchError(f"connection closed, partial line {self.buffer[:80]!r}")
            self.buffer += chunk
        line, self.buffer = self.buffer.split(b"\r\n", 1)
        return line

    def command(self, text: bytes, expect: bytes = b"+OK") -> bytes:
        self.sock.sendall(text + b"\r\n")
        reply = self.line()
        if not reply.startswith(expect):
            shown = text.split(b" ")[0] if text.startswith(b"PASS") else text
            raise BenchError(f"{shown.decode()} -> {reply[:120]!r}")
        return reply

    def login(self, user: str, password: str) -> None:
        greeting = self.line()
        if not greeting.startswith(b"+OK"):
            raise BenchError(f"greeting {greeting[:120]!r}")
        self.command(b"USER " + user.encode())
        self.command(b"PASS " + password.encode())

    def retr(self, number: int, expected: int) -> None:
        """RETR one message; checks ``+OK`` and that ``expected`` octets follow the first line."""
        sock = self.sock
        sock.sendall(b"RETR %d\r\n" % number)
        data = sock.recv(CLIENT_RECV)
        if not data.endswith(TERMINATOR):
            if data.startswith(b"-ERR") and data.endswith(b"\r\n"):
                raise BenchError(f"RETR {number} -> {data[:120]!r}")
            parts, tail = [data], data[-5:]
            while True:
                chunk = sock.recv(CLIENT_RECV)
                if not chunk:
                    raise BenchError(f"RETR {number}: connection closed mid-reply")
                parts.append(chunk)
                tail = (tail + chunk)[-5:]
                if tail == TERMINATOR:
                    break
            data = b"".join(parts)
        if not data.startswith(b"+OK"):
            raise BenchError(f"RETR {number} -> {data[:120]!r}")
        got = len(data) - data.index(b"\r\n") - 2
        if got != expected:
            raise BenchError(f"RETR {number}: {got} octets after +OK, expected {expected}")

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.close()


def client_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


@dataclass
class Server:
    name: str
    port: int
    pid: int
    note: str | None = None


def retr_session(
    port: int,
    user: str,
    password: str,
    messages: int,
    expected: int,
    timeout: float,
    stop_at: float,
    ready: Any,
    go: Any,
    leave: Any,
    results: Any,
) -> None:
    """One RETR session, run in its own process: log in, wait for ``go``, RETR 1..``messages``.

    Puts one dict on ``results``: the session's login time, its RETR phase as
    ``time.perf_counter()`` instants (CLOCK_MONOTONIC, comparable across processes), the RETRs
    done, its own CPU seconds during the phase, and an error if any.
    """
    result: dict[str, Any] = {"user": user, "retrs": 0, "error": None, "start": 0.0, "end": 0.0}
    client: PopClient | None = None
    try:
        try:
            begin = time.perf_counter()
            client = PopClient(port, timeout)
            client.login(user, password)
            stat = client.command(b"STAT").split()
            if len(stat) < 2 or stat[1] != b"%d" % messages:
                raise BenchError(f"STAT for {user}: {b' '.join(stat)!r}, wanted {messages}")
            result["login_s"] = time.perf_counter() - begin
        finally:
            ready.release()
        if not go.wait(max(0.1, stop_at - time.perf_counter())):
            raise BenchError("never told to start")
        cpu0 = client_cpu()
        result["start"] = time.perf_counter()
        for number in range(1, messages + 1):
            client.retr(number, expected)
            result["retrs"] = number
            if number % 100 == 0 and time.perf_counter() > stop_at:
                raise BenchError("RETR phase over its time limit")
        result["end"] = time.perf_counter()
        result["cpu_s"] = client_cpu() - cpu0
    except Exception as e:  # whatever it was, the parent must hear of it
        result["error"] = f"{user}: {e.__class__.__name__}: {e}"
    results.put(result)
    if client is not None:
        if result["error"] is None and leave.wait(timeout):
            with contextlib.suppress(OSError, BenchError):
                client.command(b"QUIT")
        client.close()


def retr_run(
    server: Server,
    accounts: list[tuple[str, str]],
    messages: int,
    expected: int,
    timeout: float,
    phase_seconds: float,
) -> dict[str, Any]:
    """One RETR run: every session logs in, then all RETR 1..``messages`` together.

    Each session is its own process. With threads, the client's GIL was the limit: eight
    threads reached about 9,000 RETR/s against a bare Twisted server that used a third of a
    core, and that server answered 30,000+ RETR/s to eight processes.
    """
    context = multiprocessing.get_context("fork")
    ready, go, leave = context.Semaphore(0), context.Event(), context.Event()
    results = context.Queue()
    shared = (ready, go, leave, results)
    started = time.perf_counter()
    stop_at = started + phase_seconds
    sessions = [
        context.Process(
            target=retr_session,
            args=(server.port, user, password, messages, expected, timeout, stop_at, *shared),
            daemon=True,
        )
        for user, password in accounts
    ]
    for process in sessions:
        process.start()
    for _ in sessions:
        if not ready.acquire(timeout=max(0.1, stop_at - time.perf_counter())):
            break
    cpu0 = common.tree_cpu(server.pid)
    go.set()
    found: list[dict[str, Any]] = []
    with contextlib.suppress(queue.Empty):
        for _ in sessions:
            found.append(results.get(timeout=max(0.1, stop_at + timeout - time.perf_counter())))
    cpu1 = common.tree_cpu(server.pid)
    leave.set()
    for process in sessions:
        process.join(timeout)
        if process.is_alive():
            process.kill()
            process.join()
    errors = [r["error"] for r in found if r["error"]]
    total = sum(r["retrs"] for r in found)
    if errors or len(found) < len(sessions):
        return {"ok": False, "errors": errors or ["a session did not finish"], "retrs": total}
    phase = max(r["end"] for r in found) - min(r["start"] for r in found)
    with_login = max(r["end"] for r in found) - started
    return {
        "ok": True,
        "retrs": total,
        "retr_per_s": total / phase,
        "retr_per_s_with_login": total / with_login,
        "phase_s": round(phase, 3),
        "with_login_s": round(with_login, 3),
        "login_s_median": round(statistics.median(r["login_s"] for r in found), 3),
        "server_cpu_s": round(cpu1 - cpu0, 3),
        "client_cpu_s": round(sum(r["cpu_s"] for r in found), 3),
        "octets": total * expected,
    }


def login_run(
    server: Server,
    accounts: list[tuple[str, str]],
    clients: int,
    logins: int,
    timeout: float,
    seconds: float,
) -> dict[str, Any]:
    """``clients`` parallel loops of connect/USER/PASS/QUIT until ``logins`` were started."""
    lock = threading.Lock()
    issued = 0
    latencies: list[float] = []
    errors: list[str] = []
    started = time.perf_counter()
    stop_at = started + seconds

    def loop(index: int) -> None:
        nonlocal issued
        user, password = accounts[index]
        source = f"127.0.0.{2 + index}"
        while True:
            with lock:
                if issued >= logins or time.perf_counter() > stop_at:
                    return
                issued += 1
            client: PopClient | None = None
            try:
                begin = time.perf_counter()
                client = PopClient(server.port, timeout, source)
                client.login(user, password)
                latency = time.perf_counter() - begin
                client.command(b"QUIT")
                with lock:
                    latencies.append(latency)
            except (OSError, BenchError) as e:
                with lock:
                    errors.append(f"{user}: {e}")
            finally:
                if client is not None:
                    client.close()

    cpu0, own0 = common.tree_cpu(server.pid), client_cpu()
    threads = [threading.Thread(target=loop, args=(i,), daemon=True) for i in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(max(0.1, stop_at + 2 * timeout - time.perf_counter()))
    wall = time.perf_counter() - started
    cpu1, own1 = common.tree_cpu(server.pid), client_cpu()
    return {
        "ok": not errors and bool(latencies),
        "logins": len(latencies),
        "errors": errors[:5],
        "error_count": len(errors),
        "logins_per_s": len(latencies) / wall if latencies else None,
        "wall_s": round(wall, 3),
        "latency_ms": common.stats(latencies),
        "server_cpu_s": round(cpu1 - cpu0, 3),
        "server_cpu_ms_per_login": round(1000 * (cpu1 - cpu0) / len(latencies), 1)
        if latencies
        else None,
        "client_cpu_s": round(own1 - own0, 3),
    }


def warm_up(server: Server, accounts: list[tuple[str, str]], timeout: float) -> None:
    """Log in to every account once and list it (builds Dovecot's index); not timed."""

    def one(account: tuple[str, str]) -> None:
        client = PopClient(server.port, timeout)
        try:
            client.login(*account)
            client.command(b"LIST")
            while client.line() != b".":
                pass
            client.command(b"QUIT")
        finally:
            client.close()

    # At most 8 at once from one address: mailhost counts checks in progress against its
    # per-address limit of 10 failed logins.
    with ThreadPoolExecutor(max_workers=min(8, len(accounts))) as pool:
        list(pool.map(one, accounts))


# The servers


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind((HOST, 0))
        return probe.getsockname()[1]


def wait_for_greeting(port: int, process: subprocess.Popen[bytes], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    last = "no attempt"
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise BenchError(f"exited with status {process.returncode} before listening")
        try:
            client = PopClient(port, 2.0)
        except OSError as e:
            last = str(e)
            time.sleep(0.05)
            continue
        try:
            greeting = client.line()
            client.command(b"QUIT")
        finally:
            client.close()
        if greeting.startswith(b"+OK"):
            return
        raise BenchError(f"greeting {greeting[:120]!r}")
    raise BenchError(f"not listening on {port} within {timeout:g} s ({last})")


def dovecot_config(tmp: Path, port: int, uid: int, gid: int) -> str:
    return f"""\
# Private Dovecot instance for the mailhost POP3 benchmark: POP3 only, loopback, high port.
base_dir = {tmp}/run
state_dir = {tmp}/state
log_path = {tmp}/dovecot.log
instance_name = mailhost-pop3-comparator
protocols = pop3
listen = 127.0.0.1
ssl = no
disable_plaintext_auth = no
auth_mechanisms = plain
default_internal_user = {DOVECOT_INTERNAL_USER}
default_login_user = {DOVECOT_LOGIN_USER}
first_valid_uid = {uid}
first_valid_gid = {gid}
mail_location = maildir:~/Maildir
pop3_uidl_format = %08Xu%08Xv
passdb {{
  driver = passwd-file
  args = scheme=BLF-CRYPT {tmp}/passwd
}}
userdb {{
  driver = static
  args = uid={uid} gid={gid} home={tmp}/vmail/%d/%n
}}
service pop3-login {{
  inet_listener pop3 {{
    port = {port}
  }}
  inet_listener pop3s {{
    port = 0
  }}
}}
service imap-login {{
  inet_listener imap {{
    port = 0
  }}
  inet_listener imaps {{
    port = 0
  }}
}}
service submission-login {{
  inet_listener submission {{
    port = 0
  }}
}}
"""


def dovecot_home(tmp: Path, address: str) -> Path:
    local, _, domain = address.partition("@")
    return tmp / "vmail" / domain / local


def dovecot_missing() -> str | None:
    """Why Dovecot cannot be the comparator here (no binary, a system user missing), or None."""
    if common.have("dovecot") is None or common.have("doveconf") is None:
        return "Dovecot skipped: dovecot or doveconf not found"
    for name in (DOVECOT_USER, DOVECOT_INTERNAL_USER, DOVECOT_LOGIN_USER):
        try:
            pwd.getpwnam(name)
        except KeyError:
            return f"Dovecot skipped: no system user {name!r}"
    if os.geteuid() != 0:
        return "Dovecot skipped: a private instance needs root (it switches to its own users)"
    return None


def start_dovecot(
    tmp: Path, hashes: dict[str, str], timeout: float
) -> tuple[subprocess.Popen[bytes], Server, dict[str, Any]]:
    """Write the config and passwd-file under ``tmp`` and start ``dovecot -F`` as a child."""
    binary = common.have("dovecot")
    doveconf = common.have("doveconf")
    if binary is None or doveconf is None:
        raise BenchError("dovecot or doveconf not found")
    version = subprocess.run(
        [binary, "--version"], capture_output=True, text=True, timeout=10, check=True
    ).stdout.strip()
    user = pwd.getpwnam(DOVECOT_USER)
    for name in (DOVECOT_INTERNAL_USER, DOVECOT_LOGIN_USER):
        pwd.getpwnam(name)
    tmp.chmod(0o711)
    (tmp / "state").mkdir(exist_ok=True)
    passwd = tmp / "passwd"
    passwd.write_text(passwd_lines(hashes))
    passwd.chmod(0o644)
    port = free_port()
    config = tmp / "dovecot.conf"
    config.write_text(dovecot_config(tmp, port, user.pw_uid, user.pw_gid))
    checked = subprocess.run(
        [doveconf, "-c", str(config), "-n"], capture_output=True, text=True, timeout=20
    )
    if checked.returncode != 0:
        raise BenchError(f"doveconf -n: {checked.stderr.strip()[-500:]}")
    settings: dict[str, Any] = {"version": version, "port": port, "uid": user.pw_uid}
    for key in (
        "service/pop3-login/service_count",
        "service/pop3-login/process_min_avail",
        "service/pop3-login/process_limit",
        "default_process_limit",
        "service/auth/process_limit",
        "auth_cache_size",
        "mail_fsync",
        "pop3_no_flag_updates",
    ):
        shown = subprocess.run(
            [doveconf, "-c", str(config), "-h", key], capture_output=True, text=True, timeout=20
        )
        settings[key] = shown.stdout.strip() if shown.returncode == 0 else None
    log = (tmp / "dovecot-stderr.log").open("wb")
    process = subprocess.Popen(
        [binary, "-F", "-c", str(config)],
        stdin=subprocess.DEVNULL,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    log.close()
    try:
        wait_for_greeting(port, process, timeout)
    except BenchError as e:
        stop_dovecot(process)
        tail = ""
        for name in ("dovecot-stderr.log", "dovecot.log"):
            with contextlib.suppress(OSError):
                tail += (tmp / name).read_text(errors="replace")[-800:]
        raise BenchError(f"{e}; log: {tail.strip()}") from None
    return process, Server("dovecot", port, process.pid), settings


def stop_dovecot(process: subprocess.Popen[bytes]) -> int:
    """SIGTERM to the master (it stops its own children), SIGKILL after 10 s."""
    return common.stop(process, signal.SIGTERM)


# Report


def log_errors(path: Path, markers: tuple[str, ...]) -> list[str]:
    """Lines of a server log that contain one of ``markers`` (none when there is no log)."""
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return []
    return [line for line in text.splitlines() if any(m in line for m in markers)]


def median_of(runs: list[dict[str, Any]], key: str) -> float | None:
    values = [run[key] for run in runs if run.get("ok") and run.get(key) is not None]
    return statistics.median(values) if values else None


def ratio(a: float | None, b: float | None) -> float | None:
    return round(a / b, 3) if a is not None and b else None


def fmt(value: float | None, digits: int = 1) -> str:
    return "-" if value is None else f"{value:,.{digits}f}"


def row(
    figure: str,
    system: str,
    value: float | None,
    unit: str,
    versus: str | None = None,
    other: float | None = None,
    target: float | None = None,
    note: str | None = None,
) -> dict[str, Any]:
    share = ratio(value, other) if versus else None
    return common.summary_row(
        figure,
        system,
        None if value is None else round(value, 2),
        unit,
        versus=versus,
        ratio=share,
        target=target,
        passed=None if share is None or target is None else share >= target,
        note=note,
    )


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        epilog="See the module docstring (bench/pop3_bench.py) for what is measured and how.",
    )
    parser.add_argument("--runs", type=int, default=3, help="runs per figure (median); default 3")
    parser.add_argument(
        "--quick", action="store_true", help="1 run, 200 messages per mailbox, 16 logins"
    )
    parser.add_argument("--sessions", type=int, default=8, help="concurrent RETR sessions")
    parser.add_argument("--messages", type=int, default=1000, help="messages per RETR mailbox")
    parser.add_argument("--message-size", type=int, default=4096, help="octets per message")
    parser.add_argument("--login-clients", type=int, default=8, help="parallel login clients")
    parser.add_argument("--logins", type=int, default=48, help="logins per login run")
    parser.add_argument(
        "--login-seconds", type=float, default=60.0, help="time limit of one login run"
    )
    parser.add_argument(
        "--retr-seconds", type=float, default=120.0, help="time limit of one RETR run"
    )
    parser.add_argument("--timeout", type=float, default=30.0, help="seconds per socket call")
    parser.add_argument(
        "--deadline", type=float, default=900.0, help="overall seconds; later runs are skipped"
    )
    parser.add_argument("--no-dovecot", action="store_true", help="measure mailhost alone")
    parser.add_argument("--json", type=Path, help="where to write the results")
    args = parser.parse_args(argv)
    if args.quick:
        args.runs, args.messages, args.logins = 1, min(args.messages, 200), min(args.logins, 16)
    if not (1 <= args.sessions <= 64 and 1 <= args.login_clients <= 200):
        parser.error("--sessions must be 1-64 and --login-clients 1-200")
    if args.runs < 1 or args.messages < 1 or args.logins < 1:
        parser.error("--runs, --messages and --logins must be at least 1")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    begun = time.monotonic()
    deadline = begun + args.deadline
    tmp = Path(tempfile.mkdtemp(prefix="mailhost-pop3-bench-"))
    notes: list[str] = []
    processes: list[tuple[subprocess.Popen[bytes], Callable[[subprocess.Popen[bytes]], int]]] = []
    try:
        return run(args, tmp, deadline, begun, notes, processes)
    finally:
        for process, stopper in reversed(processes):
            stopper(process)
        shutil.rmtree(tmp, ignore_errors=True)


def run(
    args: argparse.Namespace,
    tmp: Path,
    deadline: float,
    begun: float,
    notes: list[str],
    processes: list[tuple[subprocess.Popen[bytes], Callable[[subprocess.Popen[bytes]], int]]],
) -> int:
    sample = make_message(1, args.message_size)
    expected = wire_size(sample)
    retr_accounts = [
        (f"pop{i:02d}@{DOMAIN}", f"pop{i:02d}-secret-pw") for i in range(1, args.sessions + 1)
    ]
    login_accounts = [
        (f"login{i:02d}@{DOMAIN}", f"login{i:02d}-secret-pw")
        for i in range(1, args.login_clients + 1)
    ]
    passwords = dict(retr_accounts + login_accounts)

    print(f"hashing {len(passwords)} passwords at bcrypt cost {BCRYPT_COST}...", file=sys.stderr)
    setup_started = time.perf_counter()
    hashes = hash_passwords(passwords, BCRYPT_COST)

    from mailhost.accounts import AccountFile
    from mailhost.config import DataDir

    data = DataDir(tmp / "mailhost")
    data.root.mkdir(parents=True)
    data.users.write_text(
        "# mailhost accounts (Dovecot passwd-file): address:{BLF-CRYPT}hash\n"
        + passwd_lines(hashes)
    )
    data.users.chmod(0o600)
    if set(AccountFile(data.users).read()) != set(passwords):
        raise BenchError("mailhost does not read the users file as written")

    dovecot_note: str | None = "not run (--no-dovecot)" if args.no_dovecot else None
    if dovecot_note is None:
        dovecot_note = dovecot_missing()
        if dovecot_note:
            print(dovecot_note, file=sys.stderr)
    dovecot_wanted = dovecot_note is None
    stamp = int(time.time()) - 3600
    print(
        f"seeding {len(retr_accounts)} x {args.messages} + {len(login_accounts)} x "
        f"{LOGIN_MAILBOX_MESSAGES} messages of {args.message_size} octets per server...",
        file=sys.stderr,
    )
    nobody = pwd.getpwnam(DOVECOT_USER).pw_uid if dovecot_wanted else None
    for address, _ in retr_accounts + login_accounts:
        count = args.messages if address.startswith("pop") else LOGIN_MAILBOX_MESSAGES
        seed_maildir(data.mailbox(address), count, args.message_size, stamp, None)
        if dovecot_wanted:
            home = dovecot_home(tmp, address)
            seed_maildir(home / "Maildir", count, args.message_size, stamp, nobody)
    setup_s = time.perf_counter() - setup_started

    servers: list[Server] = []
    dovecot_settings: dict[str, Any] = {}
    extra = ["--max-connections-per-ip", "1000", "--max-connections", "2000"]
    try:
        process, report, start_s, stderr_path = common.start_mailhost(data.root, extra=extra)
    except (common.StartError, OSError) as e:
        print(f"could not start mailhost: {e}", file=sys.stderr)
        return 2
    processes.append((process, common.stop))
    mailhost = Server("mailhost", report["ports"]["pop3"], process.pid)
    servers.append(mailhost)
    if dovecot_wanted:
        try:
            dprocess, dovecot, dovecot_settings = start_dovecot(tmp, hashes, args.timeout)
        except (BenchError, OSError, KeyError, subprocess.SubprocessError) as e:
            dovecot_note = f"Dovecot could not be set up: {e}"
            print(dovecot_note, file=sys.stderr)
        else:
            processes.append((dprocess, stop_dovecot))
            servers.append(dovecot)

    print("warming up (one login and LIST per account on each server)...", file=sys.stderr)
    for server in list(servers):
        try:
            warm_up(server, retr_accounts + login_accounts, args.timeout)
        except (OSError, BenchError) as e:
            if server is mailhost:
                print(f"mailhost failed the warm-up: {e}", file=sys.stderr)
                return 2
            dovecot_note = f"Dovecot failed the warm-up: {e}"
            servers.remove(server)

    retr_runs: dict[str, list[dict[str, Any]]] = {s.name: [] for s in servers}
    login_runs: dict[str, list[dict[str, Any]]] = {s.name: [] for s in servers}
    for number in range(1, args.runs + 1):
        for server in servers:
            if time.monotonic() > deadline:
                notes.append(f"--deadline {args.deadline:g} s reached; later runs skipped")
                break
            result = retr_run(
                server, retr_accounts, args.messages, expected, args.timeout, args.retr_seconds
            )
            retr_runs[server.name].append(result)
            print(
                f"run {number} {server.name:<8} RETR: "
                + (
                    f"{result['retr_per_s']:,.0f}/s, server CPU {result['server_cpu_s']} s"
                    if result["ok"]
                    else f"FAILED {result['errors'][:2]}"
                ),
                file=sys.stderr,
            )
        for server in servers:
            if time.monotonic() > deadline:
                break
            result = login_run(
                server,
                login_accounts,
                args.login_clients,
                args.logins,
                args.timeout,
                min(args.login_seconds, max(1.0, deadline - time.monotonic())),
            )
            login_runs[server.name].append(result)
            print(
                f"run {number} {server.name:<8} logins: {fmt(result['logins_per_s'], 2)}/s "
                f"({result['logins']} ok, {result['error_count']} errors)",
                file=sys.stderr,
            )
        if time.monotonic() > deadline:
            notes.append(f"--deadline {args.deadline:g} s reached; later runs skipped")
            break

    mailhost_errors = log_errors(stderr_path, ("Traceback", "Unhandled"))
    dovecot_errors = log_errors(tmp / "dovecot.log", ("Error:", "Fatal:", "Panic:"))
    if dovecot_errors:
        notes.append(f"Dovecot logged {len(dovecot_errors)} error(s): {dovecot_errors[0][:200]}")

    def figures(name: str) -> dict[str, Any]:
        retr, logins = retr_runs.get(name, []), login_runs.get(name, [])
        cpu = median_of(retr, "server_cpu_s")
        done = median_of(retr, "retrs")
        return {
            "retr_per_s": median_of(retr, "retr_per_s"),
            "retr_per_s_with_login": median_of(retr, "retr_per_s_with_login"),
            "retr_server_cpu_s": cpu,
            "retr_cpu_ms_per_1000": 1e6 * cpu / done if cpu is not None and done else None,
            "retr_client_cpu_s": median_of(retr, "client_cpu_s"),
            "session_login_s": median_of(retr, "login_s_median"),
            "logins_per_s": median_of(logins, "logins_per_s"),
            "login_cpu_ms": median_of(logins, "server_cpu_ms_per_login"),
            "login_p50_ms": statistics.median(
                run["latency_ms"]["median_ms"]
                for run in logins
                if run.get("ok") and run["latency_ms"]["median_ms"] is not None
            )
            if any(run.get("ok") for run in logins)
            else None,
            "failed_runs": sum(not run.get("ok") for run in retr + logins),
        }

    mh, dc = figures("mailhost"), figures("dovecot")
    have_dc = "dovecot" in retr_runs
    dnote = None if have_dc else dovecot_note
    retr_label = (
        f"RETR/s, {args.sessions} sessions x {args.messages} x {args.message_size} B, "
        "login excluded"
    )
    login_label = f"logins/s at bcrypt cost {BCRYPT_COST}, {args.login_clients} clients"
    summary = [
        row(
            retr_label,
            "mailhost",
            mh["retr_per_s"],
            "RETR/s",
            "dovecot",
            dc["retr_per_s"] if have_dc else None,
            RETR_TARGET,
            dnote,
        ),
        row(retr_label, "dovecot", dc["retr_per_s"] if have_dc else None, "RETR/s", note=dnote),
        row(
            login_label,
            "mailhost",
            mh["logins_per_s"],
            "logins/s",
            "dovecot",
            dc["logins_per_s"] if have_dc else None,
            LOGIN_TARGET,
            dnote,
        ),
        row(
            login_label,
            "dovecot",
            dc["logins_per_s"] if have_dc else None,
            "logins/s",
            note=dnote,
        ),
        row(
            "server CPU per 1,000 RETR",
            "mailhost",
            mh["retr_cpu_ms_per_1000"],
            "ms",
            note="informational",
        ),
        row(
            "server CPU per 1,000 RETR",
            "dovecot",
            dc["retr_cpu_ms_per_1000"] if have_dc else None,
            "ms",
            note="informational; whole process tree" if have_dc else dnote,
        ),
    ]
    if dnote:
        notes.append(dnote)

    total_s = time.monotonic() - begun
    print(
        f"\nPOP3: mailhost vs Dovecot {dovecot_settings.get('version', '(not run)')}, "
        f"{len(retr_runs['mailhost'])} run(s) each (median), {os.cpu_count()} CPUs, "
        f"Python {sys.version.split()[0]}\n"
    )
    print(f"{'figure':<44} {'mailhost':>11} {'dovecot':>11} {'ratio':>7} {'target':>8}")
    lines = [
        ("RETR/s, login excluded", "retr_per_s", 0, RETR_TARGET),
        ("RETR/s, login included", "retr_per_s_with_login", 0, None),
        ("server CPU s in the RETR phase", "retr_server_cpu_s", 2, None),
        ("server CPU ms per 1,000 RETR", "retr_cpu_ms_per_1000", 0, None),
        ("client CPU s in the RETR phase", "retr_client_cpu_s", 2, None),
        ("session login + STAT s (median)", "session_login_s", 3, None),
        (f"logins/s at cost {BCRYPT_COST}", "logins_per_s", 2, LOGIN_TARGET),
        ("login latency ms (median)", "login_p50_ms", 0, None),
        ("server CPU ms per login", "login_cpu_ms", 0, None),
        ("failed runs", "failed_runs", 0, None),
    ]
    for label, key, digits, target in lines:
        a, b = mh[key], dc[key] if have_dc else None
        share = ratio(a, b) if target is not None else None
        verdict = (
            ""
            if target is None
            else f">={target:g} "
            + ("-" if share is None else ("ok" if share >= target else "MISS"))
        )
        print(
            f"{label:<44} {fmt(a, digits):>11} {fmt(b, digits):>11} "
            f"{fmt(share, 2) if share is not None else '':>7} {verdict:>8}"
        )
    for note in dict.fromkeys(notes):
        print(f"note: {note}")
    for name in retr_runs:
        for run in retr_runs[name] + login_runs[name]:
            if not run.get("ok"):
                print(f"note: {name} run failed: {run.get('errors', [])[:2]}")
    print(f"setup {setup_s:.1f} s, whole benchmark {total_s:.1f} s")

    results = {
        "benchmark": "pop3",
        "config": {
            "runs": args.runs,
            "quick": args.quick,
            "sessions": args.sessions,
            "messages": args.messages,
            "message_size": args.message_size,
            "retr_reply_octets": expected,
            "login_clients": args.login_clients,
            "logins": args.logins,
            "bcrypt_cost": BCRYPT_COST,
            "cpus": os.cpu_count(),
            "python": sys.version.split()[0],
        },
        "mailhost": {
            "start_s": round(start_s, 3),
            "figures": mh,
            "log_errors": mailhost_errors,
        },
        "dovecot": {
            "settings": dovecot_settings,
            "figures": dc if have_dc else None,
            "log_errors": dovecot_errors[:20],
        },
        "runs": {"retr": retr_runs, "logins": login_runs},
        "setup_s": round(setup_s, 2),
        "total_s": round(total_s, 1),
        "notes": list(dict.fromkeys(notes)),
        "summary": summary,
    }
    path = common.write_results("pop3", results, args.json)
    print(f"results: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
