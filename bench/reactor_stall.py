"""Reactor-stall benchmark: NOOP latency on idle sessions while clients log in at bcrypt cost 12.

mailhost runs every protocol on one reactor thread and sends bcrypt to a thread pool of its
own. If anything in a login (the hash, the account file, opening a maildrop) ran on the
reactor thread, or held the GIL long enough, every other session would wait behind it. This
script shows whether that happens:

  probes    ``--probes`` idle SMTP sessions on the MX port (after EHLO) and as many POP3
            sessions logged in (one account each, bcrypt cost 4: their logins are set-up, not
            measured), from 127.0.0.2 upwards. Each sends ``NOOP`` every ``--interval`` ms
            and times the reply with ``time.perf_counter`` (TCP_NODELAY on every socket).
  baseline  ``--baseline`` seconds of probes alone.
  storm     ``--clients`` concurrent clients, each looping connect -> authenticate -> QUIT
            with correct passwords against cost-12 hashes, until ``--storm`` seconds have
            passed or ``--max-logins`` logins have started, whichever comes first; the phase
            ends when the last login in flight has finished. ``--pop3-clients`` of them use
            POP3 USER/PASS, one account each (mailhost allows one POP3 session per mailbox);
            the rest use SMTP AUTH PLAIN on the submission port (plaintext passwords are
            allowed on loopback), sharing ``--smtp-accounts`` accounts. Every storm client
            has its own source address, 127.0.0.100 upwards.

Reported: NOOP p50/p99/max per phase (and per protocol), logins done and logins/s, login
latency, the server's CPU seconds during the storm (all threads, and its reactor thread
alone from /proc/<pid>/task/<pid>/stat), and the client's own event-loop lag (how late a
20 ms sleep wakes up), which bounds how much of a latency is the client's. Target, reported
but never gating: NOOP p99 during the storm at most 20 ms.

Prints a table and writes JSON (with a ``summary`` list, see bench/run_all.py) to
bench/results/reactor-stall-<timestamp>.json or ``--json``. Exit status 0 whatever the target
says; 2 when mailhost could not be started or the probes could not be set up.

Bounds: loopback only; one ``mailhost serve`` child, stopped by its PID (SIGTERM, SIGKILL after
10 s); every reply waited for at most ``--io-timeout`` seconds; the storm is bounded in time
and count, and the wait for logins in flight by ``--io-timeout`` too. The temporary data
directory is removed.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import os
import shutil
import socket
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import common

TARGET_P99_MS = 20.0
CLIENT_LAG_WARNING_MS = 10.0
PROBE_COST = 4
STORM_COST = 12
PROBE_PASSWORD = "probe-secret"
STORM_PASSWORD = "storm-secret"
PROBE_FIRST_HOST = 2
STORM_FIRST_HOST = 100


@dataclass
class Phases:
    """The phase every sample is filed under: the phase current when its request was sent."""

    current: str = "setup"
    noop: dict[str, dict[str, list[float]]] = field(default_factory=dict)
    lag: dict[str, list[float]] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)

    def add_noop(self, kind: str, phase: str, seconds: float) -> None:
        self.noop.setdefault(phase, {}).setdefault(kind, []).append(seconds)


@dataclass
class Storm:
    deadline: float
    max_logins: int
    started: int = 0
    done: dict[str, int] = field(default_factory=lambda: {"smtp": 0, "pop3": 0})
    latencies: list[float] = field(default_factory=list)
    errors: dict[str, int] = field(default_factory=dict)
    samples: list[str] = field(default_factory=list)

    def take(self) -> bool:
        """Whether another login may start (and count it)."""
        if time.perf_counter() >= self.deadline or self.started >= self.max_logins:
            return False
        self.started += 1
        return True

    def error(self, what: str) -> None:
        key = what[:60]
        self.errors[key] = self.errors.get(key, 0) + 1
        if len(self.samples) < 5:
            self.samples.append(what[:300])


class Session:
    """One line-oriented client connection (SMTP or POP3) with bounded reads."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, timeout: float):
        self.reader, self.writer, self.timeout = reader, writer, timeout

    @classmethod
    async def open(cls, port: int, source: str, timeout: float) -> Session:
        reader, writer = await asyncio.wait_for(
            asyncio.open_connection(common.HOST, port, local_addr=(source, 0)), timeout
        )
        sock = writer.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return cls(reader, writer, timeout)

    async def line(self) -> bytes:
        raw = await asyncio.wait_for(self.reader.readline(), self.timeout)
        if not raw:
            raise ConnectionError("server closed the connection")
        return raw.rstrip(b"\r\n")

    async def smtp_reply(self) -> tuple[int, bytes]:
        """A whole (possibly multiline) SMTP reply: its code and last line."""
        while True:
            raw = await self.line()
            if len(raw) < 3 or not raw[:3].isdigit():
                raise ValueError(f"not an SMTP reply: {raw[:80]!r}")
            if raw[3:4] != b"-":
                return int(raw[:3]), raw

    async def send(self, command: bytes) -> None:
        self.writer.write(command + b"\r\n")
        await self.writer.drain()

    async def smtp(self, command: bytes, want: int) -> None:
        await self.send(command)
        code, raw = await self.smtp_reply()
        if code != want:
            raise ValueError(f"{command.split()[0].decode()}: {raw[:120]!r}")

    async def pop(self, command: bytes) -> None:
        await self.send(command)
        raw = await self.line()
        if not raw.startswith(b"+OK"):
            raise ValueError(f"{command.split()[0].decode()}: {raw[:120]!r}")

    async def close(self) -> None:
        self.writer.close()
        with contextlib.suppress(OSError, TimeoutError):
            await asyncio.wait_for(self.writer.wait_closed(), self.timeout)


def source(index: int) -> str:
    """127.0.0.<index>, kept inside 127.0.0.2-254."""
    return f"127.0.0.{2 + (index - 2) % 253}"


async def open_probe(kind: str, index: int, ports: dict[str, int], timeout: float) -> Session:
    address = source(PROBE_FIRST_HOST + index)
    if kind == "smtp":
        session = await Session.open(ports["smtp"], address, timeout)
        code, raw = await session.smtp_reply()
        if code != 220:
            raise ValueError(f"SMTP greeting: {raw[:120]!r}")
        await session.smtp(b"EHLO probe.example", 250)
        return session
    session = await Session.open(ports["pop3"], address, timeout)
    greeting = await session.line()
    if not greeting.startswith(b"+OK"):
        raise ValueError(f"POP3 greeting: {greeting[:120]!r}")
    await session.pop(f"USER probe{index}@example.org".encode())
    await session.pop(f"PASS {PROBE_PASSWORD}".encode())
    return session


async def run_probe(
    kind: str, session: Session, phases: Phases, interval: float, stop: asyncio.Event
) -> None:
    """NOOP every ``interval`` seconds until ``stop``; each round trip filed under its phase."""
    want = b"250" if kind == "smtp" else b"+OK"
    next_send = time.perf_counter()
    while not stop.is_set():
        phase = phases.current
        sent = time.perf_counter()
        try:
            await session.send(b"NOOP")
            raw = await session.line()
        except (OSError, ValueError, TimeoutError, ConnectionError) as e:
            phases.errors.append(f"{kind} probe in {phase}: {e!r}"[:300])
            return
        elapsed = time.perf_counter() - sent
        if not raw.startswith(want):
            phases.errors.append(f"{kind} probe NOOP: {raw[:120]!r}")
            return
        phases.add_noop(kind, phase, elapsed)
        next_send = max(next_send + interval, time.perf_counter())
        await asyncio.sleep(next_send - time.perf_counter())


async def measure_lag(phases: Phases, interval: float, stop: asyncio.Event) -> None:
    """How late this client's own event loop wakes from ``interval``-second sleeps."""
    while not stop.is_set():
        phase = phases.current
        before = time.perf_counter()
        await asyncio.sleep(interval)
        phases.lag.setdefault(phase, []).append(time.perf_counter() - before - interval)


async def smtp_login(port: int, address: str, account: str, timeout: float) -> None:
    session = await Session.open(port, address, timeout)
    try:
        code, raw = await session.smtp_reply()
        if code != 220:
            raise ValueError(f"greeting: {raw[:120]!r}")
        await session.smtp(b"EHLO storm.example", 250)
        token = base64.b64encode(f"\0{account}\0{STORM_PASSWORD}".encode())
        await session.smtp(b"AUTH PLAIN " + token, 235)
        await session.smtp(b"QUIT", 221)
    finally:
        await session.close()


async def pop3_login(port: int, address: str, account: str, timeout: float) -> None:
    session = await Session.open(port, address, timeout)
    try:
        greeting = await session.line()
        if not greeting.startswith(b"+OK"):
            raise ValueError(f"greeting: {greeting[:120]!r}")
        await session.pop(f"USER {account}".encode())
        await session.pop(f"PASS {STORM_PASSWORD}".encode())
        await session.pop(b"QUIT")
    finally:
        await session.close()


async def storm_client(
    kind: str, address: str, account: str, port: int, storm: Storm, timeout: float
) -> None:
    login = smtp_login if kind == "smtp" else pop3_login
    while storm.take():
        started = time.perf_counter()
        try:
            await login(port, address, account, timeout)
        except (OSError, ValueError, TimeoutError, ConnectionError) as e:
            storm.error(f"{kind}: {e!r}")
            await asyncio.sleep(0.1)  # never hammer a server that refuses
            continue
        storm.latencies.append(time.perf_counter() - started)
        storm.done[kind] += 1


def thread_cpu_seconds(pid: int, tid: int) -> float:
    """User + system CPU time of one thread of ``pid`` (0 when it is gone)."""
    try:
        fields = Path(f"/proc/{pid}/task/{tid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def bench(args: argparse.Namespace, pid: int, ports: dict[str, int]) -> dict[str, Any]:
    phases = Phases()
    stop = asyncio.Event()
    probes: list[tuple[str, Session]] = []
    try:
        for index in range(args.probes):
            for kind in ("smtp", "pop3"):
                probes.append((kind, await open_probe(kind, index, ports, args.io_timeout)))
    except (OSError, ValueError, TimeoutError, ConnectionError) as e:
        for _, session in probes:
            await session.close()
        raise common.StartError(f"could not open the probe sessions: {e!r}") from None

    interval = args.interval / 1000
    tasks = [
        asyncio.create_task(run_probe(kind, session, phases, interval, stop))
        for kind, session in probes
    ]
    tasks.append(asyncio.create_task(measure_lag(phases, interval, stop)))
    phases.current = "warm-up"
    await asyncio.sleep(0.5)
    phases.current = "baseline"
    await asyncio.sleep(args.baseline)

    storm = Storm(deadline=time.perf_counter() + args.storm, max_logins=args.max_logins)
    pop3_clients = min(args.pop3_clients, args.clients)
    clients = []
    for i in range(args.clients):
        address = source(STORM_FIRST_HOST + i)
        if i < pop3_clients:
            kind, account, port = "pop3", f"storm-pop{i}@example.org", ports["pop3"]
        else:
            index = (i - pop3_clients) % args.smtp_accounts
            kind, account, port = "smtp", f"storm{index}@example.org", ports["submission"]
        clients.append(storm_client(kind, address, account, port, storm, args.io_timeout))
    cpu_before, reactor_before = common.cpu_seconds(pid), thread_cpu_seconds(pid, pid)
    client_before = time.process_time()
    phases.current = "storm"
    storm_started = time.perf_counter()
    await asyncio.gather(*clients)
    storm_seconds = time.perf_counter() - storm_started
    phases.current = "after"
    cpu = common.cpu_seconds(pid) - cpu_before
    reactor_cpu = thread_cpu_seconds(pid, pid) - reactor_before
    client_cpu = time.process_time() - client_before
    await asyncio.sleep(0.5)

    stop.set()
    await asyncio.wait(tasks, timeout=args.io_timeout + 1)
    for kind, session in probes:
        try:
            if kind == "smtp":
                await session.smtp(b"QUIT", 221)
            else:
                await session.pop(b"QUIT")
        except (OSError, ValueError, TimeoutError, ConnectionError):
            pass
        await session.close()

    logins = sum(storm.done.values())
    return {
        "phases": phases,
        "storm": storm,
        "storm_seconds": storm_seconds,
        "logins": logins,
        "logins_per_s": logins / storm_seconds if storm_seconds else None,
        "server_cpu_s": cpu,
        "reactor_thread_cpu_s": reactor_cpu,
        "client_cpu_s": client_cpu,
    }


def ms_figures(samples: list[float]) -> dict[str, Any]:
    ms = sorted(s * 1000 for s in samples)

    def rounded(value: float | None) -> float | None:
        return None if value is None else round(value, 2)

    return {
        "n": len(ms),
        "p50_ms": rounded(common.percentile(ms, 50)),
        "p99_ms": rounded(common.percentile(ms, 99)),
        "max_ms": rounded(ms[-1] if ms else None),
    }


def fmt(value: float | None, digits: int = 2) -> str:
    return "-" if value is None else f"{value:,.{digits}f}"


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--probes", type=int, default=10, help="idle sessions per protocol")
    parser.add_argument("--interval", type=float, default=20.0, help="ms between NOOPs")
    parser.add_argument("--baseline", type=float, default=3.0, help="seconds without the storm")
    parser.add_argument("--clients", type=int, default=50, help="concurrent logging-in clients")
    parser.add_argument("--pop3-clients", type=int, default=10, help="of them, POP3 USER/PASS")
    parser.add_argument("--smtp-accounts", type=int, default=10, help="accounts for SMTP AUTH")
    parser.add_argument("--storm", type=float, default=10.0, help="seconds to start logins in")
    parser.add_argument("--max-logins", type=int, default=200, help="logins to start at most")
    parser.add_argument("--io-timeout", type=float, default=30.0, help="seconds per reply")
    parser.add_argument("--timeout", type=float, default=60.0, help="seconds for mailhost start")
    parser.add_argument("--quick", action="store_true", help="a short run: 5 s storm, 2 s base")
    parser.add_argument("--json", type=Path, help="where to write the results")
    args = parser.parse_args()
    if args.quick:
        args.storm, args.baseline = min(args.storm, 5.0), min(args.baseline, 2.0)
    if args.probes < 1 or args.clients < 1 or args.smtp_accounts < 1:
        parser.error("--probes, --clients and --smtp-accounts must be at least 1")
    if args.probes + args.clients > 253:
        parser.error("one source address each: --probes + --clients must be at most 253")

    workdir = Path(tempfile.mkdtemp(prefix="mailhost-stall-bench-"))
    data_dir = workdir / "data"
    pop3_clients = min(args.pop3_clients, args.clients)
    smtp_accounts = min(args.smtp_accounts, args.clients - pop3_clients)
    process = None
    stderr_tail = ""
    wall = time.perf_counter()
    try:
        hashing = time.perf_counter()
        common.add_accounts(
            data_dir,
            {f"probe{i}@example.org": PROBE_PASSWORD for i in range(args.probes)},
            cost=PROBE_COST,
        )
        storm_accounts = {f"storm-pop{i}@example.org": STORM_PASSWORD for i in range(pop3_clients)}
        storm_accounts |= {f"storm{i}@example.org": STORM_PASSWORD for i in range(smtp_accounts)}
        common.add_accounts(data_dir, storm_accounts, cost=STORM_COST)
        hashing = time.perf_counter() - hashing
        limit = str(4 * (2 * args.probes + args.clients) + 100)
        process, ready, _, _ = common.start_mailhost(
            data_dir,
            args.timeout,
            extra=("--max-connections", limit, "--max-connections-per-ip", limit),
        )
        run = asyncio.run(bench(args, process.pid, ready["ports"]))
    except common.StartError as e:
        print(f"reactor stall bench could not start: {e}", file=sys.stderr)
        return 2
    finally:
        exit_status = common.stop(process) if process is not None else None
        if exit_status:
            stderr_tail = (workdir / "data-stderr.log").read_text(errors="replace")[-2000:]
        shutil.rmtree(workdir, ignore_errors=True)
    wall = time.perf_counter() - wall

    phases: Phases = run["phases"]
    storm: Storm = run["storm"]
    figures: dict[str, dict[str, Any]] = {}
    for phase in ("baseline", "storm"):
        by_kind = phases.noop.get(phase, {})
        figures[phase] = {
            "all": ms_figures([s for samples in by_kind.values() for s in samples]),
            **{kind: ms_figures(by_kind.get(kind, [])) for kind in ("smtp", "pop3")},
            "client_loop_lag": ms_figures(phases.lag.get(phase, [])),
        }
    storm_p99 = figures["storm"]["all"]["p99_ms"]
    passed = None if storm_p99 is None else storm_p99 <= TARGET_P99_MS
    latency = ms_figures(storm.latencies)
    client_lag = figures["storm"]["client_loop_lag"]["p99_ms"]
    busy = client_lag is not None and client_lag > CLIENT_LAG_WARNING_MS
    busy_note = (
        f"this client's own loop woke up to {client_lag:.0f} ms late (p99): the machine was "
        "busy, and the NOOP figures include that delay"
        if busy
        else None
    )

    print(
        f"\nmailhost reactor stall: {args.probes} SMTP + {args.probes} POP3 idle probes, NOOP "
        f"every {args.interval:g} ms; storm of {args.clients} clients ({pop3_clients} POP3) at "
        f"bcrypt cost {STORM_COST}\n"
    )
    print(f"{'NOOP round trip':<28} {'n':>6} {'p50 ms':>8} {'p99 ms':>8} {'max ms':>8}")
    for phase in ("baseline", "storm"):
        for kind in ("all", "smtp", "pop3", "client_loop_lag"):
            f = figures[phase][kind]
            label = f"{phase} {kind.replace('_', ' ')}"
            print(
                f"{label:<28} {f['n']:>6} {fmt(f['p50_ms']):>8} {fmt(f['p99_ms']):>8} "
                f"{fmt(f['max_ms']):>8}"
            )
    print(
        f"\nstorm: {run['logins']} logins ({storm.done['smtp']} SMTP AUTH, {storm.done['pop3']} "
        f"POP3) in {run['storm_seconds']:.2f} s = {fmt(run['logins_per_s'])} logins/s; login "
        f"p50 {fmt(latency['p50_ms'], 0)} ms, p99 {fmt(latency['p99_ms'], 0)} ms"
    )
    print(
        f"server CPU during the storm: {run['server_cpu_s']:.2f} s (reactor thread "
        f"{run['reactor_thread_cpu_s']:.2f} s); client CPU {run['client_cpu_s']:.2f} s"
    )
    if storm.errors:
        print(f"storm errors: {storm.errors}; e.g. {storm.samples}")
    for error in phases.errors:
        print(f"probe error: {error}")
    if busy_note:
        print(f"warning: {busy_note}")
    print(
        f"\ntarget NOOP p99 during the storm <= {TARGET_P99_MS:g} ms: "
        f"{'n/a' if passed is None else 'pass' if passed else 'FAIL'} "
        f"({fmt(storm_p99)} ms; measured, not gating)"
    )
    print(f"set-up hashing {hashing:.1f} s, whole run {wall:.1f} s")
    if exit_status:
        print(f"mailhost exited with status {exit_status}; stderr:\n{stderr_tail}")

    summary = [
        common.summary_row(
            "NOOP p99 on idle sessions during a cost-12 login storm",
            "mailhost",
            storm_p99,
            "ms",
            target=TARGET_P99_MS,
            passed=passed,
            better="lower",
            note=f"absolute bound: p99 <= {TARGET_P99_MS:g} ms; {args.clients} clients"
            + (f"; {busy_note}" if busy_note else ""),
        ),
        common.summary_row(
            "NOOP p99 on idle sessions, no storm",
            "mailhost",
            figures["baseline"]["all"]["p99_ms"],
            "ms",
            better="lower",
            note="baseline for the storm row",
        ),
        common.summary_row(
            "cost-12 logins during the storm",
            "mailhost",
            None if run["logins_per_s"] is None else round(run["logins_per_s"], 2),
            "logins/s",
            better="higher",
            note=f"{run['logins']} logins in {run['storm_seconds']:.1f} s",
        ),
    ]
    results = {
        "python": sys.version.split()[0],
        "cpus": os.cpu_count(),
        "settings": {k: v for k, v in vars(args).items() if k != "json"},
        "noop": figures,
        "storm": {
            "logins": run["logins"],
            "by_protocol": storm.done,
            "started": storm.started,
            "seconds": round(run["storm_seconds"], 3),
            "logins_per_s": run["logins_per_s"],
            "login_latency": latency,
            "errors": storm.errors,
            "error_samples": storm.samples,
        },
        "server_cpu_s": round(run["server_cpu_s"], 2),
        "reactor_thread_cpu_s": round(run["reactor_thread_cpu_s"], 2),
        "client_cpu_s": round(run["client_cpu_s"], 2),
        "probe_errors": phases.errors,
        "server_exit": exit_status,
        "setup_hashing_s": round(hashing, 2),
        "wall_s": round(wall, 1),
        "target_p99_ms": TARGET_P99_MS,
        "client_busy_warning": busy_note,
        "pass": passed,
        "summary": summary,
    }
    path = common.write_results("reactor-stall", results, args.json)
    print(f"\nJSON: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
