"""SMTP durable accept throughput: mailhost beside aiosmtpd, Postfix and smtp-sink, one load.

What it measures: messages per second that a server accepts with a 250 after DATA, where
that 250 means the message is on disk (fsync'd), under Postfix's ``smtp-source`` as the one
load generator for every system:

    smtp-source -s 20 -l 2048 -m N -f sender@elsewhere.test -t user@example.org 127.0.0.1:PORT

(``--sessions`` parallel sessions, ``--size`` octets of payload, ``--messages`` messages),
in two modes:

  per-message   one connection per message (HELO, MAIL, RCPT, DATA, QUIT, then a new
                connection);
  kept-open     ``-d``: each session keeps its connection and sends message after message
                (HELO once); the sessions draw from one shared pool of N, so each sends
                about N / 20.

smtp-source does not pipeline, and closes each connection with SO_LINGER 0 after the reply to
QUIT, so every server sees a reset rather than a FIN at the end of a session.

Rate = N / smtp-source's wall time (spawn to exit; every 250 has arrived by then). The
systems, all started by this script on 127.0.0.1, all writing to the same file system:

  mailhost         ``python -m mailhost serve`` (common.start_mailhost) with the account
                   user@example.org (bcrypt cost 4) and ``--max-connections-per-ip 1000``;
                   load on its MX listener (local delivery, no AUTH). Stored messages are
                   counted in DATA/mail/user@example.org/new/.
  aiosmtpd         bench/comparators/aiosmtpd_maildir.py: aiosmtpd with a Maildir handler as
                   durable as mailhost (tmp/ file fsync'd, linked into new/, new/ fsync'd,
                   then 250), file work in a thread (``run_in_executor``).
  postfix          a private Postfix instance (needs root): its own config, queue and data
                   directories in the temporary directory, smtpd on 127.0.0.1:PORT only,
                   outbound transports set to ``error``, virtual(8) delivery of example.org
                   into a Maildir owned by ``nobody``. Its 250 means the queue file is fsync'd;
                   delivery into the Maildir is asynchronous, so each run also waits (at most
                   ``--deliver-timeout`` s) until all N are in the Maildir and reports that
                   time too ("delivered" rate = N / time from start to the last file).
  smtp-sink        Postfix's ``smtp-sink`` (stores nothing): the ceiling of the load
                   generator and loopback on this machine, not a durable system.

For every system and mode: a warm-up of ``--warmup`` messages, then ``--runs`` runs of N,
with the systems interleaved within each run (rotating order) so that load from elsewhere on
the machine falls on all of them alike; the reported figure is the median rate. For the
durable systems, every run (warm-ups too) checks that the Maildir grew by exactly N; any
other count, or smtp-source failing, is reported as an error. Server CPU is the server's
user + system time over the run (/proc/<pid>/stat; for Postfix the master and all its
descendants, reaped ones included), shown as CPU milliseconds per message; client CPU is
smtp-source's own (getrusage of waited children).

Targets (reported, never gating): mailhost at least 1.3x aiosmtpd's durable rate and at least
1.0x Postfix's accept rate, in each mode. The JSON's ``summary`` lists one row per figure.
Prints a table and writes JSON to bench/results/smtp-accept-<timestamp>.json (or ``--json``).
When ``smtp-source`` is not installed it writes a JSON with a note and exits 0. A comparator
that cannot be set up (aiosmtpd not importable, Postfix missing or not root) is skipped with
its reason as a note. Exit status: 0 normally, 1 when a mailhost run failed or lost messages,
2 when mailhost could not be started.

Bounds: everything listens on 127.0.0.1 only (Postfix: ``inet_interfaces = 127.0.0.1``, no
outbound transport, the default /etc/postfix instance untouched). Every process it starts is
stopped by its PID (SIGTERM, SIGKILL after 10 s), Postfix by ``postfix -c DIR stop``
(SIGKILL to its master and descendants only if that fails). Each smtp-source run is limited
to ``--source-timeout`` s, each wait for a start or a delivery to a fixed time, every loop to
a fixed count. The temporary directory is removed at the end.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import pwd
import resource
import secrets
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import common

HOST = common.HOST
SENDER = "sender@elsewhere.test"
RECIPIENT = "user@example.org"
DOMAIN = "example.org"
COMPARATOR = Path(__file__).resolve().parent / "comparators" / "aiosmtpd_maildir.py"
MODES: dict[str, list[str]] = {"per-message": [], "kept-open": ["-d"]}
FIGURES = {
    "per-message": "SMTP durable accept, one connection per message",
    "kept-open": "SMTP durable accept, kept-open connections",
}
LABELS = {
    "mailhost": "mailhost",
    "aiosmtpd": "aiosmtpd + Maildir (fsync)",
    "postfix": "Postfix (queued)",
    "smtp-sink": "smtp-sink (stores nothing)",
}
TARGETS = {"aiosmtpd": 1.3, "postfix": 1.0}
START_TIMEOUT = 30.0
POLL = 0.05
COMMAND_TIMEOUT = 60.0


class SetupError(RuntimeError):
    """A system could not be set up or started; it is skipped with this text as its note."""


def free_port() -> int:
    """A port on 127.0.0.1 that was free a moment ago (the server binds it next)."""
    with socket.socket() as probe:
        probe.bind((HOST, 0))
        return probe.getsockname()[1]


def greeting(port: int, timeout: float = 5.0) -> bytes:
    """The first line a server on 127.0.0.1:port sends, or b"" when it does not answer."""
    try:
        with socket.create_connection((HOST, port), timeout=timeout) as conn:
            conn.sendall(b"QUIT\r\n")
            data = b""
            while b"\n" not in data:
                chunk = conn.recv(4096)
                if not chunk:
                    break
                data += chunk
            return data.split(b"\n", 1)[0]
    except OSError:
        return b""


def wait_for_greeting(
    port: int, marker: bytes, process: subprocess.Popen[bytes] | None, timeout: float
) -> None:
    """Wait (bounded) until 127.0.0.1:port greets with a 220 line containing ``marker``."""
    deadline = time.monotonic() + timeout
    last = b""
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise SetupError(f"exited with status {process.returncode} before listening")
        last = greeting(port, timeout=2.0)
        if last.startswith(b"220") and marker in last:
            return
        time.sleep(POLL)
    raise SetupError(f"no 220 greeting with {marker!r} on port {port} within {timeout:g} s")


def count_files(directory: Path) -> int:
    try:
        with os.scandir(directory) as entries:
            return sum(1 for entry in entries if entry.is_file())
    except FileNotFoundError:
        return 0


def descendants(root: int) -> list[int]:
    table = common.proc_table()
    found: list[int] = []
    todo = [root]
    while todo:
        pid = todo.pop()
        kids = [child for child, (ppid, _) in table.items() if ppid == pid]
        found.extend(kids)
        todo.extend(kids)
    return found


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def filesystem_of(path: Path) -> str | None:
    """The file system type /proc/self/mounts gives for the mount ``path`` is on."""
    best, kind = "", None
    with contextlib.suppress(OSError):
        for line in Path("/proc/self/mounts").read_text().splitlines():
            parts = line.split()
            if len(parts) >= 3 and str(path).startswith(parts[1]) and len(parts[1]) > len(best):
                best, kind = parts[1], parts[2]
    return kind


CREATE_PROBE_FILES = 200
CREATE_PROBE_NOTE_US = 100.0


def file_create_us(directory: Path, count: int = CREATE_PROBE_FILES) -> float:
    """Median microseconds to create one empty file in ``directory`` (the files are kept).

    Every durable system here creates one file per message, so this cost is in all their
    rates. It is not constant: ext4 without a journal (as on some virtual machines) will not
    reuse an inode for a minute or more after its file was deleted, and creating files soon
    after many deletions (an earlier benchmark's clean-up) then costs hundreds of
    microseconds each instead of a few; a shared cost that narrows every ratio.
    """
    directory.mkdir(parents=True, exist_ok=True)
    times = []
    for number in range(count):
        started = time.perf_counter()
        os.close(os.open(directory / f"probe-{number}", os.O_WRONLY | os.O_CREAT | os.O_EXCL))
        times.append(time.perf_counter() - started)
    return statistics.median(times) * 1e6


def client_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


@dataclass
class System:
    """One server under load: how to start it, where its messages land, its CPU, how to stop."""

    name: str
    durable: bool
    port: int = 0
    pid: int | None = None
    maildir_new: Path | None = None
    process: subprocess.Popen[bytes] | None = None
    info: dict[str, Any] = field(default_factory=dict)

    def start(self) -> None:
        raise NotImplementedError

    def cpu(self) -> float:
        return common.cpu_seconds(self.pid) if self.pid else 0.0

    def stored(self) -> int:
        return count_files(self.maildir_new) if self.maildir_new else 0

    def settle(self, expected: int, timeout: float) -> float | None:
        """Seconds waited until ``expected`` messages are stored (None: not within timeout)."""
        return 0.0 if self.stored() >= expected else None

    def stop(self) -> None:
        if self.process is not None:
            # SIGTERM, not SIGINT: a shell that starts this script in the background makes
            # it (and so every child) ignore SIGINT, and the server would then be killed.
            started = time.perf_counter()
            self.info["exit_status"] = common.stop(self.process, signal.SIGTERM)
            self.info["stop_s"] = round(time.perf_counter() - started, 2)
            self.process = None


@dataclass
class Mailhost(System):
    base: Path = Path()

    def start(self) -> None:
        data = self.base / "mailhost-data"
        common.add_accounts(data, {RECIPIENT: "pw"}, cost=4)
        extra = ["--max-connections-per-ip", "1000", "--max-connections", "1000"]
        try:
            process, ready, seconds, stderr = common.start_mailhost(data, extra=extra)
        except common.StartError as e:
            raise SetupError(str(e)) from None
        from mailhost.config import DataDir

        self.process, self.pid, self.port = process, process.pid, ready["ports"]["smtp"]
        self.maildir_new = DataDir(data).mailbox(RECIPIENT) / "new"
        self.info.update({"start_s": round(seconds, 3), "stderr_log": str(stderr)})

    def stop(self) -> None:
        if self.pid:
            self.info["rss_kib_at_end"] = common.rss_kib(self.pid)
        super().stop()
        with contextlib.suppress(OSError):
            log = Path(self.info.pop("stderr_log", "")).read_text(errors="replace")
            self.info["stderr_tracebacks"] = log.count("Traceback")


@dataclass
class Aiosmtpd(System):
    base: Path = Path()

    def start(self) -> None:
        probe = subprocess.run(
            [sys.executable, "-c", "import aiosmtpd; print(aiosmtpd.__version__)"],
            capture_output=True,
            text=True,
            timeout=COMMAND_TIMEOUT,
        )
        if probe.returncode != 0:
            raise SetupError("aiosmtpd is not importable (install the bench extra)")
        self.info["version"] = probe.stdout.strip()
        maildir = self.base / "aiosmtpd-maildir"
        stderr_path = self.base / "aiosmtpd-stderr.log"
        with stderr_path.open("wb") as stderr:
            self.process = subprocess.Popen(
                [sys.executable, str(COMPARATOR), "--port", "0", "--maildir", str(maildir)],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=stderr,
                env={**os.environ, "PYTHONUNBUFFERED": "1"},
            )
        try:
            line = common.read_line(self.process, common.is_ready, START_TIMEOUT)
        except common.StartError as e:
            self.stop()
            raise SetupError(f"{e}: {stderr_path.read_text(errors='replace')[-1000:]}") from None
        self.pid, self.port = self.process.pid, json.loads(line)["port"]
        self.maildir_new = maildir / "new"


@dataclass
class SmtpSink(System):
    binary: str = ""

    def start(self) -> None:
        marker = f"sink-{secrets.token_hex(4)}.example.net"
        errors = []
        for _ in range(3):
            self.port = free_port()
            self.process = subprocess.Popen(
                [self.binary, "-u", "nobody", "-h", marker, f"{HOST}:{self.port}", "256"],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
            )
            try:
                wait_for_greeting(self.port, marker.encode(), self.process, START_TIMEOUT)
            except SetupError as e:
                self.stop_sink()
                errors.append(str(e))
                continue
            self.pid = self.process.pid
            return
        raise SetupError("; ".join(dict.fromkeys(errors)))

    def stop_sink(self) -> None:
        if self.process is not None:
            common.stop(self.process, signal.SIGTERM)
            assert self.process.stderr is not None
            with contextlib.suppress(OSError, ValueError):
                self.info["stderr"] = self.process.stderr.read()[-500:].decode(errors="replace")
                self.process.stderr.close()
            self.process = None

    def stop(self) -> None:
        self.stop_sink()


@dataclass
class Postfix(System):
    base: Path = Path()
    postfix: str = ""
    conf: Path = Path()
    master_pid: int | None = None
    maillog: Path = Path()

    def run(self, *args: str) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(
            [*args], capture_output=True, text=True, timeout=COMMAND_TIMEOUT, check=False
        )
        if result.returncode != 0:
            tail = self.maillog.read_text(errors="replace")[-1500:] if self.maillog.exists() else ""
            raise SetupError(
                f"{' '.join(args)} exited {result.returncode}: "
                f"{(result.stderr or result.stdout).strip()[-1500:]}"
                + (f"\nmaillog:\n{tail}" if tail else "")
            )
        return result

    def configure(self, port: int, hostname: str) -> None:
        """Write main.cf and master.cf for an instance under ``base``/postfix."""
        top = self.base / "postfix"
        self.conf, queue, data = top / "conf", top / "queue", top / "data"
        vmail, vmailbox = top / "vmail", top / "vmailbox"
        self.maillog = top / "maillog"
        for directory in (self.conf, queue, data, vmail):
            directory.mkdir(parents=True, exist_ok=True)
        top.chmod(0o755)
        owner = pwd.getpwnam("postfix")
        nobody = pwd.getpwnam("nobody")
        os.chown(data, owner.pw_uid, owner.pw_gid)
        os.chown(vmail, nobody.pw_uid, nobody.pw_gid)
        vmailbox.write_text(f"{RECIPIENT} {DOMAIN}/user/\n")
        self.maildir_new = vmail / DOMAIN / "user" / "new"
        settings = {
            "compatibility_level": "3.6",
            "queue_directory": queue,
            "data_directory": data,
            "maillog_file": self.maillog,
            "maillog_file_prefixes": top,
            "myhostname": hostname,
            "inet_interfaces": HOST,
            "inet_protocols": "ipv4",
            "mydestination": "",
            "mynetworks": "127.0.0.0/8",
            "relay_domains": "",
            "alias_maps": "",
            "alias_database": "",
            "local_recipient_maps": "",
            "default_transport": "error:outbound mail disabled",
            "relay_transport": "error:outbound mail disabled",
            "smtpd_relay_restrictions": "permit_mynetworks, reject_unauth_destination",
            "virtual_mailbox_domains": DOMAIN,
            "virtual_mailbox_base": vmail,
            "virtual_mailbox_maps": f"texthash:{vmailbox}",
            "virtual_uid_maps": f"static:{nobody.pw_uid}",
            "virtual_gid_maps": f"static:{nobody.pw_gid}",
        }
        (self.conf / "main.cf").write_text("".join(f"{k} = {v}\n" for k, v in settings.items()))
        base_master = Path("/etc/postfix/master.cf")
        if base_master.exists():
            shutil.copyfile(base_master, self.conf / "master.cf")
        else:
            (self.conf / "master.cf").write_text(MINIMAL_MASTER_CF)
        postconf = common.have("postconf") or str(Path(self.postfix).with_name("postconf"))
        conf = str(self.conf)
        # No chroot (the queue directory is not set up as a jail); smtpd on our port only.
        self.run(postconf, "-c", conf, "-F", "*/*/chroot = n")
        for service in ("smtp/inet", "submission/inet", "smtps/inet", "postscreen/inet"):
            with contextlib.suppress(SetupError):
                self.run(postconf, "-c", conf, "-M", "-X", service)
        self.run(
            postconf,
            "-c",
            conf,
            "-M",
            "-e",
            f"{HOST}:{port}/inet = {HOST}:{port} inet n - n - - smtpd",
        )
        self.info["version"] = self.run(postconf, "-c", conf, "-h", "mail_version").stdout.strip()

    def start(self) -> None:
        if os.geteuid() != 0:
            raise SetupError("a private Postfix instance needs root")
        for user in ("postfix", "nobody"):
            try:
                pwd.getpwnam(user)
            except KeyError:
                raise SetupError(f"no user {user!r}") from None
        hostname = f"postfix-{secrets.token_hex(4)}.example.net"
        errors: list[str] = []
        for _ in range(3):
            self.port = free_port()
            try:
                self.configure(self.port, hostname)
                check = self.run(self.postfix, "-c", str(self.conf), "check")
                self.info["check_warnings"] = (check.stderr + check.stdout).strip()[-1500:]
                self.run(self.postfix, "-c", str(self.conf), "start")
                self.master_pid = self.read_master_pid()
                wait_for_greeting(self.port, hostname.encode(), None, START_TIMEOUT)
            except (SetupError, OSError, subprocess.TimeoutExpired) as e:
                self.stop()
                errors.append(str(e))
                continue
            self.pid = self.master_pid
            return
        raise SetupError("; ".join(dict.fromkeys(errors)))

    def read_master_pid(self) -> int | None:
        pid_file = self.base / "postfix" / "queue" / "pid" / "master.pid"
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            with contextlib.suppress(OSError, ValueError):
                pid = int(pid_file.read_text().strip())
                if pid_alive(pid):
                    return pid
            time.sleep(POLL)
        raise SetupError(f"no live master PID in {pid_file} within {START_TIMEOUT:g} s")

    def cpu(self) -> float:
        return common.tree_cpu(self.master_pid) if self.master_pid else 0.0

    def settle(self, expected: int, timeout: float) -> float | None:
        started = time.perf_counter()
        deadline = started + timeout
        while time.perf_counter() < deadline:
            if self.stored() >= expected:
                return time.perf_counter() - started
            time.sleep(POLL)
        return None

    def stop(self) -> None:
        if not self.conf.is_dir() or not (self.conf / "main.cf").exists():
            return
        master = self.master_pid
        if master is None:
            with contextlib.suppress(OSError, ValueError):
                pid_file = self.base / "postfix" / "queue" / "pid" / "master.pid"
                master = int(pid_file.read_text().strip())
        if master is None or not pid_alive(master):
            self.master_pid = None
            return
        stop_error = None
        try:
            self.run(self.postfix, "-c", str(self.conf), "stop")
        except (SetupError, subprocess.TimeoutExpired) as e:
            stop_error = str(e)
        deadline = time.monotonic() + common.STOP_TIMEOUT
        while pid_alive(master) and time.monotonic() < deadline:
            time.sleep(POLL)
        if pid_alive(master):
            for pid in [*descendants(master), master]:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            self.info["killed"] = f"SIGKILL after stop did not end it ({stop_error})"
        self.master_pid = None

    def maillog_tail(self) -> str:
        with contextlib.suppress(OSError):
            return self.maillog.read_text(errors="replace")[-800:]
        return ""


MINIMAL_MASTER_CF = """\
pickup    unix  n       -       n       60      1       pickup
cleanup   unix  n       -       n       -       0       cleanup
qmgr      unix  n       -       n       300     1       qmgr
rewrite   unix  -       -       n       -       -       trivial-rewrite
bounce    unix  -       -       n       -       0       bounce
defer     unix  -       -       n       -       0       bounce
trace     unix  -       -       n       -       0       bounce
verify    unix  -       -       n       -       1       verify
flush     unix  n       -       n       1000?   0       flush
proxymap  unix  -       -       n       -       -       proxymap
showq     unix  n       -       n       -       -       showq
error     unix  -       -       n       -       -       error
retry     unix  -       -       n       -       -       error
discard   unix  -       -       n       -       -       discard
virtual   unix  -       n       n       -       -       virtual
anvil     unix  -       -       n       -       1       anvil
scache    unix  -       -       n       -       1       scache
postlog   unix-dgram n  -       n       -       1       postlogd
"""


def smtp_source(
    binary: str, port: int, messages: int, mode: str, args: argparse.Namespace
) -> dict[str, Any]:
    """One smtp-source run: wall seconds, smtp-source's CPU, exit status and stderr tail."""
    command = [
        binary,
        "-s",
        str(args.sessions),
        "-l",
        str(args.size),
        "-m",
        str(messages),
        *MODES[mode],
        "-f",
        SENDER,
        "-t",
        RECIPIENT,
        f"{HOST}:{port}",
    ]
    cpu_before = client_cpu()
    started = time.perf_counter()
    try:
        result = subprocess.run(command, capture_output=True, timeout=args.source_timeout)
        status, stderr = result.returncode, result.stderr.decode(errors="replace")
    except subprocess.TimeoutExpired as e:
        status = None
        stderr = f"timed out after {args.source_timeout:g} s; " + (
            (e.stderr or b"").decode(errors="replace")
        )
    wall = time.perf_counter() - started
    return {
        "wall_s": wall,
        "client_cpu_s": round(client_cpu() - cpu_before, 3),
        "status": status,
        "stderr": stderr.strip()[-500:],
    }


def one_run(
    system: System, binary: str, mode: str, messages: int, args: argparse.Namespace
) -> dict[str, Any]:
    """Load ``system`` with ``messages`` messages; check what it stored; time and CPU."""
    stored_before = system.stored()
    load = os.getloadavg()[0]
    cpu_before = system.cpu()
    source = smtp_source(binary, system.port, messages, mode, args)
    cpu_accept = system.cpu() - cpu_before
    run: dict[str, Any] = {
        "messages": messages,
        "wall_s": round(source["wall_s"], 4),
        "rate": round(messages / source["wall_s"], 1) if source["status"] == 0 else None,
        "server_cpu_s": round(cpu_accept, 3),
        "client_cpu_s": source["client_cpu_s"],
        "loadavg_1m_before": round(load, 2),
        "error": None,
    }
    if source["status"] != 0:
        run["error"] = f"smtp-source exited {source['status']}: {source['stderr']}"
    if not system.durable:
        return run
    expected = stored_before + messages
    waited = system.settle(expected, args.deliver_timeout)
    stored = system.stored() - stored_before
    run["stored"] = stored
    if isinstance(system, Postfix):
        run["delivered_s"] = round(source["wall_s"] + waited, 4) if waited is not None else None
        delivered = run["delivered_s"]
        run["delivered_rate"] = round(messages / delivered, 1) if delivered else None
        run["server_cpu_until_delivered_s"] = round(system.cpu() - cpu_before, 3)
    if stored != messages and run["error"] is None:
        run["error"] = f"stored {stored} of {messages} sent"
        if isinstance(system, Postfix):
            run["error"] += f"; maillog tail: {system.maillog_tail()}"
    return run


def median(values: list[float]) -> float | None:
    return round(statistics.median(values), 1) if values else None


def summarise(runs: list[dict[str, Any]]) -> dict[str, Any]:
    rates = [r["rate"] for r in runs if r["rate"] is not None and r["error"] is None]
    cpu_ms = [
        r["server_cpu_s"] * 1000 / r["messages"]
        for r in runs
        if r["rate"] is not None and r["error"] is None
    ]
    out: dict[str, Any] = {
        "median_rate": median(rates),
        "min_rate": min(rates, default=None),
        "max_rate": max(rates, default=None),
        "server_cpu_ms_per_msg": round(statistics.median(cpu_ms), 3) if cpu_ms else None,
        "client_cpu_ms_per_msg": round(
            statistics.median([r["client_cpu_s"] * 1000 / r["messages"] for r in runs] or [0]), 3
        ),
        "errors": [r["error"] for r in runs if r["error"]],
    }
    delivered = [r["delivered_rate"] for r in runs if r.get("delivered_rate")]
    if delivered:
        out["median_delivered_rate"] = median(delivered)
    return out


def summary_rows(results: dict[str, Any], args: argparse.Namespace) -> list[dict[str, Any]]:
    systems = results["systems"]

    def value(name: str, mode: str, key: str = "median_rate") -> float | None:
        entry = systems.get(name, {})
        return entry.get("modes", {}).get(mode, {}).get("summary", {}).get(key)

    def note(name: str, mode: str) -> str | None:
        if name not in systems:
            return "not measured (not in --systems)"
        entry = systems[name]
        if entry.get("skipped"):
            return f"skipped: {entry['skipped']}"
        errors = entry.get("modes", {}).get(mode, {}).get("summary", {}).get("errors")
        return f"errors: {'; '.join(errors)[:300]}" if errors else None

    rows: list[dict[str, Any]] = []
    load = f"{args.sessions} sessions, {args.size} B, median of {args.runs} x {args.messages}"
    create_us = results["machine"].get("file_create_us_at_start")
    if create_us is not None:
        load += f"; a file create took {create_us:.0f} us at the start"
    for mode in args.modes:
        figure = FIGURES[mode]
        ours = value("mailhost", mode)
        ours_note = note("mailhost", mode)
        for versus, target in TARGETS.items():
            theirs = value(versus, mode)
            ratio = round(ours / theirs, 3) if ours and theirs else None
            passed = None if ratio is None else ratio >= target and not ours_note
            rows.append(
                common.summary_row(
                    figure,
                    LABELS["mailhost"],
                    ours,
                    "msg/s",
                    versus=LABELS[versus],
                    ratio=ratio,
                    target=target,
                    passed=passed,
                    note=ours_note or (note(versus, mode) if ratio is None else load),
                )
            )
        for name in ("aiosmtpd", "postfix", "smtp-sink"):
            extra = "ceiling: stores nothing" if name == "smtp-sink" else load
            rows.append(
                common.summary_row(
                    figure, LABELS[name], value(name, mode), "msg/s", note=note(name, mode) or extra
                )
            )
            if name == "postfix":
                rows.append(
                    common.summary_row(
                        figure,
                        "Postfix (delivered into Maildir)",
                        value(name, mode, "median_delivered_rate"),
                        "msg/s",
                        note=note(name, mode)
                        or "N / time from the first connection to the last file in new/",
                    )
                )
    return rows


def fmt(value: float | None, spec: str = ".0f") -> str:
    return "-" if value is None else format(value, spec)


def print_table(results: dict[str, Any], rows: list[dict[str, Any]]) -> None:
    print()
    header = (
        f"{'mode':<12} {'system':<28} {'msg/s':>7} {'min':>7} {'max':>7} "
        f"{'srv CPU ms/msg':>14} {'client ms/msg':>13}  notes"
    )
    print(header)
    print("-" * len(header))
    for mode in results["parameters"]["modes"]:
        for name, entry in results["systems"].items():
            if entry.get("skipped"):
                print(f"{mode:<12} {LABELS[name]:<28} skipped: {entry['skipped'][:120]}")
                continue
            s = entry["modes"].get(mode, {}).get("summary", {})
            notes = []
            if "median_delivered_rate" in s:
                notes.append(f"delivered {fmt(s['median_delivered_rate'])} msg/s")
            if s.get("errors"):
                notes.append(f"ERRORS: {s['errors'][0][:80]} ({len(s['errors'])})")
            print(
                f"{mode:<12} {LABELS[name]:<28} {fmt(s.get('median_rate')):>7} "
                f"{fmt(s.get('min_rate')):>7} {fmt(s.get('max_rate')):>7} "
                f"{fmt(s.get('server_cpu_ms_per_msg'), '.2f'):>14} "
                f"{fmt(s.get('client_cpu_ms_per_msg'), '.2f'):>13}  {'; '.join(notes)}"
            )
    print()
    for row in rows:
        if row["versus"] is None:
            continue
        verdict = {True: "pass", False: "FAIL", None: "n/a"}[row["pass"]]
        print(
            f"{row['figure']}: mailhost / {row['versus']} = {fmt(row['ratio'], '.2f')} "
            f"(target >= {row['target']:g}) {verdict}"
        )
    for note in results["notes"]:
        print(f"note: {note}")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="Systems: " + ", ".join(LABELS) + ". Modes: " + ", ".join(MODES) + ".",
    )
    parser.add_argument("--messages", type=int, default=3000, help="messages per run (3000)")
    parser.add_argument("--runs", type=int, default=3, help="measured runs per system (3)")
    parser.add_argument("--warmup", type=int, default=200, help="warm-up messages (200)")
    parser.add_argument("--quick", action="store_true", help="1 run of 1000 messages")
    parser.add_argument("--sessions", type=int, default=20, help="parallel sessions (20)")
    parser.add_argument("--size", type=int, default=2048, help="payload octets (2048)")
    parser.add_argument(
        "--systems",
        default=",".join(LABELS),
        help="comma-separated subset of: " + ", ".join(LABELS) + " (all)",
    )
    parser.add_argument("--modes", default=",".join(MODES), help="per-message,kept-open (both)")
    parser.add_argument(
        "--source-timeout", type=float, default=120.0, help="limit per smtp-source run (120 s)"
    )
    parser.add_argument(
        "--deliver-timeout",
        type=float,
        default=120.0,
        help="limit on waiting for Postfix to deliver one run into its Maildir (120 s)",
    )
    parser.add_argument("--tmp", type=Path, default=None, help="parent of the temporary dir")
    parser.add_argument("--json", type=Path, default=None, help="results file to write")
    args = parser.parse_args(argv)
    if args.quick:
        args.runs, args.messages = 1, 1000
    args.systems = [s.strip() for s in args.systems.split(",") if s.strip()]
    args.modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    unknown = [s for s in args.systems if s not in LABELS] + [
        m for m in args.modes if m not in MODES
    ]
    if unknown:
        parser.error(f"unknown system or mode: {', '.join(unknown)}")
    if min(args.messages, args.runs, args.sessions, args.size) < 1 or args.warmup < 0:
        parser.error("--messages, --runs, --sessions and --size must be positive")
    return args


def _terminated(signum: int, frame: Any) -> None:
    raise SystemExit(128 + signum)  # so the finally clause stops every server it started


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, _terminated)
    results: dict[str, Any] = {
        "benchmark": "smtp-accept",
        "parameters": {
            "messages": args.messages,
            "runs": args.runs,
            "warmup": args.warmup,
            "sessions": args.sessions,
            "size": args.size,
            "modes": args.modes,
            "sender": SENDER,
            "recipient": RECIPIENT,
        },
        "machine": {"cpus": os.cpu_count(), "loadavg_at_start": os.getloadavg()},
        "systems": {},
        "notes": [],
    }
    source = common.have("smtp-source")
    if source is None:
        results["notes"].append("smtp-source not found (install postfix): nothing measured")
        results["summary"] = []
        path = common.write_results("smtp-accept", results, args.json)
        print(f"smtp-source not found (install postfix); skipped. Wrote {path}")
        return 0
    results["parameters"]["smtp_source"] = source

    base = Path(tempfile.mkdtemp(prefix="smtp-accept-", dir=args.tmp))
    base.chmod(0o755)  # Postfix's own users must reach its directories below
    results["machine"]["filesystem"] = filesystem_of(base.resolve())
    create_us = file_create_us(base / "create-probe")
    results["machine"]["file_create_us_at_start"] = round(create_us, 1)
    if create_us > CREATE_PROBE_NOTE_US:
        results["notes"].append(
            f"creating a file took {create_us:.0f} us here (median of {CREATE_PROBE_FILES}): "
            "every durable system pays that per message, which narrows the ratios; "
            "recently deleted inodes on an ext4 without a journal are one cause"
        )
    systems: list[System] = []
    exit_status = 0
    try:
        for name in args.systems:
            system: System
            if name == "mailhost":
                system = Mailhost(name, durable=True, base=base)
            elif name == "aiosmtpd":
                system = Aiosmtpd(name, durable=True, base=base)
            elif name == "smtp-sink":
                system = SmtpSink(name, durable=False, binary=common.have("smtp-sink") or "")
            else:
                system = Postfix(
                    name, durable=True, base=base, postfix=common.have("postfix") or ""
                )
            entry: dict[str, Any] = {"label": LABELS[name], "durable": system.durable}
            results["systems"][name] = entry
            try:
                if isinstance(system, SmtpSink) and not system.binary:
                    raise SetupError("smtp-sink not found")
                if isinstance(system, Postfix) and not system.postfix:
                    raise SetupError("postfix not found")
                system.start()
            except SetupError as e:
                entry["skipped"] = str(e)
                print(f"{LABELS[name]}: skipped: {e}", file=sys.stderr)
                if name == "mailhost":
                    exit_status = 2
                    break
                continue
            entry["modes"] = {}
            systems.append(system)
            print(f"{LABELS[name]}: listening on {HOST}:{system.port}", file=sys.stderr)

        for mode in args.modes if exit_status == 0 else []:
            for system in systems:
                record = results["systems"][system.name]["modes"][mode] = {"runs": []}
                if args.warmup:
                    warm = one_run(system, source, mode, args.warmup, args)
                    record["warmup"] = warm
                    if warm["error"]:
                        print(f"{system.name} {mode} warm-up: {warm['error']}", file=sys.stderr)
            for index in range(args.runs):
                shift = index % len(systems) if systems else 0
                for system in systems[shift:] + systems[:shift]:
                    run = one_run(system, source, mode, args.messages, args)
                    results["systems"][system.name]["modes"][mode]["runs"].append(run)
                    error = f"  ERROR {run['error']}" if run["error"] else ""
                    print(
                        f"{mode} run {index + 1}/{args.runs} {system.name}: "
                        f"{fmt(run['rate'])} msg/s{error}",
                        file=sys.stderr,
                    )
            for system in systems:
                record = results["systems"][system.name]["modes"][mode]
                record["summary"] = summarise(record["runs"])
                warm_error = record.get("warmup", {}).get("error")
                if warm_error:
                    record["summary"]["errors"].insert(0, f"warm-up: {warm_error}")
    finally:
        for system in systems:
            try:
                system.stop()
            finally:
                results["systems"][system.name].update(system.info)
        shutil.rmtree(base, ignore_errors=True)
        results["machine"]["loadavg_at_end"] = os.getloadavg()

    mailhost_modes = results["systems"].get("mailhost", {}).get("modes", {})
    if exit_status == 0 and any(
        m.get("summary", {}).get("errors") for m in mailhost_modes.values()
    ):
        exit_status = 1
    rows = summary_rows(results, args)
    results["summary"] = rows
    print_table(results, rows)
    path = common.write_results("smtp-accept", results, args.json)
    print(f"\nwrote {path}")
    return exit_status


if __name__ == "__main__":
    sys.exit(main())
