"""TLS over real sockets: implicit TLS (RFC 8314), STARTTLS and STLS, with verifying clients.

Every client trusts only the server's ca.pem (the name-constrained authority
mailhost made for itself); none turns verification off. Clients that need a
binary (swaks, curl, openssl) are skipped with a reason when it is missing.
"""

from __future__ import annotations

import email
import hashlib
import poplib
import shutil
import smtplib
import socket
import ssl
import subprocess
from pathlib import Path

import pytest

pytestmark = pytest.mark.e2e

HOST = "127.0.0.1"
OUTSIDE = "friend@elsewhere.example"
ALICE, ALICE_PASSWORD = "alice@example.org", "alice-secret"
CLIENT_TIMEOUT = 30


def message(subject: str, sender: str = ALICE) -> str:
    return f"From: {sender}\r\nTo: {OUTSIDE}\r\nSubject: {subject}\r\n\r\nHello.\r\n"


def needs(binary: str, *extra: str):
    missing = [name for name in (binary, *extra) if shutil.which(name) is None]
    return pytest.mark.skipif(bool(missing), reason=f"{', '.join(missing)} not installed")


def run(*command: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        command, input=stdin, capture_output=True, text=True, timeout=CLIENT_TIMEOUT, check=False
    )


def deliver_to_alice(server, subject: str) -> None:
    """Put one message in Alice's mailbox through the MX port (no authorisation needed)."""
    with server.smtp("127.0.0.3") as client:
        client.sendmail("someone@elsewhere.example", [ALICE], f"Subject: {subject}\r\n\r\nx\r\n")


def received_header(stored: bytes) -> str:
    """The first (mailhost's own) Received header, unfolded."""
    return " ".join(email.message_from_bytes(stored)["Received"].split())


@pytest.fixture
def server(start_server):
    return start_server()


@pytest.mark.parametrize("mechanism", ["PLAIN", "LOGIN"])
def test_smtps_auth_relays_and_received_says_esmtpsa(server, mechanism):
    """SMTP_SSL on the smtps port: AUTH PLAIN or LOGIN relays, and Received says ESMTPSA."""
    with smtplib.SMTP_SSL(
        HOST, server.ports["smtps"], context=server.tls_context(), timeout=CLIENT_TIMEOUT
    ) as client:
        client.ehlo("client.example.net")
        client.user, client.password = ALICE, ALICE_PASSWORD
        authenticate = client.auth_plain if mechanism == "PLAIN" else client.auth_login
        code, _ = client.auth(mechanism, authenticate)
        assert code == 235
        assert client.sendmail(ALICE, [OUTSIDE], message(f"over smtps {mechanism}")) == {}
    [stored] = server.stored("outbox")
    received = received_header(stored)
    assert "with ESMTPSA" in received
    assert "smtp-auth: alice@example.org" in received


def test_pop3s_login_and_retr(server):
    """POP3_SSL on the pop3s port logs in and retrieves a message."""
    deliver_to_alice(server, "over pop3s")
    client = poplib.POP3_SSL(
        HOST, server.ports["pop3s"], context=server.tls_context(), timeout=CLIENT_TIMEOUT
    )
    client.user(ALICE)
    client.pass_(ALICE_PASSWORD)
    _, lines, _ = client.retr(1)
    client.quit()
    assert b"Subject: over pop3s" in lines


def test_starttls_on_submission_then_login_relays(server):
    """STARTTLS on the submission port, then AUTH, relays; the session counts as TLS."""
    with smtplib.SMTP(HOST, server.ports["submission"], timeout=CLIENT_TIMEOUT) as client:
        client.ehlo("client.example.net")
        assert client.has_extn("starttls")
        client.starttls(context=server.tls_context())
        client.ehlo("client.example.net")
        assert not client.has_extn("starttls")
        client.login(ALICE, ALICE_PASSWORD)
        assert client.sendmail(ALICE, [OUTSIDE], message("after starttls")) == {}
    [stored] = server.stored("outbox")
    assert "with ESMTPSA" in received_header(stored)


def test_pop3_stls_then_login_and_retr(server):
    """STLS on the POP3 port upgrades the session; login and RETR then work inside TLS."""
    deliver_to_alice(server, "after stls")
    client = poplib.POP3(HOST, server.ports["pop3"], timeout=CLIENT_TIMEOUT)
    assert "STLS" in client.capa()
    client.stls(context=server.tls_context())
    assert "STLS" not in client.capa()
    client.user(ALICE)
    client.pass_(ALICE_PASSWORD)
    _, lines, _ = client.retr(1)
    client.quit()
    assert b"Subject: after stls" in lines


def read_reply(connection: socket.socket) -> bytes:
    """One CRLF-terminated reply line, read byte by byte so nothing is left buffered."""
    line = b""
    while not line.endswith(b"\r\n"):
        byte = connection.recv(1)
        assert byte, f"connection closed after {line!r}"
        line += byte
    return line


CLOSE_TIMEOUT = 2.0
QUIET_TIMEOUT = 0.5
"""How long to listen for a reply nobody asked for; on loopback a real one comes at once."""


def read_smtp_reply(connection: socket.socket) -> list[bytes]:
    """Every line of one (possibly multi-line) SMTP reply."""
    lines = [read_reply(connection)]
    while lines[-1][3:4] == b"-":
        lines.append(read_reply(connection))
    return lines


def read_pop3_list(connection: socket.socket) -> list[bytes]:
    """A POP3 +OK status line and the lines of its list, up to the terminating dot."""
    lines = [read_reply(connection)]
    while lines[-1] != b".\r\n":
        lines.append(read_reply(connection))
    return lines


def assert_nothing_unprompted(tls: ssl.SSLSocket) -> None:
    """No reply arrives inside TLS before the client says anything there."""
    tls.settimeout(QUIET_TIMEOUT)
    with pytest.raises(TimeoutError):
        tls.recv(1)
    tls.settimeout(CLOSE_TIMEOUT)


def test_starttls_drops_a_command_sent_behind_it_in_plaintext(server):
    """A NOOP in the same write as STARTTLS gets no reply inside TLS; a fresh EHLO works."""
    with socket.create_connection((HOST, server.ports["submission"]), timeout=CLOSE_TIMEOUT) as raw:
        assert read_reply(raw).startswith(b"220 ")
        raw.sendall(b"EHLO x\r\n")
        assert read_smtp_reply(raw)[-1].startswith(b"250 ")
        raw.sendall(b"STARTTLS\r\nNOOP\r\n")
        assert read_reply(raw).startswith(b"220 ")
        with server.tls_context().wrap_socket(raw, server_hostname=HOST) as tls:
            assert_nothing_unprompted(tls)
            tls.sendall(b"EHLO client.example.net\r\n")
            reply = read_smtp_reply(tls)
    assert reply[0].startswith(b"250-mail.example.org")
    assert reply[-1].startswith(b"250 ")
    assert not any(b"STARTTLS" in line for line in reply)


def test_stls_drops_a_command_sent_behind_it_in_plaintext(server):
    """A CAPA in the same write as STLS gets no reply inside TLS; a fresh CAPA works."""
    with socket.create_connection((HOST, server.ports["pop3"]), timeout=CLOSE_TIMEOUT) as raw:
        assert read_reply(raw).startswith(b"+OK")
        raw.sendall(b"STLS\r\nCAPA\r\n")
        assert read_reply(raw).startswith(b"+OK")
        with server.tls_context().wrap_socket(raw, server_hostname=HOST) as tls:
            assert_nothing_unprompted(tls)
            tls.sendall(b"CAPA\r\n")
            capabilities = read_pop3_list(tls)
    assert capabilities[0].startswith(b"+OK")
    assert b"USER\r\n" in capabilities
    assert b"STLS\r\n" not in capabilities


def test_smtps_does_not_offer_starttls(server):
    """On the implicit-TLS submission port EHLO lists AUTH but not STARTTLS."""
    with smtplib.SMTP_SSL(
        HOST, server.ports["smtps"], context=server.tls_context(), timeout=CLIENT_TIMEOUT
    ) as client:
        client.ehlo("client.example.net")
        assert client.has_extn("auth")
        assert not client.has_extn("starttls")


def test_pop3s_does_not_offer_stls(server):
    """On the implicit-TLS POP3 port CAPA lists USER but not STLS."""
    client = poplib.POP3_SSL(
        HOST, server.ports["pop3s"], context=server.tls_context(), timeout=CLIENT_TIMEOUT
    )
    capabilities = client.capa()
    client.quit()
    assert "USER" in capabilities
    assert "STLS" not in capabilities


def test_starttls_then_auth_login_relays(server):
    """STARTTLS on submission, then AUTH LOGIN (forced, not PLAIN), relays as ESMTPSA."""
    with smtplib.SMTP(HOST, server.ports["submission"], timeout=CLIENT_TIMEOUT) as client:
        client.ehlo("client.example.net")
        client.starttls(context=server.tls_context())
        client.ehlo("client.example.net")
        client.user, client.password = ALICE, ALICE_PASSWORD
        code, _ = client.auth("LOGIN", client.auth_login)
        assert code == 235
        assert client.sendmail(ALICE, [OUTSIDE], message("starttls auth login")) == {}
    [stored] = server.stored("outbox")
    received = received_header(stored)
    assert "with ESMTPSA" in received
    assert "smtp-auth: alice@example.org" in received


@pytest.mark.parametrize("listener", ["pop3s", "pop3"])
def test_pop3_quit_over_tls_closes_the_connection(server, listener):
    """After QUIT inside TLS the server completes the TLS close and drops TCP, leaking nothing."""
    deliver_to_alice(server, "kept")
    raw = socket.create_connection((HOST, server.ports[listener]), timeout=CLOSE_TIMEOUT)
    with raw:
        if listener == "pop3":
            assert read_reply(raw).startswith(b"+OK")
            raw.sendall(b"STLS\r\n")
            assert read_reply(raw).startswith(b"+OK")
        with server.tls_context().wrap_socket(raw, server_hostname=HOST) as tls:
            if listener == "pop3s":
                assert read_reply(tls).startswith(b"+OK")
            for command in (f"USER {ALICE}", f"PASS {ALICE_PASSWORD}", "STAT", "QUIT"):
                tls.sendall(command.encode() + b"\r\n")
                assert read_reply(tls).startswith(b"+OK"), command
            assert tls.recv(1) == b"", "the server sends close_notify after QUIT"
            with tls.unwrap() as plain:
                assert plain.recv(1) == b"", "the server closes TCP once both sides closed TLS"
    assert len(server.stored(ALICE)) == 1


def test_client_without_the_certificate_refuses_the_server(server):
    """A verifying client that does not trust this server's ca.pem fails the handshake."""
    untrusting = ssl.create_default_context(cafile=None, capath=None, cadata=None)
    untrusting.load_verify_locations(cadata=_unrelated_ca_pem())
    with (
        socket.create_connection((HOST, server.ports["smtps"]), timeout=CLIENT_TIMEOUT) as raw,
        pytest.raises(ssl.SSLCertVerificationError),
    ):
        untrusting.wrap_socket(raw, server_hostname=HOST)


def _unrelated_ca_pem() -> str:
    from datetime import UTC, datetime

    from cryptography.hazmat.primitives import serialization

    from mailhost.tls import generate_certificate

    ca = generate_certificate("unrelated.example", datetime.now(UTC)).ca
    return ca.public_bytes(serialization.Encoding.PEM).decode("ascii")


@pytest.mark.parametrize("listener", ["smtps", "pop3s"])
def test_served_certificate_matches_the_printed_fingerprint(server, listener):
    """The certificate a client receives has the SHA-256 fingerprint the ready line reports."""
    report = server.service.ready_report(server.ports)["tls"]
    context = server.tls_context()
    with (
        socket.create_connection((HOST, server.ports[listener]), timeout=CLIENT_TIMEOUT) as raw,
        context.wrap_socket(raw, server_hostname=HOST) as tls,
    ):
        served = tls.getpeercert(binary_form=True)
    assert served is not None
    assert hashlib.sha256(served).digest().hex(":").upper() == report["fingerprint_sha256"]
    assert Path(report["cert"]) == server.cert.absolute()


SWAKS = ("swaks", "--tls-verify", "--tls-ca-path")


@needs("swaks")
@pytest.mark.parametrize(
    ("listener", "tls_flag"), [("submission", "--tls"), ("smtps", "--tls-on-connect")]
)
def test_swaks_relays_over_tls_with_auth(server, listener, tls_flag):
    """swaks with STARTTLS (submission) or implicit TLS (smtps), verifying the certificate."""
    result = run(
        *SWAKS,
        str(server.ca),
        tls_flag,
        "--server",
        f"{HOST}:{server.ports[listener]}",
        "--from",
        ALICE,
        "--to",
        OUTSIDE,
        "--auth",
        "PLAIN",
        "--auth-user",
        ALICE,
        "--auth-password",
        ALICE_PASSWORD,
        "--header",
        "Subject: swaks over TLS",
    )
    assert result.returncode == 0, result.stdout + result.stderr
    [stored] = server.stored("outbox")
    assert "with ESMTPSA" in received_header(stored)


def curl(server, url: str, *args: str) -> subprocess.CompletedProcess[str]:
    return run(
        "curl",
        "--silent",
        "--show-error",
        "--max-time",
        str(CLIENT_TIMEOUT),
        "--cacert",
        str(server.ca),
        "--user",
        f"{ALICE}:{ALICE_PASSWORD}",
        *args,
        url,
    )


@needs("curl")
@pytest.mark.parametrize(
    ("scheme", "listener", "extra"),
    [("smtps", "smtps", ()), ("smtp", "submission", ("--ssl-reqd",))],
)
def test_curl_sends_over_tls(server, tmp_path, scheme, listener, extra):
    """curl sends with AUTH over smtps:// and over smtp:// with --ssl-reqd (STARTTLS)."""
    body = tmp_path / "message.txt"
    body.write_text(message(f"curl {scheme}"))
    result = curl(
        server,
        f"{scheme}://{HOST}:{server.ports[listener]}",
        *extra,
        "--mail-from",
        ALICE,
        "--mail-rcpt",
        OUTSIDE,
        "--upload-file",
        str(body),
    )
    assert result.returncode == 0, result.stderr
    [stored] = server.stored("outbox")
    assert f"Subject: curl {scheme}".encode() in stored
    assert "with ESMTPSA" in received_header(stored)


@needs("curl")
@pytest.mark.parametrize(
    ("scheme", "listener", "extra"),
    [("pop3s", "pop3s", ()), ("pop3", "pop3", ("--ssl-reqd",))],
)
def test_curl_retrieves_over_tls(server, scheme, listener, extra):
    """curl fetches message 1 over pop3s:// and over pop3:// with --ssl-reqd (STLS)."""
    deliver_to_alice(server, f"curl {scheme}")
    result = curl(server, f"{scheme}://{HOST}:{server.ports[listener]}/1", *extra)
    assert result.returncode == 0, result.stderr
    assert f"Subject: curl {scheme}" in result.stdout


S_CLIENT_CASES = [
    ("submission", ("-starttls", "smtp")),
    ("smtp", ("-starttls", "smtp")),
    ("pop3", ("-starttls", "pop3")),
    ("smtps", ()),
    ("pop3s", ()),
]


def s_client(server, listener: str, *args: str) -> subprocess.CompletedProcess[str]:
    return run(
        "openssl",
        "s_client",
        "-brief",
        "-crlf",
        "-connect",
        f"{HOST}:{server.ports[listener]}",
        "-CAfile",
        str(server.ca),
        *args,
        stdin="QUIT\n",
    )


@needs("openssl")
@pytest.mark.parametrize(("listener", "starttls"), S_CLIENT_CASES)
def test_openssl_handshake_verifies(server, listener, starttls):
    """openssl s_client completes a verified handshake (STARTTLS/STLS or implicit), TLS 1.2+."""
    result = s_client(server, listener, *starttls, "-verify_return_error", "-verify_ip", HOST)
    assert result.returncode == 0, result.stderr
    assert "Verification: OK" in result.stderr
    assert "Protocol version: TLSv1.3" in result.stderr or "TLSv1.2" in result.stderr


@needs("openssl")
@pytest.mark.parametrize(("listener", "starttls"), S_CLIENT_CASES)
def test_openssl_tls_1_1_is_refused(server, listener, starttls):
    """A TLS 1.1 handshake (client at security level 0, so it does offer it) is refused."""
    result = s_client(server, listener, *starttls, "-tls1_1", "-cipher", "DEFAULT:@SECLEVEL=0")
    assert result.returncode != 0
    assert "alert protocol version" in result.stderr


def test_the_served_chain_file_also_works_as_a_cafile(server):
    """Python's default context given cert.pem (leaf then CA) verifies too: the CA is in it."""
    context = ssl.create_default_context(cafile=str(server.ca.parent / "cert.pem"))
    with smtplib.SMTP_SSL(
        HOST, server.ports["smtps"], context=context, timeout=CLIENT_TIMEOUT
    ) as c:
        assert c.noop()[0] == 250
