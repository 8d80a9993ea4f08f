"""Stored messages read back for the API: pure functions over a file name and bytes."""

from mailhost.web.messages import Filter, body_text, received_at, scheme_of, summarise

NAME = "1378079940.M000001P42Q7.host,S=200,W=210"
LOCAL = (
    b"Return-Path: <bob@example.org>\n"
    b"Delivered-To: alice@example.org\n"
    b"Received: from client.example ([127.0.0.2])\n"
    b"\t(smtp-after-pop: alice@example.org from 127.0.0.2)\n"
    b"\tby mail.example.org (mailhost) with ESMTP id ABC\n"
    b"\tfor <alice@example.org>; Sun, 01 Sep 2013 23:59:00 +0000\n"
    b"From: =?utf-8?q?B=C3=B6b?= <bob@example.org>\n"
    b"To: Alice <alice@example.org>\n"
    b"Cc: carol@example.org\n"
    b"Subject: =?utf-8?q?Gr=C3=BC=C3=9Fe?=\n"
    b"\n"
    b"body\n"
)


def test_scheme_and_account_come_from_the_received_comment():
    """The Received comment names the scheme and the account it authorised."""
    received = "from x ([127.0.0.2])\n\t(smtp-auth: bob@example.org)\n\tby h; date"
    assert scheme_of(received) == ("smtp-auth", "bob@example.org")


def test_local_delivery_has_no_scheme():
    """Mail let in without an authorisation has scheme None."""
    assert scheme_of("from x ([1.2.3.4])\n\t(no authorisation: local delivery)") == (None, None)


def test_received_at_is_the_received_date():
    """The Received date (server clock) is the message's time."""
    assert received_at("x; Sun, 01 Sep 2013 23:59:00 +0000", NAME) == "2013-09-01T23:59:00+00:00"


def test_received_at_falls_back_to_the_file_name():
    """Without a Received date the file name's seconds are used."""
    assert received_at(None, NAME) == "2013-09-01T23:59:00.000001+00:00"


def test_summary_of_a_local_copy():
    """Envelope, decoded headers, scheme and ids are read from a local copy."""
    summary = summarise(NAME + ":2,S", LOCAL).to_json()
    assert summary["id"] == NAME
    assert summary["uid"] == NAME
    assert summary["envelope_from"] == "bob@example.org"
    assert summary["envelope_to"] == ["alice@example.org"]
    assert summary["subject"] == "Grüße"
    assert summary["from"] == "Böb <bob@example.org>"
    assert summary["scheme"] == "smtp-after-pop"
    assert summary["authorised_account"] == "alice@example.org"
    assert summary["size"] == len(LOCAL)


def test_summary_of_an_outbox_copy():
    """The outbox copy's envelope is in X-Envelope-From/To."""
    raw = b"X-Envelope-From: <>\nX-Envelope-To: a@x.example\nX-Envelope-To: b@y.example\n\nhi\n"
    summary = summarise(NAME, raw)
    assert (summary.envelope_from, summary.envelope_to) == ("", ["a@x.example", "b@y.example"])
    assert summary.subject is None


def test_filter_matches_addresses_in_envelope_or_headers():
    """from/to match an exact address, any case, in the envelope or From/To/Cc."""
    summary = summarise(NAME, LOCAL)
    assert Filter(sender="BOB@example.org").matches(summary)
    assert Filter(recipient="carol@example.org").matches(summary)
    assert not Filter(recipient="bob@example.org").matches(summary)
    assert not Filter(sender="ob@example.org").matches(summary)


def test_filter_subject_is_a_case_insensitive_substring():
    """subject matches any part of the decoded subject."""
    assert Filter(subject="GRÜ").matches(summarise(NAME, LOCAL))
    assert not Filter(subject="nope").matches(summarise(NAME, LOCAL))


def test_body_is_decoded():
    """A quoted-printable body comes back as text."""
    raw = (
        b"Content-Type: text/plain; charset=utf-8\n"
        b"Content-Transfer-Encoding: quoted-printable\n\nGr=C3=BC=C3=9Fe\n"
    )
    assert body_text(raw) == "Grüße\n"


def test_body_of_broken_mime_is_best_effort():
    """Bytes that are not valid in their charset still give text."""
    raw = b"Content-Type: text/plain; charset=utf-8\n\n\xff\xfe ok\n"
    assert "ok" in body_text(raw)


def test_a_file_summary_reads_only_the_header(tmp_path, monkeypatch):
    """summarise_file stops at the blank line: a 5 MB body is never read, yet the size is whole."""
    from mailhost.web import messages

    path = tmp_path / (NAME + ":2,S")
    path.write_bytes(LOCAL + b"y" * (5 * 1024 * 1024))
    read: list[int] = []

    class Counting:
        def __init__(self, stream):
            self.stream = stream

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.stream.close()

        def readline(self, limit=-1):
            line = self.stream.readline(limit)
            read.append(len(line))
            return line

        def read(self, n=-1):
            data = self.stream.read(n)
            read.append(len(data))
            return data

        def fileno(self):
            return self.stream.fileno()

    monkeypatch.setattr(messages, "open", lambda p, mode: Counting(open(p, mode)), raising=False)
    summary = messages.summarise_file(path)
    assert sum(read) == LOCAL.index(b"\n\n") + 2
    assert summary == summarise(NAME + ":2,S", LOCAL, size=len(LOCAL) + 5 * 1024 * 1024)
    assert summary.subject == "Grüße"


def test_a_header_without_an_end_is_read_up_to_the_limit():
    """A file with no blank line costs at most the header limit."""
    import io

    from mailhost.web.messages import read_header

    header = read_header(io.BytesIO(b"Subject: x\n" + b"X-Long: " + b"z" * 10_000), limit=100)
    assert header.startswith(b"Subject: x\n") and len(header) == 100
