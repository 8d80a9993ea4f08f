"""Soak test for mailhost: many concurrent good and bad sessions, and the server's memory.

What it does: starts its own ``mailhost serve`` on ephemeral loopback ports with a fresh
temporary data directory and accounts made beforehand (bcrypt cost 4, so the soak measures
the server rather than hashing), then keeps ``--connections`` client connections in flight
for ``--seconds`` seconds, from source addresses 127.0.0.2-127.0.0.50. Each session is one
of these kinds, drawn by weight:

  smtp-local      MX: mail for a local account from anyone              250 after DATA
  smtp-after-pop  POP3 login from X, then relay from X on the MX        250 after DATA
  smtp-auth       submission: AUTH PLAIN, then relay                    235, 250 after DATA
  relay-refused   a stranger address relays on the MX / submission      550 5.7.1 / 530 5.7.0
  wrong-password  SMTP AUTH or POP3 PASS with a wrong password          535 / -ERR [AUTH]
                  (own addresses; once throttled                        454 / -ERR [SYS/TEMP])
  pop3            USER, PASS, STAT, LIST, RETR (up to 3), DELE all, QUIT
  garbage         unknown commands, over-long lines (SMTP or POP3)      500 5.5.2 / -ERR
  data-abort      DATA, part of a message, then close or reset          nothing stored
  pop3-abort      login, DELE, pipelined RETR + DELE, close or reset    nothing deleted

Every reply is checked against what the session expects; anything else (another reply,
a reset, a timeout, a refused connection) is an unexpected error, counted by kind and step
with a few samples kept. Latencies are per whole session (connect to close), leaving out
the time a session waited on the client side for a free mailbox (the server allows one
POP3 session per mailbox) or a source address under ``--per-ip``. Afterwards the data
directory is audited: every accepted message is on disk unless a POP3 session deleted it
and got +OK at QUIT, aborted sessions stored and deleted nothing, and the server log holds
no traceback.

It samples the server's RSS (VmRSS) and open descriptors every second and reports RSS at
start, maximum, end and the least-squares slope over the second half of the run (MB per
minute; "flat" under ``--flat-mb-per-min``).

Bounds: loopback only (the server listens on 127.0.0.1, clients bind 127.0.0.x); at most
``--connections`` connections in flight and ``--per-ip`` from one address; load stops at
``--seconds`` or after ``--max-sessions`` sessions, whichever comes first, and sessions
still running get ``--timeout`` seconds more. The server is the only process it starts and
it is stopped by PID (SIGINT, then SIGKILL). The data directory is removed afterwards.

Prints a table and writes JSON to bench/results/soak-<timestamp>.json (or ``--json``).
Exit status: 0 when there were no unexpected errors, the audit passed, memory was flat and
the server exited cleanly; 1 otherwise; 2 when the accounts or the server could not be set up.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import contextvars
import json
import os
import queue
import random
import re
import shutil
import signal
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Coroutine
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from common import cpu_seconds

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_MAILHOST = ROOT / ".venv" / "bin" / "mailhost"
RESULTS = ROOT / "bench" / "results"

HOST = "127.0.0.1"
DOMAIN = "soak.example"
ELSEWHERE = "elsewhere.example"
PASSWORD = "soak-password"
SEED_MESSAGES = 3  # messages in each pop3-abort mailbox, which must all survive

KINDS = (
    "smtp-local",
    "smtp-after-pop",
    "smtp-auth",
    "relay-refused",
    "wrong-password",
    "pop3",
    "garbage",
    "data-abort",
    "pop3-abort",
)
DEFAULT_WEIGHTS = {
    "smtp-local": 14,
    "smtp-after-pop": 8,
    "smtp-auth": 8,
    "relay-refused": 8,
    "wrong-password": 6,
    "pop3": 14,
    "garbage": 6,
    "data-abort": 4,
    "pop3-abort": 3,
}
SAMPLES_PER_ERROR = 3
WAITED: contextvars.ContextVar[list[float]] = contextvars.ContextVar("WAITED")
"""Seconds the running session spent waiting for a free account or address (client-side)."""


# -- outcomes ---------------------------------------------------------------------------


class Unexpected(Exception):
    """A reply (or a connection event) the session did not expect at ``step``."""

    def __init__(self, step: str, got: str) -> None:
        super().__init__(f"{step}: {got}")
        self.step = step
        self.got = got


def reply_class(got: str) -> str:
    """A short, countable form of a reply: ``550 5.7.1``, ``-ERR [AUTH]``, ``+OK``."""
    match = re.match(r"(\d{3})[ -](\d\.\d{1,3}\.\d{1,3})?", got)
    if match:
        return " ".join(g for g in match.groups() if g)
    match = re.match(r"(-ERR|\+OK)( \[[A-Z/-]+\]| \w+ \w+)?", got)
    if match:
        return "".join(g for g in match.groups() if g)
    return got[:40]


@dataclass
class Stats:
    started: int = 0
    done: Counter[str] = field(default_factory=Counter)
    ok: Counter[str] = field(default_factory=Counter)
    latency: dict[str, list[float]] = field(default_factory=lambda: defaultdict(list))
    expected: Counter[str] = field(default_factory=Counter)  # "kind: reply" -> count
    unexpected: Counter[str] = field(default_factory=Counter)  # "kind/step: reply" -> count
    samples: dict[str, list[str]] = field(default_factory=lambda: defaultdict(list))
    stored_local: int = 0  # 250 after DATA for a local account (pop3 pool)
    stored_relay: int = 0  # 250 after DATA for another domain (outbox)
    retrieved: int = 0
    deleted: int = 0  # DELE'd in sessions whose QUIT got +OK
    redrawn: Counter[str] = field(default_factory=Counter)  # drawn while no mailbox was free
    waits: list[float] = field(default_factory=list)  # per session, left out of its latency

    def expect(self, kind: str, reply: str) -> None:
        self.expected[f"{kind}: {reply_class(reply)}"] += 1

    def error(self, kind: str, step: str, got: str) -> None:
        key = f"{kind}/{step}: {reply_class(got)}"
        self.unexpected[key] += 1
        if len(self.samples[key]) < SAMPLES_PER_ERROR:
            self.samples[key].append(got[:300])


# -- the wire ---------------------------------------------------------------------------


class Conn:
    """One client connection with line reads bounded by ``timeout``."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, timeout: float):
        self.reader = reader
        self.writer = writer
        self.timeout = timeout
        self.step = "connect"
        self.source = ""

    @classmethod
    async def open(cls, port: int, source: str, timeout: float) -> Conn:
        reader, writer = await asyncio.wait_for(
            asyncio.open_connection(HOST, port, local_addr=(source, 0), limit=1 << 20), timeout
        )
        return cls(reader, writer, timeout)

    async def readline(self) -> str:
        try:
            raw = await asyncio.wait_for(self.reader.readline(), self.timeout)
        except TimeoutError:
            raise Unexpected(self.step, f"no reply in {self.timeout:g} s") from None
        except (ConnectionError, OSError) as e:
            raise Unexpected(self.step, f"connection error: {type(e).__name__}") from None
        if not raw:
            raise Unexpected(self.step, "connection closed by server")
        return raw.decode("latin-1").rstrip("\r\n")

    async def send(self, data: bytes | str) -> None:
        if isinstance(data, str):
            data = data.encode("latin-1")
        try:
            self.writer.write(data)
            await asyncio.wait_for(self.writer.drain(), self.timeout)
        except TimeoutError:
            raise Unexpected(self.step, f"send blocked for {self.timeout:g} s") from None
        except (ConnectionError, OSError) as e:
            raise Unexpected(self.step, f"connection error: {type(e).__name__}") from None

    async def smtp_reply(self) -> str:
        """A whole SMTP reply; multi-line replies are returned as their last line."""
        while True:
            line = await self.readline()
            if len(line) < 4 or line[3] != "-":
                return line

    async def smtp(self, step: str, command: str | bytes | None, *codes: str) -> str:
        """Send ``command`` (None: only read) and check the reply starts with one of ``codes``."""
        self.step = step
        if command is not None:
            await self.send(command + ("\r\n" if isinstance(command, str) else b"\r\n"))
        got = await self.smtp_reply()
        if not got.startswith(codes):
            raise Unexpected(step, got)
        return got

    async def pop(self, step: str, command: str | None, *prefixes: str) -> str:
        self.step = step
        if command is not None:
            await self.send(command + "\r\n")
        got = await self.readline()
        if not got.startswith(prefixes):
            raise Unexpected(step, got)
        return got

    async def pop_multiline(self, step: str) -> list[str]:
        self.step = step
        lines = []
        while True:
            line = await self.readline()
            if line == ".":
                return lines
            lines.append(line[1:] if line.startswith(".") else line)

    async def close(self) -> None:
        self.writer.close()
        with contextlib.suppress(TimeoutError, ConnectionError, OSError):
            await asyncio.wait_for(self.writer.wait_closed(), 5)

    def reset(self) -> None:
        """Close with a TCP RST (SO_LINGER 0) rather than a FIN."""
        sock = self.writer.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.writer.transport.abort()


def plain(user: str, password: str) -> str:
    return base64.b64encode(f"\0{user}\0{password}".encode()).decode("ascii")


_text_rng = random.Random(0)
BODY_LINES = [
    "".join(_text_rng.choice("abcdefghij klmnop") for _ in range(_text_rng.randint(1, 76)))
    for _ in range(256)
]


def message_text(rng: random.Random, sender: str, recipient: str, serial: int) -> bytes:
    """A message of 0.5-8 KB with a dot-led line, as the client sends it (dot-stuffed, CRLF)."""
    lines = [
        f"From: <{sender}>",
        f"To: <{recipient}>",
        f"Subject: soak {serial}",
        f"Message-ID: <soak-{serial}@{DOMAIN}>",
        "X-Soak: 1",
        "",
    ]
    size = rng.randint(500, 8000)
    body = 0
    while body < size:
        line = rng.choice(BODY_LINES)
        lines.append(line)
        body += len(line) + 2
    lines.append(".leading dot")
    stuffed = ("." + line if line.startswith(".") else line for line in lines)
    return ("\r\n".join(stuffed) + "\r\n").encode("ascii")


# -- the load ---------------------------------------------------------------------------


@dataclass
class Plan:
    ports: dict[str, int]
    accounts: list[str]  # pop3 / smtp-after-pop / smtp-auth / recipients of smtp-local
    abort_accounts: list[str]  # pop3-abort only; seeded, never delivered to during the run
    good_ips: list[str]
    stranger_ips: list[str]
    wrong_ips: list[str]
    weights: dict[str, int]
    timeout: float
    per_ip: int


class Load:
    def __init__(self, plan: Plan, stats: Stats, seed: int) -> None:
        self.plan = plan
        self.stats = stats
        self.rng = random.Random(seed)
        self.kinds = [k for k in KINDS if plan.weights.get(k, 0) > 0]
        self.weights = [plan.weights[k] for k in self.kinds]
        self.serial = 0
        self.in_flight: Counter[str] = Counter()
        self.ip_free = asyncio.Condition()
        self.leases: asyncio.Queue[str] = asyncio.Queue()
        self.abort_leases: asyncio.Queue[str] = asyncio.Queue()
        for account in plan.accounts:
            self.leases.put_nowait(account)
        for account in plan.abort_accounts:
            self.abort_leases.put_nowait(account)
        self.sessions: dict[str, Callable[[], Coroutine[Any, Any, None]]] = {
            "smtp-local": self.smtp_local,
            "smtp-after-pop": self.smtp_after_pop,
            "smtp-auth": self.smtp_auth,
            "relay-refused": self.relay_refused,
            "wrong-password": self.wrong_password,
            "pop3": self.pop3,
            "garbage": self.garbage,
            "data-abort": self.data_abort,
            "pop3-abort": self.pop3_abort,
        }

    # helpers

    def next_serial(self) -> int:
        self.serial += 1
        return self.serial

    async def connect(self, port_name: str, pool: list[str]) -> Conn:
        """Connect from the least busy address of ``pool`` (waiting while all are at --per-ip)."""
        start = time.monotonic()
        async with self.ip_free:
            while True:
                ip = min(pool, key=lambda a: (self.in_flight[a], self.rng.random()))
                if self.in_flight[ip] < self.plan.per_ip:
                    break
                await self.ip_free.wait()
            self.in_flight[ip] += 1
        WAITED.get()[0] += time.monotonic() - start
        try:
            conn = await Conn.open(self.plan.ports[port_name], ip, self.plan.timeout)
        except TimeoutError:
            await self.release_ip(ip)
            raise Unexpected("connect", f"no connection in {self.plan.timeout:g} s") from None
        except OSError as e:
            await self.release_ip(ip)
            raise Unexpected("connect", f"connection error: {type(e).__name__}") from None
        conn.source = ip
        return conn

    async def release_ip(self, ip: str) -> None:
        async with self.ip_free:
            self.in_flight[ip] -= 1
            self.ip_free.notify_all()

    async def done(self, conn: Conn, reset: bool = False) -> None:
        if reset:
            conn.reset()
        else:
            await conn.close()
        await self.release_ip(conn.source)

    async def smtp_greeting(self, conn: Conn) -> None:
        await conn.smtp("greeting", None, "220 ")
        await conn.smtp("EHLO", "EHLO soak.client.example", "250 ")

    async def send_message(self, conn: Conn, sender: str, recipient: str) -> None:
        await conn.smtp("MAIL", f"MAIL FROM:<{sender}>", "250 ")
        await conn.smtp("RCPT", f"RCPT TO:<{recipient}>", "250 ")
        await conn.smtp("DATA", "DATA", "354")
        text = message_text(self.rng, sender, recipient, self.next_serial())
        await conn.smtp("end of data", text + b".", "250 ")

    async def quit_smtp(self, conn: Conn) -> None:
        await conn.smtp("QUIT", "QUIT", "221 ")

    async def pop_login(self, conn: Conn, account: str) -> None:
        await conn.pop("greeting", None, "+OK")
        await conn.pop("USER", f"USER {account}", "+OK")
        await conn.pop("PASS", f"PASS {PASSWORD}", "+OK")

    async def run_session(self, kind: str) -> None:
        waited = [0.0]
        WAITED.set(waited)
        start = time.monotonic()
        try:
            await self.sessions[kind]()
        except Unexpected as e:
            self.stats.error(kind, e.step, e.got)
        except Exception as e:  # a bug in the soak itself still counts, visibly
            self.stats.error(kind, "client", f"{type(e).__name__}: {e}")
        else:
            self.stats.ok[kind] += 1
        self.stats.done[kind] += 1
        self.stats.latency[kind].append(time.monotonic() - start - waited[0])
        self.stats.waits.append(waited[0])

    async def lease(self, leases: asyncio.Queue[str]) -> str:
        """A mailbox no other session of ours holds (the server allows one POP3 session each)."""
        start = time.monotonic()
        account = await leases.get()
        WAITED.get()[0] += time.monotonic() - start
        return account

    # sessions: each raises Unexpected on the first reply it did not expect

    async def smtp_local(self) -> None:
        conn = await self.connect("smtp", self.plan.good_ips + self.plan.stranger_ips)
        try:
            await self.smtp_greeting(conn)
            recipient = self.rng.choice(self.plan.accounts)
            await self.send_message(conn, f"someone@{ELSEWHERE}", recipient)
            self.stats.stored_local += 1
            await self.quit_smtp(conn)
        finally:
            await self.done(conn)

    async def smtp_after_pop(self) -> None:
        account = await self.lease(self.leases)
        try:
            conn = await self.connect("pop3", self.plan.good_ips)
            try:
                await self.pop_login(conn, account)
                await conn.pop("QUIT", "QUIT", "+OK")
            finally:
                await self.done(conn)
        finally:
            self.leases.put_nowait(account)
        source = conn.source
        async with self.ip_free:  # same address again, whatever --per-ip says
            self.in_flight[source] += 1
        try:
            smtp = await Conn.open(self.plan.ports["smtp"], source, self.plan.timeout)
        except (TimeoutError, OSError) as e:
            await self.release_ip(source)
            raise Unexpected("connect", f"connection error: {type(e).__name__}") from None
        smtp.source = source
        try:
            await self.smtp_greeting(smtp)
            await self.send_message(smtp, account, f"friend{self.rng.randint(1, 99)}@{ELSEWHERE}")
            self.stats.stored_relay += 1
            await self.quit_smtp(smtp)
        finally:
            await self.done(smtp)

    async def smtp_auth(self) -> None:
        account = self.rng.choice(self.plan.accounts)
        conn = await self.connect("submission", self.plan.good_ips)
        try:
            await self.smtp_greeting(conn)
            await conn.smtp("AUTH", f"AUTH PLAIN {plain(account, PASSWORD)}", "235 ")
            await self.send_message(conn, account, f"friend{self.rng.randint(1, 99)}@{ELSEWHERE}")
            self.stats.stored_relay += 1
            await self.quit_smtp(conn)
        finally:
            await self.done(conn)

    async def relay_refused(self) -> None:
        submission = self.rng.random() < 0.3
        conn = await self.connect("submission" if submission else "smtp", self.plan.stranger_ips)
        try:
            await self.smtp_greeting(conn)
            if submission:
                got = await conn.smtp("MAIL", f"MAIL FROM:<someone@{ELSEWHERE}>", "530 5.7.0")
            else:
                await conn.smtp("MAIL", f"MAIL FROM:<someone@{ELSEWHERE}>", "250 ")
                got = await conn.smtp("RCPT", f"RCPT TO:<victim@{ELSEWHERE}>", "550 5.7.1")
            self.stats.expect("relay-refused", got)
            await self.quit_smtp(conn)
        finally:
            await self.done(conn)

    async def wrong_password(self) -> None:
        account = self.rng.choice(self.plan.accounts)
        if self.rng.random() < 0.2:
            account = f"nobody{self.rng.randint(1, 999)}@{DOMAIN}"
        if self.rng.random() < 0.5:
            conn = await self.connect("submission", self.plan.wrong_ips)
            try:
                await self.smtp_greeting(conn)
                got = await conn.smtp(
                    "AUTH", f"AUTH PLAIN {plain(account, 'wrong')}", "535 5.7.8", "454 4.7.0"
                )
                self.stats.expect("wrong-password smtp", got)
                await self.quit_smtp(conn)
            finally:
                await self.done(conn)
        else:
            conn = await self.connect("pop3", self.plan.wrong_ips)
            try:
                await conn.pop("greeting", None, "+OK")
                await conn.pop("USER", f"USER {account}", "+OK")
                got = await conn.pop("PASS", "PASS wrong", "-ERR [AUTH]", "-ERR [SYS/TEMP]")
                self.stats.expect("wrong-password pop3", got)
                await conn.pop("QUIT", "QUIT", "+OK")
            finally:
                await self.done(conn)

    async def pop3(self) -> None:
        account = await self.lease(self.leases)
        try:
            conn = await self.connect("pop3", self.plan.good_ips)
            try:
                await self.pop_login(conn, account)
                stat = await conn.pop("STAT", "STAT", "+OK")
                count = int(stat.split()[1])
                await conn.pop("LIST", "LIST", "+OK")
                listing = await conn.pop_multiline("LIST")
                if len(listing) != count:
                    raise Unexpected("LIST", f"{len(listing)} entries after STAT said {count}")
                for number in range(1, min(count, 3) + 1):
                    await conn.pop("RETR", f"RETR {number}", "+OK")
                    text = await conn.pop_multiline("RETR")
                    if "X-Soak: 1" not in text or text[-1] != ".leading dot":
                        raise Unexpected("RETR", f"message {number} came back altered")
                    self.stats.retrieved += 1
                for number in range(1, count + 1):
                    await conn.pop("DELE", f"DELE {number}", "+OK")
                await conn.pop("QUIT", "QUIT", "+OK mailhost POP3 server signing off")
                self.stats.deleted += count
            finally:
                await self.done(conn)
        finally:
            self.leases.put_nowait(account)

    async def garbage(self) -> None:
        junk = "".join(chr(self.rng.randint(33, 255)) for _ in range(self.rng.randint(1, 60)))
        junk = "ZZ" + junk  # never a real verb
        long_line = "NOOP " + "x" * self.rng.choice([600, 5000, 20000])
        if self.rng.random() < 0.5:
            conn = await self.connect("smtp", self.plan.stranger_ips)
            try:
                await conn.smtp("greeting", None, "220 ")
                await conn.smtp("MAIL before EHLO", "MAIL FROM:<a@b.example>", "503 5.5.1")
                got = await conn.smtp("junk", junk, "500 5.5.2")
                self.stats.expect("garbage smtp", got)
                got = await conn.smtp("long line", long_line, "500 5.5.2")
                self.stats.expect("garbage smtp", got)
                await self.smtp_greeting_again(conn)
                await self.quit_smtp(conn)
            finally:
                await self.done(conn)
        else:
            conn = await self.connect("pop3", self.plan.stranger_ips)
            try:
                await conn.pop("greeting", None, "+OK")
                got = await conn.pop("junk", junk, "-ERR Unknown command")
                self.stats.expect("garbage pop3", got)
                got = await conn.pop("long line", long_line, "-ERR line too long")
                self.stats.expect("garbage pop3", got)
                got = await conn.pop("STAT before login", "STAT", "-ERR")
                self.stats.expect("garbage pop3", got)
                await conn.pop("QUIT", "QUIT", "+OK")
            finally:
                await self.done(conn)

    async def smtp_greeting_again(self, conn: Conn) -> None:
        """After the junk the session must still work."""
        await conn.smtp("EHLO after junk", "EHLO soak.client.example", "250 ")
        await conn.smtp("NOOP after junk", "NOOP", "250 ")

    async def data_abort(self) -> None:
        conn = await self.connect("smtp", self.plan.stranger_ips)
        reset = self.rng.random() < 0.5
        try:
            await self.smtp_greeting(conn)
            await conn.smtp("MAIL", f"MAIL FROM:<someone@{ELSEWHERE}>", "250 ")
            await conn.smtp("RCPT", f"RCPT TO:<{self.rng.choice(self.plan.accounts)}>", "250 ")
            await conn.smtp("DATA", "DATA", "354")
            text = message_text(self.rng, "someone@" + ELSEWHERE, "x", self.next_serial())
            await conn.send(text[: self.rng.randint(1, len(text) - 1)])
        except BaseException:
            await self.done(conn)
            raise
        await self.done(conn, reset=reset)

    async def pop3_abort(self) -> None:
        account = await self.lease(self.abort_leases)
        try:
            conn = await self.connect("pop3", self.plan.good_ips)
            reset = self.rng.random() < 0.5
            try:
                await conn.pop("greeting", None, "+OK")
                await conn.pop("USER", f"USER {account}", "+OK")
                # The previous abort on this mailbox may not have reached the server yet.
                got = await conn.pop("PASS", f"PASS {PASSWORD}", "+OK", "-ERR [IN-USE]")
                if got.startswith("-ERR"):
                    self.stats.expect("pop3-abort", got)
                else:
                    await conn.pop("STAT", "STAT", f"+OK {SEED_MESSAGES} ")
                    await conn.pop("DELE", "DELE 1", "+OK")
                    await conn.send("RETR 2\r\nDELE 2\r\n")
            except BaseException:
                await self.done(conn)
                raise
            await self.done(conn, reset=reset)
        finally:
            self.abort_leases.put_nowait(account)

    async def worker(self, deadline: float, max_sessions: int) -> None:
        while time.monotonic() < deadline and self.stats.started < max_sessions:
            self.stats.started += 1
            kind = self.rng.choices(self.kinds, self.weights)[0]
            leases = self.leases_for(kind)
            if leases is not None and leases.empty():
                # Every mailbox of that pool is in a session: draw a kind that needs none
                # rather than idle, so the connections stay in flight.
                free = [k for k in self.kinds if self.leases_for(k) is None]
                if free:
                    self.stats.redrawn[kind] += 1
                    weights = [self.plan.weights[k] for k in free]
                    kind = self.rng.choices(free, weights)[0]
            await self.run_session(kind)

    def leases_for(self, kind: str) -> asyncio.Queue[str] | None:
        if kind in ("pop3", "smtp-after-pop"):
            return self.leases
        if kind == "pop3-abort":
            return self.abort_leases
        return None


# -- the server -------------------------------------------------------------------------


class Server:
    """``mailhost serve`` started here, and only that process stopped by its PID."""

    def __init__(self, mailhost: Path, data: Path, extra: list[str], log: Path) -> None:
        self.log_path = log
        self.log = open(log, "wb")
        ports = [
            f"--{name}-port=0" for name in ("smtp", "submission", "pop3", "smtps", "pop3s", "http")
        ]
        self.proc = subprocess.Popen(
            [str(mailhost), "serve", "--data", str(data), "--host", HOST, *ports, *extra],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=self.log,
        )
        self.lines: queue.Queue[bytes] = queue.Queue()
        threading.Thread(target=self._read_stdout, daemon=True).start()

    def _read_stdout(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.put(line)
        self.lines.put(b"")

    def ready(self, timeout: float) -> dict[str, Any]:
        end = time.monotonic() + timeout
        while True:
            try:
                line = self.lines.get(timeout=max(0.1, end - time.monotonic()))
            except queue.Empty:
                raise RuntimeError(f"no ready line within {timeout:g} s") from None
            if not line:
                raise RuntimeError(f"server exited with {self.proc.wait()}: {self.log_tail()}")
            try:
                report = json.loads(line)
            except ValueError:
                continue
            if report.get("event") == "ready":
                return report

    def log_tail(self, lines: int = 10) -> str:
        self.log.flush()
        text = self.log_path.read_text(errors="replace").splitlines()
        return "\n".join(text[-lines:])

    def sample(self) -> tuple[float, int] | None:
        """(RSS in MB, open descriptors) from /proc, or None once the process is gone."""
        try:
            status = Path(f"/proc/{self.proc.pid}/status").read_text()
            fds = len(os.listdir(f"/proc/{self.proc.pid}/fd"))
        except OSError:
            return None
        match = re.search(r"^VmRSS:\s+(\d+) kB", status, re.MULTILINE)
        return (int(match.group(1)) / 1024, fds) if match else None

    def stop(self, timeout: float = 15) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()
        return self.proc.returncode


def serve_flags(mailhost: Path, connections: int, per_ip: int) -> list[str]:
    """Connection-limit flags when this mailhost has them, sized so the soak stays under them.

    The server counts a connection until it has seen it close, so a client that reconnects
    at once can briefly have one more open there than here: twice the client's bounds.
    """
    help_text = subprocess.run(
        [str(mailhost), "serve", "--help"], capture_output=True, text=True, check=False
    ).stdout
    flags = []
    if "--max-connections-per-ip" in help_text:
        flags += ["--max-connections-per-ip", str(2 * per_ip)]
    if re.search(r"--max-connections\b(?!-)", help_text):
        flags += ["--max-connections", str(2 * connections + 50)]
    return flags


def add_accounts(mailhost: Path, data: Path, accounts: list[str]) -> None:
    """``mailhost user add`` for each account, a few at a time (the users file is locked)."""

    add_args = ["user", "add", "--data", str(data), "--password-stdin", "--cost", "4"]

    def add(address: str) -> None:
        subprocess.run(
            [str(mailhost), *add_args, address],
            input=PASSWORD + "\n",
            text=True,
            capture_output=True,
            check=True,
        )

    with ThreadPoolExecutor(max_workers=os.cpu_count() or 2) as pool:
        list(pool.map(add, accounts))


async def seed(plan: Plan, stats: Stats) -> None:
    """SEED_MESSAGES in each pop3-abort mailbox; failures here abort the soak."""
    load = Load(plan, stats, 0)
    WAITED.set([0.0])
    for account in plan.abort_accounts:
        for _ in range(SEED_MESSAGES):
            conn = await load.connect("smtp", plan.stranger_ips)
            try:
                await load.smtp_greeting(conn)
                await load.send_message(conn, f"seed@{ELSEWHERE}", account)
                await load.quit_smtp(conn)
            finally:
                await load.done(conn)


# -- measuring and reporting ------------------------------------------------------------


def slope_mb_per_min(samples: list[tuple[float, float]]) -> float:
    """Least-squares slope of (seconds, MB) in MB per minute; 0 with fewer than 3 samples."""
    if len(samples) < 3:
        return 0.0
    xs = [t for t, _ in samples]
    ys = [m for _, m in samples]
    mx, my = statistics.fmean(xs), statistics.fmean(ys)
    var = sum((x - mx) ** 2 for x in xs)
    if var == 0:
        return 0.0
    return sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / var * 60


def percentile(values: list[float], p: float) -> float:
    if not values:
        return 0.0
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(p / 100 * len(ordered) + 0.5) - 1))
    return ordered[index]


def count_files(maildir: Path) -> int:
    total = 0
    for sub in ("new", "cur"):
        with contextlib.suppress(FileNotFoundError):
            total += sum(1 for e in os.scandir(maildir / sub) if e.is_file())
    return total


def audit(data: Path, plan: Plan, stats: Stats, log_path: Path) -> dict[str, Any]:
    """What is on disk against what the server acknowledged, and the server log."""
    in_mailboxes = sum(count_files(data / "mail" / a) for a in plan.accounts)
    expected_local = stats.stored_local - stats.deleted
    in_outbox = count_files(data / "outbox")
    aborted = {a: count_files(data / "mail" / a) for a in plan.abort_accounts}
    log = log_path.read_text(errors="replace")
    tracebacks = [m.start() for m in re.finditer(r"Traceback \(most recent call last\)", log)]
    samples = [log[max(0, i - 200) : i + 1200] for i in tracebacks[:SAMPLES_PER_ERROR]]
    checks = {
        "local messages on disk (accepted - deleted)": [in_mailboxes, expected_local],
        "relayed messages in outbox": [in_outbox, stats.stored_relay],
        "pop3-abort mailboxes intact": [
            sum(aborted.values()),
            SEED_MESSAGES * len(plan.abort_accounts),
        ],
        "tracebacks in server log": [len(tracebacks), 0],
    }
    return {
        "checks": checks,
        "passed": all(found == want for found, want in checks.values()),
        "traceback_samples": samples,
    }


def report(result: dict[str, Any]) -> str:
    out = []
    run = result["run"]
    out.append(
        f"mailhost soak: {run['seconds_run']:.1f} s, {run['connections']} connections, "
        f"seed {run['seed']}, {run['cpus']} CPUs, server flags {' '.join(run['serve_flags'])}"
    )
    out.append("")
    header = f"{'kind':<16}{'sessions':>9}{'ok':>9}{'unexp.':>8}{'p50 ms':>9}{'p99 ms':>9}"
    out.append(header)
    out.append("-" * len(header))
    for kind, k in result["kinds"].items():
        out.append(
            f"{kind:<16}{k['sessions']:>9}{k['ok']:>9}{k['unexpected']:>8}"
            f"{k['p50_ms']:>9.1f}{k['p99_ms']:>9.1f}"
        )
    t = result["throughput"]
    out.append("-" * len(header))
    out.append(
        f"{'total':<16}{t['sessions']:>9}{t['ok']:>9}{t['unexpected_errors']:>8}"
        f"   {t['sessions_per_s']:.1f} sessions/s, {t['messages_per_s']:.1f} messages/s stored,"
        f" {t['retrieved_per_s']:.1f}/s retrieved"
    )
    redrawn = run["redrawn_for_lack_of_a_free_mailbox"]
    if redrawn:
        listed = ", ".join(f"{k} {n}" for k, n in sorted(redrawn.items()))
        out.append(f"drawn again as another kind while every mailbox was busy: {listed}")
    out.append(
        f"connections in flight: mean {run['connections_in_flight_mean']}, max "
        f"{run['connections_in_flight_max']}; machine load average {run['loadavg_1min_start']:.1f}"
        f" at start, {run['loadavg_1min_end']:.1f} at end"
    )
    out.append(
        f"CPU over the run: server {run['server_cpu_s']:.1f} s, soak client "
        f"{run['client_cpu_s']:.1f} s; client-side wait for a free mailbox or address "
        f"(not in the latencies) p50 {run['client_wait_p50_ms']:.1f} ms, "
        f"p99 {run['client_wait_p99_ms']:.1f} ms"
    )
    out.append("")
    out.append("expected refusals:")
    for key, n in sorted(result["errors"]["expected"].items()):
        out.append(f"  {n:>7}  {key}")
    unexpected = result["errors"]["unexpected"]
    out.append(f"unexpected errors: {sum(unexpected.values())}")
    for key, n in sorted(unexpected.items(), key=lambda kv: -kv[1]):
        out.append(f"  {n:>7}  {key}")
        for sample in result["errors"]["samples"][key]:
            out.append(f"             e.g. {sample[:120]}")
    m = result["memory"]
    out.append("")
    out.append(
        f"server RSS: start {m['rss_start_mb']:.1f} MB, max {m['rss_max_mb']:.1f} MB, "
        f"end {m['rss_end_mb']:.1f} MB; second-half slope {m['slope_mb_per_min']:+.2f} MB/min "
        f"-> {m['verdict']} (threshold {m['flat_threshold_mb_per_min']} MB/min)"
    )
    out.append(
        f"server descriptors: start {m['fds_start']}, max {m['fds_max']}, end {m['fds_end']}"
    )
    out.append("")
    out.append("audit:")
    for name, (found, want) in result["audit"]["checks"].items():
        mark = "ok" if found == want else "FAIL"
        out.append(f"  {mark:<5}{name}: {found} (expected {want})")
    for sample in result["audit"]["traceback_samples"]:
        out.append("  server traceback: " + sample.replace("\n", "\n    "))
    out.append("")
    out.append(f"verdict: {result['verdict']}")
    return "\n".join(out)


# -- main -------------------------------------------------------------------------------


def parse_weights(text: str) -> dict[str, int]:
    weights = dict(DEFAULT_WEIGHTS)
    for item in filter(None, text.split(",")):
        kind, _, value = item.partition("=")
        if kind not in KINDS or not value.isdigit():
            raise argparse.ArgumentTypeError(f"{item!r}: expected KIND=N with KIND in {KINDS}")
        weights[kind] = int(value)
    if not any(weights.values()):
        raise argparse.ArgumentTypeError("every weight is zero")
    return weights


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter
    )
    p.add_argument("--seconds", type=float, default=120, help="load duration (default 120)")
    p.add_argument(
        "--connections", type=int, default=200, help="connections in flight (default 200)"
    )
    p.add_argument(
        "--max-sessions", type=int, default=500_000, help="cap on sessions (default 500000)"
    )
    p.add_argument("--seed", type=int, default=1, help="random seed (default 1)")
    p.add_argument("--json", type=Path, help="result file (default bench/results/soak-<ts>.json)")
    p.add_argument(
        "--weights",
        type=parse_weights,
        default=dict(DEFAULT_WEIGHTS),
        help="KIND=N,... overriding the default mix:\n"
        + ", ".join(f"{k}={v}" for k, v in DEFAULT_WEIGHTS.items()),
    )
    p.add_argument("--accounts", type=int, default=32, help="accounts for pop3 and relay (32)")
    p.add_argument("--abort-accounts", type=int, default=4, help="accounts for pop3-abort (4)")
    p.add_argument("--per-ip", type=int, default=16, help="client connections per address (16)")
    p.add_argument("--timeout", type=float, default=30, help="seconds to wait for a reply (30)")
    p.add_argument(
        "--flat-mb-per-min",
        type=float,
        default=2.0,
        help="RSS slope under which memory counts as flat (2.0)",
    )
    p.add_argument("--mailhost", type=Path, default=DEFAULT_MAILHOST, help="mailhost executable")
    p.add_argument("--keep-data", action="store_true", help="keep the temporary data directory")
    args = p.parse_args(argv)
    if args.connections < 1 or args.seconds <= 0 or args.max_sessions < 1 or args.accounts < 1:
        p.error("--connections, --seconds, --max-sessions and --accounts must be positive")
    return args


def split_ips() -> tuple[list[str], list[str], list[str]]:
    """127.0.0.2-50: addresses that log in, strangers that never do, wrong-password ones.

    Kept apart because a POP3 login opens relaying for its address (a stranger must never
    have one) and failed logins get an address throttled (a good one must never have any).
    """
    ips = [f"127.0.0.{n}" for n in range(2, 51)]
    return ips[:30], ips[30:42], ips[42:]


async def run_load(
    plan: Plan, stats: Stats, server: Server, args: argparse.Namespace
) -> tuple[float, list[tuple[float, float, int]], dict[str, float]]:
    samples: list[tuple[float, float, int]] = []
    start = time.monotonic()
    cpu_server = cpu_seconds(server.proc.pid)
    cpu_client = time.process_time()

    async def sampler() -> None:
        while True:
            sample = server.sample()
            if sample is not None:
                samples.append((time.monotonic() - start, *sample))
            if time.monotonic() < deadline:
                in_flight.append(sum(load.in_flight.values()))
            await asyncio.sleep(1)

    load = Load(plan, stats, args.seed)
    deadline = start + args.seconds
    in_flight: list[int] = []
    sampling = asyncio.create_task(sampler())
    workers = [
        asyncio.create_task(load.worker(deadline, args.max_sessions))
        for _ in range(args.connections)
    ]
    _, pending = await asyncio.wait(workers, timeout=args.seconds + args.timeout + 10)
    for task in pending:
        task.cancel()
    if pending:
        stats.unexpected[f"client: {len(pending)} sessions still running at the end"] += 1
    elapsed = time.monotonic() - start
    cpu = {
        "server_cpu_s": cpu_seconds(server.proc.pid) - cpu_server,
        "client_cpu_s": time.process_time() - cpu_client,
        "in_flight_mean": statistics.fmean(in_flight) if in_flight else 0.0,
        "in_flight_max": max(in_flight, default=0),
        "loadavg_1min_end": os.getloadavg()[0],
    }
    await asyncio.sleep(1.5)  # one more sample after the load
    sampling.cancel()
    return elapsed, samples, cpu


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    mailhost = args.mailhost
    good, strangers, wrong = split_ips()
    accounts = [f"user{n:02d}@{DOMAIN}" for n in range(1, args.accounts + 1)]
    abort_accounts = [f"abort{n:02d}@{DOMAIN}" for n in range(1, args.abort_accounts + 1)]
    weights = args.weights
    if not abort_accounts:
        weights["pop3-abort"] = 0
    data = Path(tempfile.mkdtemp(prefix="mailhost-soak-"))
    log_path = data.parent / (data.name + ".log")
    server: Server | None = None
    stats = Stats()
    try:
        print(f"adding {len(accounts) + len(abort_accounts)} accounts in {data}", file=sys.stderr)
        began = time.monotonic()
        try:
            add_accounts(mailhost, data, accounts + abort_accounts)
        except subprocess.CalledProcessError as e:
            print(f"soak: {' '.join(e.cmd[:3])} failed: {e.stderr.strip()[-600:]}", file=sys.stderr)
            return 2
        print(f"accounts added in {time.monotonic() - began:.1f} s", file=sys.stderr)
        flags = serve_flags(mailhost, args.connections, args.per_ip)
        server = Server(mailhost, data, flags, log_path)
        try:
            ready = server.ready(timeout=30)
        except RuntimeError as e:
            print(f"soak: the server did not start: {e}", file=sys.stderr)
            return 2
        plan = Plan(
            ports=ready["ports"],
            accounts=accounts,
            abort_accounts=abort_accounts,
            good_ips=good,
            stranger_ips=strangers,
            wrong_ips=wrong,
            weights=weights,
            timeout=args.timeout,
            per_ip=args.per_ip,
        )
        try:
            asyncio.run(seed(plan, Stats()))
        except Unexpected as e:
            print(f"soak: seeding failed at {e.step}: {e.got}", file=sys.stderr)
            return 2
        print(
            f"server pid {server.proc.pid} ready ({' '.join(flags) or 'no limit flags'}); "
            f"{args.connections} connections for {args.seconds:g} s",
            file=sys.stderr,
        )
        load_start = os.getloadavg()[0]
        elapsed, samples, cpu = asyncio.run(run_load(plan, stats, server, args))
        returncode = server.stop()
        server_audit = audit(data, plan, stats, log_path)
    finally:
        if server is not None and server.proc.poll() is None:
            server.stop()
        if not args.keep_data:
            shutil.rmtree(data, ignore_errors=True)
            log_path.unlink(missing_ok=True)
        else:
            print(f"data kept in {data} (server log {log_path})", file=sys.stderr)

    second_half = [(t, rss) for t, rss, _ in samples if t >= elapsed / 2]
    slope = slope_mb_per_min(second_half)
    flat = slope < args.flat_mb_per_min
    unexpected_total = sum(stats.unexpected.values())
    stored = stats.stored_local + stats.stored_relay
    kinds = {
        kind: {
            "sessions": stats.done[kind],
            "ok": stats.ok[kind],
            "unexpected": sum(
                n for key, n in stats.unexpected.items() if key.startswith(kind + "/")
            ),
            "p50_ms": percentile(stats.latency[kind], 50) * 1000,
            "p99_ms": percentile(stats.latency[kind], 99) * 1000,
        }
        for kind in KINDS
        if weights.get(kind)
    }
    passed = unexpected_total == 0 and flat and server_audit["passed"] and returncode == 0
    result = {
        "run": {
            "date": datetime.now(UTC).isoformat(timespec="seconds"),
            "seconds": args.seconds,
            "seconds_run": elapsed,
            "connections": args.connections,
            "max_sessions": args.max_sessions,
            "per_ip": args.per_ip,
            "seed": args.seed,
            "weights": weights,
            "accounts": len(accounts),
            "abort_accounts": len(abort_accounts),
            "cpus": os.cpu_count(),
            "python": sys.version.split()[0],
            "serve_flags": flags,
            "server_exit_code": returncode,
            "client_wait_p50_ms": percentile(stats.waits, 50) * 1000,
            "client_wait_p99_ms": percentile(stats.waits, 99) * 1000,
            "server_cpu_s": round(cpu["server_cpu_s"], 2),
            "client_cpu_s": round(cpu["client_cpu_s"], 2),
            "redrawn_for_lack_of_a_free_mailbox": dict(stats.redrawn),
            "connections_in_flight_mean": round(cpu["in_flight_mean"], 1),
            "connections_in_flight_max": cpu["in_flight_max"],
            "loadavg_1min_start": load_start,
            "loadavg_1min_end": cpu["loadavg_1min_end"],
        },
        "kinds": kinds,
        "throughput": {
            "sessions": sum(stats.done.values()),
            "ok": sum(stats.ok.values()),
            "unexpected_errors": unexpected_total,
            "sessions_per_s": sum(stats.done.values()) / elapsed,
            "messages_stored": stored,
            "messages_per_s": stored / elapsed,
            "messages_retrieved": stats.retrieved,
            "retrieved_per_s": stats.retrieved / elapsed,
        },
        "errors": {
            "expected": dict(stats.expected),
            "expected_total": sum(stats.expected.values()),
            "unexpected": dict(stats.unexpected),
            "samples": dict(stats.samples),
        },
        "memory": {
            "rss_start_mb": samples[0][1] if samples else 0.0,
            "rss_max_mb": max((s[1] for s in samples), default=0.0),
            "rss_end_mb": samples[-1][1] if samples else 0.0,
            "slope_mb_per_min": slope,
            "flat_threshold_mb_per_min": args.flat_mb_per_min,
            "verdict": "flat" if flat else "growing",
            "fds_start": samples[0][2] if samples else 0,
            "fds_max": max((s[2] for s in samples), default=0),
            "fds_end": samples[-1][2] if samples else 0,
            "samples": [[round(t, 1), round(rss, 2), fds] for t, rss, fds in samples],
        },
        "audit": server_audit,
        "verdict": "pass" if passed else "fail",
    }
    path = args.json or RESULTS / f"soak-{datetime.now().strftime('%Y%m%d-%H%M%S')}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=2) + "\n")
    print(report(result))
    print(f"\nresults written to {path}")
    return 0 if passed else 1


if __name__ == "__main__":
    sys.exit(main())
