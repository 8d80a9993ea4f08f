"""`mailhost serve` as a user runs it: a subprocess, its ready line, its exit codes."""

from __future__ import annotations

import shutil
import smtplib
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from mailhost.accounts import AccountFile
from mailhost.testing import TEST_COST, SourcePOP3

HOST = "127.0.0.1"


def mailhost_command(*args: str) -> list[str]:
    return [sys.executable, "-m", "mailhost", *args]


pytestmark = pytest.mark.e2e

EPHEMERAL = (
    *("--smtp-port", "0", "--submission-port", "0", "--pop3-port", "0"),
    *("--smtps-port", "0", "--pop3s-port", "0", "--http-port", "0"),
)
CUTOVER = "until:2013-09-02"


def make_data(tmp_path: Path) -> Path:
    data = tmp_path / "data"
    AccountFile(data / "users").add("alice@example.org", "alice-secret", cost=TEST_COST)
    return data


def pop_then_send(ports: dict[str, int]) -> tuple[int, bytes]:
    pop = SourcePOP3(HOST, ports["pop3"], "127.0.0.2")
    pop.user("alice@example.org")
    pop.pass_("alice-secret")
    pop.quit()
    with smtplib.SMTP(HOST, ports["smtp"], source_address=("127.0.0.2", 0)) as client:
        client.ehlo("cafe.example")
        client.mail("alice@example.org")
        return client.rcpt("friend@elsewhere.example")


def test_ready_line_reports_bound_ports_and_schemes(serve_process, tmp_path):
    """The JSON ready line names every bound port and the schemes as configured."""
    data = make_data(tmp_path)
    server = serve_process("--data", str(data), *EPHEMERAL, "--smtp-after-pop", CUTOVER)
    assert set(server.ports) == {"smtp", "submission", "pop3", "smtps", "pop3s", "http"}
    assert all(port > 0 for port in server.ports.values())
    assert server.ready["schemes"]["smtp-after-pop"] == "until:2013-09-02T00:00:00Z"
    assert server.ready["domains"] == ["example.org"]


def test_now_before_cutover_relays_and_after_refuses(serve_process, tmp_path):
    """--now just before an until: cutover relays after POP; --now past it refuses."""
    data = make_data(tmp_path)
    before = serve_process(
        "--data",
        str(data),
        *EPHEMERAL,
        "--now",
        "2013-09-01T23:59:00Z",
        "--smtp-after-pop",
        CUTOVER,
    )
    assert before.ready["now"].startswith("2013-09-01T23:59")
    assert pop_then_send(before.ports)[0] == 250
    after = serve_process(
        "--data",
        str(data),
        *EPHEMERAL,
        "--now",
        "2013-09-02T00:00:01Z",
        "--smtp-after-pop",
        CUTOVER,
    )
    code, text = pop_then_send(after.ports)
    assert code == 550
    assert b"off since 2013-09-02 00:00 UTC" in text


def test_interrupt_shuts_down_cleanly(serve_process, tmp_path):
    """SIGINT (Ctrl-C) stops the server with exit code 0 and no traceback."""
    server = serve_process("--data", str(make_data(tmp_path)), *EPHEMERAL)
    server.process.send_signal(2)
    _, err = server.process.communicate(timeout=10)
    assert server.process.returncode == 0
    assert "Traceback" not in err


def test_port_in_use_is_named(tmp_path):
    """A port already in use exits non-zero naming the port and flag, without a traceback."""
    with socket.socket() as taken:
        taken.bind((HOST, 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = subprocess.run(
            mailhost_command(
                "serve",
                "--data",
                str(tmp_path),
                "--smtp-port",
                str(port),
                "--submission-port",
                "0",
                "--pop3-port",
                "0",
                "--smtps-port",
                "0",
                "--pop3s-port",
                "0",
                "--http-port",
                "0",
            ),
            capture_output=True,
            text=True,
            timeout=30,
        )
    assert result.returncode != 0
    assert f"port {port} (--smtp-port)" in result.stderr
    assert "Traceback" not in result.stderr


def test_malformed_flag_names_flag_and_forms(tmp_path):
    """A malformed --smtp-after-pop exits 2 naming the flag and the accepted forms."""
    result = subprocess.run(
        mailhost_command("serve", "--data", str(tmp_path), "--smtp-after-pop", "sometimes"),
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 2
    assert "--smtp-after-pop" in result.stderr
    assert "until:" in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.skipif(shutil.which("swaks") is None, reason="swaks is not installed")
def test_swaks_sends_local_mail(serve_process, tmp_path):
    """swaks, a real SMTP client, delivers to a local account over the MX port."""
    data = make_data(tmp_path)
    server = serve_process("--data", str(data), *EPHEMERAL)
    result = subprocess.run(
        [
            "swaks",
            "--server",
            f"{HOST}:{server.ports['smtp']}",
            "--to",
            "alice@example.org",
            "--from",
            "tester@elsewhere.example",
            "--header",
            "Subject: swaks",
            "--pipeline",
        ],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    stored = list((data / "mail" / "alice@example.org" / "new").iterdir())
    assert len(stored) == 1
    assert b"Subject: swaks" in stored[0].read_bytes()


@pytest.mark.skipif(shutil.which("swaks") is None, reason="swaks is not installed")
def test_swaks_auth_relay_on_submission(serve_process, tmp_path):
    """swaks with AUTH PLAIN relays through the submission port."""
    data = make_data(tmp_path)
    server = serve_process("--data", str(data), *EPHEMERAL)
    result = subprocess.run(
        [
            "swaks",
            "--server",
            f"{HOST}:{server.ports['submission']}",
            "--to",
            "friend@elsewhere.example",
            "--from",
            "alice@example.org",
            "--auth",
            "PLAIN",
            "--auth-user",
            "alice@example.org",
            "--auth-password",
            "alice-secret",
        ],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert len(list((data / "outbox" / "new").iterdir())) == 1


def test_limit_flags_reach_the_running_server(serve_process, tmp_path):
    """--max-recipients and --max-bad-commands set the limits a client meets."""
    server = serve_process(
        "--data",
        str(make_data(tmp_path)),
        *EPHEMERAL,
        "--max-recipients",
        "1",
        "--max-bad-commands",
        "2",
    )
    with smtplib.SMTP(HOST, server.ports["smtp"]) as client:
        client.ehlo("limits.example")
        client.mail("someone@elsewhere.example")
        assert client.rcpt("alice@example.org")[0] == 250
        assert client.rcpt("alice@example.org")[:2] == (452, b"4.5.3 Error: too many recipients")
        assert client.docmd("BOGUS")[0] == 500
        assert client.docmd("BOGUS")[0] == 500
        assert client.docmd("BOGUS")[0] == 421


def test_demo_accounts_are_created_with_printed_passwords(serve_process, tmp_path):
    """--demo-accounts (what make run uses) prints alice's and bob's passwords, which work."""
    server = serve_process("--data", str(tmp_path / "data"), *EPHEMERAL, "--demo-accounts")
    pop = SourcePOP3(HOST, server.ports["pop3"], "127.0.0.2")
    assert pop.user("alice@example.org").startswith(b"+OK")
    assert pop.pass_("alice-secret").startswith(b"+OK")
    pop.quit()
    server.process.send_signal(2)
    _, err = server.process.communicate(timeout=10)
    assert "demo account alice@example.org password alice-secret" in err
    assert "demo account bob@example.org password bob-secret" in err


def test_demo_accounts_refuse_a_non_loopback_host(tmp_path):
    """Well-known passwords stay on loopback: --demo-accounts with --host 0.0.0.0 exits 2."""
    result = subprocess.run(
        mailhost_command("serve", "--data", str(tmp_path), "--host", "0.0.0.0", "--demo-accounts"),
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 2
    assert "loopback" in result.stderr
