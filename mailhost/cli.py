"""The ``mailhost`` command: argv → typed config → one dispatch.

Click only translates arguments; parsing and validation live in
``config.py``, so a bad value is reported with the flag, the value and the
accepted forms, and exits 2 without a traceback. This is the one module that
touches the global reactor.
"""

from __future__ import annotations

import json
import os
import socket
import sys
import tempfile
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, NoReturn, TypeVar

import click

from mailhost import __version__
from mailhost.accounts import DEFAULT_COST, AccountError, AccountFile, ensure_demo_accounts
from mailhost.config import (
    DEFAULT_MAX_MESSAGE_SIZE,
    ConfigError,
    DataDir,
    Limits,
    Listeners,
    ServeConfig,
    TLSConfig,
    check_api_access,
    is_loopback,
    parse_domain,
    parse_duration,
    parse_host,
    parse_hostname,
    parse_instant,
    parse_port,
    parse_positive,
    parse_state,
)
from mailhost.connections import DEFAULT_MAX_CONNECTIONS, DEFAULT_MAX_CONNECTIONS_PER_IP
from mailhost.policy import Schemes
from mailhost.throttle import DEFAULT_LIMIT, ThrottleSettings
from mailhost.tls import TLSError, TLSIdentity, server_identity


def _parsed(parse: Callable[..., Any], *extra: Any) -> Callable[..., Any]:
    """A click callback that runs a config parser and reports ConfigError as click does."""

    def callback(ctx: click.Context, param: click.Parameter, value: Any) -> Any:
        if value is None:
            return None
        flag = param.opts[0]
        try:
            if isinstance(value, tuple):
                return tuple(parse(v, flag, *extra) for v in value)
            return parse(value, flag, *extra)
        except ConfigError as e:
            raise click.BadParameter(f"{e.value!r}; expected {e.accepted}") from None

    return callback


def data_option(f: Callable[..., Any]) -> Callable[..., Any]:
    return click.option(
        "--data",
        "data_dir",
        type=click.Path(file_okay=False, path_type=Path),
        envvar="MAILHOST_DATA",
        default=Path("mailhost-data"),
        show_default=True,
        help="Data directory (accounts, Maildirs, outbox, event log). Env: MAILHOST_DATA.",
    )(f)


def data_dir_problem(data_dir: Path, error: OSError) -> str:
    where = error.filename or data_dir
    return f"cannot use the data directory {data_dir} ({where}: {error.strerror or error})"


def fail(message: str) -> NoReturn:
    click.echo(f"mailhost: error: {message}", err=True)
    sys.exit(2)


@click.group()
@click.version_option(__version__, prog_name="mailhost")
def main() -> None:
    """A POP3 + ESMTP provider where SMTP-Auth and SMTP-after-POP live side by side."""


@main.group()
def user() -> None:
    """Manage accounts in DIR/users (Dovecot passwd-file, bcrypt hashes)."""


def _read_password(password_stdin: bool) -> str:
    if password_stdin:
        text = sys.stdin.read()
        if text.endswith("\r\n"):
            return text[:-2]
        return text.removesuffix("\n")
    return click.prompt("Password", hide_input=True, confirmation_prompt=True)


T = TypeVar("T")


def _on_accounts(data_dir: Path, action: Callable[[AccountFile], T]) -> T:
    """Run one action on DIR/users; known failures become a message and exit 2."""
    try:
        return action(AccountFile(DataDir(data_dir).users))
    except AccountError as e:
        fail(str(e))
    except OSError as e:
        fail(data_dir_problem(data_dir, e))


def password_options(f: Callable[..., Any]) -> Callable[..., Any]:
    f = click.option(
        "--cost",
        type=click.IntRange(4, 31),
        default=DEFAULT_COST,
        show_default=True,
        help="bcrypt cost factor (4-31).",
    )(f)
    return click.option(
        "--password-stdin", is_flag=True, help="Read the password from standard input."
    )(f)


@user.command("add")
@click.argument("address")
@password_options
@data_option
def user_add(address: str, password_stdin: bool, cost: int, data_dir: Path) -> None:
    """Create the account ADDRESS."""
    password = _read_password(password_stdin)
    name = _on_accounts(data_dir, lambda accounts: accounts.add(address, password, cost))
    click.echo(f"added {name}")


@user.command("passwd")
@click.argument("address")
@password_options
@data_option
def user_passwd(address: str, password_stdin: bool, cost: int, data_dir: Path) -> None:
    """Set a new password for ADDRESS."""
    password = _read_password(password_stdin)
    name = _on_accounts(data_dir, lambda accounts: accounts.set_password(address, password, cost))
    click.echo(f"password changed for {name}")


@user.command("del")
@click.argument("address")
@data_option
def user_del(address: str, data_dir: Path) -> None:
    """Delete the account ADDRESS (its Maildir is kept)."""
    name = _on_accounts(data_dir, lambda accounts: accounts.remove(address))
    click.echo(f"deleted {name}")


@user.command("list")
@data_option
def user_list(data_dir: Path) -> None:
    """List the accounts, one per line."""
    for name in _on_accounts(data_dir, lambda accounts: sorted(accounts.read())):
        click.echo(name)


def machine_hostname() -> str:
    """The machine's name when it is a valid host name, else ``localhost``."""
    try:
        return parse_hostname(socket.gethostname() or "localhost")
    except ConfigError:
        return "localhost"


@main.command()
@data_option
@click.option(
    "--host",
    default="127.0.0.1",
    show_default=True,
    callback=_parsed(parse_host),
    help="IP address to listen on.",
)
@click.option(
    "--smtp-port",
    default="2525",
    show_default=True,
    callback=_parsed(parse_port),
    help="SMTP (MX role: local mail from anyone, relaying needs authorisation).",
)
@click.option(
    "--submission-port",
    default="2587",
    show_default=True,
    callback=_parsed(parse_port),
    help="Submission (RFC 6409: everything needs authorisation).",
)
@click.option("--pop3-port", default="2110", show_default=True, callback=_parsed(parse_port))
@click.option(
    "--smtps-port",
    default="2465",
    show_default=True,
    callback=_parsed(parse_port),
    help="Submission over implicit TLS (RFC 8314).",
)
@click.option(
    "--pop3s-port",
    default="2995",
    show_default=True,
    callback=_parsed(parse_port),
    help="POP3 over implicit TLS (RFC 8314).",
)
@click.option(
    "--http-port",
    default="8025",
    show_default=True,
    callback=_parsed(parse_port),
    help="HTTP API (JSON; see docs/api.md).",
)
@click.option(
    "--http-host",
    default="127.0.0.1",
    show_default=True,
    callback=_parsed(parse_host),
    help="IP address the HTTP API listens on; off loopback it needs --api-token.",
)
@click.option(
    "--api-token",
    envvar="MAILHOST_API_TOKEN",
    help="Bearer token every API request must carry. Env: MAILHOST_API_TOKEN.",
)
@click.option(
    "--ready-file",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Also write the JSON ready report to this file (atomically) once listening.",
)
@click.option(
    "--tls-cert",
    type=click.Path(dir_okay=False, path_type=Path),
    help="PEM certificate (then any chain). Default: a self-signed one in DIR/tls/.",
)
@click.option(
    "--tls-key",
    type=click.Path(dir_okay=False, path_type=Path),
    help="PEM private key (unencrypted) for --tls-cert.",
)
@click.option(
    "--allow-plaintext-auth",
    is_flag=True,
    help="Accept passwords without TLS from any address (default: loopback or TLS only).",
)
@click.option(
    "--enforce-sender",
    is_flag=True,
    help="SMTP-Auth sessions may only use their own address as the sender.",
)
@click.option(
    "--auth-failure-limit",
    default=str(DEFAULT_LIMIT),
    show_default=True,
    callback=_parsed(parse_positive, "a whole number greater than zero"),
    help="Failed logins from one address, within the window, before it is refused.",
)
@click.option(
    "--auth-failure-window",
    default="10m",
    show_default=True,
    callback=_parsed(parse_duration),
    help="How long a failed login counts against its address (600, 30s, 10m, 2h).",
)
@click.option(
    "--domain",
    "domains",
    multiple=True,
    callback=_parsed(parse_domain),
    help="A local domain (repeatable). Default: the domains of the accounts.",
)
@click.option(
    "--smtp-auth",
    default="on",
    show_default=True,
    callback=_parsed(parse_state),
    help="SMTP-Auth: on, off, or until:<ISO date/datetime>.",
)
@click.option(
    "--smtp-after-pop",
    default="on",
    show_default=True,
    callback=_parsed(parse_state),
    help="SMTP-after-POP: on, off, or until:<ISO date/datetime>.",
)
@click.option(
    "--pop-window",
    default="10m",
    show_default=True,
    callback=_parsed(parse_duration),
    help="How long a POP3 login lets its IP send (600, 30s, 10m, 2h).",
)
@click.option("--now", callback=_parsed(parse_instant), help="Start the server clock here.")
@click.option(
    "--max-message-size",
    default=str(DEFAULT_MAX_MESSAGE_SIZE),
    show_default=True,
    callback=_parsed(parse_positive, "a number of bytes greater than zero"),
    help="Largest message accepted (advertised as SIZE).",
)
@click.option(
    "--max-connections",
    default=str(DEFAULT_MAX_CONNECTIONS),
    show_default=True,
    callback=_parsed(parse_positive, "a number of connections greater than zero"),
    help="Connections over all listeners; more are refused at the greeting.",
)
@click.option(
    "--max-connections-per-ip",
    default=str(DEFAULT_MAX_CONNECTIONS_PER_IP),
    show_default=True,
    callback=_parsed(parse_positive, "a number of connections greater than zero"),
    help="Connections from one client address over all listeners.",
)
@click.option(
    "--max-recipients",
    default="100",
    show_default=True,
    callback=_parsed(parse_positive, "a number of recipients greater than zero"),
    help="Recipients per message; the next gets 452 4.5.3.",
)
@click.option(
    "--max-bad-commands",
    default="20",
    show_default=True,
    callback=_parsed(parse_positive, "a number of commands greater than zero"),
    help="Unknown or malformed commands per session before 421 / -ERR and close.",
)
@click.option(
    "--smtp-idle-timeout",
    default="5m",
    show_default=True,
    callback=_parsed(parse_duration),
    help="SMTP idle time before 421 4.4.2 (RFC 5321: at least 5 minutes).",
)
@click.option(
    "--pop3-idle-timeout",
    default="10m",
    show_default=True,
    callback=_parsed(parse_duration),
    help="POP3 idle time before autologout (RFC 1939: at least 10 minutes).",
)
@click.option(
    "--max-data-time",
    default="10m",
    show_default=True,
    callback=_parsed(parse_duration),
    help="Total time one DATA phase may take before 421 4.4.2.",
)
@click.option(
    "--hostname",
    default=None,
    callback=_parsed(parse_hostname),
    help="Name in greetings, Received headers and the made certificate. Default: the machine's.",
)
@click.option(
    "--demo-accounts",
    is_flag=True,
    help="Create alice@example.org and bob@example.org with printed passwords (loopback only).",
)
def serve(
    data_dir: Path,
    host: str,
    smtp_port: int,
    submission_port: int,
    pop3_port: int,
    smtps_port: int,
    pop3s_port: int,
    http_port: int,
    http_host: str,
    api_token: str | None,
    ready_file: Path | None,
    tls_cert: Path | None,
    tls_key: Path | None,
    allow_plaintext_auth: bool,
    enforce_sender: bool,
    auth_failure_limit: int,
    auth_failure_window: Any,
    domains: tuple[str, ...],
    smtp_auth: Any,
    smtp_after_pop: Any,
    pop_window: Any,
    now: Any,
    max_message_size: int,
    max_connections: int,
    max_connections_per_ip: int,
    max_recipients: int,
    max_bad_commands: int,
    smtp_idle_timeout: Any,
    pop3_idle_timeout: Any,
    max_data_time: Any,
    hostname: str | None,
    demo_accounts: bool,
) -> None:
    """Run the provider until interrupted; prints one JSON line when ready."""
    try:
        tls_config = TLSConfig(cert=tls_cert, key=tls_key)
    except ConfigError as e:
        fail(f"{e.flag} {e.value} given alone; expected {e.accepted}")
    try:
        check_api_access(http_host, api_token)
    except ConfigError as e:
        fail(f"{e.flag}: expected {e.accepted}")
    config = ServeConfig(
        data_dir=data_dir,
        host=host,
        listeners=Listeners(
            smtp=smtp_port,
            submission=submission_port,
            pop3=pop3_port,
            smtps=smtps_port,
            pop3s=pop3s_port,
            http=http_port,
        ),
        http_host=http_host,
        api_token=api_token,
        ready_file=ready_file,
        domains=domains,
        schemes=Schemes(smtp_auth, smtp_after_pop, pop_window, enforce_sender=enforce_sender),
        now=now,
        limits=Limits(
            max_message_size=max_message_size,
            max_connections=max_connections,
            max_connections_per_ip=max_connections_per_ip,
            max_recipients=max_recipients,
            max_bad_commands=max_bad_commands,
            smtp_idle_timeout=smtp_idle_timeout.total_seconds(),
            pop3_idle_timeout=pop3_idle_timeout.total_seconds(),
            max_data_seconds=max_data_time.total_seconds(),
        ),
        hostname=hostname or machine_hostname(),
        tls=tls_config,
        allow_plaintext_auth=allow_plaintext_auth,
        throttle=ThrottleSettings(limit=auth_failure_limit, window=auth_failure_window),
    )
    if demo_accounts and not is_loopback(host):
        fail("--demo-accounts has well-known passwords; use it only with a loopback --host")
    try:
        DataDir(data_dir).root.mkdir(parents=True, exist_ok=True)
        if demo_accounts:
            demo = ensure_demo_accounts(AccountFile(DataDir(data_dir).users))
            for address, password in demo.items():
                click.echo(f"demo account {address} password {password}", err=True)
        tls = server_identity(
            tls_cert,
            tls_key,
            DataDir(data_dir).tls,
            config.hostname,
            datetime.now(UTC),
            hostname_explicit=hostname is not None,
        )
    except TLSError as e:
        fail(str(e))
    except OSError as e:
        fail(data_dir_problem(data_dir, e))
    for warning in tls.warnings:
        click.echo(f"mailhost: warning: {warning}", err=True)
    origin = "given" if tls.ca_path is None else f"made by mailhost; clients trust {tls.ca_path}"
    click.echo(
        f"TLS certificate {tls.cert_path} ({origin}) SHA-256 fingerprint {tls.fingerprint_sha256}",
        err=True,
    )
    from twisted.internet import task

    task.react(_run_server, (config, tls))


@main.command()
@click.option(
    "--lang",
    type=click.Choice(["en", "de"]),
    default="en",
    show_default=True,
    help="Language of the narration (protocol lines stay as they are).",
)
@click.option("--no-color", is_flag=True, help="Plain text even on a terminal (also: NO_COLOR).")
@click.option("--pause", is_flag=True, help="Wait for Enter between steps.")
def demo(lang: str, no_color: bool, pause: bool) -> None:
    """Play SMTP-after-POP's flaw on loopback; exits 1 if any outcome differs."""
    from mailhost.demo import main as run_demo

    sys.exit(run_demo(lang, no_color, pause))


def _event_line(event: dict[str, Any]) -> str:
    fields = " ".join(
        f"{k}={v}" for k, v in event.items() if k not in ("seq", "at", "kind") and v is not None
    )
    return f"{event['at']} {event['kind']} {fields}\n"


def _print_events(batch: list[dict[str, Any]]) -> None:
    click.echo("".join(map(_event_line, batch)), err=True, nl=False)


def write_ready_file(path: Path, report: dict[str, Any]) -> None:
    """Write the ready report so a watcher sees no file or the whole file, never a part."""
    path = path.absolute()
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(json.dumps(report) + "\n")
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


async def _run_server(reactor: Any, config: ServeConfig, tls: TLSIdentity) -> None:
    from twisted.internet import defer

    from mailhost.service import ListenError, MailhostService

    running: defer.Deferred[None] = defer.Deferred()
    reactor.callWhenRunning(running.callback, None)
    await running  # signal handlers are in place from here, so Ctrl-C shuts down cleanly
    service = MailhostService(config, reactor, tls)
    service.provider.events.add_writer(_print_events)
    service.startService()
    try:
        ports = await service.ready
    except ListenError as e:
        await defer.maybeDeferred(service.stopService)
        click.echo(f"mailhost: error: {e}", err=True)
        raise SystemExit(1) from None
    reactor.addSystemEventTrigger("before", "shutdown", service.stopService)
    report = service.ready_report(ports)
    if config.ready_file is not None:
        try:
            write_ready_file(config.ready_file, report)
        except OSError as e:
            await defer.maybeDeferred(service.stopService)
            click.echo(
                f"mailhost: error: cannot write --ready-file {config.ready_file}: {e}", err=True
            )
            raise SystemExit(1) from None
    click.echo(json.dumps(report), nl=True)
    sys.stdout.flush()
    await defer.Deferred()
