"""The pytest plugin as a suite sees it: generated test files run in a fresh pytest.

Each run starts one ``mailhost serve`` subprocess, so the generated tests are
grouped into a few runs; each generated test checks one behaviour and says
which in its docstring, and the outer test names them in its assertions.
"""

from __future__ import annotations

import pytest

pytest_plugins = ["pytester"]

pytestmark = pytest.mark.e2e

RUN_ARGS = ("-p", "no:cacheprovider", "-W", "error", "-v")

POP_LOGIN = """
def pop_login(mailhost, source, account="alice@example.org", password="alice-secret"):
    client = mailhost.pop3(source=source)
    client.user(account)
    client.pass_(password)
    client.quit()
"""

DEFAULT_SESSION = (
    POP_LOGIN
    + '''
def test_local_message_is_found(mailhost):
    """Mail for a local account, sent with smtplib, is found by wait_for_message."""
    client = mailhost.smtp()
    client.sendmail(
        "carol@elsewhere.example", ["alice@example.org"], "Subject: hello\\r\\n\\r\\nhi\\r\\n"
    )
    client.quit()
    message = mailhost.wait_for_message("alice@example.org", subject="hello")
    assert message["subject"] == "hello"


def test_relay_after_pop_lands_in_outbox(mailhost):
    """A POP3 login from 127.0.0.2 lets 127.0.0.2 relay; the outbox names the scheme."""
    pop_login(mailhost, "127.0.0.2")
    client = mailhost.smtp(source="127.0.0.2")
    client.sendmail(
        "anyone@spam.example", ["friend@elsewhere.example"], "Subject: cafe\\r\\n\\r\\nx\\r\\n"
    )
    client.quit()
    assert [m["scheme"] for m in mailhost.outbox()] == ["smtp-after-pop"]


def test_rcpt_fault_reaches_smtplib(mailhost):
    """A fault on RCPT makes the server answer 451 to the next RCPT."""
    mailhost.fault("RCPT", code=451, text="4.3.0 try again later")
    client = mailhost.smtp()
    client.ehlo("client.example.net")
    client.mail("carol@elsewhere.example")
    assert client.rcpt("alice@example.org")[0] == 451


def test_advancing_past_the_window_refuses_relay(mailhost):
    """Moving the server clock past the POP window ends the grant for that address."""
    pop_login(mailhost, "127.0.0.2")
    mailhost.clock.advance(601)
    client = mailhost.smtp(source="127.0.0.2")
    client.ehlo("client.example.net")
    client.mail("anyone@spam.example")
    assert client.rcpt("friend@elsewhere.example")[0] == 550


def test_isolation_first_leaves_mail(mailhost):
    """The first of two tests leaves a message, a relayed one and a POP3 login behind."""
    pop_login(mailhost, "127.0.0.2")
    client = mailhost.smtp(source="127.0.0.2")
    client.sendmail("anyone@spam.example", ["bob@example.org"], "Subject: left\\r\\n\\r\\nx\\r\\n")
    client.sendmail(
        "anyone@spam.example", ["friend@elsewhere.example"], "Subject: left\\r\\n\\r\\nx\\r\\n"
    )
    client.quit()
    assert mailhost.wait_for_message("bob@example.org", subject="left")


def test_isolation_second_starts_clean(mailhost):
    """The next test sees an empty mailbox, an empty outbox and no POP3 logins."""
    assert (mailhost.messages("bob@example.org"), mailhost.outbox(), mailhost.pop_logins()) == (
        [],
        [],
        [],
    )
'''
)

CUTOVER_CONFTEST = '''
import pytest


@pytest.fixture(scope="session")
def mailhost_serve_args():
    """Replay the 2013-09-02 cutover, starting one minute before it."""
    return ["--smtp-after-pop", "until:2013-09-02", "--now", "2013-09-01T23:59:00Z"]
'''

CUTOVER_SESSION = (
    POP_LOGIN
    + '''
from datetime import date


def test_clock_starts_at_now(mailhost):
    """--now from the overriding conftest sets the server clock."""
    assert mailhost.clock.now().date() == date(2013, 9, 1)


def test_relay_after_pop_before_cutover(mailhost):
    """Before the cutover SMTP-after-POP still lets 127.0.0.2 relay."""
    pop_login(mailhost, "127.0.0.2")
    client = mailhost.smtp(source="127.0.0.2")
    client.ehlo("client.example.net")
    client.mail("anyone@spam.example")
    assert client.rcpt("friend@elsewhere.example")[0] == 250


def test_relay_after_pop_refused_after_cutover(mailhost):
    """Advancing the clock past the cutover refuses the same relay."""
    pop_login(mailhost, "127.0.0.2")
    mailhost.clock.advance(120)
    client = mailhost.smtp(source="127.0.0.2")
    client.ehlo("client.example.net")
    client.mail("anyone@spam.example")
    assert client.rcpt("friend@elsewhere.example")[0] == 550
'''
)

INI_AND_ACCOUNTS_SESSION = '''
import pytest


@pytest.fixture
def mailhost_accounts():
    """Only carol, instead of the demo accounts."""
    return {"carol@example.net": "carol-secret"}


def test_ini_args_reach_the_server(mailhost):
    """The ini option mailhost_serve_args is passed to mailhost serve."""
    assert mailhost.schemes()["pop-window"] == 30


def test_overridden_accounts_can_log_in(mailhost):
    """An overridden mailhost_accounts is what the reset creates."""
    client = mailhost.pop3_ssl()
    client.user("carol@example.net")
    assert client.pass_("carol-secret").startswith(b"+OK")
    client.quit()
'''


def test_default_session(pytester: pytest.Pytester) -> None:
    """With default arguments the fixture delivers, relays, injects faults, moves time, resets."""
    pytester.makepyfile(test_default=DEFAULT_SESSION)
    result = pytester.runpytest_subprocess(*RUN_ARGS)
    result.stdout.fnmatch_lines(
        [
            "*test_local_message_is_found PASSED*",
            "*test_relay_after_pop_lands_in_outbox PASSED*",
            "*test_rcpt_fault_reaches_smtplib PASSED*",
            "*test_advancing_past_the_window_refuses_relay PASSED*",
            "*test_isolation_first_leaves_mail PASSED*",
            "*test_isolation_second_starts_clean PASSED*",
        ]
    )
    result.assert_outcomes(passed=6)


def test_conftest_overrides_serve_args(pytester: pytest.Pytester) -> None:
    """A conftest overriding mailhost_serve_args starts the server with those arguments."""
    pytester.makeconftest(CUTOVER_CONFTEST)
    pytester.makepyfile(test_cutover=CUTOVER_SESSION)
    result = pytester.runpytest_subprocess(*RUN_ARGS)
    result.stdout.fnmatch_lines(
        [
            "*test_clock_starts_at_now PASSED*",
            "*test_relay_after_pop_before_cutover PASSED*",
            "*test_relay_after_pop_refused_after_cutover PASSED*",
        ]
    )
    result.assert_outcomes(passed=3)


def test_ini_option_and_accounts_override(pytester: pytest.Pytester) -> None:
    """The ini option sets serve arguments and an overridden mailhost_accounts replaces the demo."""
    pytester.makeini("[pytest]\nmailhost_serve_args =\n    --pop-window 30s\n")
    pytester.makepyfile(test_ini=INI_AND_ACCOUNTS_SESSION)
    result = pytester.runpytest_subprocess(*RUN_ARGS)
    result.stdout.fnmatch_lines(
        ["*test_ini_args_reach_the_server PASSED*", "*test_overridden_accounts_can_log_in PASSED*"]
    )
    result.assert_outcomes(passed=2)


def test_start_failure_shows_server_stderr(pytester: pytest.Pytester) -> None:
    """A server that cannot start fails the test with its exit status and its stderr."""
    pytester.makeini("[pytest]\nmailhost_serve_args = --pop-window soon\n")
    pytester.makepyfile("def test_uses_mailhost(mailhost):\n    pass\n")
    result = pytester.runpytest_subprocess(*RUN_ARGS)
    result.stdout.fnmatch_lines(
        [
            "*MailhostStartError: mailhost serve exited with status 2*",
            "*Invalid value for*--pop-window*",
        ]
    )
    result.assert_outcomes(errors=1)
