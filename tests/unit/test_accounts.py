"""Accounts: bcrypt hashes in a Dovecot passwd-file, atomic writes, and the cred checker."""

import os
import stat
from pathlib import Path

import pytest
from twisted.cred.credentials import UsernamePassword
from twisted.cred.error import UnauthorizedLogin
from twisted.internet import defer
from twisted.python.failure import Failure

from mailhost import accounts as accounts_module
from mailhost.accounts import (
    AccountError,
    AccountFile,
    Accounts,
    BcryptChecker,
    hash_password,
    parse_users,
    verify_password,
)
from mailhost.blocking import run_inline

COST = 4
ALICE = "alice@example.org"


def _outcome(d: defer.Deferred) -> object:
    """The result (or Failure) of a Deferred that has already fired."""
    box: list[object] = []
    d.addBoth(box.append)
    assert box, "the Deferred has not fired"
    return box[0]


@pytest.fixture
def users(tmp_path: Path) -> AccountFile:
    account_file = AccountFile(tmp_path / "users")
    account_file.add(ALICE, "alice-secret", cost=COST)
    return account_file


class RecordingRunner:
    """A run_blocking hop that runs inline and remembers what it ran."""

    def __init__(self) -> None:
        self.calls: list[str] = []

    def __call__(self, f, *args, **kwargs) -> defer.Deferred:
        self.calls.append(f.__name__)
        return run_inline(f, *args, **kwargs)


# --- hashing --------------------------------------------------------------------------------


def test_hash_has_the_dovecot_bcrypt_prefix():
    """Hashes are stored as ``{BLF-CRYPT}$2b$<cost>$…`` so Dovecot can read them."""
    assert hash_password("secret", cost=COST).startswith("{BLF-CRYPT}$2b$04$")


def test_verify_accepts_the_right_password():
    """The password that was hashed verifies."""
    assert verify_password(b"secret", hash_password("secret", cost=COST))


def test_verify_rejects_a_wrong_password():
    """Any other password does not verify."""
    assert not verify_password(b"Secret", hash_password("secret", cost=COST))


def test_verify_rejects_a_hash_without_the_scheme_prefix():
    """A bare ``$2b$`` hash is not a stored password of ours."""
    stored = hash_password("secret", cost=COST).removeprefix("{BLF-CRYPT}")
    assert not verify_password(b"secret", stored)


def test_verify_rejects_a_malformed_hash():
    """A broken hash in the file fails verification instead of raising."""
    assert not verify_password(b"secret", "{BLF-CRYPT}not-a-hash")


def test_hash_refuses_a_password_longer_than_72_bytes():
    """bcrypt would ignore the tail, so such a password is refused outright."""
    with pytest.raises(AccountError, match="72"):
        hash_password("x" * 73, cost=COST)


def test_hash_counts_bytes_not_characters():
    """37 two-byte characters (74 bytes) are over the limit."""
    with pytest.raises(AccountError):
        hash_password("é" * 37, cost=COST)


def test_hash_accepts_a_72_byte_password():
    """Exactly 72 bytes is within bcrypt's reach."""
    assert verify_password(b"x" * 72, hash_password("x" * 72, cost=COST))


def test_hash_refuses_an_empty_password():
    """An empty password is never stored."""
    with pytest.raises(AccountError):
        hash_password("", cost=COST)


def test_a_longer_password_does_not_match_on_its_72_byte_prefix():
    """A 73-byte password is refused, not matched against the hash of its first 72 bytes."""
    stored = hash_password("x" * 72, cost=COST)
    assert not verify_password(b"x" * 72 + b"y", stored)


# --- the account file -----------------------------------------------------------------------


def test_add_writes_a_passwd_file_line(users: AccountFile):
    """An added account is one ``address:{BLF-CRYPT}…`` line."""
    lines = [line for line in users.path.read_text().splitlines() if not line.startswith("#")]
    assert len(lines) == 1
    name, _, stored = lines[0].partition(":")
    assert name == ALICE
    assert verify_password(b"alice-secret", stored)


def test_add_returns_the_lowercased_account(tmp_path: Path):
    """Accounts are keyed by their lowercased address."""
    assert (
        AccountFile(tmp_path / "users").add("Bob@Example.ORG", "pw", cost=COST) == "bob@example.org"
    )


def test_the_users_file_is_readable_only_by_its_owner(users: AccountFile):
    """Password hashes are not world-readable."""
    assert stat.S_IMODE(users.path.stat().st_mode) == 0o600


def test_set_password_replaces_the_hash(users: AccountFile):
    """After set_password only the new password verifies."""
    users.set_password(ALICE, "new-secret", cost=COST)
    stored = users.read()[ALICE]
    assert verify_password(b"new-secret", stored)
    assert not verify_password(b"alice-secret", stored)


def test_remove_deletes_the_account(users: AccountFile):
    """A removed account is gone from the file."""
    assert users.remove("ALICE@example.org") == ALICE
    assert users.read() == {}


def test_reading_a_missing_file_gives_no_accounts(tmp_path: Path):
    """A data directory without a users file has no accounts."""
    assert AccountFile(tmp_path / "users").read() == {}


def test_reading_tolerates_comments_blank_lines_and_extra_fields():
    """Comments, blank lines, case and Dovecot's extra fields do not disturb reading."""
    text = (
        "# a comment\n"
        "\n"
        "   \n"
        "Alice@Example.org:{BLF-CRYPT}$2b$04$abc:1000:1000::/home/alice\n"
        "  # an indented comment\n"
        "bob@example.org:{BLF-CRYPT}$2b$04$def\n"
    )
    assert parse_users(text) == {
        "alice@example.org": "{BLF-CRYPT}$2b$04$abc",
        "bob@example.org": "{BLF-CRYPT}$2b$04$def",
    }


def test_an_operator_edited_file_with_comments_is_read(users: AccountFile):
    """A hand-edited file with comments still yields its accounts."""
    stored = users.read()[ALICE]
    users.path.write_text(f"# edited by hand\n\n{ALICE}:{stored}\n# trailing\n")
    assert users.read() == {ALICE: stored}


BAD_REQUESTS = {
    "add-duplicate": lambda f: f.add(ALICE, "other", cost=COST),
    "add-duplicate-other-case": lambda f: f.add("ALICE@Example.org", "other", cost=COST),
    "add-not-an-address": lambda f: f.add("not-an-address", "pw", cost=COST),
    "add-slash": lambda f: f.add("a/b@example.org", "pw", cost=COST),
    "add-literal": lambda f: f.add("bob@[127.0.0.1]", "pw", cost=COST),
    "add-empty-password": lambda f: f.add("bob@example.org", "", cost=COST),
    "add-long-password": lambda f: f.add("bob@example.org", "x" * 73, cost=COST),
    "remove-unknown": lambda f: f.remove("bob@example.org"),
    "remove-not-an-address": lambda f: f.remove("bob"),
    "set-password-unknown": lambda f: f.set_password("bob@example.org", "pw", cost=COST),
    "set-password-empty": lambda f: f.set_password(ALICE, "", cost=COST),
    "set-password-long": lambda f: f.set_password(ALICE, "x" * 73, cost=COST),
}


@pytest.mark.parametrize("request_", BAD_REQUESTS.values(), ids=BAD_REQUESTS.keys())
def test_a_refused_change_raises_account_error_and_leaves_the_file_byte_identical(
    users: AccountFile, request_
):
    """Bad input raises AccountError and the users file is untouched."""
    before = users.path.read_bytes()
    with pytest.raises(AccountError):
        request_(users)
    assert users.path.read_bytes() == before


def _leftovers(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir() if p.name not in {"users", "users.lock"})


@pytest.mark.parametrize("failing", ["replace", "fsync"])
def test_a_failure_during_the_write_leaves_the_old_file_intact(
    users: AccountFile, monkeypatch: pytest.MonkeyPatch, failing: str
):
    """The file is replaced atomically: a failed write leaves the old file and no temp file."""
    before = users.path.read_bytes()

    def fail(*args, **kwargs):
        raise OSError("injected failure")

    monkeypatch.setattr(accounts_module.os, failing, fail)
    with pytest.raises(OSError, match="injected failure"):
        users.add("bob@example.org", "bob-secret", cost=COST)
    monkeypatch.undo()
    assert users.path.read_bytes() == before
    assert _leftovers(users.path.parent) == []


def test_a_successful_write_leaves_no_temporary_file(users: AccountFile):
    """Only the users file (and its lock) remain after writes."""
    users.add("bob@example.org", "bob-secret", cost=COST)
    users.remove("bob@example.org")
    assert _leftovers(users.path.parent) == []


def test_a_write_replaces_the_file_rather_than_rewriting_it(users: AccountFile):
    """A reader holding the old file keeps a complete old copy: the path gets a new inode."""
    old_inode = os.stat(users.path).st_ino
    with open(users.path, encoding="utf-8") as reader:
        users.add("bob@example.org", "bob-secret", cost=COST)
        assert "bob@example.org" not in reader.read()
    assert os.stat(users.path).st_ino != old_inode


# --- the live view --------------------------------------------------------------------------


def test_accounts_sees_an_account_added_by_another_writer(users: AccountFile):
    """An account added through another AccountFile is visible without a restart."""
    live = Accounts(AccountFile(users.path))
    assert "bob@example.org" not in live
    users.add("bob@example.org", "bob-secret", cost=COST)
    assert "bob@example.org" in live
    assert live.addresses() == [ALICE, "bob@example.org"]


def test_accounts_sees_a_password_changed_by_another_writer(users: AccountFile):
    """A changed hash (same file size) is picked up on the next lookup."""
    live = Accounts(AccountFile(users.path))
    old = live.get(ALICE)
    users.set_password(ALICE, "new-secret", cost=COST)
    new = live.get(ALICE)
    assert new != old
    assert verify_password(b"new-secret", new)


def test_accounts_sees_a_removed_account(users: AccountFile):
    """A removed account stops existing for the server at once."""
    live = Accounts(AccountFile(users.path))
    assert ALICE in live
    users.remove(ALICE)
    assert ALICE not in live


def test_accounts_lookup_ignores_case(users: AccountFile):
    """Lookups are case-insensitive like the stored keys."""
    assert Accounts(users).get("Alice@EXAMPLE.org") is not None


def test_accounts_domains_are_those_of_the_accounts(users: AccountFile):
    """The local domains default to the domains that have accounts."""
    users.add("carol@example.net", "pw", cost=COST)
    assert Accounts(users).domains() == frozenset({"example.org", "example.net"})


def test_accounts_domains_follow_a_change_of_the_file(users: AccountFile):
    """The domains are cached with the accounts they came from, and follow the file."""
    live = Accounts(users)
    first = live.domains()
    assert live.domains() is first
    users.add("dave@example.com", "pw", cost=COST)
    assert "example.com" in live.domains()
    users.remove("dave@example.com")
    assert "example.com" not in live.domains()


def test_accounts_without_a_file_is_empty(tmp_path: Path):
    """A missing users file means no accounts, not an error."""
    live = Accounts(AccountFile(tmp_path / "users"))
    assert live.addresses() == []
    assert live.domains() == frozenset()


# --- the cred checker -----------------------------------------------------------------------


def _check(users: AccountFile, username: bytes, password: bytes, runner=run_inline) -> object:
    checker = BcryptChecker(Accounts(users), runner)
    return _outcome(checker.requestAvatarId(UsernamePassword(username, password)))


def test_checker_returns_the_lowercased_account_on_success(users: AccountFile):
    """The avatar id is the account's lowercased address, whatever case was typed."""
    assert _check(users, b"Alice@EXAMPLE.org", b"alice-secret") == ALICE


def test_checker_accepts_text_credentials(users: AccountFile):
    """Usernames and passwords given as str work like bytes."""
    checker = BcryptChecker(Accounts(users), run_inline)
    d = checker.requestAvatarId(UsernamePassword(ALICE, "alice-secret"))
    assert _outcome(d) == ALICE


@pytest.mark.parametrize(
    ("username", "password"),
    [
        (ALICE.encode(), b"wrong"),
        (b"nobody@example.org", b"alice-secret"),
        (b"not an address", b"alice-secret"),
        (ALICE.encode(), b"alice-secret" + b"x" * 70),
    ],
    ids=["wrong-password", "unknown-user", "not-an-address", "too-long-password"],
)
def test_checker_fails_identically_for_every_bad_login(users: AccountFile, username, password):
    """Unknown users and wrong passwords get the same UnauthorizedLogin."""
    outcome = _check(users, username, password)
    assert isinstance(outcome, Failure)
    assert outcome.type is UnauthorizedLogin
    assert str(outcome.value) == "authentication failed"


def test_checker_runs_the_password_check_through_run_blocking(users: AccountFile):
    """The bcrypt check for a known user goes through the injected hop."""
    runner = RecordingRunner()
    assert _check(users, ALICE.encode(), b"alice-secret", runner) == ALICE
    assert runner.calls == ["verify_password"]


@pytest.mark.parametrize("username", [b"nobody@example.org", b"not an address"])
def test_checker_spends_a_dummy_bcrypt_check_on_an_unknown_user(users: AccountFile, username):
    """An unknown user still costs one bcrypt check through the hop, so timing reveals nothing."""
    runner = RecordingRunner()
    assert isinstance(_check(users, username, b"pw", runner), Failure)
    assert runner.calls == ["spend_dummy_check"]


def _count_bcrypt_checks(monkeypatch: pytest.MonkeyPatch) -> list[bytes]:
    costs: list[bytes] = []
    real = accounts_module.bcrypt.checkpw

    def counting(password: bytes, hashed: bytes) -> bool:
        costs.append(hashed.split(b"$")[2])
        return real(password, hashed)

    monkeypatch.setattr(accounts_module.bcrypt, "checkpw", counting)
    return costs


@pytest.mark.parametrize(
    "stored_prefix", ["{BLF-CRYPT}", "{PLAIN}"], ids=["bcrypt-hash", "foreign-scheme"]
)
def test_every_refusal_spends_one_bcrypt_at_the_hash_cost(monkeypatch, stored_prefix):
    """A too-long password or a foreign hash scheme is refused only after a bcrypt of equal cost."""
    stored = hash_password("secret", cost=5).replace("{BLF-CRYPT}", stored_prefix)
    costs = _count_bcrypt_checks(monkeypatch)
    assert verify_password(b"x" * 73, stored) is False
    expected = b"05" if stored_prefix == "{BLF-CRYPT}" else b"12"
    assert costs == [expected]


def test_unknown_users_cost_as_much_as_the_usual_account(users: AccountFile, monkeypatch):
    """The dummy check for an unknown user runs at the most common cost of the accounts."""
    costs = _count_bcrypt_checks(monkeypatch)
    assert isinstance(_check(users, b"nobody@example.org", b"pw"), Failure)
    assert costs == [b"04"]


def test_a_change_removes_temp_files_left_by_a_killed_writer(users: AccountFile):
    """A writer killed mid-write leaves .users.* (with hashes); the next change removes it."""
    leftover = users.path.parent / ".users.abandoned"
    leftover.write_text("alice@example.org:{BLF-CRYPT}$2b$04$half")
    users.add("bob@example.org", "bob-secret", cost=COST)
    assert not leftover.exists()
    assert set(users.read()) == {ALICE, "bob@example.org"}
