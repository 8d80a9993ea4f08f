"""The `mailhost` command line through click's CliRunner."""

from __future__ import annotations

import pytest
from click.testing import CliRunner

from mailhost.accounts import AccountFile, verify_password
from mailhost.cli import main


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
    ],
)
def test_serve_rejects_malformed_values_naming_flag(tmp_path, flag, value, expected):
    """A malformed serve flag exits 2 naming the flag and the accepted forms."""
    result = CliRunner().invoke(main, ["serve", "--data", str(tmp_path), flag, value])
    assert result.exit_code == 2
    assert flag in result.output
    assert expected in result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)
