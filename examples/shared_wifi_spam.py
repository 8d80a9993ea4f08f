"""The flaw of SMTP-after-POP: on a shared address, a stranger sends in your name.

Alice checks her mail from the café (127.0.0.2). Mallory, at the same café,
has no account and gives no password, yet the server relays his message, and
the Received header it stores names alice. With ``make run`` going:

    python examples/shared_wifi_spam.py

Ports: MAILHOST_POP3_PORT, MAILHOST_SMTP_PORT, MAILHOST_HTTP_PORT (default 2110, 2525, 8025).
"""

import json
import os
import smtplib
import urllib.request

from mailhost.testing import SourcePOP3  # poplib.POP3 with a source address

HOST, CAFE = "127.0.0.1", "127.0.0.2"
POP3_PORT = int(os.environ.get("MAILHOST_POP3_PORT", 2110))
SMTP_PORT = int(os.environ.get("MAILHOST_SMTP_PORT", 2525))
API = f"http://{HOST}:{os.environ.get('MAILHOST_HTTP_PORT', 8025)}/api"


OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # loopback: no proxy


def api(path):
    with OPENER.open(API + path, timeout=20) as response:
        return json.load(response)


alice = SourcePOP3(HOST, POP3_PORT, source=CAFE)  # alice checks her mail at the café
alice.user("alice@example.org")
alice.pass_("alice-secret")
alice.quit()

mallory = smtplib.SMTP(HOST, SMTP_PORT, source_address=(CAFE, 0), timeout=10)
mallory.sendmail(  # no account, no AUTH: only the same address as alice
    "mallory@spam.example",
    ["victim@elsewhere.example"],
    "Subject: cheap watches\r\n\r\nbuy now\r\n",
)
mallory.quit()
print("Mallory's message was relayed.")

found = api("/outbox/messages?subject=cheap+watches&wait=10")["messages"]  # long poll
message = api(f"/outbox/messages/{found[-1]['id']}")
for name, value in message["headers"]:
    if name.lower() == "received":
        print(f"{name}: {value}")
        break
