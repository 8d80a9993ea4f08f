"""What every benchmark script shares: starting and stopping its own ``mailhost serve``,
reading a child's ready line, /proc readings, summary statistics and the results file.

Scripts run as ``python bench/<name>.py`` and import this as ``common``. Every process started
here is a child of the caller, stopped by its PID; nothing here talks beyond 127.0.0.0/8.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import select
import shutil
import signal
import statistics
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
HOST = "127.0.0.1"
STOP_TIMEOUT = 10.0
LISTENERS = ("smtp", "submission", "pop3", "smtps", "pop3s", "http")
EPHEMERAL_PORTS = [arg for name in LISTENERS for arg in (f"--{name}-port", "0")]


class StartError(RuntimeError):
    """A child exited or stayed silent instead of printing its line."""


def read_line(process: subprocess.Popen[bytes], accept: Any, timeout: float) -> bytes:
    """The first stdout line ``accept`` takes, within ``timeout`` seconds (raw reads, bounded)."""
    assert process.stdout is not None
    fd = process.stdout.fileno()
    deadline = time.monotonic() + timeout
    buffer = b""
    while (left := deadline - time.monotonic()) > 0:
        readable, _, _ = select.select([fd], [], [], left)
        if not readable:
            break
        chunk = os.read(fd, 65536)
        if not chunk:
            raise StartError(f"exited (status {process.wait(timeout=STOP_TIMEOUT)}) before ready")
        buffer += chunk
        while b"\n" in buffer:
            line, buffer = buffer.split(b"\n", 1)
            if accept(line):
                return line
    raise StartError(f"no ready line within {timeout:g} s")


def stop(process: subprocess.Popen[bytes], sig: int | None = signal.SIGTERM) -> int:
    """Stop one child by its PID: ``sig`` (or end of stdin), then SIGKILL after 10 s.

    SIGTERM by default: a child started from a background shell job inherits SIGINT
    ignored, and Twisted then leaves it so.
    """
    if process.poll() is None:
        if sig is None and process.stdin is not None:
            with contextlib.suppress(OSError):
                process.stdin.close()
        else:
            process.send_signal(sig if sig is not None else signal.SIGINT)
        try:
            process.wait(timeout=STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=STOP_TIMEOUT)
    for stream in (process.stdin, process.stdout):
        if stream is not None:
            with contextlib.suppress(OSError):
                stream.close()
    return process.returncode


def is_ready(raw: bytes) -> bool:
    if not raw.startswith(b"{"):
        return False
    with contextlib.suppress(ValueError):
        return json.loads(raw).get("event") == "ready"
    return False


def start_mailhost(
    data_dir: Path,
    timeout: float = 30.0,
    *,
    extra: tuple[str, ...] | list[str] = (),
    env: dict[str, str] | None = None,
    pre: tuple[str, ...] = (),
) -> tuple[subprocess.Popen[bytes], dict[str, Any], float, Path]:
    """Spawn ``python -m mailhost serve`` on ephemeral loopback ports.

    Returns the process, its ready report, seconds from spawn to the ready line, and the
    path of its stderr log (next to ``data_dir``).
    """
    data_dir.mkdir(parents=True, exist_ok=True)
    stderr_path = data_dir.parent / f"{data_dir.name}-stderr.log"
    command = [sys.executable, *pre, "-m", "mailhost", "serve", "--data", str(data_dir)]
    with stderr_path.open("wb") as stderr:
        started = time.perf_counter()
        process = subprocess.Popen(
            [*command, "--host", HOST, "--http-host", HOST, *EPHEMERAL_PORTS, *extra],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=stderr,
            env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})},
        )
    try:
        line = read_line(process, is_ready, timeout)
    except StartError as e:
        stop(process)
        tail = stderr_path.read_text(errors="replace")[-2000:]
        raise StartError(f"mailhost serve: {e}\nstderr:\n{tail}") from None
    return process, json.loads(line), time.perf_counter() - started, stderr_path


def add_accounts(data_dir: Path, accounts: dict[str, str], cost: int = 4) -> None:
    """Write ``accounts`` (address: password) into the data directory's users file."""
    from mailhost.accounts import AccountFile
    from mailhost.config import DataDir

    data_dir.mkdir(parents=True, exist_ok=True)
    account_file = AccountFile(DataDir(data_dir).users)
    known = account_file.read()
    for address, password in accounts.items():
        if address not in known:
            account_file.add(address, password, cost=cost)


def rss_kib(pid: int) -> int | None:
    """Resident set size of ``pid`` in KiB (VmRSS), or None once it is gone."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return None
    match = re.search(r"^VmRSS:\s+(\d+) kB", status, re.MULTILINE)
    return int(match.group(1)) if match else None


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of ``pid`` from /proc/<pid>/stat (0 when it is gone)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def proc_table() -> dict[int, tuple[int, float]]:
    """pid: (ppid, own + reaped children's CPU seconds) for every process in /proc."""
    tick = os.sysconf("SC_CLK_TCK")
    table: dict[int, tuple[int, float]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            fields = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        cpu = sum(int(fields[i]) for i in (11, 12, 13, 14)) / tick
        table[int(entry)] = (int(fields[1]), cpu)
    return table


def tree_cpu(root: int) -> float:
    """CPU seconds of ``root`` and all its descendants, children they have reaped included."""
    table = proc_table()
    children: dict[int, list[int]] = {}
    for pid, (ppid, _) in table.items():
        children.setdefault(ppid, []).append(pid)
    total, todo, seen = 0.0, [root], set()
    while todo:
        pid = todo.pop()
        if pid in seen or pid not in table:
            continue
        seen.add(pid)
        total += table[pid][1]
        todo.extend(children.get(pid, []))
    return total


def percentile(values: list[float], p: float) -> float | None:
    """The ``p``-th percentile (0-100) by the inclusive method; None for no values."""
    if not values:
        return None
    if len(values) == 1:
        return values[0]
    return statistics.quantiles(values, n=100, method="inclusive")[max(0, min(98, round(p) - 1))]


def stats(samples: list[float]) -> dict[str, Any]:
    """Median and p90 in milliseconds of samples given in seconds."""
    ms = [s * 1000 for s in samples]
    if not ms:
        return {"n": 0, "median_ms": None, "p90_ms": None, "samples_ms": []}
    p90 = statistics.quantiles(ms, n=10, method="inclusive")[-1] if len(ms) > 1 else ms[0]
    return {
        "n": len(ms),
        "median_ms": round(statistics.median(ms), 2),
        "p90_ms": round(p90, 2),
        "samples_ms": [round(x, 2) for x in ms],
    }


def summary_row(
    figure: str,
    system: str,
    value: float | None,
    unit: str,
    *,
    versus: str | None = None,
    ratio: float | None = None,
    target: float | None = None,
    passed: bool | None = None,
    better: str | None = None,
    note: str | None = None,
) -> dict[str, Any]:
    """One row of a script's ``summary`` list, in the form bench/run_all.py reads (see there)."""
    row: dict[str, Any] = {
        "figure": figure,
        "system": system,
        "value": value,
        "unit": unit,
        "versus": versus,
        "ratio": ratio,
        "target": target,
        "pass": passed,
    }
    if better is not None:
        row["better"] = better
    row["note"] = note
    return row


def have(command: str) -> str | None:
    """Path of ``command`` on PATH or in the sbin directories Debian puts servers in."""
    return shutil.which(
        command, path=os.pathsep.join([os.environ.get("PATH", ""), "/usr/sbin", "/sbin"])
    )


def write_results(name: str, results: dict[str, Any], path: Path | None = None) -> Path:
    """``results`` as JSON in bench/results/<name>-<UTC timestamp>.json (or ``path``)."""
    stamp = datetime.now(UTC).strftime("%Y%m%d-%H%M%S")
    target = path or RESULTS / f"{name}-{stamp}.json"
    target.parent.mkdir(parents=True, exist_ok=True)
    results = {"when": datetime.now(UTC).isoformat(timespec="seconds"), **results}
    target.write_text(json.dumps(results, indent=2) + "\n")
    return target
