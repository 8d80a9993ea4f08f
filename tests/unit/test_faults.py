"""The fault registry: validation that names the bad field, and how rules are used up."""

from __future__ import annotations

import pytest

from mailhost.faults import FaultError, FaultRegistry


def rcpt_451(**overrides):
    return {"protocol": "smtp", "command": "RCPT", "action": "reply", "code": 451, **overrides}


@pytest.fixture
def faults() -> FaultRegistry:
    return FaultRegistry()


@pytest.mark.parametrize(
    ("spec", "field"),
    [
        (rcpt_451(protocol="imap"), "protocol"),
        (rcpt_451(protocol=None), "protocol"),
        (rcpt_451(command="RC PT"), "command"),
        (rcpt_451(command=""), "command"),
        (rcpt_451(command=7), "command"),
        (rcpt_451(action="explode"), "action"),
        (rcpt_451(code=250), "code"),
        (rcpt_451(code=None), "code"),
        (rcpt_451(code="451"), "code"),
        (rcpt_451(text="two\r\nlines"), "text"),
        (rcpt_451(text=5), "text"),
        (rcpt_451(delay_ms=-1), "delay_ms"),
        (rcpt_451(delay_ms=600_001), "delay_ms"),
        (rcpt_451(delay_ms=1.5), "delay_ms"),
        (rcpt_451(action="delay"), "delay_ms"),
        (rcpt_451(times=0), "times"),
        (rcpt_451(times="2"), "times"),
    ],
)
def test_a_bad_field_is_named(faults, spec, field):
    """Each unusable field is reported by name, so an API client knows what to fix."""
    with pytest.raises(FaultError) as raised:
        faults.add(spec)
    assert raised.value.field == field
    assert str(raised.value).startswith(f"{field}: ")
    assert faults.list() == []


def test_a_pop3_reply_needs_no_code(faults):
    """POP3 has no reply codes, so a POP3 reply fault is valid without one."""
    fault = faults.add({"protocol": "pop3", "command": "RETR", "action": "reply"})
    assert fault.code is None


def test_command_words_are_upper_cased(faults):
    """A rule given as "rcpt" matches the command however the client spelled it."""
    faults.add(rcpt_451(command="rcpt"))
    assert faults.take("smtp", "Rcpt") is not None


def test_times_count_down_and_the_rule_goes(faults):
    """A rule for two commands applies twice, then is removed."""
    fault = faults.add(rcpt_451(times=2))
    assert faults.take("smtp", "RCPT") == fault
    [left] = faults.list()
    assert left.times == 1
    assert faults.take("smtp", "RCPT").id == fault.id
    assert faults.list() == []
    assert faults.take("smtp", "RCPT") is None


def test_times_none_lasts_until_cleared(faults):
    """times=None applies to every matching command until the rule is cleared."""
    fault = faults.add(rcpt_451(times=None))
    for _ in range(50):
        assert faults.take("smtp", "RCPT") == fault
    assert faults.clear(fault.id)
    assert faults.take("smtp", "RCPT") is None


def test_star_matches_any_command(faults):
    """A "*" rule applies to whatever command comes next on its protocol."""
    faults.add(rcpt_451(command="*", times=3))
    assert [faults.take("smtp", word) is not None for word in ("EHLO", "MAIL", "QUIT")] == [
        True,
        True,
        True,
    ]


def test_other_commands_and_protocols_do_not_match(faults):
    """A rule for SMTP RCPT is not used up by MAIL, nor by anything on POP3."""
    faults.add(rcpt_451())
    assert faults.take("smtp", "MAIL") is None
    assert faults.take("pop3", "RCPT") is None
    assert len(faults.list()) == 1


def test_the_first_matching_rule_wins(faults):
    """Rules apply in the order added; a later one waits until the earlier is used up."""
    first = faults.add(rcpt_451(command="*"))
    second = faults.add(rcpt_451(code=550))
    assert faults.take("smtp", "RCPT") == first
    assert faults.take("smtp", "RCPT") == second


def test_clear_one_rule(faults):
    """clear(id) removes that rule only and says whether there was one."""
    first = faults.add(rcpt_451())
    second = faults.add(rcpt_451(command="MAIL"))
    assert faults.clear(first.id) is True
    assert faults.clear(first.id) is False
    assert faults.list() == [second]


def test_clear_all_rules(faults):
    """clear() with no id removes every rule."""
    faults.add(rcpt_451())
    faults.add(rcpt_451(command="MAIL"))
    assert faults.clear() is True
    assert faults.list() == []
    assert faults.take("smtp", "RCPT") is None


def test_ids_are_not_reused(faults):
    """A cleared rule's id is never given to a later rule, so a stale clear cannot hit it."""
    first = faults.add(rcpt_451())
    faults.clear()
    assert faults.add(rcpt_451()).id != first.id


def test_a_fault_is_json_ready(faults):
    """to_json gives every field, as the API reports rules."""
    fault = faults.add(rcpt_451(text="4.7.1 try later", times=None))
    assert fault.to_json() == {
        "id": fault.id,
        "protocol": "smtp",
        "command": "RCPT",
        "action": "reply",
        "code": 451,
        "text": "4.7.1 try later",
        "delay_ms": 0,
        "times": None,
    }
