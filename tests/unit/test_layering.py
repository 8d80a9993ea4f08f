"""Level 0 stays pure: importing it pulls in no Twisted."""

import subprocess
import sys
from pathlib import Path

LEVEL_0 = [
    "mailhost.config",
    "mailhost.schedule",
    "mailhost.pop_logins",
    "mailhost.policy",
    "mailhost.addresses",
    "mailhost.throttle",
    "mailhost.connections",
    "mailhost.sasl",
    "mailhost.faults",
]


def test_level_0_modules_import_no_twisted():
    """A fresh interpreter importing the level-0 modules has no twisted module loaded."""
    program = (
        "import importlib, sys\n"
        f"for name in {LEVEL_0!r}:\n"
        "    importlib.import_module(name)\n"
        "loaded = sorted(m for m in sys.modules if m == 'twisted' or m.startswith('twisted.'))\n"
        "assert not loaded, loaded\n"
        "print('ok')\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", program],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        cwd=Path(__file__).resolve().parents[2],
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok"
