"""
A worker's log events on their way to the parent (oidcproxy.workerlog):
what is written, when, and that the parent reads back the same event.
"""

from __future__ import annotations

import io
from typing import Any, Dict, List

from twisted.internet.task import Clock
from twisted.logger import LogLevel, formatEvent
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from oidcproxy.workerlog import WorkerLogWriter, read_event


class Out(io.StringIO):
    """A worker's standard output that counts its writes."""

    def __init__(self) -> None:
        super().__init__()
        self.writes: List[str] = []

    def write(self, text: str) -> int:
        self.writes.append(text)
        return super().write(text)


class RunningClock(Clock):
    running = True


def access_event(**extra: Any) -> Dict[str, Any]:
    event = {
        "access_line": '127.0.0.1 "GET /x" 200 5 0.4ms route=r user=alice auth=session',
        "user": "alice", "status": 200, "bytes": 5, "duration_ms": 0.4, "gone": None, "h2": False,
        "log_logger": object(), "log_source": object(), "log_level": LogLevel.info,
        "log_namespace": "oidcproxy.access", "log_format": "{access_line}", "log_time": 1234.5,
    }
    event.update(extra)
    return event


def lines(out: Out) -> List[str]:
    text = out.getvalue()
    assert text.endswith("\n")
    return [line.lstrip("\x1e") for line in text[:-1].split("\n")]


class WorkerLogTests(SynchronousTestCase):
    def write(self, *events: Dict[str, Any]) -> List[Dict[str, Any]]:
        out, clock = Out(), RunningClock()
        writer = WorkerLogWriter(out, clock)
        for event in events:
            writer(event)
        clock.advance(0)
        read = [read_event(line) for line in lines(out)]
        assert all(e is not None for e in read)
        return read  # type: ignore[return-value]

    def test_plain_event_compact_and_same(self):
        """An event of plain fields travels as a compact array and reads back the same."""
        event = access_event()
        out, clock = Out(), RunningClock()
        WorkerLogWriter(out, clock)(event)
        clock.advance(0)
        [line] = lines(out)
        self.assertTrue(line.startswith("["), line)
        back = read_event(line)
        assert back is not None
        for key in ("access_line", "user", "status", "bytes", "duration_ms", "gone", "h2",
                    "log_level", "log_namespace", "log_format", "log_time"):
            self.assertEqual(back[key], event[key], key)
            self.assertIs(type(back[key]), type(event[key]), key)
        self.assertEqual(formatEvent(back), formatEvent(event))

    def test_other_events_in_twisteds_form(self):
        """
        A failure, a field that is an object, or a format reading the
        event's own keys: Twisted's JSON form, which the parent still reads.
        """
        failure = Failure(ValueError("no"))
        cases = [
            access_event(log_failure=failure, log_format="it broke"),
            access_event(level=LogLevel.warn, log_format="at {level.name}"),
            access_event(log_format="from {log_namespace}"),
        ]
        for event in cases:
            out, clock = Out(), RunningClock()
            WorkerLogWriter(out, clock)(event)
            clock.advance(0)
            [line] = lines(out)
            self.assertTrue(line.startswith("{"), line)
            back = read_event(line)
            assert back is not None
            self.assertEqual(formatEvent(back), formatEvent(event))

    def test_one_write_per_reactor_turn(self):
        """The events of one turn leave in one write, after the turn."""
        out, clock = Out(), RunningClock()
        writer = WorkerLogWriter(out, clock)
        for n in range(3):
            writer(access_event(status=200 + n))
        self.assertEqual(out.writes, [])
        self.assertEqual(len(clock.getDelayedCalls()), 1)
        clock.advance(0)
        self.assertEqual(len(out.writes), 1)
        self.assertEqual([e["status"] for e in map(read_event, lines(out)) if e], [200, 201, 202])

    def test_written_at_once_when_the_reactor_does_not_run(self):
        """Starting up (a config error before the reactor runs) and after it stopped: no wait."""
        out, clock = Out(), Clock()
        clock.running = False  # type: ignore[attr-defined]
        WorkerLogWriter(out, clock)(access_event())
        self.assertEqual(len(out.writes), 1)
        self.assertEqual(clock.getDelayedCalls(), [])

    def test_written_at_once_when_much_waits(self):
        """A turn that logs a lot does not keep it all in memory until it ends."""
        out, clock = Out(), RunningClock()
        writer = WorkerLogWriter(out, clock)
        big = "x" * 10_000
        for _ in range(8):  # the seventh makes 64 KiB
            writer(access_event(access_line=big))
        self.assertEqual(len(out.writes), 1)
        self.assertEqual(len(lines(out)), 7)
        clock.advance(0)
        self.assertEqual(len(out.writes), 2)
        self.assertEqual(len(lines(out)), 8)

    def test_flush_writes_what_waits(self):
        """The worker flushes once its reactor has stopped: nothing stays behind."""
        out, clock = Out(), RunningClock()
        writer = WorkerLogWriter(out, clock)
        writer(access_event())
        writer.flush()
        self.assertEqual(len(lines(out)), 1)
        clock.advance(0)
        self.assertEqual(len(out.writes), 1)

    def test_not_an_event(self):
        """What a worker printed outside the log is not taken for an event."""
        for text in ("Traceback (most recent call last):", "[1, 2]", '["a", "nolevel", "x", 1, {}]',
                     '["a", "info", "x", 1, [1]]', "[", "{", '{"a": 1'):
            self.assertIsNone(read_event(text), text)
