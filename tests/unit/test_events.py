"""EventLog: numbered events in a bounded memory log and an append-only JSON-lines file."""

import json
from datetime import UTC, datetime
from pathlib import Path

import pytest

from mailhost.events import POP_LOGIN, SMTP_DECISION, EventLog, rotated

AT = datetime(2013, 9, 1, 23, 59, tzinfo=UTC)


@pytest.fixture
def log():
    events = EventLog()
    yield events
    events.close()


def test_emit_numbers_events_from_one(log: EventLog):
    """Each event gets the next sequence number, starting at 1."""
    seqs = [log.emit(POP_LOGIN, AT)["seq"] for _ in range(3)]
    assert seqs == [1, 2, 3]


def test_an_event_carries_kind_instant_and_fields(log: EventLog):
    """An event is a plain dict with seq, ISO instant, kind and the given fields."""
    event = log.emit(POP_LOGIN, AT, ip="127.0.0.2", account="alice@example.org")
    assert event == {
        "seq": 1,
        "at": "2013-09-01T23:59:00+00:00",
        "kind": POP_LOGIN,
        "ip": "127.0.0.2",
        "account": "alice@example.org",
    }


def test_memory_is_bounded():
    """Past max_events the oldest events are forgotten."""
    log = EventLog(max_events=3)
    for _ in range(5):
        log.emit(POP_LOGIN, AT)
    assert [e["seq"] for e in log.recent()] == [3, 4, 5]


def test_sequence_numbers_keep_counting_after_eviction():
    """Forgetting old events never reuses their numbers."""
    log = EventLog(max_events=1)
    log.emit(POP_LOGIN, AT)
    log.emit(POP_LOGIN, AT)
    assert log.emit(POP_LOGIN, AT)["seq"] == 3


def test_recent_filters_by_kind(log: EventLog):
    """recent(kind) returns only events of that kind, in order."""
    log.emit(POP_LOGIN, AT)
    log.emit(SMTP_DECISION, AT)
    log.emit(POP_LOGIN, AT)
    assert [e["seq"] for e in log.recent(POP_LOGIN)] == [1, 3]


def test_recent_after_returns_only_later_events(log: EventLog):
    """recent(after=n) returns the events numbered above n."""
    for _ in range(4):
        log.emit(POP_LOGIN, AT)
    assert [e["seq"] for e in log.recent(after=2)] == [3, 4]


def test_recent_combines_kind_and_after(log: EventLog):
    """Kind and sequence filters apply together."""
    log.emit(POP_LOGIN, AT)
    log.emit(SMTP_DECISION, AT)
    log.emit(POP_LOGIN, AT)
    log.emit(SMTP_DECISION, AT)
    assert [e["seq"] for e in log.recent(SMTP_DECISION, after=2)] == [4]


def test_recent_on_an_empty_log_is_empty(log: EventLog):
    """A fresh log has no events."""
    assert log.recent() == []


def test_events_are_written_as_parseable_json_lines(tmp_path: Path):
    """Every emitted event is one JSON object per line, flushed at once."""
    path = tmp_path / "events.jsonl"
    log = EventLog(path)
    try:
        first = log.emit(POP_LOGIN, AT, ip="127.0.0.2")
        second = log.emit(SMTP_DECISION, AT, allowed=False, code=550)
        lines = path.read_text(encoding="utf-8").splitlines()
        assert [json.loads(line) for line in lines] == [first, second]
    finally:
        log.close()


def test_the_file_is_appended_to_not_truncated(tmp_path: Path):
    """A new EventLog on an existing file keeps the earlier lines."""
    path = tmp_path / "events.jsonl"
    first = EventLog(path)
    first.emit(POP_LOGIN, AT, run=1)
    first.close()
    second = EventLog(path)
    second.emit(POP_LOGIN, AT, run=2)
    second.close()
    runs = [json.loads(line)["run"] for line in path.read_text(encoding="utf-8").splitlines()]
    assert runs == [1, 2]


def test_the_files_directory_is_created(tmp_path: Path):
    """The event file's parent directory is made if missing."""
    path = tmp_path / "data" / "events.jsonl"
    log = EventLog(path)
    log.emit(POP_LOGIN, AT)
    log.close()
    assert path.is_file()


def test_close_is_idempotent_and_memory_stays_readable(tmp_path: Path):
    """Closing twice is harmless and recent() still answers after close."""
    log = EventLog(tmp_path / "events.jsonl")
    log.emit(POP_LOGIN, AT)
    log.close()
    log.close()
    assert [e["seq"] for e in log.recent()] == [1]


def test_numbering_continues_after_a_restart(tmp_path: Path):
    """A new log on an existing file goes on from the file's last sequence number."""
    path = tmp_path / "events.jsonl"
    first = EventLog(path)
    first.emit(POP_LOGIN, datetime(2013, 9, 1, tzinfo=UTC))
    first.emit(POP_LOGIN, datetime(2013, 9, 1, tzinfo=UTC))
    first.close()
    second = EventLog(path)
    assert second.emit(SMTP_DECISION, datetime(2013, 9, 1, tzinfo=UTC))["seq"] == 3
    second.close()
    seqs = [json.loads(line)["seq"] for line in path.read_text().splitlines()]
    assert seqs == [1, 2, 3]


def test_a_full_file_is_rotated_once_and_numbering_goes_on(tmp_path: Path):
    """Past max_file_bytes the file becomes events.jsonl.1 (the one before is replaced);
    together the two hold the newest events in order, and a restart numbers on from them."""
    path = tmp_path / "events.jsonl"
    log = EventLog(path, max_file_bytes=1000)
    for _ in range(60):
        log.emit(POP_LOGIN, AT, account="alice@example.org")
    log.close()
    files = [f for f in (rotated(path), path) if f.exists()]
    assert files[0] == rotated(path)
    assert all(f.stat().st_size < 1000 + 200 for f in files), "one event past the bound at most"
    kept = [json.loads(line)["seq"] for f in files for line in f.read_text().splitlines()]
    assert kept == list(range(kept[0], 61)) and kept[0] > 1
    path.unlink(missing_ok=True)
    restarted = EventLog(path, max_file_bytes=1000)
    assert restarted.emit(POP_LOGIN, AT)["seq"] == 61
    restarted.close()


def test_a_rotation_that_fails_is_reported_and_loses_no_event(tmp_path: Path, capsys):
    """events.jsonl.1 in the way (here a directory): the log starts, says it cannot rotate,
    and keeps appending to events.jsonl."""
    path = tmp_path / "events.jsonl"
    rotated(path).mkdir()
    log = EventLog(path, max_file_bytes=100)
    for _ in range(3):
        log.emit(POP_LOGIN, AT)
    log.close()
    assert [json.loads(line)["seq"] for line in path.read_text().splitlines()] == [1, 2, 3]
    assert "cannot rotate" in capsys.readouterr().err


def test_subscribers_see_every_new_event(log: EventLog):
    """A subscriber is called with each event emitted after it subscribed."""
    seen: list[dict] = []
    log.subscribe(seen.append)
    event = log.emit(POP_LOGIN, datetime(2013, 9, 1, tzinfo=UTC), ip="127.0.0.2")
    assert seen == [event]


def test_with_a_scheduler_emit_only_queues_and_one_job_writes_a_batch(tmp_path: Path):
    """Events emitted while a write job is pending go out together, in order, in one job."""
    path = tmp_path / "events.jsonl"
    jobs: list = []
    log = EventLog(path, schedule_writes=jobs.append)
    batches: list[list[int]] = []
    log.add_writer(lambda batch: batches.append([e["seq"] for e in batch]))
    for n in range(5):
        log.emit(POP_LOGIN, AT, n=n)
    assert len(jobs) == 1
    assert not path.exists()
    assert [e["seq"] for e in log.recent()] == [1, 2, 3, 4, 5]
    jobs.pop()()
    assert [json.loads(line)["n"] for line in path.read_text().splitlines()] == [0, 1, 2, 3, 4]
    assert batches == [[1, 2, 3, 4, 5]]
    log.emit(POP_LOGIN, AT, n=5)
    assert len(jobs) == 1, "a new job once the last one has finished"
    jobs.pop()()
    assert batches == [[1, 2, 3, 4, 5], [6]]


def test_close_writes_what_is_still_queued(tmp_path: Path):
    """Shutdown loses no event even when the scheduled job never ran."""
    path = tmp_path / "events.jsonl"
    log = EventLog(path, schedule_writes=lambda job: None)
    log.emit(POP_LOGIN, AT, ip="127.0.0.2")
    log.emit(SMTP_DECISION, AT, allowed=True)
    log.close()
    assert [json.loads(line)["seq"] for line in path.read_text().splitlines()] == [1, 2]
    log.emit(POP_LOGIN, AT)
    assert path.read_text().count("\n") == 2, "nothing is appended after close"


def test_a_failing_file_does_not_stop_the_writers(tmp_path: Path, capsys):
    """An unwritable event file is reported on stderr; the console writer still gets events."""
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("")
    log = EventLog(tmp_path / "events.jsonl")
    log._path = blocker / "events.jsonl"
    seen: list[int] = []
    log.add_writer(lambda batch: seen.extend(e["seq"] for e in batch))
    log.emit(POP_LOGIN, AT)
    assert seen == [1]
    assert "cannot append" in capsys.readouterr().err


def test_events_emitted_from_many_threads_are_all_written_once(tmp_path: Path):
    """Writes run on pool threads while emits go on; every event lands exactly once, in order."""
    from concurrent.futures import ThreadPoolExecutor

    path = tmp_path / "events.jsonl"
    with ThreadPoolExecutor(max_workers=4) as pool:
        log = EventLog(path, schedule_writes=pool.submit)
        for n in range(2000):
            log.emit(POP_LOGIN, AT, n=n)
    log.close()
    assert [json.loads(line)["n"] for line in path.read_text().splitlines()] == list(range(2000))


def test_after_close_events_reach_the_writers_at_once(tmp_path: Path):
    """A write job the stopped pool never runs does not leave later events queued for good."""
    jobs: list = []
    log = EventLog(tmp_path / "events.jsonl", schedule_writes=jobs.append)
    seen: list[int] = []
    log.add_writer(lambda batch: seen.extend(e["seq"] for e in batch))
    log.emit(POP_LOGIN, AT)
    log.close()
    log.emit(POP_LOGIN, AT)
    assert seen == [1, 2]
    assert len(jobs) == 1, "the job scheduled before close; none after"
