"""Testing an application's mail with the ``mailhost`` pytest fixture.

Installing mailhost gives pytest a ``mailhost`` fixture: one real provider per
test session on free loopback ports, reset before every test. Copy this file
into a test suite and run:

    pytest examples/test_with_fixture.py
"""

import smtplib

import pytest


def test_welcome_mail_arrives(mailhost):
    """Mail sent with smtplib is found in alice's mailbox, without sleeping."""
    client = mailhost.smtp()
    client.sendmail("app@example.net", ["alice@example.org"], "Subject: welcome\r\n\r\nhi\r\n")
    message = mailhost.wait_for_message("alice@example.org", subject="welcome")
    assert message["body"].strip() == "hi"


def test_temporary_failure_then_retry(mailhost):
    """A 451 on RCPT reaches the sender once; the retry is delivered."""
    mailhost.fault("RCPT", code=451, text="4.3.0 try again later")
    client = mailhost.smtp()
    message = "Subject: retried\r\n\r\nsecond time lucky\r\n"
    with pytest.raises(smtplib.SMTPRecipientsRefused) as refused:
        client.sendmail("app@example.net", ["alice@example.org"], message)
    assert refused.value.recipients["alice@example.org"][0] == 451
    client.sendmail("app@example.net", ["alice@example.org"], message)
    assert mailhost.wait_for_message("alice@example.org", subject="retried")


def test_pop_window_closes(mailhost):
    """A POP3 login lets its address relay for ten minutes, and not a second longer."""
    pop = mailhost.pop3(source="127.0.0.2")
    pop.user("alice@example.org")
    pop.pass_("alice-secret")
    pop.quit()
    client = mailhost.smtp(source="127.0.0.2")
    client.ehlo("cafe.example.net")
    client.mail("alice@example.org")
    assert client.rcpt("friend@elsewhere.example")[0] == 250
    client.rset()

    mailhost.clock.advance(601)  # past the window, without waiting
    client.mail("alice@example.org")
    code, reply = client.rcpt("friend@elsewhere.example")
    assert code == 550
    assert b"SMTP-after-POP" in reply
