"""Start-up benchmark for the pytest fixture's server: cold start, reset, and a comparator.

What it measures, each over ``--runs`` runs (at least 10; median and p90):

  first start      ``python -m mailhost serve`` in a fresh data directory (so it makes its
                   TLS certificate), all ports 0 including ``--http-port``: time from spawn
                   to the JSON ready line on stdout. This is what the fixture pays once per
                   test session, since it starts in a new temporary directory.
  existing dir     the same in a data directory that has already been started once (its
                   certificate exists), as for a fixture that reuses its directory.
  reset            ``POST /api/reset`` round trips (urllib, loopback) against one running
                   server, with one message delivered by smtplib before each (not timed).
  plugin reset     ``MailhostServer.reset`` from ``mailhost.pytest_plugin`` (what the
                   ``mailhost`` fixture does before every test), likewise; skipped with a note
                   if the plugin cannot be imported outside a pytest run.
  aiosmtpd         the comparator: a ``python -c`` script that starts aiosmtpd's
                   ``Controller`` on 127.0.0.1 and prints a line when ``start()`` returns;
                   time from spawn to that line. Skipped with a note if aiosmtpd (the
                   ``bench`` extra) is not importable. aiosmtpd 1.4 cannot start on port 0
                   (``start()`` connects to its own port to check it is up), so the script
                   binds port 0 once to pick a free port and hands that to ``Controller``.
  bare Twisted     the floor any Twisted server pays: a ``python -c`` script that imports the
                   reactor (whose TCP transport imports pyOpenSSL and cryptography whenever
                   they are installed, as Twisted's TLS extra makes them), listens on one
                   loopback port and prints a line; time from spawn to that line.
  python -c pass   the bare interpreter start all of the above include, for context.

It also runs ``python -X importtime -m mailhost serve --help`` and lists the 10 largest
cumulative imports. The share of cold start that is imports comes from one real ``serve``
under ``-X importtime``: the sum of every module's own import time over that start's own
spawn-to-ready time (both inflated alike by ``-X importtime``); the ``--help`` total over the
median start without it is reported too, and exceeds 100 % for that reason.

Targets, reported as pass/fail but never gating: cold start at most 2x aiosmtpd's, reset at
most 20 ms. Prints one table and writes JSON to bench/results/fixture-startup-<timestamp>.json
(or ``--json``), with a ``summary`` list of those figures for bench/run_all.py; ``--quick``
runs the fewest runs allowed. Exit status 0 whatever the targets say; 2 when mailhost could
not be started.

Bounds: loopback only (every listener on 127.0.0.1, HTTP without a proxy). Every process it
starts is one of its own children, stopped by PID (SIGTERM or end of stdin, then SIGKILL after
10 s); each start waits at most ``--timeout`` seconds for its line, each HTTP or SMTP call at
most 10 s; every loop runs a fixed number of times. Temporary data directories are removed.
"""

from __future__ import annotations

import argparse
import json
import re
import secrets
import shutil
import smtplib
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import common

HOST = common.HOST
IO_TIMEOUT = 10.0
ACCOUNTS = {"alice@example.org": "alice-secret", "bob@example.org": "bob-secret"}
ACCOUNT_COST = 4
COLD_START_FACTOR = 2.0
RESET_TARGET_MS = 20.0
MESSAGE = (
    "From: bench@elsewhere.example\r\nTo: alice@example.org\r\n"
    "Subject: fixture start-up bench\r\n\r\nOne message before each reset.\r\n"
)

BARE_TWISTED_SCRIPT = """\
from twisted.internet import protocol, reactor

class Greeter(protocol.Protocol):
    def connectionMade(self):
        self.transport.write(b"220 bare ESMTP\\r\\n")

def listen():
    port = reactor.listenTCP(0, protocol.Factory.forProtocol(Greeter), interface="127.0.0.1")
    print("ready", port.getHost().port, flush=True)

reactor.callWhenRunning(listen)
reactor.run()
"""

AIOSMTPD_SCRIPT = """\
import socket, sys
from aiosmtpd.controller import Controller

class Handler:
    async def handle_DATA(self, server, session, envelope):
        return "250 OK"

probe = socket.socket()
probe.bind(("127.0.0.1", 0))
port = probe.getsockname()[1]
probe.close()
controller = Controller(Handler(), hostname="127.0.0.1", port=port)
controller.start()
print("ready", port, flush=True)
sys.stdin.read()
controller.stop()
"""

# Loopback traffic must never go through an http_proxy from the environment.
_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def seed_accounts(data_dir: Path) -> None:
    """The fixture's accounts at bcrypt cost 4, written as the plugin does before it starts."""
    common.add_accounts(data_dir, ACCOUNTS, cost=ACCOUNT_COST)


def start_mailhost(
    data_dir: Path, token: str, timeout: float, pre: tuple[str, ...] = ()
) -> tuple[subprocess.Popen[bytes], dict[str, Any], float, Path]:
    """``common.start_mailhost`` with the API token the fixture passes in its environment."""
    return common.start_mailhost(data_dir, timeout, env={"MAILHOST_API_TOKEN": token}, pre=pre)


def time_spawn_to_line(command: list[str], timeout: float) -> float:
    """Seconds from spawning ``command`` to its first stdout line; stopped by closing stdin."""
    started = time.perf_counter()
    process = subprocess.Popen(
        command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    try:
        common.read_line(process, lambda raw: True, timeout)
        return time.perf_counter() - started
    except common.StartError:
        common.stop(process)
        assert process.stderr is not None
        tail = process.stderr.read()[-2000:].decode(errors="replace")
        raise common.StartError(f"{command[:3]}: no line\nstderr:\n{tail}") from None
    finally:
        common.stop(process, sig=None)
        if process.stderr is not None:
            process.stderr.close()


def api(base: str, token: str, method: str, path: str, body: Any = None) -> tuple[int, bytes]:
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(base + path, data=data, method=method)
    request.add_header("Authorization", f"Bearer {token}")
    if data is not None:
        request.add_header("Content-Type", "application/json")
    try:
        with _OPENER.open(request, timeout=IO_TIMEOUT) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as e:
        with e:
            return e.code, e.read()


def deliver(port: int) -> None:
    with smtplib.SMTP(HOST, port, timeout=IO_TIMEOUT) as client:
        client.sendmail("bench@elsewhere.example", ["alice@example.org"], MESSAGE)


IMPORT_LINE = re.compile(r"^import time:\s+(\d+)\s+\|\s+(\d+)\s+\|(\s*)(\S+)\s*$")


def parse_importtime(text: str) -> tuple[float, list[dict[str, Any]]]:
    """Total import time (sum of each module's own time, ms) and rows sorted by cumulative."""
    rows = []
    for line in text.splitlines():
        match = IMPORT_LINE.match(line)
        if match:
            own, cumulative, indent, name = match.groups()
            rows.append(
                {
                    "module": name,
                    "self_ms": int(own) / 1000,
                    "cumulative_ms": int(cumulative) / 1000,
                    "depth": (len(indent) - 1) // 2,
                }
            )
    total = sum(row["self_ms"] for row in rows)
    return total, sorted(rows, key=lambda row: row["cumulative_ms"], reverse=True)


def measure_imports(workdir: Path, timeout: float) -> dict[str, Any]:
    """``-X importtime`` of ``serve --help``, and of one real ``serve`` up to its ready line."""
    command = [sys.executable, "-X", "importtime", "-m", "mailhost", "serve", "--help"]
    result = subprocess.run(
        command, capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL
    )
    help_total, help_rows = parse_importtime(result.stderr)
    out: dict[str, Any] = {
        "help_total_ms": round(help_total, 1),
        "help_modules": len(help_rows),
        "help_top10": help_rows[:10],
    }
    data_dir = workdir / "importtime"
    seed_accounts(data_dir)
    process, _, seconds, stderr_path = start_mailhost(
        data_dir, secrets.token_urlsafe(24), timeout, pre=("-X", "importtime")
    )
    common.stop(process)
    serve_total, serve_rows = parse_importtime(stderr_path.read_text(errors="replace"))
    out.update(
        serve_total_ms=round(serve_total, 1),
        serve_modules=len(serve_rows),
        serve_top10=serve_rows[:10],
        serve_start_under_importtime_ms=round(seconds * 1000, 1),
    )
    return out


def measure_resets(workdir: Path, runs: int, timeout: float) -> dict[str, Any]:
    """Reset round trips on one running server: the raw API call, then the plugin's reset."""
    data_dir = workdir / "reset"
    seed_accounts(data_dir)
    token = secrets.token_urlsafe(24)
    process, ready, startup, stderr_path = start_mailhost(data_dir, token, timeout)
    base = f"http://{HOST}:{ready['ports']['http']}"
    smtp_port = ready["ports"]["smtp"]
    out: dict[str, Any] = {}
    try:
        raw: list[float] = []
        checks: list[str] = []
        for i in range(runs):
            deliver(smtp_port)
            if i == 0:
                _, body = api(base, token, "GET", "/api/mailboxes/alice@example.org/messages")
                held = len(json.loads(body)["messages"])
                checks.append(f"{held} message(s) held before the first reset")
            started = time.perf_counter()
            status, _ = api(base, token, "POST", "/api/reset", {"accounts": "keep"})
            raw.append(time.perf_counter() - started)
            if status != 204:
                checks.append(f"reset {i}: status {status}")
        _, body = api(base, token, "GET", "/api/mailboxes/alice@example.org/messages")
        checks.append(f"{len(json.loads(body)['messages'])} message(s) after the last reset")
        out["api"] = {**common.stats(raw), "checks": checks}
        try:
            from mailhost.pytest_plugin import MailhostServer
        except Exception as e:  # any import failure is reported, not raised
            out["plugin"] = {**common.stats([]), "note": f"plugin not importable: {e!r}"}
        else:
            server = MailhostServer(process, ready, data_dir, stderr_path, startup, token)  # type: ignore[arg-type]
            plugin: list[float] = []
            for _ in range(runs):
                deliver(smtp_port)
                started = time.perf_counter()
                server.reset(dict(ACCOUNTS))
                plugin.append(time.perf_counter() - started)
            out["plugin"] = {
                **common.stats(plugin),
                "note": "importable without a pytest run (imports pytest, not its runner)",
            }
    finally:
        out["server_exit"] = common.stop(process)
    return out


def measure_cold_starts(workdir: Path, runs: int, timeout: float) -> dict[str, Any]:
    first: list[float] = []
    for i in range(runs):
        data_dir = workdir / f"first-{i}"
        seed_accounts(data_dir)
        process, _, seconds, _ = start_mailhost(data_dir, secrets.token_urlsafe(24), timeout)
        common.stop(process)
        first.append(seconds)
        shutil.rmtree(data_dir, ignore_errors=True)
    existing_dir = workdir / "existing"
    seed_accounts(existing_dir)
    process, _, _, _ = start_mailhost(existing_dir, secrets.token_urlsafe(24), timeout)
    common.stop(process)  # the warm-up start that makes the certificate; not counted
    existing: list[float] = []
    for _ in range(runs):
        process, _, seconds, _ = start_mailhost(existing_dir, secrets.token_urlsafe(24), timeout)
        common.stop(process)
        existing.append(seconds)
    return {"first_start": common.stats(first), "existing_dir": common.stats(existing)}


def measure_aiosmtpd(runs: int, timeout: float) -> dict[str, Any]:
    probe = subprocess.run(
        [sys.executable, "-c", "import aiosmtpd; print(aiosmtpd.__version__)"],
        capture_output=True,
        text=True,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
    )
    if probe.returncode != 0:
        return {
            **common.stats([]),
            "note": "aiosmtpd not importable (install the bench extra); skipped",
        }
    samples: list[float] = []
    errors: list[str] = []
    for _ in range(runs):
        try:
            samples.append(time_spawn_to_line([sys.executable, "-c", AIOSMTPD_SCRIPT], timeout))
        except common.StartError as e:
            errors.append(str(e)[:500])
    return {**common.stats(samples), "version": probe.stdout.strip(), "errors": errors}


def measure_bare_twisted(runs: int, timeout: float) -> dict[str, Any]:
    samples: list[float] = []
    errors: list[str] = []
    for _ in range(runs):
        try:
            samples.append(time_spawn_to_line([sys.executable, "-c", BARE_TWISTED_SCRIPT], timeout))
        except common.StartError as e:
            errors.append(str(e)[:500])
    return {**common.stats(samples), "errors": errors}


def fmt(value: float | None, unit: str = "") -> str:
    return "-" if value is None else f"{value:,.1f}{unit}"


def ratio(a: float | None, b: float | None) -> float | None:
    return None if a is None or not b else round(a / b, 2)


def verdict(ok: bool | None) -> str:
    return "n/a" if ok is None else ("pass" if ok else "FAIL")


def summary_rows(
    cold: dict[str, Any],
    comparator: dict[str, Any],
    floor: dict[str, Any],
    resets: dict[str, Any],
    targets: dict[str, bool | None],
) -> list[dict[str, Any]]:
    """The rows bench/run_all.py prints: medians; start-up as mailhost / aiosmtpd, lower better."""
    aio = comparator["median_ms"]
    aio_note = comparator.get("note")
    rows: list[dict[str, Any]] = []
    for figure, key, target in (
        ("fixture cold start, existing data dir", "existing_dir", "existing_dir_le_2x_aiosmtpd"),
        (
            "fixture first start (makes its certificate)",
            "first_start",
            "first_start_le_2x_aiosmtpd",
        ),
    ):
        rows.append(
            common.summary_row(
                figure,
                "mailhost",
                cold[key]["median_ms"],
                "ms",
                versus="aiosmtpd Controller start",
                ratio=ratio(cold[key]["median_ms"], aio),
                target=COLD_START_FACTOR,
                passed=targets[target],
                better="lower",
                note=aio_note or "median; ratio = mailhost / aiosmtpd, at most 2",
            )
        )
    rows.append(
        common.summary_row(
            "fixture cold start",
            "aiosmtpd",
            aio,
            "ms",
            better="lower",
            note=aio_note or f"Controller start, aiosmtpd {comparator.get('version')}",
        )
    )
    rows.append(
        common.summary_row(
            "fixture cold start",
            "bare Twisted listener",
            floor["median_ms"],
            "ms",
            versus="aiosmtpd Controller start",
            ratio=ratio(floor["median_ms"], aio),
            better="lower",
            note="the floor of any Twisted server here: reactor import (with pyOpenSSL) "
            "and one listener",
        )
    )
    for figure, key, target in (
        ("POST /api/reset", "api", "api_reset_le_20ms"),
        ("plugin MailhostServer.reset", "plugin", "plugin_reset_le_20ms"),
    ):
        rows.append(
            common.summary_row(
                figure,
                "mailhost",
                resets[key]["median_ms"],
                "ms",
                target=RESET_TARGET_MS,
                passed=targets[target],
                better="lower",
                note=f"absolute bound: median <= {RESET_TARGET_MS:g} ms",
            )
        )
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=10, help="runs per figure, at least 10")
    parser.add_argument("--timeout", type=float, default=30.0, help="seconds per start")
    parser.add_argument("--json", type=Path, help="where to write the results")
    parser.add_argument(
        "--quick", action="store_true", help="the fewest runs allowed (10, the default)"
    )
    args = parser.parse_args()
    if args.quick:
        args.runs = 10
    if args.runs < 10:
        parser.error("--runs must be at least 10")

    workdir = Path(tempfile.mkdtemp(prefix="mailhost-fixture-bench-"))
    try:
        baseline = common.stats(
            [time_spawn_to_line([sys.executable, "-c", "print()"], 10.0) for _ in range(args.runs)]
        )
        cold = measure_cold_starts(workdir, args.runs, args.timeout)
        comparator = measure_aiosmtpd(args.runs, args.timeout)
        floor = measure_bare_twisted(args.runs, args.timeout)
        resets = measure_resets(workdir, args.runs, args.timeout)
        imports = measure_imports(workdir, args.timeout * 2)
    except common.StartError as e:
        print(f"could not start mailhost: {e}", file=sys.stderr)
        return 2
    finally:
        shutil.rmtree(workdir, ignore_errors=True)

    aio = comparator["median_ms"]
    rows = [
        ("first start (makes its certificate)", cold["first_start"], True),
        ("start with an existing data dir", cold["existing_dir"], True),
        ("aiosmtpd Controller start", comparator, False),
        ("bare Twisted listener (the floor)", floor, True),
        ("python -c (interpreter alone)", baseline, False),
        ("POST /api/reset", resets["api"], False),
        ("plugin MailhostServer.reset", resets["plugin"], False),
    ]
    targets = {
        "first_start_le_2x_aiosmtpd": None
        if aio is None
        else cold["first_start"]["median_ms"] <= COLD_START_FACTOR * aio,
        "existing_dir_le_2x_aiosmtpd": None
        if aio is None
        else cold["existing_dir"]["median_ms"] <= COLD_START_FACTOR * aio,
        "api_reset_le_20ms": resets["api"]["median_ms"] <= RESET_TARGET_MS,
        "plugin_reset_le_20ms": None
        if resets["plugin"]["median_ms"] is None
        else resets["plugin"]["median_ms"] <= RESET_TARGET_MS,
    }
    share = imports["help_total_ms"] / cold["existing_dir"]["median_ms"]
    serve_share = imports["serve_total_ms"] / imports["serve_start_under_importtime_ms"]

    print(f"\nmailhost fixture start-up, {args.runs} runs each, Python {sys.version.split()[0]}\n")
    print(f"{'figure':<38} {'median ms':>10} {'p90 ms':>9} {'/ aiosmtpd':>11}")
    for label, figure, compared in rows:
        versus = ratio(figure["median_ms"], aio) if compared else None
        print(
            f"{label:<38} {fmt(figure['median_ms']):>10} {fmt(figure['p90_ms']):>9} "
            f"{fmt(versus, 'x') if compared else '':>11}"
        )
    print("\ntargets (measured, not gating):")
    print(f"  first start <= 2x aiosmtpd      {verdict(targets['first_start_le_2x_aiosmtpd'])}")
    print(f"  existing dir <= 2x aiosmtpd     {verdict(targets['existing_dir_le_2x_aiosmtpd'])}")
    print(f"  POST /api/reset <= 20 ms        {verdict(targets['api_reset_le_20ms'])}")
    print(f"  plugin reset <= 20 ms           {verdict(targets['plugin_reset_le_20ms'])}")
    for note in (comparator.get("note"), resets["plugin"].get("note")):
        if note:
            print(f"note: {note}")
    for error in comparator.get("errors", []):
        print(f"aiosmtpd error: {error}")
    print(f"reset checks: {'; '.join(resets['api']['checks'])}")
    print(
        f"\nimports of a real serve under -X importtime: {imports['serve_modules']} modules, "
        f"{imports['serve_total_ms']:.1f} ms of a {imports['serve_start_under_importtime_ms']:.1f}"
        f" ms start = {serve_share:.0%} of cold start (the count includes the HTTP API's"
        " modules, loaded in the background once the server is ready, so it can pass 100 %)"
    )
    print(
        f"imports of serve --help under -X importtime: {imports['help_modules']} modules, "
        f"{imports['help_total_ms']:.1f} ms ({share:.0%} of the median start with an existing "
        f"data dir measured without it; -X importtime inflates import times)"
    )
    print("\nlargest cumulative imports (serve --help):")
    print(f"  {'cumulative ms':>13} {'self ms':>8}  module")
    for row in imports["help_top10"]:
        print(f"  {row['cumulative_ms']:>13.1f} {row['self_ms']:>8.1f}  {row['module']}")

    results = {
        "python": sys.version.split()[0],
        "runs": args.runs,
        "cold_start": cold,
        "aiosmtpd": comparator,
        "bare_twisted": floor,
        "interpreter": baseline,
        "reset": resets,
        "ratios_vs_aiosmtpd": {
            "first_start": ratio(cold["first_start"]["median_ms"], aio),
            "existing_dir": ratio(cold["existing_dir"]["median_ms"], aio),
        },
        "targets": targets,
        "imports": {
            **imports,
            "serve_share_of_start": round(serve_share, 3),
            "help_share_of_existing_dir_start": round(share, 3),
        },
        "summary": summary_rows(cold, comparator, floor, resets, targets),
    }
    path = common.write_results("fixture-startup", results, args.json)
    print(f"\nJSON: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
