"""Accounts: a Dovecot passwd-file of bcrypt hashes, and the cred checker on it.

``DIR/users`` holds one ``address:{BLF-CRYPT}$2b$…`` line per account (Dovecot
passwd-file form, so the file can be handed to Dovecot as is), ``#`` comments
allowed. Writes go to a temporary file that is fsync'd and renamed over the
old one, so a reader (or a crash) never sees half a file. The server re-reads
the file when it changes, so ``mailhost user add`` takes effect without a
restart.

Only bcrypt hashes are kept; that is why APOP and CRAM-MD5, which need a
plaintext-equivalent secret on the server, are not offered.
"""

from __future__ import annotations

import fcntl
import os
import tempfile
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import bcrypt
from twisted.cred import error
from twisted.cred.checkers import ICredentialsChecker
from twisted.cred.credentials import IUsernamePassword
from twisted.internet import defer
from zope.interface import implementer

from mailhost.addresses import AddressError, account_name
from mailhost.blocking import RunBlocking

SCHEME = "{BLF-CRYPT}"
DEFAULT_COST = 12
MAX_PASSWORD_BYTES = 72  # bcrypt reads no further; bcrypt>=5 refuses longer input


class AccountError(ValueError):
    """A request about accounts that cannot be carried out (bad address, duplicate…)."""


def check_password_text(password: str) -> bytes:
    if password == "":
        raise AccountError("the password is empty")
    encoded = password.encode("utf-8")
    if len(encoded) > MAX_PASSWORD_BYTES:
        raise AccountError(f"the password is longer than bcrypt's {MAX_PASSWORD_BYTES} bytes")
    return encoded


def hash_password(password: str, cost: int = DEFAULT_COST) -> str:
    encoded = check_password_text(password)
    return SCHEME + bcrypt.hashpw(encoded, bcrypt.gensalt(rounds=cost)).decode("ascii")


def verify_password(password: bytes, stored: str) -> bool:
    """Check ``password`` against a ``{BLF-CRYPT}`` hash, always spending one bcrypt.

    bcrypt ignores bytes past the 72nd, so a longer password is refused rather
    than matched on its prefix — but only after the same bcrypt work as any
    other attempt, so neither its length nor a foreign hash scheme shows in
    the reply time.
    """
    cost = hash_cost(stored)
    if not stored.startswith(SCHEME) or len(password) > MAX_PASSWORD_BYTES:
        return spend_dummy_check(password, cost)
    try:
        return bcrypt.checkpw(password, stored[len(SCHEME) :].encode("ascii"))
    except ValueError:
        return spend_dummy_check(password, cost)


def hash_cost(stored: str) -> int:
    try:
        cost = int(stored[len(SCHEME) :].split("$")[2])
    except (IndexError, ValueError):
        return DEFAULT_COST
    return cost if 4 <= cost <= 31 else DEFAULT_COST


_dummies: dict[int, bytes] = {}


def _dummy(cost: int) -> bytes:
    """A hash no password matches, at ``cost``, so unknown users take as long as known ones."""
    if cost not in _dummies:
        _dummies[cost] = bcrypt.hashpw(os.urandom(16).hex().encode(), bcrypt.gensalt(cost))
    return _dummies[cost]


def parse_users(text: str) -> dict[str, str]:
    accounts: dict[str, str] = {}
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        name, _, rest = line.partition(":")
        accounts[name.strip().lower()] = rest.split(":", 1)[0]
    return accounts


class AccountFile:
    """Read-modify-write of ``DIR/users``; every write is atomic and serialised."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def read(self) -> dict[str, str]:
        try:
            return parse_users(self.path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return {}

    @contextmanager
    def _locked(self) -> Iterator[None]:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path.with_name(self.path.name + ".lock"), "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            yield

    def _lines(self) -> list[str]:
        try:
            return self.path.read_text(encoding="utf-8").splitlines()
        except FileNotFoundError:
            return ["# mailhost accounts (Dovecot passwd-file): address:{BLF-CRYPT}hash"]

    def _write(self, lines: list[str]) -> None:
        fd, tmp = tempfile.mkstemp(prefix=".users.", dir=self.path.parent)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                f.write("".join(line + "\n" for line in lines))
                f.flush()
                os.fsync(f.fileno())
            os.chmod(tmp, 0o600)
            os.replace(tmp, self.path)
        except BaseException:
            os.unlink(tmp)
            raise
        dir_fd = os.open(self.path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)

    def _remove_abandoned_temp_files(self) -> None:
        """Temp files of writers that died mid-write (they hold hashes); safe under the lock."""
        for leftover in self.path.parent.glob(".users.*"):
            leftover.unlink(missing_ok=True)

    def _change(self, name: str, stored: str | None, *, exists: bool) -> None:
        """Rewrite the line of ``name`` (None deletes it), keeping every other line as it was.

        Comments and extra Dovecot fields (``:uid:gid:…``) survive, so the file
        stays usable by Dovecot after mailhost edits it.
        """
        with self._locked():
            self._remove_abandoned_temp_files()
            lines = self._lines()
            index = next(
                (
                    i
                    for i, line in enumerate(lines)
                    if not line.lstrip().startswith("#")
                    and line.partition(":")[0].strip().lower() == name
                ),
                None,
            )
            if exists and index is None:
                raise AccountError(f"no account {name}")
            if not exists and index is not None:
                raise AccountError(f"account {name} already exists")
            if index is None:
                lines.append(f"{name}:{stored}")
            elif stored is None:
                del lines[index]
            else:
                extra = lines[index].split(":", 2)[2:]
                lines[index] = ":".join([name, stored, *extra])
            self._write(lines)

    def add(self, address: str, password: str, cost: int = DEFAULT_COST) -> str:
        name = _account(address)
        self._change(name, hash_password(password, cost), exists=False)
        return name

    def set_password(self, address: str, password: str, cost: int = DEFAULT_COST) -> str:
        name = _account(address)
        self._change(name, hash_password(password, cost), exists=True)
        return name

    def remove(self, address: str) -> str:
        name = _account(address)
        self._change(name, None, exists=True)
        return name


def _account(address: str) -> str:
    try:
        return account_name(address)
    except AddressError as e:
        raise AccountError(f"{address!r} is not an address: {e}") from None


DEMO_ACCOUNTS = {"alice@example.org": "alice-secret", "bob@example.org": "bob-secret"}
DEMO_COST = 10


def ensure_demo_accounts(account_file: AccountFile) -> dict[str, str]:
    """Create (or reset) the demo accounts with their well-known passwords."""
    existing = account_file.read()
    for address, password in DEMO_ACCOUNTS.items():
        stored = existing.get(address)
        if stored is None:
            account_file.add(address, password, DEMO_COST)
        elif not verify_password(password.encode(), stored):
            account_file.set_password(address, password, DEMO_COST)
    return dict(DEMO_ACCOUNTS)


class Accounts:
    """The server's live view of ``DIR/users``, re-read whenever the file changes."""

    def __init__(self, account_file: AccountFile) -> None:
        self.file = account_file
        self._stamp: tuple[int, int, int] | None = None
        self._accounts: dict[str, str] = {}
        self._usual_cost: tuple[dict[str, str], int] | None = None
        self._domains: tuple[dict[str, str], frozenset[str]] | None = None

    def _current(self) -> dict[str, str]:
        try:
            st = os.stat(self.file.path)
            stamp = (st.st_mtime_ns, st.st_size, st.st_ino)
        except FileNotFoundError:
            stamp = (0, 0, 0)
        if stamp != self._stamp:
            self._accounts = self.file.read()
            self._stamp = stamp
        return self._accounts

    def get(self, address: str) -> str | None:
        return self._current().get(address.lower())

    def __contains__(self, address: str) -> bool:
        return self.get(address) is not None

    def addresses(self) -> list[str]:
        return sorted(self._current())

    def domains(self) -> frozenset[str]:
        """The accounts' domains, worked out again only when the file has changed: every
        RCPT asks, and a pass over every account per recipient grows with the accounts."""
        accounts = self._current()
        if self._domains is None or self._domains[0] is not accounts:
            self._domains = (accounts, frozenset(a.rpartition("@")[2] for a in accounts))
        return self._domains[1]

    def usual_cost(self) -> int:
        """The most common bcrypt cost among the accounts: the cost of a dummy check.

        An unknown account then takes as long as a typical known one.
        """
        accounts = self._current()
        if self._usual_cost is None or self._usual_cost[0] is not accounts:
            costs = Counter(hash_cost(stored) for stored in accounts.values())
            self._usual_cost = (accounts, costs.most_common(1)[0][0] if costs else DEFAULT_COST)
        return self._usual_cost[1]


@implementer(ICredentialsChecker)
class BcryptChecker:
    """Checks username/password against the account file, bcrypt off the reactor.

    Unknown accounts get a dummy bcrypt check of the same cost, so a reply's
    timing does not reveal which accounts exist; the avatar id is the
    lowercased account address.
    """

    credentialInterfaces = (IUsernamePassword,)

    def __init__(self, accounts: Accounts, run_blocking: RunBlocking) -> None:
        self.accounts = accounts
        self.run_blocking = run_blocking

    def requestAvatarId(self, credentials: IUsernamePassword) -> defer.Deferred:
        username = credentials.username
        if isinstance(username, bytes):
            username = username.decode("utf-8", "replace")
        password = credentials.password
        if isinstance(password, str):
            password = password.encode("utf-8")
        try:
            name = account_name(username)
        except AddressError:
            name = None
        stored = self.accounts.get(name) if name else None
        if stored is None:
            d = self.run_blocking(spend_dummy_check, password, self.accounts.usual_cost())
        else:
            d = self.run_blocking(verify_password, password, stored)

        def result(ok: bool) -> str:
            if ok and name is not None and stored is not None:
                return name
            raise error.UnauthorizedLogin("authentication failed")

        return d.addCallback(result)


def spend_dummy_check(password: bytes, cost: int) -> bool:
    """A bcrypt check that always fails, as slow as a real one at ``cost``."""
    bcrypt.checkpw(password[:MAX_PASSWORD_BYTES], _dummy(cost))
    return False
