"""``mailhost demo``: SMTP-after-POP's flaw, told over real sockets in a few seconds.

A provider runs in-process on loopback (ephemeral ports, a temporary data
directory) and three people use it from simulated places: Alice and Mallory
share the café's address (127.0.0.2), Bob is at home (127.0.0.3). Each step
prints the protocol lines that matter and then what the *server* decided and
why, read from its event log rather than assumed by the script. Every outcome
is compared with the expected one, so the demo is also a self-test: any
difference is named and the exit status is 1.

The story lives in :data:`SCRIPT` (what happens, what should come of it) and
the words in :data:`TEXTS` (one table per language); the code between them
only drives the clients and renders. The server clock starts ten minutes
before a window would end at the cutover: a window that ran out exactly at
2013-09-02 00:00 could not show expiry and cutover as separate causes.
"""

from __future__ import annotations

import contextlib
import os
import re
import smtplib
import sys
import tempfile
import textwrap
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from email.parser import BytesHeaderParser
from pathlib import Path
from typing import Any, TextIO

from mailhost.accounts import DEMO_ACCOUNTS, AccountFile
from mailhost.config import DataDir, Listeners, ServeConfig
from mailhost.events import POP_LOGIN, SMTP_DECISION
from mailhost.policy import SCHEME_TITLES, SMTP_AFTER_POP, SMTP_AUTH, Schemes
from mailhost.schedule import Schedule, format_instant
from mailhost.testing import SourcePOP3

WIDTH = 80
HOST = "127.0.0.1"
CAFE = "127.0.0.2"
HOME = "127.0.0.3"
OUTSIDE = "friend@elsewhere.example"
START = datetime(2013, 9, 1, 23, 40, tzinfo=UTC)
CUTOVER = datetime(2013, 9, 2, tzinfo=UTC)
WINDOW = timedelta(minutes=10)
DEMO_COST = 4
"""bcrypt's cheapest cost: the demo is about who may send, not about hashing."""
TIMEOUT = 10.0


@dataclass(frozen=True)
class Person:
    name: str
    ip: str
    helo: str
    account: str | None = None

    @property
    def password(self) -> str:
        return DEMO_ACCOUNTS[self.account] if self.account else ""

    @property
    def sender(self) -> str:
        return self.account or "mallory@spam.example"


PEOPLE = {
    "alice": Person("Alice", CAFE, "alice-laptop.example", "alice@example.org"),
    "mallory": Person("Mallory", CAFE, "mallory.example"),
    "bob": Person("Bob", HOME, "bob-pc.example", "bob@example.org"),
}


@dataclass(frozen=True)
class Act:
    """One thing that happens in a step, and what the server should make of it.

    ``kind`` is ``pop`` (log in to POP3), ``send`` (the MX port, no
    credentials), ``send-auth`` (the submission port with SMTP-Auth) or
    ``advance`` (move the server clock by ``minutes``).
    """

    kind: str
    who: str = ""
    subject: str = ""
    minutes: int = 0
    note: str = ""
    """Key of a narration line in TEXTS[lang]["notes"] printed before the act."""
    allowed: bool | None = None
    """Expected: does the server relay it?"""
    scheme: str | None = None
    """Expected: the scheme that authorised it (None when refused)."""
    account: str | None = None
    """Expected: the account the authorisation names."""
    reason: str = ""
    """Expected: text the server's reason must contain."""
    rightly: bool = True
    """Whether that outcome is right on the merits (Mallory's relay is not)."""
    show_received: bool = False


@dataclass(frozen=True)
class Step:
    key: str
    acts: tuple[Act, ...]


ALICE = "alice@example.org"
SCRIPT: tuple[Step, ...] = (
    Step("1", (Act("pop", "alice"),)),
    Step(
        "2",
        (
            Act(
                "send",
                "alice",
                "Holiday photos",
                allowed=True,
                scheme=SMTP_AFTER_POP,
                account=ALICE,
            ),
        ),
    ),
    Step(
        "3",
        (
            Act(
                "send",
                "mallory",
                "Cheap watches",
                allowed=True,
                scheme=SMTP_AFTER_POP,
                account=ALICE,
                rightly=False,
                show_received=True,
            ),
        ),
    ),
    Step("4", (Act("send", "bob", "Dinner?", allowed=False, reason="relaying denied"),)),
    Step(
        "5",
        (
            Act("advance", minutes=11),
            Act("send", "alice", "One more photo", allowed=False, reason="outside the 600 s"),
        ),
    ),
    Step(
        "6",
        (
            Act("advance", minutes=10),
            Act("pop", "alice", note="old-client"),
            Act(
                "send",
                "alice",
                "Back home soon",
                allowed=False,
                reason="SMTP-after-POP is off since 2013-09-02 00:00 UTC",
            ),
            Act(
                "send-auth",
                "alice",
                "Back home soon",
                note="switch",
                allowed=True,
                scheme=SMTP_AUTH,
                account=ALICE,
            ),
            Act("send", "mallory", "Cheap watches", note="mallory", allowed=False),
        ),
    ),
)

TEXTS: dict[str, dict[str, Any]] = {
    "en": {
        "title": "mailhost demo: SMTP-after-POP on a shared address",
        "intro": (
            "A provider runs on {host} with SMTP-after-POP on until {cutover} "
            "(POP3 window {window} s) and SMTP-Auth on. Accounts: alice@example.org "
            "and bob@example.org. Server clock: {now}."
        ),
        "places": "Places:",
        "place": {
            CAFE: "Alice's café Wi-Fi (Mallory sits there too, no account)",
            HOME: "Bob's home",
        },
        "step": "Step",
        "steps": {
            "1": (
                "Alice fetches her mail over POP3 from the café",
                "Her login is recorded with the café's address: for the next 10 minutes "
                "that address may send.",
            ),
            "2": (
                "Alice sends to an outside address, without SMTP credentials",
                "Her mail client never logs in to SMTP; the POP3 login vouches for her.",
            ),
            "3": (
                "Mallory, at the next table, sends without any account",
                "Same Wi-Fi, same address. The server cannot tell him from Alice.",
            ),
            "4": (
                "Bob, at home, sends without having logged in to POP3",
                "No POP3 login from his address, no credentials.",
            ),
            "5": (
                "Eleven minutes later: the window has run out",
                "The demo moves the server clock on; nobody waits.",
            ),
            "6": (
                "Past midnight UTC: SMTP-after-POP is switched off",
                "The provider's cutover: from 2013-09-02 00:00 UTC only SMTP-Auth lets "
                "anyone send.",
            ),
        },
        "notes": {
            "old-client": "Alice's old client checks POP3 first, then sends without AUTH:",
            "switch": "She switches on SMTP-Auth (submission port, login):",
            "mallory": "Mallory tries again; he has no password to try:",
        },
        "clock": "server clock now {now}",
        "server": "server",
        "relayed": "relayed",
        "refused": "refused",
        "login": "POP3 login: {account} from {ip}",
        "table": "table: {ip} → {account}, since {since}, live until {until} UTC",
        "no-login": "no POP3 login recorded for {ip}",
        "expected": "as expected",
        "differs": "DIFFERS from expected: {what}",
        "expect-login": "a POP3 login from {ip} as {account}",
        "summary": "Summary",
        "columns": ("#", "who", "from", "subject", "result", "via", "rightly?"),
        "yes": "yes",
        "no": "NO",
        "moral": (
            "Step {labels}: relayed for {names}, who has no account - SMTP-after-POP "
            "trusts an address, and an address is shared. SMTP-Auth trusts a password."
        ),
        "all-ok": "All {count} outcomes were as expected.",
        "failed": "The server's decision differed from the expected one in step {labels}.",
        "pause": "[Enter] next step",
    },
    "de": {
        "title": "mailhost-Demo: SMTP-after-POP an einer geteilten Adresse",
        "intro": (
            "Ein Provider läuft auf {host}, SMTP-after-POP an bis {cutover} "
            "(POP3-Fenster {window} s), SMTP-Auth an. Konten: alice@example.org "
            "und bob@example.org. Serveruhr: {now}."
        ),
        "places": "Orte:",
        "place": {
            CAFE: "WLAN in Alices Café (Mallory sitzt auch dort, ohne Konto)",
            HOME: "Bobs Zuhause",
        },
        "step": "Schritt",
        "steps": {
            "1": (
                "Alice holt im Café ihre Post per POP3 ab",
                "Ihr Login wird mit der Adresse des Cafés vermerkt: 10 Minuten lang "
                "darf diese Adresse senden.",
            ),
            "2": (
                "Alice schreibt nach draußen, ohne SMTP-Zugangsdaten",
                "Ihr Mailprogramm meldet sich bei SMTP nie an; der POP3-Login bürgt für sie.",
            ),
            "3": (
                "Mallory am Nebentisch sendet, ganz ohne Konto",
                "Dasselbe WLAN, dieselbe Adresse. Der Server kann ihn nicht von Alice "
                "unterscheiden.",
            ),
            "4": (
                "Bob sendet von zu Hause, ohne POP3-Login",
                "Kein POP3-Login von seiner Adresse, keine Zugangsdaten.",
            ),
            "5": (
                "Elf Minuten später: das Fenster ist abgelaufen",
                "Die Demo stellt die Serveruhr vor; niemand wartet.",
            ),
            "6": (
                "Nach Mitternacht UTC: SMTP-after-POP ist abgeschaltet",
                "Die Umstellung des Providers: ab 2013-09-02 00:00 UTC darf nur noch "
                "senden, wer sich per SMTP-Auth anmeldet.",
            ),
        },
        "notes": {
            "old-client": "Alices altes Programm ruft erst POP3 ab und sendet dann ohne AUTH:",
            "switch": "Sie schaltet SMTP-Auth ein (Submission-Port, Anmeldung):",
            "mallory": "Mallory versucht es wieder; er hat kein Passwort:",
        },
        "clock": "Serveruhr jetzt {now}",
        "server": "Server",
        "relayed": "weitergeleitet",
        "refused": "abgewiesen",
        "login": "POP3-Login: {account} von {ip}",
        "table": "Tabelle: {ip} → {account}, seit {since}, gültig bis {until} UTC",
        "no-login": "kein POP3-Login für {ip} vermerkt",
        "expected": "wie erwartet",
        "differs": "WEICHT AB von der Erwartung: {what}",
        "expect-login": "ein POP3-Login von {ip} als {account}",
        "summary": "Zusammenfassung",
        "columns": ("#", "wer", "von", "Betreff", "Ergebnis", "über", "zu Recht?"),
        "yes": "ja",
        "no": "NEIN",
        "moral": (
            "Schritt {labels}: weitergeleitet für {names}, ohne Konto - SMTP-after-POP "
            "vertraut einer Adresse, und Adressen werden geteilt. SMTP-Auth vertraut "
            "einem Passwort."
        ),
        "all-ok": "Alle {count} Ergebnisse wie erwartet.",
        "failed": "Die Entscheidung des Servers wich in Schritt {labels} von der Erwartung ab.",
        "pause": "[Enter] nächster Schritt",
    },
}
LANGUAGES = tuple(TEXTS)

STYLES = {
    "title": "1",
    "step": "1;36",
    "client": "36",
    "server": "33",
    "ok": "32",
    "bad": "1;31",
    "dim": "2",
}


class Printer:
    """Writes narration wrapped to 80 columns, colour only when asked to."""

    def __init__(self, out: TextIO, color: bool) -> None:
        self.out = out
        self.color = color

    def paint(self, text: str, style: str | None) -> str:
        if not self.color or style is None:
            return text
        return f"\x1b[{STYLES[style]}m{text}\x1b[0m"

    def line(self, text: str = "", style: str | None = None) -> None:
        self.out.write(self.paint(fit(text), style) + "\n")

    def para(self, text: str, indent: str = "", hang: str = "", style: str | None = None) -> None:
        for part in textwrap.wrap(
            KEEP_TOGETHER.sub("\\1\u00a0s", text),
            WIDTH,
            initial_indent=indent,
            subsequent_indent=indent + hang,
            break_on_hyphens=False,
        ):
            self.line(part.replace("\u00a0", " "), style)

    def flush(self) -> None:
        self.out.flush()


KEEP_TOGETHER = re.compile(r"\b(\d+) s\b")
""""660 s" stays on one line when a reason is wrapped."""


def fit(text: str) -> str:
    return text if len(text) <= WIDTH else text[: WIDTH - 1] + "…"


# --- clients that keep a transcript --------------------------------------------------


Transcript = list[tuple[str, str]]
"""(">" client or "<" server, text) in the order they crossed the wire."""


class TracedSMTP(smtplib.SMTP):
    """smtplib that records each command and reply, hiding secrets and message bodies."""

    def __init__(self, transcript: Transcript, *args: Any, **kwargs: Any) -> None:
        self.transcript = transcript
        super().__init__(*args, **kwargs)

    def send(self, s: str | bytes) -> None:
        text = s.decode("ascii", "replace") if isinstance(s, bytes) else s
        if text.endswith("\r\n.\r\n"):
            subject = next((h for h in text.split("\r\n") if h.startswith("Subject:")), "")
            self.transcript.append((">", f"(message: {subject}, {len(text)} bytes)"))
        else:
            words = text.rstrip("\r\n").split(" ")
            if words[0].lower() == "auth" and len(words) > 2:
                words[2:] = ["********"]
            self.transcript.append((">", " ".join(words)))
        super().send(s)

    def getreply(self) -> tuple[int, bytes]:
        code, message = super().getreply()
        lines = message.decode("utf-8", "replace").split("\n")
        for i, text in enumerate(lines):
            self.transcript.append(("<", f"{code}{' ' if i == len(lines) - 1 else '-'}{text}"))
        return code, message


class TracedPOP3(SourcePOP3):
    """SourcePOP3 that records each command and reply; the password is masked."""

    def __init__(self, transcript: Transcript, *args: Any, **kwargs: Any) -> None:
        self.transcript = transcript
        super().__init__(*args, **kwargs)

    def _putcmd(self, line: str) -> None:
        shown = "PASS ********" if line.upper().startswith("PASS ") else line
        self.transcript.append((">", shown))
        super()._putcmd(line)

    def _getresp(self) -> bytes:
        resp = super()._getresp()
        self.transcript.append(("<", resp.decode("utf-8", "replace")))
        return resp


HIDDEN = {"QUIT", "RSET", "STAT", "DATA"}
"""Commands whose exchange teaches nothing here; DATA's message line stays."""


def abridged(transcript: Transcript) -> list[tuple[str, str]]:
    """The lines that matter: no greeting, no QUIT/RSET/STAT/DATA exchange, a short EHLO."""
    shown: list[tuple[str, str]] = []
    lines = transcript[1:]
    i = 0
    while i < len(lines):
        side, text = lines[i]
        if side == ">" and text.upper() in HIDDEN:
            i += 2
            continue
        if side == "<" and text[3:4] == "-":
            block = [text]
            while i + 1 < len(lines) and lines[i + 1][0] == "<" and block[-1][3:4] == "-":
                i += 1
                block.append(lines[i][1])
            code = block[0][:3]
            keep = [block[0][4:]] + [t[4:] for t in block[1:] if t[4:].startswith("AUTH")]
            hidden = len(block) - len(keep)
            if hidden:
                keep.append(f"… ({hidden} more lines)")
            shown.extend(
                ("<", f"{code}{'-' if n < len(keep) - 1 else ' '}{t}") for n, t in enumerate(keep)
            )
        else:
            shown.append((side, text))
        i += 1
    return shown


def message(person: Person, subject: str) -> str:
    return (
        f"From: {person.sender}\r\nTo: {OUTSIDE}\r\nSubject: {subject}\r\n\r\n"
        "Sent from the mailhost demo.\r\n"
    )


def pop_login(ports: dict[str, int], person: Person) -> Transcript:
    transcript: Transcript = []
    client = TracedPOP3(transcript, HOST, ports["pop3"], person.ip, timeout=TIMEOUT)
    try:
        client.user(person.sender)
        client.pass_(person.password)
    finally:
        client.quit()
    return transcript


def send(ports: dict[str, int], person: Person, subject: str, authenticate: bool) -> Transcript:
    """One message to an outside address; stops at the first refusal, as a client would."""
    transcript: Transcript = []
    role = "submission" if authenticate else "smtp"
    with TracedSMTP(
        transcript, HOST, ports[role], timeout=TIMEOUT, source_address=(person.ip, 0)
    ) as client:
        client.ehlo(person.helo)
        if authenticate:
            client.login(person.sender, person.password)
        code, _ = client.mail(person.sender)
        if code == 250:
            code, _ = client.rcpt(OUTSIDE)
        if code == 250:
            client.data(message(person, subject))
        else:
            client.rset()
    return transcript


# --- the run -------------------------------------------------------------------------


@dataclass
class Row:
    label: str
    who: str
    ip: str
    subject: str
    allowed: bool
    scheme: str | None
    rightly: bool


@dataclass
class Run:
    """The demo against one running provider; ``reactor`` runs in another thread."""

    reactor: Any
    service: Any
    ports: dict[str, int]
    data: DataDir
    printer: Printer
    texts: dict[str, Any]
    rows: list[Row] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)
    seen: int = 0

    def call(self, f: Callable[..., Any], *args: Any) -> Any:
        from twisted.internet.threads import blockingCallFromThread

        return blockingCallFromThread(self.reactor, f, *args)

    @property
    def provider(self) -> Any:
        return self.service.provider

    def now(self) -> datetime:
        return self.call(self.provider.now)

    def new_events(self, kind: str) -> list[dict[str, Any]]:
        found = self.call(self.provider.events.recent, kind, self.seen)
        every = self.call(self.provider.events.recent, None, self.seen)
        if every:
            self.seen = every[-1]["seq"]
        return found

    def transcript(self, person: Person, transcript: Transcript) -> None:
        for side, text in abridged(transcript):
            arrow = "→" if side == ">" else "←"
            self.printer.line(
                f"  {person.ip} {arrow} {text}", "client" if side == ">" else "server"
            )

    def verdict(self, ok: bool, what: str) -> None:
        t = self.texts
        if ok:
            self.printer.line(f"  ✓ {t['expected']}", "ok")
        else:
            self.printer.para(f"  ✗ {t['differs'].format(what=what)}", hang="    ", style="bad")

    def do(self, step: Step, act: Act, label: str) -> None:
        t = self.texts
        if act.note:
            self.printer.para(t["notes"][act.note], indent="  ")
        if act.kind == "advance":
            self.call(self.provider.clock.advance, act.minutes * 60)
            self.printer.line(
                "  " + t["clock"].format(now=format_instant(self.now().replace(microsecond=0))),
                "dim",
            )
            return
        person = PEOPLE[act.who]
        if act.kind == "pop":
            self.pop(step, act, person)
        else:
            self.send(step, act, person, label)

    def pop(self, step: Step, act: Act, person: Person) -> None:
        t = self.texts
        self.transcript(person, pop_login(self.ports, person))
        for event in self.new_events(POP_LOGIN):
            line = t["login"].format(account=event["account"], ip=event["ip"])
            self.printer.line(f"  {t['server']}: {line}", "server")
        grant = self.call(self.provider.logins.last_login, person.ip)
        if grant is None:
            self.printer.line("  " + t["no-login"].format(ip=person.ip))
        else:
            window = self.provider.schemes.pop_window
            self.printer.para(
                "  "
                + t["table"].format(
                    ip=grant.ip,
                    account=grant.account,
                    since=clock_time(grant.granted_at),
                    until=clock_time(grant.expires_at(window)),
                ),
                hang="    ",
            )
        ok = grant is not None and grant.account == person.account
        self.check(step.key, ok, t["expect-login"].format(ip=person.ip, account=person.account))

    def send(self, step: Step, act: Act, person: Person, label: str) -> None:
        t = self.texts
        before = set(self.outbox())
        self.transcript(person, send(self.ports, person, act.subject, act.kind == "send-auth"))
        decisions = self.new_events(SMTP_DECISION)
        refusals = [d for d in decisions if not d["allowed"]]
        deciding = [d for d in decisions if d["recipient"] is not None]
        decision = (refusals or deciding or decisions or [None])[-1]
        if decision is None:
            self.check(step.key, False, "no decision in the server's event log")
            return
        allowed = bool(decision["allowed"])
        verdict = t["relayed"] if allowed else t["refused"]
        self.printer.para(
            f"  {t['server']}: {verdict.upper()} {decision['code']} {decision['enhanced']} "
            f"- {decision['reason']}",
            hang="    ",
            style="ok" if allowed and act.rightly else "bad" if allowed else "server",
        )
        if act.show_received:
            for path in sorted(set(self.outbox()) - before):
                self.received(path)
        self.rows.append(
            Row(
                label, person.name, person.ip, act.subject, allowed, decision["scheme"], act.rightly
            )
        )
        problems = []
        if act.allowed is not None and allowed != act.allowed:
            problems.append(t["relayed"] if act.allowed else t["refused"])
        if act.scheme is not None and decision["scheme"] != act.scheme:
            problems.append(SCHEME_TITLES[act.scheme])
        if act.account is not None and decision["authorised_account"] != act.account:
            problems.append(act.account)
        if act.reason and act.reason not in decision["reason"]:
            problems.append(repr(act.reason))
        self.check(step.key, not problems, ", ".join(problems))

    def outbox(self) -> list[Path]:
        new = self.data.outbox / "new"
        return sorted(new.iterdir()) if new.is_dir() else []

    def received(self, path: Path) -> None:
        with open(path, "rb") as f:
            headers = BytesHeaderParser().parse(f)
        trace = str(headers.get("Received", "")).replace("\r", "").split("\n")
        self.printer.line(f"  Received: {trace[0].strip()}", "dim")
        for part in trace[1:2]:
            self.printer.line(f"          {part.strip()}", "dim")

    def check(self, key: str, ok: bool, what: str) -> None:
        if not ok and key not in self.failed:
            self.failed.append(key)
        self.verdict(ok, what)


def clock_time(instant: datetime) -> str:
    return instant.astimezone(UTC).strftime("%H:%M:%S")


def summary(run: Run) -> None:
    t = run.texts
    p = run.printer
    rows = [
        (
            r.label,
            r.who,
            r.ip,
            r.subject,
            t["relayed"] if r.allowed else t["refused"],
            SCHEME_TITLES.get(r.scheme or "", "-"),
            t["yes"] if r.rightly else t["no"],
        )
        for r in run.rows
    ]
    widths = [max(len(c) for c in column) for column in zip(t["columns"], *rows, strict=False)]

    def render(cells: Sequence[str]) -> str:
        return " ".join(c.ljust(w) for c, w in zip(cells, widths, strict=True)).rstrip()

    p.line()
    p.line(t["summary"], "title")
    p.line(render(t["columns"]), "title")
    p.line(render(["-" * w for w in widths]))
    for row, cells in zip(run.rows, rows, strict=True):
        p.line(render(cells), None if row.rightly else "bad")
    wrong = [r for r in run.rows if not r.rightly and r.allowed]
    if wrong:
        p.line()
        p.para(
            t["moral"].format(
                labels=", ".join(r.label for r in wrong),
                names=", ".join(sorted({r.who for r in wrong})),
            )
        )


def labels(step: Step) -> list[str]:
    """Row labels: the step number, with a, b, c when a step sends more than once."""
    sends = [a for a in step.acts if a.kind.startswith("send")]
    if len(sends) < 2:
        return [step.key] * len(step.acts)
    letters = iter("abcdefgh")
    return [f"{step.key}{next(letters)}" if a.kind.startswith("send") else "" for a in step.acts]


def demo_config(data_dir: Path) -> ServeConfig:
    return ServeConfig(
        data_dir=data_dir,
        listeners=Listeners(smtp=0, submission=0, pop3=0, smtps=0, pop3s=0, http=0),
        schemes=Schemes(Schedule.on(), Schedule.until(CUTOVER), WINDOW),
        now=START,
        hostname="mail.example.org",
        bcrypt_cost=DEMO_COST,
    )


def play(
    reactor: Any,
    out: TextIO,
    lang: str = "en",
    color: bool = False,
    pause: bool = False,
    script: Sequence[Step] = SCRIPT,
    wait: Callable[[], object] = input,
) -> int:
    """Run the scenario against a provider on ``reactor`` (running in another thread).

    Returns 0 when every outcome matched the script, else 1.
    """
    from twisted.internet.threads import blockingCallFromThread

    from mailhost.service import MailhostService

    texts = TEXTS[lang]
    printer = Printer(out, color)
    with tempfile.TemporaryDirectory(prefix="mailhost-demo-") as tmp:
        data = DataDir(Path(tmp) / "data")
        accounts = AccountFile(data.users)
        for address, password in DEMO_ACCOUNTS.items():
            accounts.add(address, password, cost=DEMO_COST)
        holder: list[MailhostService] = []

        def begin() -> Any:
            service = MailhostService(demo_config(data.root), reactor)
            holder.append(service)
            service.startService()
            return service.ready

        try:
            ports = blockingCallFromThread(reactor, begin)
            run = Run(reactor, holder[0], ports, data, printer, texts)
            return _tell(run, script, pause, wait)
        finally:
            if holder:
                blockingCallFromThread(reactor, holder[0].stopService)


def _tell(run: Run, script: Sequence[Step], pause: bool, wait: Callable[[], object]) -> int:
    t = run.texts
    p = run.printer
    p.line(t["title"], "title")
    p.line("=" * len(t["title"]))
    p.para(
        t["intro"].format(
            host=HOST,
            cutover=format_instant(CUTOVER),
            window=int(WINDOW.total_seconds()),
            now=format_instant(run.now().replace(second=0, microsecond=0)),
        )
    )
    p.line(t["places"])
    for ip, place in t["place"].items():
        p.para(f"{ip}  {place}", indent="  ", hang=" " * (len(ip) + 2))
    for index, step in enumerate(script):
        if pause and index:
            p.out.write(p.paint(t["pause"], "dim"))
            p.flush()
            with contextlib.suppress(EOFError):  # stdin closed: carry on unpaused
                wait()
        title, narration = t["steps"][step.key]
        p.line()
        p.line(f"{t['step']} {step.key}: {title}", "step")
        p.para(narration, indent="  ")
        for act, label in zip(step.acts, labels(step), strict=True):
            run.do(step, act, label)
        p.flush()
    summary(run)
    p.line()
    if run.failed:
        p.para(t["failed"].format(labels=", ".join(run.failed)), style="bad")
        p.flush()
        return 1
    count = sum(1 for step in script for a in step.acts if a.kind != "advance")
    p.line(t["all-ok"].format(count=count), "ok")
    p.flush()
    return 0


def use_color(out: TextIO, no_color: bool) -> bool:
    """Colour only on a terminal, never with --no-color or NO_COLOR (https://no-color.org)."""
    if no_color or os.environ.get("NO_COLOR"):
        return False
    isatty = getattr(out, "isatty", None)
    return bool(isatty and isatty())


def main(lang: str = "en", no_color: bool = False, pause: bool = False) -> int:
    """The command's edge: the global reactor in a background thread, the story on stdout."""
    from twisted.internet import reactor

    out = sys.stdout
    if hasattr(out, "reconfigure"):
        out.reconfigure(errors="replace")
    thread = threading.Thread(
        target=reactor.run, kwargs={"installSignalHandlers": False}, daemon=True
    )
    thread.start()
    try:
        return play(reactor, out, lang, use_color(out, no_color), pause)
    finally:
        reactor.callFromThread(reactor.stop)
        thread.join(timeout=TIMEOUT)
