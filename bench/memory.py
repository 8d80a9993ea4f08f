"""Memory benchmark: RSS per idle connection, and the POP-login table's size and bound.

Two measurements:

  idle connections  one ``mailhost serve`` (``--max-connections`` and
                    ``--max-connections-per-ip`` above ``--connections``). A few connections
                    of each kind are opened and closed first, so code paths loaded on first
                    use are in the baseline. Then: RSS (VmRSS); ``--connections``/2 SMTP
                    connections to the MX port, each waited on until its 220 greeting; RSS;
                    as many POP3 connections, each waited on until its +OK greeting; RSS;
                    all closed; RSS; then the same again (a second round), whose peak should
                    be about the first's if closed connections leave nothing behind.
                    Connections come from 127.0.0.2 upwards, at most ``--per-address`` per
                    address, opened ``--batch`` at a time. Every RSS reading waits for RSS to
                    settle (three readings 0.25 s apart within 16 KiB of each other, at most
                    ``--settle`` seconds). Per connection = growth / connections, in KiB, for
                    SMTP and POP3 apart.
  POP-login table   ``mailhost.pop_logins.PopLoginTable`` (bounded by ``max_entries``, 100,000
                    by default) in a fresh ``python -c`` process: RSS after importing it,
                    after recording ``--entries`` logins from distinct addresses (10.x.y.z,
                    each with its own account string and datetime, as a server's logins
                    would be), and after as many again from other addresses, which the bound
                    must absorb (the table keeps ``max_entries``; RSS stays about the same).
                    A second process repeats the first part under ``tracemalloc`` for the
                    bytes Python allocated per entry, without allocator slack.

Prints a table and writes JSON (with a ``summary`` list, see bench/run_all.py) to
bench/results/memory-<timestamp>.json or ``--json``. No targets but one: the table's RSS
growth from ``--entries`` to twice as many logins at most a quarter of its growth to
``--entries`` (and its length at its bound). Exit status 0 whatever the figures say; 2 when
mailhost could not be started or the table process failed.

Bounds: loopback only; one ``mailhost serve`` child, stopped by its PID (SIGTERM, SIGKILL after
10 s); every connect and greeting waited for at most ``--io-timeout`` seconds; each table
process at most 300 s. The temporary data directory is removed.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import common

SETTLE_STEP = 0.25
SETTLE_KIB = 16
WARM_UP_CONNECTIONS = 10
GROWTH_BOUND = 0.25
FIRST_HOST = 2

TABLE_SCRIPT = """\
import gc, json, re, sys, time
from datetime import UTC, datetime, timedelta
from pathlib import Path

from mailhost.pop_logins import PopLoginTable

entries, traced = int(sys.argv[1]), sys.argv[2] == "trace"


def rss():
    status = Path("/proc/self/status").read_text()
    return int(re.search(r"^VmRSS:\\s+(\\d+) kB", status, re.MULTILINE).group(1))


def record(table, first, count, base):
    for i in range(first, first + count):
        ip = f"10.{i >> 16 & 255}.{i >> 8 & 255}.{i & 255}"
        table.record(ip, f"user{i % 1000}@example.org", base + timedelta(seconds=i))


table = PopLoginTable(max_entries=entries)
base = datetime(2026, 1, 1, tzinfo=UTC)
out = {"max_entries": table.max_entries}
if traced:
    import tracemalloc

    tracemalloc.start()
    gc.collect()
    before = tracemalloc.get_traced_memory()[0]
    record(table, 0, entries, base)
    gc.collect()
    out.update(traced_bytes=tracemalloc.get_traced_memory()[0] - before, length=len(table))
else:
    gc.collect()
    out["rss_before_kib"] = rss()
    started = time.perf_counter()
    record(table, 0, entries, base)
    out["record_s"] = time.perf_counter() - started
    gc.collect()
    out.update(rss_first_kib=rss(), length_first=len(table))
    record(table, entries, entries, base)
    gc.collect()
    out.update(rss_second_kib=rss(), length_second=len(table))
    out["oldest_kept"] = table.entries()[0].ip
print(json.dumps(out))
"""


def settled_rss(pid: int, limit: float) -> int | None:
    """RSS in KiB once three readings ``SETTLE_STEP`` apart agree within ``SETTLE_KIB``."""
    readings: list[int] = []
    deadline = time.monotonic() + limit
    while True:
        value = common.rss_kib(pid)
        if value is None:
            return None
        readings.append(value)
        last = readings[-3:]
        if len(last) == 3 and max(last) - min(last) <= SETTLE_KIB:
            return value
        if time.monotonic() >= deadline:
            return value
        time.sleep(SETTLE_STEP)


async def open_idle(
    port: int, kind: str, count: int, args: argparse.Namespace, first: int
) -> tuple[list[asyncio.StreamWriter], list[str]]:
    """``count`` connections, each after its greeting; their writers and any errors."""
    want = b"220" if kind == "smtp" else b"+OK"
    writers: list[asyncio.StreamWriter] = []
    errors: list[str] = []

    async def one(index: int) -> None:
        address = f"127.0.0.{FIRST_HOST + index // args.per_address}"
        try:
            reader, writer = await asyncio.wait_for(
                asyncio.open_connection(common.HOST, port, local_addr=(address, 0)),
                args.io_timeout,
            )
        except (OSError, TimeoutError) as e:
            errors.append(f"{kind} connect: {e!r}")
            return
        writers.append(writer)
        try:
            greeting = await asyncio.wait_for(reader.readline(), args.io_timeout)
        except (OSError, TimeoutError) as e:
            errors.append(f"{kind} greeting: {e!r}")
            return
        if not greeting.startswith(want):
            errors.append(f"{kind} greeting: {greeting[:100]!r}")

    for start in range(0, count, args.batch):
        await asyncio.gather(
            *(one(first + i) for i in range(start, min(count, start + args.batch)))
        )
    return writers, errors


async def close_all(writers: list[asyncio.StreamWriter], timeout: float) -> None:
    for writer in writers:
        writer.close()
    for writer in writers:
        with contextlib.suppress(OSError, TimeoutError):
            await asyncio.wait_for(writer.wait_closed(), timeout)


async def measure_connections_async(
    pid: int, ports: dict[str, int], args: argparse.Namespace
) -> dict[str, Any]:
    loop = asyncio.get_running_loop()

    async def rss() -> int | None:
        return await loop.run_in_executor(None, settled_rss, pid, args.settle)

    for kind in ("smtp", "pop3"):
        writers, _ = await open_idle(ports[kind], kind, WARM_UP_CONNECTIONS, args, 0)
        await close_all(writers, args.io_timeout)
    half = args.connections // 2
    before = await rss()
    smtp, smtp_errors = await open_idle(ports["smtp"], "smtp", half, args, 0)
    after_smtp = await rss()
    pop3, pop3_errors = await open_idle(ports["pop3"], "pop3", half, args, half)
    after_pop3 = await rss()
    await close_all(smtp + pop3, args.io_timeout)
    after_close = await rss()
    again_smtp, again_errors = await open_idle(ports["smtp"], "smtp", half, args, 0)
    again_pop3, more_errors = await open_idle(ports["pop3"], "pop3", half, args, half)
    again_errors += more_errors
    again = await rss()
    await close_all(again_smtp + again_pop3, args.io_timeout)
    again_close = await rss()

    def per_connection(grown_from: int | None, grown_to: int | None, count: int) -> float | None:
        if grown_from is None or grown_to is None or not count:
            return None
        return round((grown_to - grown_from) / count, 2)

    return {
        "connections": {"smtp": len(smtp), "pop3": len(pop3)},
        "rss_kib": {
            "before": before,
            "after_smtp": after_smtp,
            "after_pop3": after_pop3,
            "after_close": after_close,
            "second_round": again,
            "second_round_closed": again_close,
        },
        "kib_per_connection": {
            "smtp": per_connection(before, after_smtp, len(smtp)),
            "pop3": per_connection(after_smtp, after_pop3, len(pop3)),
            "both": per_connection(before, after_pop3, len(smtp) + len(pop3)),
            "second_round": per_connection(after_pop3, again, len(again_smtp) + len(again_pop3)),
        },
        "errors": (smtp_errors + pop3_errors + again_errors)[:20],
        "error_count": len(smtp_errors) + len(pop3_errors) + len(again_errors),
    }


def measure_connections(args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    limit = str(args.connections + 4 * WARM_UP_CONNECTIONS + 100)
    process, ready, _, _ = common.start_mailhost(
        workdir / "data",
        args.timeout,
        extra=("--max-connections", limit, "--max-connections-per-ip", limit),
    )
    try:
        out = asyncio.run(measure_connections_async(process.pid, ready["ports"], args))
    finally:
        out_status = common.stop(process)
    return {**out, "server_exit": out_status}


def run_table(entries: int, mode: str) -> dict[str, Any]:
    result = subprocess.run(
        [sys.executable, "-c", TABLE_SCRIPT, str(entries), mode],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=common.ROOT,
        stdin=subprocess.DEVNULL,
    )
    if result.returncode != 0:
        raise common.StartError(f"table process ({mode}): {result.stderr[-2000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def measure_table(entries: int) -> dict[str, Any]:
    rss = run_table(entries, "rss")
    traced = run_table(entries, "trace")
    first = rss["rss_first_kib"] - rss["rss_before_kib"]
    second = rss["rss_second_kib"] - rss["rss_first_kib"]
    bounded = rss["length_second"] == rss["max_entries"] and second <= GROWTH_BOUND * first
    return {
        **rss,
        "growth_first_kib": first,
        "growth_second_kib": second,
        "kib_per_entry": round(first / entries, 3),
        "mib_per_100k": round(first / entries * 100_000 / 1024, 2),
        "record_us_per_entry": round(rss["record_s"] / entries * 1e6, 2),
        "traced_bytes_per_entry": round(traced["traced_bytes"] / entries, 1),
        "traced_mib_per_100k": round(traced["traced_bytes"] / entries * 100_000 / 2**20, 2),
        "bounded": bounded,
    }


def fmt(value: float | None, digits: int = 2) -> str:
    return "-" if value is None else f"{value:,.{digits}f}"


def row(
    figure: str,
    value: float | None,
    unit: str,
    note: str | None = None,
    target: float | None = None,
    passed: bool | None = None,
) -> dict[str, Any]:
    return common.summary_row(
        figure, "mailhost", value, unit, target=target, passed=passed, better="lower", note=note
    )


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--connections", type=int, default=1000, help="idle connections in all")
    parser.add_argument("--per-address", type=int, default=100, help="connections per address")
    parser.add_argument("--batch", type=int, default=50, help="connections opened at a time")
    parser.add_argument("--entries", type=int, default=100_000, help="table max_entries")
    parser.add_argument("--settle", type=float, default=5.0, help="seconds to wait for RSS")
    parser.add_argument("--io-timeout", type=float, default=30.0, help="seconds per connect")
    parser.add_argument("--timeout", type=float, default=60.0, help="seconds for mailhost start")
    parser.add_argument("--quick", action="store_true", help="a shorter run: 400 connections")
    parser.add_argument("--json", type=Path, help="where to write the results")
    args = parser.parse_args()
    if args.quick:
        args.connections = min(args.connections, 400)
    if args.connections < 2 or args.entries < 1 or args.per_address < 1 or args.batch < 1:
        parser.error("--connections must be at least 2; --entries, --per-address, --batch 1")
    if args.connections // args.per_address + FIRST_HOST > 254:
        parser.error("too few addresses in 127.0.0.0/24: raise --per-address")

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = 2 * args.connections + 200
    if soft < wanted:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, wanted), hard))

    workdir = Path(tempfile.mkdtemp(prefix="mailhost-memory-bench-"))
    wall = time.perf_counter()
    try:
        connections = measure_connections(args, workdir)
        table = measure_table(args.entries)
    except common.StartError as e:
        print(f"memory bench could not run: {e}", file=sys.stderr)
        return 2
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    wall = time.perf_counter() - wall

    per = connections["kib_per_connection"]
    rss = connections["rss_kib"]
    count = connections["connections"]
    print(f"\nmailhost memory, Python {sys.version.split()[0]}\n")
    print(f"{'idle connections':<36} {'count':>7} {'RSS KiB after':>14} {'KiB / conn':>11}")
    print(f"{'(before)':<36} {'':>7} {fmt(rss['before'], 0):>14} {'':>11}")
    print(
        f"{'SMTP (MX port, after 220)':<36} {count['smtp']:>7} {fmt(rss['after_smtp'], 0):>14} "
        f"{fmt(per['smtp']):>11}"
    )
    print(
        f"{'POP3 (before login, after +OK)':<36} {count['pop3']:>7} "
        f"{fmt(rss['after_pop3'], 0):>14} {fmt(per['pop3']):>11}"
    )
    print(f"{'both':<36} {sum(count.values()):>7} {'':>14} {fmt(per['both']):>11}")
    print(f"{'all closed':<36} {0:>7} {fmt(rss['after_close'], 0):>14} {'':>11}")
    print(
        f"{'second round, both (growth on peak)':<36} {sum(count.values()):>7} "
        f"{fmt(rss['second_round'], 0):>14} {fmt(per['second_round']):>11}"
    )
    print(f"{'all closed again':<36} {0:>7} {fmt(rss['second_round_closed'], 0):>14} {'':>11}")
    if connections["error_count"]:
        print(f"connection errors: {connections['error_count']}; {connections['errors'][:3]}")

    entries = table["max_entries"]
    print(f"\n{'PopLoginTable (max_entries ' + format(entries, ',') + ')':<36} {'RSS KiB':>10}")
    print(f"{'imported, empty':<36} {table['rss_before_kib']:>10,}")
    print(
        f"{format(entries, ',') + ' logins recorded':<36} {table['rss_first_kib']:>10,}"
        f"   length {table['length_first']:,}"
    )
    print(
        f"{format(2 * entries, ',') + ' logins recorded':<36} {table['rss_second_kib']:>10,}"
        f"   length {table['length_second']:,}, oldest kept {table['oldest_kept']}"
    )
    print(
        f"\nper entry: {table['kib_per_entry']:.3f} KiB RSS = {table['mib_per_100k']:.2f} MiB per "
        f"100k; tracemalloc {table['traced_bytes_per_entry']:.0f} B = "
        f"{table['traced_mib_per_100k']:.2f} MiB per 100k; record() "
        f"{table['record_us_per_entry']:.2f} us each"
    )
    bound_kib = round(GROWTH_BOUND * table["growth_first_kib"])
    print(
        f"bound holds (length {entries:,}, growth {table['growth_second_kib']:,} KiB <= "
        f"{bound_kib:,} KiB): {'pass' if table['bounded'] else 'FAIL'}"
    )
    print(f"whole run {wall:.1f} s")

    summary = [
        row("RSS per idle SMTP connection", per["smtp"], "KiB", f"{count['smtp']} connections"),
        row("RSS per idle POP3 connection", per["pop3"], "KiB", f"{count['pop3']} connections"),
        row(
            "RSS growth per connection, second round over the first's peak",
            per["second_round"],
            "KiB",
            "about 0 when closed connections leave nothing behind",
        ),
        row(
            "POP-login table RSS per 100k entries",
            table["mib_per_100k"],
            "MiB",
            f"tracemalloc: {table['traced_mib_per_100k']} MiB per 100k",
        ),
        row(
            f"POP-login table RSS growth, {entries:,} -> {2 * entries:,} logins",
            round(table["growth_second_kib"] / 1024, 2),
            "MiB",
            f"absolute bound: at most {GROWTH_BOUND:.0%} of the growth to {entries:,}, and "
            f"length {entries:,} (it is {table['length_second']:,})",
            target=round(bound_kib / 1024, 2),
            passed=table["bounded"],
        ),
    ]
    results = {
        "python": sys.version.split()[0],
        "settings": {k: v for k, v in vars(args).items() if k != "json"},
        "connections": connections,
        "pop_login_table": table,
        "wall_s": round(wall, 1),
        "summary": summary,
    }
    path = common.write_results("memory", results, args.json)
    print(f"\nJSON: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
