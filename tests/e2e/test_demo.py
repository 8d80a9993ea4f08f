"""``mailhost demo``: the scenario runs, reports what the server decided, fails on a mismatch."""

from __future__ import annotations

import io
import os
import re
import subprocess
import sys
from dataclasses import replace

import pytest

from mailhost import demo

pytestmark = pytest.mark.e2e


def run_demo(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    environment = {k: v for k, v in os.environ.items() if k != "NO_COLOR"}
    environment.update(PYTHONIOENCODING="utf-8", **env)
    return subprocess.run(
        [sys.executable, "-m", "mailhost", "demo", *args],
        capture_output=True,
        text=True,
        encoding="utf-8",
        env=environment,
        timeout=60,
    )


@pytest.fixture(scope="module")
def english() -> subprocess.CompletedProcess[str]:
    return run_demo("--no-color")


@pytest.fixture(scope="module")
def german() -> subprocess.CompletedProcess[str]:
    return run_demo("--no-color", "--lang", "de")


def step_text(output: str, key: str) -> str:
    """The lines of one step, from its heading to the next blank line."""
    match = re.search(rf"^Step {key}: .*?(?=\n\n)", output, re.M | re.S)
    assert match, f"no step {key} in the output"
    return match.group(0)


def test_every_outcome_matches_and_exits_zero(english):
    """With the provider behaving as designed the demo is a passing self-test."""
    assert english.returncode == 0, english.stdout + english.stderr
    assert english.stdout.count("✓ as expected") == 9
    assert "All 9 outcomes were as expected." in english.stdout


def test_pop_login_shows_the_table_entry(english):
    """Step 1 shows the login the server recorded and the café address in its table."""
    step = step_text(english.stdout, "1")
    assert "server: POP3 login: alice@example.org from 127.0.0.2" in step
    assert "table: 127.0.0.2 → alice@example.org, since 23:40:00, live until 23:50:00" in step


def test_mallory_is_relayed_as_alice(english):
    """Step 3 shows the flaw: the stranger's mail is relayed and traced to Alice."""
    step = step_text(english.stdout, "3")
    assert "→ mail FROM:<mallory@spam.example>" in step
    assert "server: RELAYED 250 2.1.5 - 127.0.0.2 logged in to POP3 as alice@example.org" in step
    assert "(smtp-after-pop: alice@example.org from 127.0.0.2)" in step


def test_refusals_carry_the_servers_reason(english):
    """Bob, the expired window and the cutover are refused, each with its own reason."""
    out = english.stdout
    assert "a POP3 login from 127.0.0.3 in the last 600 s" in step_text(out, "4")
    assert "outside the 600 s window" in step_text(out, "5")
    step6 = step_text(out, "6")
    assert "REFUSED 550 5.7.1 - relaying denied: SMTP-after-POP is off since" in step6
    assert "2013-09-02 00:00 UTC" in step6
    assert "RELAYED 250 2.1.5 - authenticated as alice@example.org (SMTP-Auth)" in step6
    assert "→ AUTH PLAIN ********" in step6


def test_summary_lists_each_message_and_flags_mallorys(english):
    """The summary has one row per message, and only Mallory's relay is marked wrong."""
    rows = {
        line.split()[0]: line.split()
        for line in english.stdout.splitlines()
        if re.match(r"^\d[a-z]? +(Alice|Bob|Mallory) ", line)
    }
    assert sorted(rows) == ["2", "3", "4", "5", "6a", "6b", "6c"]
    assert rows["3"][:2] == ["3", "Mallory"]
    assert rows["3"][-3:] == ["relayed", "SMTP-after-POP", "NO"]
    assert rows["6b"][-3:] == ["relayed", "SMTP-Auth", "yes"]
    assert [key for key, row in rows.items() if row[-1] == "NO"] == ["3"]


def test_output_is_plain_and_fits_80_columns(english):
    """--no-color means no escape sequences; every line fits a classroom terminal."""
    assert "\x1b[" not in english.stdout
    assert max(len(line) for line in english.stdout.splitlines()) <= 80


def test_german_narration_and_headings(german):
    """--lang de translates narration and table headings but not the protocol lines."""
    assert german.returncode == 0, german.stdout + german.stderr
    assert "Schritt 3: Mallory am Nebentisch sendet, ganz ohne Konto" in german.stdout
    assert "Zusammenfassung" in german.stdout
    assert re.search(r"^# +wer +von +Betreff +Ergebnis +über +zu Recht\?$", german.stdout, re.M)
    assert "→ rcpt TO:<friend@elsewhere.example>" in german.stdout
    assert max(len(line) for line in german.stdout.splitlines()) <= 80


def flipped_step_3() -> tuple[demo.Step, ...]:
    """The script with step 3 expected to be refused, which the server will not do."""
    script = list(demo.SCRIPT)
    step = script[2]
    act = replace(step.acts[0], allowed=False, scheme=None, account=None)
    script[2] = replace(step, acts=(act,))
    return tuple(script)


def test_a_differing_outcome_exits_one_and_names_the_step(reactor_thread):
    """When the server decides otherwise than expected, the demo says where and fails."""
    out = io.StringIO()
    status = demo.play(reactor_thread, out, script=flipped_step_3())
    assert status == 1
    text = out.getvalue()
    assert "✗ DIFFERS from expected: refused" in step_text(text, "3")
    assert "differed from the expected one in step 3." in text


def test_pause_waits_between_steps(reactor_thread):
    """--pause asks for Enter between steps, not before the first one."""
    waits: list[None] = []
    out = io.StringIO()
    assert demo.play(reactor_thread, out, pause=True, wait=lambda: waits.append(None)) == 0
    assert len(waits) == len(demo.SCRIPT) - 1
    assert out.getvalue().count("[Enter] next step") == len(demo.SCRIPT) - 1


class FakeTerminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_colour_only_on_a_terminal_without_opt_outs(monkeypatch):
    """Colour on a TTY; --no-color, NO_COLOR and a pipe each turn it off."""
    monkeypatch.delenv("NO_COLOR", raising=False)
    assert demo.use_color(FakeTerminal(), no_color=False)
    assert not demo.use_color(FakeTerminal(), no_color=True)
    assert not demo.use_color(io.StringIO(), no_color=False)
    monkeypatch.setenv("NO_COLOR", "1")
    assert not demo.use_color(FakeTerminal(), no_color=False)
