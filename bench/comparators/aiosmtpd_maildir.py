"""aiosmtpd with a Maildir handler as durable as mailhost's delivery: the SMTP comparator.

``python bench/comparators/aiosmtpd_maildir.py --port P --maildir DIR`` listens on
127.0.0.1:P (``--port 0`` picks a free port) and prints one JSON line,
``{"event": "ready", "port": P, "pid": ...}``, once it is listening. It runs until SIGINT or
SIGTERM.

Every recipient in ``--domain`` (default example.org) is accepted at RCPT, anything else gets
550. Each accepted message is stored once per recipient in the Maildir ``DIR`` (``tmp``,
``new`` and ``cur`` are made if missing) before ``250 OK`` is returned:

  1. write a ``Return-Path`` and a ``Delivered-To`` line, then the message with CRLF turned into
     LF, to ``tmp/<unique name>`` (opened with ``O_EXCL``);
  2. ``fsync`` that file and close it;
  3. ``link`` it into ``new/`` and unlink the ``tmp/`` name;
  4. ``fsync`` the ``new/`` directory, so the name itself is on disk.

The blocking file work runs in the event loop's default thread pool
(``loop.run_in_executor``), as an aiosmtpd user keeping the loop responsive would write it.
The server's hostname is given explicitly, so aiosmtpd does not call ``socket.getfqdn()`` for
every connection. Exit status 2 when aiosmtpd cannot be imported.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import os
import signal
import socket
import sys
import time
from pathlib import Path
from typing import Any

HOST = "127.0.0.1"

try:
    from aiosmtpd.smtp import SMTP, Envelope, Session
except ImportError as error:  # pragma: no cover - depends on the bench extra
    print(f"aiosmtpd is not importable: {error}", file=sys.stderr)
    sys.exit(2)


class MaildirHandler:
    """Accepts recipients of one domain and stores each message durably in one Maildir."""

    def __init__(self, maildir: Path, domain: str, hostname: str) -> None:
        self.maildir = maildir
        self.domain = domain.lower()
        self.hostname = hostname
        self.counter = itertools.count(1)
        for sub in ("tmp", "new", "cur"):
            (maildir / sub).mkdir(parents=True, exist_ok=True)

    async def handle_RCPT(
        self,
        server: SMTP,
        session: Session,
        envelope: Envelope,
        address: str,
        rcpt_options: list[str],
    ) -> str:
        if address.rpartition("@")[2].lower() != self.domain:
            return "550 5.1.1 No such user here"
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        content = envelope.original_content or b""
        body = content.replace(b"\r\n", b"\n")
        sender = envelope.mail_from or ""
        loop = asyncio.get_running_loop()
        for recipient in envelope.rcpt_tos:
            head = f"Return-Path: <{sender}>\nDelivered-To: {recipient}\n".encode()
            await loop.run_in_executor(None, self.deliver, head + body)
        return "250 OK"

    def deliver(self, data: bytes) -> None:
        """Write ``data`` to tmp/, fsync it, link it into new/, fsync new/ (blocking)."""
        now = time.time()
        seconds = int(now)
        micros = int((now - seconds) * 1_000_000)
        name = f"{seconds}.M{micros}P{os.getpid()}Q{next(self.counter)}.{self.hostname}"
        tmp_path = self.maildir / "tmp" / name
        new_path = self.maildir / "new" / name
        fd = os.open(tmp_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            os.fsync(fd)
        finally:
            os.close(fd)
        os.link(tmp_path, new_path)
        os.unlink(tmp_path)
        directory = os.open(self.maildir / "new", os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(directory)
        finally:
            os.close(directory)


async def serve(port: int, maildir: Path, domain: str, hostname: str) -> None:
    handler = MaildirHandler(maildir, domain, hostname)
    loop = asyncio.get_running_loop()
    server = await loop.create_server(
        lambda: SMTP(handler, hostname=hostname), host=HOST, port=port, backlog=256
    )
    stopping = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stopping.set)
    bound = server.sockets[0].getsockname()[1]
    print(json.dumps({"event": "ready", "port": bound, "pid": os.getpid()}), flush=True)
    async with server:
        await stopping.wait()
        server.close()
        await server.wait_closed()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--port", type=int, required=True, help="TCP port on 127.0.0.1 (0: any)")
    parser.add_argument("--maildir", type=Path, required=True, help="Maildir to deliver into")
    parser.add_argument("--domain", default="example.org", help="accepted recipient domain")
    parser.add_argument("--hostname", default=socket.gethostname(), help="name in greetings")
    args: Any = parser.parse_args(argv)
    asyncio.run(serve(args.port, args.maildir, args.domain, args.hostname))
    return 0


if __name__ == "__main__":
    sys.exit(main())
