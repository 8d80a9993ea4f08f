"""Run every mailhost benchmark, one after another, and print one table of their headline figures.

The scripts, in this order and never two at once (they would disturb each other's figures):
fixture_startup.py, smtp_accept.py, pop3_bench.py, reactor_stall.py, memory.py. Each runs as
``python bench/<name>.py --json <tmp>/<name>.json`` (plus ``--quick`` when given here), with
its own output shown as it goes, under a generous time limit (``--timeout`` overrides them
all). A script that is missing, fails, runs out of time or writes no summary gets a note and
the run goes on. Exit status 0 whatever the figures and targets say (``--strict``: 1 when a
script did not deliver its summary).

The contract every benchmark script follows:

  * it accepts ``--json PATH`` (write the results there) and ``--quick`` (a shorter run);
  * its JSON has a top-level ``"summary"``: a list of rows, each a JSON object with

      figure   str         what is measured ("NOOP p99 on idle sessions during ...")
      system   str         whose figure it is ("mailhost", or a comparator's name)
      value    float|null  the figure, in ``unit``; null when it could not be measured
      unit     str         "ms", "KiB", "messages/s", ...
      versus   str|null    what ``ratio`` compares ``value`` with ("aiosmtpd Controller start")
      ratio    float|null  value / the comparator's value in the same unit
                           (mailhost / comparator); null without a comparator
      target   float|null  the bound: on ``ratio`` when ``versus`` is set, else on ``value``
                           in ``unit`` (an absolute bound such as p99 <= 20 ms); null: none
      better   str         "higher" or "lower"; optional, "higher" when absent. With "higher"
                           the target is a minimum (pass when the number >= target), with
                           "lower" a maximum (pass when the number <= target)
      pass     bool|null   the script's verdict; null when there is no target or nothing to
                           compare. When a script leaves it null but gives a target and the
                           number, it is filled in here by the rule above
      note     str|null    anything a reader needs: the bound in words, a skip reason

    so a cold start that must be at most twice aiosmtpd's is ``ratio`` = mailhost/aiosmtpd,
    ``target`` 2.0, ``better`` "lower"; a throughput that must reach half a comparator's is
    ``ratio`` = mailhost/comparator, ``target`` 0.5 (``better`` "higher" or absent).

Prints the table (figure, system, value and unit, ratio and what it is against, target,
pass/FAIL/n/a) and writes every script's results and all summary rows to
bench/results/bench-<timestamp>.json (or ``--json``).

Bounds: only the scripts' own processes, each a child of this one; one that outlives its time
limit gets SIGINT (so it stops its own servers), then SIGKILL after 30 s, by its PID. The
temporary directory for their JSON is removed.
"""

from __future__ import annotations

import argparse
import json
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import common

BENCH = Path(__file__).resolve().parent
SCRIPTS: dict[str, float] = {
    "fixture_startup": 1200.0,
    "smtp_accept": 1800.0,
    "pop3_bench": 1800.0,
    "reactor_stall": 900.0,
    "memory": 900.0,
}
"""Script name -> seconds it may take (generous: a loaded 2-core machine is slow)."""
GRACE = 30.0


def run_script(name: str, workdir: Path, quick: bool, timeout: float) -> dict[str, Any]:
    """Run one script; its status, seconds, JSON results and summary rows (tagged with it)."""
    path = BENCH / f"{name}.py"
    if not path.exists():
        return {"status": "missing", "note": f"bench/{name}.py does not exist"}
    out = workdir / f"{name}.json"
    command = [sys.executable, str(path), "--json", str(out), *(["--quick"] if quick else [])]
    print(f"\n=== {name}: {' '.join(command[1:])}", flush=True)
    started = time.perf_counter()
    process = subprocess.Popen(
        command, stdin=subprocess.DEVNULL, cwd=common.ROOT, preexec_fn=_interruptible
    )
    status = "ok"
    try:
        returncode = process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        status = "timeout"
        process.send_signal(signal.SIGINT)
        try:
            process.wait(timeout=GRACE)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=GRACE)
        returncode = process.returncode
    except KeyboardInterrupt:
        process.send_signal(signal.SIGINT)
        process.wait(timeout=GRACE)
        raise
    seconds = round(time.perf_counter() - started, 1)
    result: dict[str, Any] = {"status": status, "returncode": returncode, "seconds": seconds}
    if status == "timeout":
        result["note"] = f"stopped after its {timeout:g} s limit"
    elif returncode != 0:
        result.update(status="failed", note=f"exit status {returncode}")
    try:
        results = json.loads(out.read_text())
    except (OSError, ValueError) as e:
        result.setdefault("note", f"no JSON results ({e.__class__.__name__})")
        if status == "ok":
            result["status"] = "failed"
        return result
    result["results"] = results
    summary = results.get("summary")
    if not isinstance(summary, list):
        result["status"] = "failed" if result["status"] == "ok" else result["status"]
        result.setdefault("note", "its JSON has no summary list")
        summary = []
    result["summary"] = [{**row, "script": name} for row in summary if isinstance(row, dict)]
    return result


def _interruptible() -> None:
    """In the child: SIGINT back to its default, so Python turns it into KeyboardInterrupt
    and the script stops its own servers. A shell starting this in the background would
    otherwise have every child ignore SIGINT, and a script past its limit would be killed
    with its servers still running."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def number(row: dict[str, Any]) -> float | None:
    """What the target bounds: the ratio when there is a comparator, else the value."""
    return row.get("ratio") if row.get("versus") else row.get("value")


def verdict(row: dict[str, Any]) -> bool | None:
    """The row's own pass, or else the contract's rule when there is a target and a number."""
    if row.get("pass") is not None:
        return bool(row["pass"])
    target, measured = row.get("target"), number(row)
    if target is None or measured is None:
        return None
    return measured <= target if row.get("better") == "lower" else measured >= target


def fmt_number(value: Any) -> str:
    if not isinstance(value, int | float):
        return "-"
    if abs(value) >= 100:
        return f"{value:,.0f}"
    return f"{value:.2f}" if abs(value) >= 1 else f"{value:.3g}"


def fmt_target(row: dict[str, Any]) -> str:
    target = row.get("target")
    if not isinstance(target, int | float):
        return "-"
    sign = "<=" if row.get("better") == "lower" else ">="
    if row.get("versus"):
        return f"{sign} {target:g}x"
    return f"{sign} {target:g} {row.get('unit', '')}".rstrip()


def print_table(rows: list[dict[str, Any]]) -> None:
    columns = ("figure", "system", "value", "ratio", "vs", "target", "result")
    table = [
        (
            str(row.get("figure", "?")),
            str(row.get("system", "?")),
            f"{fmt_number(row.get('value'))} {row.get('unit', '')}".rstrip(),
            f"{row['ratio']:.2f}x" if isinstance(row.get("ratio"), int | float) else "",
            str(row.get("versus") or ""),
            fmt_target(row),
            {None: "n/a", True: "pass", False: "FAIL"}[verdict(row)],
        )
        for row in rows
    ]
    widths = [max([len(c)] + [len(line[i]) for line in table]) for i, c in enumerate(columns)]
    right = {2, 3}
    for line in (columns, *table):
        print(
            "  ".join(
                cell.rjust(width) if i in right else cell.ljust(width)
                for i, (cell, width) in enumerate(zip(line, widths, strict=True))
            ).rstrip()
        )


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="pass --quick to every script")
    parser.add_argument(
        "--only",
        action="append",
        metavar="NAME",
        help=f"run only this script (repeatable): {', '.join(SCRIPTS)}",
    )
    parser.add_argument("--timeout", type=float, help="seconds each script may take (override)")
    parser.add_argument("--strict", action="store_true", help="exit 1 when a script fails")
    parser.add_argument("--json", type=Path, help="where to write the combined results")
    args = parser.parse_args()
    names = list(SCRIPTS)
    if args.only:
        wanted = [name.removesuffix(".py") for name in args.only]
        unknown = [name for name in wanted if name not in SCRIPTS]
        if unknown:
            parser.error(f"unknown script(s): {', '.join(unknown)}; known: {', '.join(SCRIPTS)}")
        names = [name for name in names if name in wanted]

    workdir = Path(tempfile.mkdtemp(prefix="mailhost-bench-all-"))
    runs: dict[str, dict[str, Any]] = {}
    started = time.perf_counter()
    try:
        for name in names:
            runs[name] = run_script(name, workdir, args.quick, args.timeout or SCRIPTS[name])
            if runs[name]["status"] != "ok":
                print(f"note: {name}: {runs[name]['status']}: {runs[name].get('note')}")
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    wall = round(time.perf_counter() - started, 1)

    rows = [row for name in names for row in runs[name].get("summary", [])]
    print(f"\n=== mailhost benchmarks{' (--quick)' if args.quick else ''}: {wall:.0f} s in all\n")
    print_table(rows)
    print()
    for name in names:
        run = runs[name]
        seconds = f"{run['seconds']:.0f} s" if "seconds" in run else "-"
        note = f"  ({run['note']})" if run.get("note") else ""
        print(f"  {name:<16} {run['status']:<8} {seconds:>7}{note}")
    notes: dict[tuple[str, str], list[str]] = {}
    for row in rows:
        if row.get("note"):
            systems = notes.setdefault((str(row.get("figure")), str(row["note"])), [])
            if str(row.get("system")) not in systems:
                systems.append(str(row.get("system")))
    for (figure, note), systems in notes.items():
        print(f"  note: {figure} ({', '.join(systems)}): {note}")

    results = {
        "python": sys.version.split()[0],
        "quick": args.quick,
        "wall_s": wall,
        "scripts": runs,
        "summary": [{**row, "pass": verdict(row)} for row in rows],
    }
    path = common.write_results("bench", results, args.json)
    print(f"\nJSON: {path}")
    failed = [name for name in names if runs[name]["status"] != "ok"]
    return 1 if args.strict and failed else 0


if __name__ == "__main__":
    sys.exit(main())
