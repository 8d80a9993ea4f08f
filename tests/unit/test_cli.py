"""The `mailhost` command line through click's CliRunner."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import pytest
from click.testing import CliRunner

from mailhost.accounts import AccountFile, verify_password
from mailhost.cli import main
from mailhost.config import TLSConfig
from mailhost.throttle import ThrottleSettings
from mailhost.tls import ensure_self_signed

NOW = datetime.now(UTC)


@pytest.fixture
def run(tmp_path):
    runner = CliRunner()

    def invoke(*args: str, input: str | None = None, env: dict[str, str] | None = None):
        return runner.invoke(main, list(args), input=input, env=env, catch_exceptions=False)

    return invoke


def users(tmp_path):
    return AccountFile(tmp_path / "users").read()


def test_user_add_reads_password_from_stdin_without_trailing_newline(run, tmp_path):
    """--password-stdin takes the password without its one trailing newline."""
    result = run(
        "user",
        "add",
        "Alice@Example.org",
        "--password-stdin",
        "--cost",
        "4",
        "--data",
        str(tmp_path),
        input="s3cret\n",
    )
    assert result.exit_code == 0, result.output
    stored = users(tmp_path)["alice@example.org"]
    assert stored.startswith("{BLF-CRYPT}$2b$04$")
    assert verify_password(b"s3cret", stored)
    assert not verify_password(b"s3cret\n", stored)


def test_user_add_keeps_a_second_newline(run, tmp_path):
    """Only one trailing newline is stripped; a password may end in whitespace."""
    run(
        "user",
        "add",
        "a@example.org",
        "--password-stdin",
        "--cost",
        "4",
        "--data",
        str(tmp_path),
        input="pw \n\n",
    )
    assert verify_password(b"pw \n", users(tmp_path)["a@example.org"])


def test_user_add_prompts_twice_without_the_flag(run, tmp_path):
    """Without --password-stdin the password is asked for twice and must match."""
    result = run(
        "user",
        "add",
        "a@example.org",
        "--cost",
        "4",
        "--data",
        str(tmp_path),
        input="one\ntwo\nsame\nsame\n",
    )
    assert result.exit_code == 0
    assert "do not match" in result.output.lower()
    assert verify_password(b"same", users(tmp_path)["a@example.org"])


def test_users_file_is_dovecot_passwd_form(run, tmp_path):
    """DIR/users holds address:{BLF-CRYPT}hash lines."""
    run(
        "user",
        "add",
        "a@example.org",
        "--password-stdin",
        "--cost",
        "4",
        "--data",
        str(tmp_path),
        input="pw",
    )
    lines = [
        line for line in (tmp_path / "users").read_text().splitlines() if not line.startswith("#")
    ]
    assert len(lines) == 1
    assert lines[0].startswith("a@example.org:{BLF-CRYPT}$2b$")


@pytest.mark.parametrize(
    ("address", "password", "message"),
    [
        ("not-an-address", "pw", "not an address"),
        ("alice@example.org", "pw", "already exists"),
        ("new@example.org", "", "password is empty"),
    ],
)
def test_bad_user_add_exits_2_and_leaves_file_untouched(run, tmp_path, address, password, message):
    """A bad address, a duplicate or an empty password: clear message, exit 2, file unchanged."""
    run(
        "user",
        "add",
        "alice@example.org",
        "--password-stdin",
        "--cost",
        "4",
        "--data",
        str(tmp_path),
        input="pw",
    )
    before = (tmp_path / "users").read_bytes()
    result = run(
        "user",
        "add",
        address,
        "--password-stdin",
        "--cost",
        "4",
        "--data",
        str(tmp_path),
        input=password,
    )
    assert result.exit_code == 2
    assert message in result.output
    assert (tmp_path / "users").read_bytes() == before


def test_user_list_del_and_passwd(run, tmp_path):
    """list shows accounts; passwd changes the hash; del removes the account."""
    for name in ("b@example.org", "a@example.org"):
        run(
            "user",
            "add",
            name,
            "--password-stdin",
            "--cost",
            "4",
            "--data",
            str(tmp_path),
            input="pw",
        )
    assert run("user", "list", "--data", str(tmp_path)).output.split() == [
        "a@example.org",
        "b@example.org",
    ]
    assert (
        run(
            "user",
            "passwd",
            "a@example.org",
            "--password-stdin",
            "--cost",
            "4",
            "--data",
            str(tmp_path),
            input="new",
        ).exit_code
        == 0
    )
    assert verify_password(b"new", users(tmp_path)["a@example.org"])
    assert run("user", "del", "b@example.org", "--data", str(tmp_path)).exit_code == 0
    assert list(users(tmp_path)) == ["a@example.org"]


def test_del_of_unknown_account_exits_2(run, tmp_path):
    """Deleting an account that does not exist says so and exits 2."""
    result = run("user", "del", "nobody@example.org", "--data", str(tmp_path))
    assert result.exit_code == 2
    assert "no account nobody@example.org" in result.output


def test_data_dir_comes_from_environment(run, tmp_path):
    """MAILHOST_DATA sets the data directory when --data is not given."""
    run(
        "user",
        "add",
        "a@example.org",
        "--password-stdin",
        "--cost",
        "4",
        input="pw",
        env={"MAILHOST_DATA": str(tmp_path)},
    )
    assert list(users(tmp_path)) == ["a@example.org"]


@pytest.mark.parametrize(
    ("flag", "value", "expected"),
    [
        ("--smtp-auth", "maybe", "until:"),
        ("--smtp-after-pop", "until:yesterday", "ISO 8601"),
        ("--pop-window", "ten minutes", "10m"),
        ("--now", "noon", "ISO 8601"),
        ("--smtp-port", "70000", "0 to 65535"),
        ("--domain", "bad_domain!", "domain name"),
        ("--max-message-size", "0", "greater than zero"),
        ("--max-connections", "none", "greater than zero"),
        ("--max-recipients", "0", "greater than zero"),
        ("--smtp-idle-timeout", "soon", "10m"),
        ("--max-data-time", "0", "longer than zero"),
        ("--max-connections-per-ip", "-1", "greater than zero"),
        ("--smtps-port", "70000", "0 to 65535"),
        ("--pop3s-port", "pop", "0 to 65535"),
        ("--auth-failure-limit", "0", "greater than zero"),
        ("--auth-failure-limit", "ten", "greater than zero"),
        ("--auth-failure-window", "soon", "10m"),
    ],
)
def test_serve_rejects_malformed_values_naming_flag(tmp_path, flag, value, expected):
    """A malformed serve flag exits 2 naming the flag and the accepted forms."""
    result = CliRunner().invoke(main, ["serve", "--data", str(tmp_path), flag, value])
    assert result.exit_code == 2
    assert flag in result.output
    assert expected in result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)


@pytest.mark.parametrize("given", ["--tls-cert", "--tls-key"])
def test_tls_cert_and_key_go_together(tmp_path, given):
    """Only one of --tls-cert/--tls-key exits 2 naming both flags."""
    result = CliRunner().invoke(
        main, ["serve", "--data", str(tmp_path), given, str(tmp_path / "x.pem")]
    )
    assert result.exit_code == 2
    assert "--tls-cert" in result.output and "--tls-key" in result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)


def test_mismatched_tls_key_exits_2_naming_the_flag(tmp_path):
    """A key that does not belong to the certificate is refused before anything listens."""
    one = ensure_self_signed(tmp_path / "one", "mail.example.org", NOW)
    two = ensure_self_signed(tmp_path / "two", "mail.example.org", NOW)
    flags = ["--tls-cert", str(one.cert_path), "--tls-key", str(two.key_path)]
    result = CliRunner().invoke(main, ["serve", "--data", str(tmp_path), *flags])
    assert result.exit_code == 2
    assert f"--tls-key {two.key_path}: does not match the certificate in --tls-cert" in (
        result.output
    )


def test_unreadable_tls_cert_exits_2_naming_the_flag(tmp_path):
    """A --tls-cert that cannot be read is named with its path, without a traceback."""
    missing = tmp_path / "missing.pem"
    result = CliRunner().invoke(
        main,
        ["serve", "--data", str(tmp_path), "--tls-cert", str(missing), "--tls-key", str(missing)],
    )
    assert result.exit_code == 2
    assert f"--tls-cert {missing}: cannot read" in result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)


@pytest.fixture
def served(monkeypatch):
    """Run ``serve`` up to the point it would start the reactor; capture what it would run."""
    captured: dict = {}

    def react(main, argv):
        captured["config"], captured["tls"] = argv

    monkeypatch.setattr("twisted.internet.task.react", react)
    return captured


def test_serve_flags_reach_the_config(run, tmp_path, served):
    """The TLS, plaintext, sender and throttle flags become the ServeConfig the server runs."""
    result = run(
        "serve",
        "--data",
        str(tmp_path),
        "--smtps-port",
        "0",
        "--pop3s-port",
        "1995",
        "--allow-plaintext-auth",
        "--enforce-sender",
        "--auth-failure-limit",
        "5",
        "--auth-failure-window",
        "2m",
        "--hostname",
        "mail.example.org",
    )
    assert result.exit_code == 0, result.output
    config = served["config"]
    assert (config.listeners.smtps, config.listeners.pop3s) == (0, 1995)
    assert config.allow_plaintext_auth is True
    assert config.schemes.enforce_sender is True
    assert config.throttle == ThrottleSettings(limit=5, window=timedelta(minutes=2))
    assert config.tls == TLSConfig(None, None)


def test_serve_defaults_are_safe(run, tmp_path, served):
    """By default: TLS ports 2465/2995, no plaintext passwords off loopback, 10 failures in 10m."""
    assert run("serve", "--data", str(tmp_path)).exit_code == 0
    config = served["config"]
    assert (config.listeners.smtps, config.listeners.pop3s) == (2465, 2995)
    assert config.allow_plaintext_auth is False
    assert config.schemes.enforce_sender is False
    assert config.throttle == ThrottleSettings(limit=10, window=timedelta(minutes=10))


def test_serve_makes_the_certificate_and_prints_its_fingerprint(run, tmp_path, served):
    """Without --tls-cert a self-signed certificate is made in DIR/tls and its fingerprint shown."""
    result = run("serve", "--data", str(tmp_path), "--hostname", "mail.example.org")
    tls = served["tls"]
    assert tls.cert_path == tmp_path / "tls" / "cert.pem"
    assert f"SHA-256 fingerprint {tls.fingerprint_sha256}" in result.output


def test_serve_uses_given_certificate_files(run, tmp_path, served):
    """--tls-cert/--tls-key are loaded and handed to the server; nothing is generated."""
    given = ensure_self_signed(tmp_path / "given", "mail.example.org", NOW)
    data = tmp_path / "data"
    result = run(
        "serve",
        "--data",
        str(data),
        "--tls-cert",
        str(given.cert_path),
        "--tls-key",
        str(given.key_path),
    )
    assert result.exit_code == 0, result.output
    assert served["tls"].certificate == given.certificate
    assert served["config"].tls == TLSConfig(given.cert_path, given.key_path)
    assert not (data / "tls").exists()


def test_unusable_data_directory_is_reported_without_traceback(run, tmp_path):
    """A data directory that cannot be created gets a message and exit 2, not a traceback."""
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    result = run(
        "user",
        "add",
        "a@example.org",
        "--password-stdin",
        "--cost",
        "4",
        "--data",
        str(blocker / "data"),
        input="pw",
    )
    assert result.exit_code == 2
    assert "cannot use the data directory" in result.output
    listing = run("user", "list", "--data", str(blocker / "data"))
    assert listing.exit_code == 2


def test_serve_with_unusable_data_directory_exits_2(tmp_path):
    """serve checks its data directory before starting and reports a problem plainly."""
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    result = CliRunner().invoke(main, ["serve", "--data", str(blocker / "data")])
    assert result.exit_code == 2
    assert "cannot use the data directory" in result.output


@pytest.mark.parametrize("cost", ["3", "32"])
def test_cost_outside_bcrypt_range_is_refused(run, tmp_path, cost):
    """--cost takes bcrypt's range 4-31; other values exit 2 before anything is written."""
    result = CliRunner().invoke(
        main,
        [
            "user",
            "add",
            "a@example.org",
            "--password-stdin",
            "--cost",
            cost,
            "--data",
            str(tmp_path),
        ],
        input="pw",
    )
    assert result.exit_code == 2
    assert "--cost" in result.output
    assert not (tmp_path / "users").exists()


def test_serve_rejects_a_host_that_is_not_an_address(tmp_path):
    """--host must be an IP address (or localhost); anything else names --host."""
    result = CliRunner().invoke(main, ["serve", "--data", str(tmp_path), "--host", "nonsense"])
    assert result.exit_code == 2
    assert "--host" in result.output


@pytest.mark.parametrize("hostname", ["a..b", "x" * 64 + ".example", "bad\udcff.example"])
def test_serve_rejects_a_bad_hostname_naming_the_flag(tmp_path, hostname):
    """A malformed --hostname exits 2 naming --hostname, without a traceback."""
    result = CliRunner().invoke(main, ["serve", "--data", str(tmp_path), "--hostname", hostname])
    assert result.exit_code == 2
    assert "--hostname" in result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)
    assert not (tmp_path / "tls").exists()


def test_serve_without_hostname_keeps_the_certificate_when_the_machine_renames(
    run, tmp_path, served, monkeypatch
):
    """A hostname guessed from the machine does not replace the certificate clients trust."""
    monkeypatch.setattr("socket.gethostname", lambda: "container-1")
    assert run("serve", "--data", str(tmp_path)).exit_code == 0
    first = served["tls"].fingerprint_sha256
    monkeypatch.setattr("socket.gethostname", lambda: "container-2")
    assert run("serve", "--data", str(tmp_path)).exit_code == 0
    assert served["config"].hostname == "container-2"
    assert served["tls"].fingerprint_sha256 == first


def test_serve_with_a_new_hostname_makes_a_new_certificate(run, tmp_path, served):
    """An explicit --hostname the certificate does not name gets a new one that does."""
    assert run("serve", "--data", str(tmp_path), "--hostname", "a.example").exit_code == 0
    first = served["tls"].fingerprint_sha256
    assert run("serve", "--data", str(tmp_path), "--hostname", "b.example").exit_code == 0
    assert served["tls"].fingerprint_sha256 != first
    assert served["config"].hostname == "b.example"


def test_an_invalid_machine_name_falls_back_to_localhost(run, tmp_path, served, monkeypatch):
    """A machine name that is no valid host name is replaced by localhost, not an error."""
    monkeypatch.setattr("socket.gethostname", lambda: "bad_name")
    assert run("serve", "--data", str(tmp_path)).exit_code == 0
    assert served["config"].hostname == "localhost"


def test_serve_reports_where_clients_find_the_ca(run, tmp_path, served):
    """The start-up line names ca.pem for clients and the leaf's fingerprint for pinning."""
    result = run("serve", "--data", str(tmp_path), "--hostname", "mail.example.org")
    tls = served["tls"]
    assert tls.ca_path == tmp_path / "tls" / "ca.pem"
    assert f"clients trust {tls.ca_path}" in result.output
    assert f"SHA-256 fingerprint {tls.fingerprint_sha256}" in result.output


def test_serve_warns_about_a_readable_given_key(run, tmp_path, served):
    """A --tls-key readable by group or others is warned about on stderr and left as it is."""
    given = ensure_self_signed(tmp_path / "given", "mail.example.org", NOW)
    given.key_path.chmod(0o644)
    result = run(
        "serve",
        "--data",
        str(tmp_path / "data"),
        "--tls-cert",
        str(given.cert_path),
        "--tls-key",
        str(given.key_path),
    )
    assert result.exit_code == 0, result.output
    assert f"warning: --tls-key {given.key_path} is readable by group or others" in result.output
    assert (given.key_path.stat().st_mode & 0o777) == 0o644


def test_http_flags_reach_the_config(run, tmp_path, served):
    """--http-port, --http-host, --api-token and --ready-file become the ServeConfig."""
    ready = tmp_path / "ready.json"
    result = run(
        "serve",
        *("--data", str(tmp_path), "--http-port", "0", "--http-host", "0.0.0.0"),
        *("--api-token", "t0ken", "--ready-file", str(ready)),
    )
    assert result.exit_code == 0, result.output
    config = served["config"]
    assert (config.listeners.http, config.http_host) == (0, "0.0.0.0")
    assert (config.api_token, config.ready_file) == ("t0ken", ready)


def test_http_defaults_are_loopback_8025_without_token(run, tmp_path, served):
    """By default the API listens on 127.0.0.1:8025 and needs no token."""
    assert run("serve", "--data", str(tmp_path)).exit_code == 0
    config = served["config"]
    assert (config.listeners.http, config.http_host, config.api_token) == (8025, "127.0.0.1", None)


def test_api_off_loopback_without_token_exits_2(run, tmp_path, served):
    """A non-loopback --http-host without --api-token is refused with exit 2."""
    result = run("serve", "--data", str(tmp_path), "--http-host", "0.0.0.0")
    assert result.exit_code == 2
    assert "--api-token" in result.output
    assert "config" not in served


def test_ready_file_is_written_whole(tmp_path):
    """The ready report lands in the file by rename: no temporary file is left behind."""
    from mailhost.cli import write_ready_file

    target = tmp_path / "ready.json"
    target.write_text("old")
    write_ready_file(target, {"event": "ready", "ports": {"http": 8025}})
    assert json.loads(target.read_text()) == {"event": "ready", "ports": {"http": 8025}}
    assert [p.name for p in tmp_path.iterdir()] == ["ready.json"]
