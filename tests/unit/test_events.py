"""The event log (observe/events.py): its two forms, its levels, its destinations; no sockets."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from bascule.config.schema import LogConfig
from bascule.observe import events
from bascule.observe.events import EventLog

STAMP = r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z"


def test_text_lines_have_time_level_message(capsys: pytest.CaptureFixture[str]) -> None:
    log = EventLog(LogConfig())
    log.emit("warning", "health", "endpoint c/127.0.0.1:9 is down", endpoint="c/127.0.0.1:9")
    log.emit("info", "drain", "stopping")
    lines = capsys.readouterr().err.splitlines()
    assert re.fullmatch(rf"{STAMP} warning endpoint c/127\.0\.0\.1:9 is down", lines[0])
    assert re.fullmatch(rf"{STAMP} info    stopping", lines[1])


def test_json_lines_carry_the_fields(capsys: pytest.CaptureFixture[str]) -> None:
    log = EventLog(LogConfig(path="stdout", format="json"))
    log.emit("error", "worker", "worker 1 exited with -9; restarting", worker=1, code=-9)
    record = json.loads(capsys.readouterr().out)
    assert re.fullmatch(STAMP, record.pop("time"))
    assert record == {
        "level": "error", "event": "worker", "message": "worker 1 exited with -9; restarting",
        "worker": 1, "code": -9,
    }


def test_level_drops_less_severe_lines(tmp_path: Path) -> None:
    path = tmp_path / "events.log"
    log = EventLog(LogConfig(path=str(path), level="warning"))
    for level in ("debug", "info", "warning", "error"):
        log.emit(level, "test", f"a {level} line")
    log.close()
    assert [line.split(None, 2)[1:] for line in path.read_text().splitlines()] == [
        ["warning", "a warning line"], ["error", "a error line"],
    ]


def test_a_file_is_appended_to(tmp_path: Path) -> None:
    path = tmp_path / "events.log"
    path.write_text("an older line\n")
    log = EventLog(LogConfig(path=str(path)))
    log.emit("info", "test", "a new line")
    assert path.read_text().splitlines()[0] == "an older line"
    assert path.read_text().splitlines()[1].endswith(" info    a new line")  # flushed at once
    log.close()


def test_a_closed_destination_does_not_raise(tmp_path: Path) -> None:
    log = EventLog(LogConfig(path=str(tmp_path / "e.log")))
    log.close()
    log.emit("error", "test", "lost, but the caller goes on")


def test_configure_swaps_the_process_log(tmp_path: Path) -> None:
    path = tmp_path / "e.log"
    try:
        events.configure(LogConfig(path=str(path), format="json"))
        events.warning("health", "down", endpoint="c/x:1")
        assert events.current().where == str(path)
    finally:
        events.configure(LogConfig())
    assert json.loads(path.read_text())["endpoint"] == "c/x:1"
