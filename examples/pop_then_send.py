"""SMTP-after-POP by hand: a POP3 login from one address lets that address send.

Logs in to POP3 as alice from a chosen source address, then sends to an
outside address over SMTP from the same address, giving no credentials, and
prints what the server answered. With ``make run`` going:

    python examples/pop_then_send.py --source 127.0.0.2

Ports come from the flags or from MAILHOST_POP3_PORT / MAILHOST_SMTP_PORT
(default: the ``make run`` ports 2110 and 2525).
"""

import argparse
import os
import smtplib

from mailhost.testing import SourcePOP3  # poplib.POP3 with a source address

parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("--host", default="127.0.0.1")
parser.add_argument("--source", default="127.0.0.2", help="local address to connect from")
parser.add_argument("--pop3-port", type=int, default=os.environ.get("MAILHOST_POP3_PORT", 2110))
parser.add_argument("--smtp-port", type=int, default=os.environ.get("MAILHOST_SMTP_PORT", 2525))
parser.add_argument("--user", default="alice@example.org")
parser.add_argument("--password", default="alice-secret")
parser.add_argument("--to", default="friend@elsewhere.example")
args = parser.parse_args()

pop = SourcePOP3(args.host, args.pop3_port, source=args.source)
pop.user(args.user)
print("POP3 login:", pop.pass_(args.password).decode())
pop.quit()  # the server now remembers: a login from args.source, just now

smtp = smtplib.SMTP(args.host, args.smtp_port, source_address=(args.source, 0), timeout=10)
smtp.ehlo("client.example.net")
for step, (code, reply) in [
    ("MAIL", smtp.mail(args.user)),
    ("RCPT", smtp.rcpt(args.to)),  # an outside address: relaying needs an authorisation
]:
    print(f"{step}: {code} {reply.decode()}")
if code == 250:
    code, reply = smtp.data(f"Subject: sent after POP\r\nTo: {args.to}\r\n\r\nhello\r\n")
    print(f"DATA: {code} {reply.decode()}")
smtp.quit()
