"""The runnable examples in examples/, run as a reader would, so they cannot rot.

The Python scripts run against an in-process server (ports in the environment),
the shell scripts as subprocesses, and the pytest example in a fresh pytest.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from mailhost.accounts import AccountFile
from mailhost.testing import TEST_COST

pytest_plugins = ["pytester"]

pytestmark = pytest.mark.e2e

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
TIMEOUT = 60
PORT_VARIABLES = {
    "smtp": "MAILHOST_SMTP_PORT",
    "submission": "MAILHOST_SUBMISSION_PORT",
    "smtps": "MAILHOST_SMTPS_PORT",
    "pop3": "MAILHOST_POP3_PORT",
    "pop3s": "MAILHOST_POP3S_PORT",
    "http": "MAILHOST_HTTP_PORT",
}


def needs(binary: str) -> pytest.MarkDecorator:
    return pytest.mark.skipif(shutil.which(binary) is None, reason=f"{binary} is not installed")


def run(*command: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """Run an example with the venv's python and mailhost first on PATH."""
    path = f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"
    return subprocess.run(
        command,
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        env={**os.environ, "PATH": path, **(env or {})},
        stdin=subprocess.DEVNULL,
    )


def port_env(ports: dict[str, int]) -> dict[str, str]:
    return {
        PORT_VARIABLES[name]: str(port) for name, port in ports.items() if name in PORT_VARIABLES
    }


def test_pop_then_send_is_relayed(start_server):
    """pop_then_send.py logs in from 127.0.0.2, then relays from there without credentials."""
    server = start_server()
    result = run(sys.executable, str(EXAMPLES / "pop_then_send.py"), env=port_env(server.ports))
    assert result.returncode == 0, result.stderr
    assert "POP3 login: +OK" in result.stdout
    assert "RCPT: 250" in result.stdout
    assert "DATA: 250" in result.stdout
    [stored] = server.stored("outbox")
    assert b"(smtp-after-pop: alice@example.org from 127.0.0.2)" in stored


def test_pop_then_send_refused_when_scheme_off(start_server):
    """pop_then_send.py prints the 550 and its reason when SMTP-after-POP is off."""
    from mailhost.schedule import Schedule

    server = start_server(smtp_after_pop=Schedule.off())
    result = run(sys.executable, str(EXAMPLES / "pop_then_send.py"), env=port_env(server.ports))
    assert result.returncode == 0, result.stderr
    assert "RCPT: 550 5.7.1 relaying denied" in result.stdout
    assert "DATA:" not in result.stdout
    assert server.stored("outbox") == []


def test_shared_wifi_spam_names_alice(start_server):
    """shared_wifi_spam.py shows Mallory's relayed message with a Received header naming alice."""
    server = start_server()
    result = run(sys.executable, str(EXAMPLES / "shared_wifi_spam.py"), env=port_env(server.ports))
    assert result.returncode == 0, result.stderr
    assert "Mallory's message was relayed." in result.stdout
    [received] = [line for line in result.stdout.splitlines() if line.startswith("Received:")]
    assert "([127.0.0.2])" in received
    assert "(smtp-after-pop: alice@example.org from 127.0.0.2)" in received


CUTOVER_BEFORE = "before the cutover, anyone at 127.0.0.2 may relay:\nRCPT: 250 "
CUTOVER_AFTER = (
    "after the cutover, the same address is refused:\n"
    "RCPT: 550 5.7.1 relaying denied: SMTP-after-POP is off since 2013-09-02 00:00 UTC"
)


@needs("curl")
@needs("swaks")
def test_cutover_with_swaks(tmp_path):
    """cutover.sh with swaks: the relay is allowed before midnight and refused after."""
    result = run("sh", str(EXAMPLES / "cutover.sh"), env={"TMPDIR": str(tmp_path)})
    assert result.returncode == 0, result.stdout + result.stderr
    assert CUTOVER_BEFORE in result.stdout
    assert CUTOVER_AFTER in result.stdout
    assert result.stdout.rstrip().endswith("stopped mailhost")
    assert list(tmp_path.iterdir()) == []  # its temporary directory is removed


@needs("curl")
def test_cutover_with_smtplib(tmp_path):
    """cutover.sh without swaks falls back to smtplib and shows the same two replies."""
    result = run("sh", str(EXAMPLES / "cutover.sh"), env={"SWAKS": "", "TMPDIR": str(tmp_path)})
    assert result.returncode == 0, result.stdout + result.stderr
    assert CUTOVER_BEFORE in result.stdout
    assert CUTOVER_AFTER in result.stdout
    assert result.stdout.rstrip().endswith("stopped mailhost")


@pytest.fixture
def one_liners(tmp_path, serve_process):
    """Run steps of swaks_and_curl.sh against a fresh `mailhost serve`; returns its output."""
    data = tmp_path / "data"
    accounts = AccountFile(data / "users")
    accounts.add("alice@example.org", "alice-secret", cost=TEST_COST)
    accounts.add("bob@example.org", "bob-secret", cost=TEST_COST)
    served = serve_process(
        "--data",
        str(data),
        *("--smtp-port", "0", "--submission-port", "0", "--pop3-port", "0"),
        *("--smtps-port", "0", "--pop3s-port", "0", "--http-port", "0"),
    )
    env = {**port_env(served.ports), "MAILHOST_CA": served.ready["tls"]["ca"]}

    def steps(*names: str) -> str:
        result = run("sh", str(EXAMPLES / "swaks_and_curl.sh"), *names, env=env)
        assert result.returncode == 0, result.stdout + result.stderr
        return result.stdout

    steps.data = data
    return steps


@needs("swaks")
def test_swaks_local_delivery(one_liners):
    """The swaks one-liner delivers to alice on the SMTP port."""
    output = one_liners("swaks_local")
    assert "<-  250 2.0.0 Ok: queued" in output
    [stored] = (one_liners.data / "mail" / "alice@example.org" / "new").iterdir()
    assert b"Subject: swaks local delivery" in stored.read_bytes()


@needs("swaks")
def test_swaks_submission_over_starttls(one_liners):
    """The swaks one-liner relays with AUTH PLAIN after a verified STARTTLS."""
    output = one_liners("swaks_submission")
    assert "=== TLS started" in output
    assert "<~  235 2.7.0 Authentication successful" in output
    assert "<~  250 2.0.0 Ok: queued" in output


@needs("curl")
def test_curl_smtps_then_pop3s_list(one_liners):
    """curl sends to bob over smtps, and curl over pop3s lists that one message."""
    output = one_liners("curl_smtps", "curl_pop3s")
    assert "smtps reply: 250" in output
    pop3s_listing = output.split("== curl_pop3s\n", 1)[1].split()
    assert pop3s_listing[0] == "1"
    assert len(pop3s_listing) == 2


@needs("curl")
def test_curl_outbox_shows_relayed_mail(one_liners):
    """The outbox one-liner lists what swaks relayed, with the scheme that allowed it."""
    if shutil.which("swaks") is None:
        pytest.skip("swaks is not installed")
    output = one_liners("swaks_submission", "curl_outbox")
    assert '"subject": "swaks submission"' in output
    assert '"scheme": "smtp-auth"' in output


def test_missing_client_step_is_skipped(one_liners):
    """A step whose client is not installed says so instead of failing."""
    output = one_liners("nosuchclient_step")
    assert "skipped: nosuchclient is not installed" in output


def test_fixture_example_passes(pytester):
    """test_with_fixture.py passes in a fresh pytest: delivery, a fault, the window closing."""
    pytester.makepyfile(test_with_fixture=(EXAMPLES / "test_with_fixture.py").read_text())
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "-W", "error", "-v")
    result.stdout.fnmatch_lines(
        [
            "*test_welcome_mail_arrives PASSED*",
            "*test_temporary_failure_then_retry PASSED*",
            "*test_pop_window_closes PASSED*",
        ]
    )
    result.assert_outcomes(passed=3)
