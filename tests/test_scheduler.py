"""The learning schedule: machine facts, config checks, the persistent job store, skip reasons.

The schedule runs as it does in the product: APScheduler inside a real daemon, its jobs stored in
the daemon's SQLite. Intervals are a few seconds here; the full unattended loop (chat → mining →
training → promotion) is in test_schedule_loop.py.
"""

from __future__ import annotations

import pickle
import shutil
import sqlite3
import tempfile
import time
from collections.abc import Iterator
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pytest

from rlhi_local.client import Client
from rlhi_local.config import load_config
from rlhi_local.errors import ConfigError
from rlhi_local.scheduler import JOBS, available_memory_mb, in_window, on_battery
from tui.screens.training import describe_schedule
from tests.conftest import RunningDaemon, start_thread_daemon, stop_thread_daemon, wait_for


# -- facts about the machine ------------------------------------------------------------------

@pytest.mark.parametrize(("window", "hhmm", "inside"), [
    ("01:00-06:00", "03:30", True), ("01:00-06:00", "06:00", False), ("01:00-06:00", "00:59", False),
    ("22:00-06:00", "23:15", True), ("22:00-06:00", "05:59", True), ("22:00-06:00", "12:00", False),
    ("", "12:00", True),
])
def test_training_window(window: str, hhmm: str, inside: bool) -> None:
    hours, minutes = map(int, hhmm.split(":"))
    assert in_window(window, datetime(2026, 11, 29, hours, minutes)) is inside


def _supply(root: Path, name: str, **files: str) -> None:
    (root / name).mkdir(parents=True)
    for key, value in files.items():
        (root / name / key).write_text(value + "\n")


def test_battery_is_read_from_sysfs(tmp_path: Path) -> None:
    laptop = tmp_path / "laptop"
    _supply(laptop, "AC", type="Mains", online="0")
    _supply(laptop, "BAT0", type="Battery", status="Discharging")
    assert on_battery(laptop)
    plugged = tmp_path / "plugged"
    _supply(plugged, "AC", type="Mains", online="1")
    _supply(plugged, "BAT0", type="Battery", status="Charging")
    assert not on_battery(plugged)
    assert not on_battery(tmp_path / "desktop-without-sysfs")


def test_available_memory_is_read_from_meminfo(tmp_path: Path) -> None:
    meminfo = tmp_path / "meminfo"
    meminfo.write_text("MemTotal:       24000000 kB\nMemFree:  100 kB\nMemAvailable:    2048000 kB\n")
    assert available_memory_mb(meminfo) == pytest.approx(2000.0)
    real = available_memory_mb()
    assert real is not None and real > 100


# -- config ---------------------------------------------------------------------------------------

@pytest.mark.parametrize(("key", "value", "says"), [
    ("sampling_minutes", -5, "schedule.sampling_minutes"),
    ("sampling_k", 1, "at least 2"),
    ("training_window", "1am-6am", "HH:MM-HH:MM"),
    ("training_window", "25:00-06:00", "schedule.training_window"),
    ("misfire_grace_minutes", 0, "schedule.misfire_grace_minutes"),
])
def test_impossible_schedule_settings_are_refused_at_start(key: str, value: Any, says: str) -> None:
    with pytest.raises(ConfigError, match=says):
        load_config({"schedule": {key: value}}, environ={})


def test_the_schedule_is_configured_by_env_too() -> None:
    config = load_config(environ={"RLHI_SCHEDULE__SAMPLING_K": "6", "RLHI_SCHEDULE__TRAINING_WINDOW": ""})
    assert config.schedule.sampling_k == 6 and config.schedule.training_window == ""


# -- the schedule inside a daemon -------------------------------------------------------------------

QUICK = {"enabled": True, "detector_minutes": 0.05, "persona_minutes": 0.1, "reward_minutes": 0,
         "sampling_minutes": 0, "training_minutes": 0.05, "training_window": "", "train_idle_minutes": 0,
         "train_min_new_pairs": 3}


@pytest.fixture()
def home() -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="rhs", dir="/tmp"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


def _jobs(db: Path) -> dict[str, float | None]:
    with sqlite3.connect(db) as conn:
        return dict(conn.execute("SELECT id, next_run_time FROM schedule_jobs").fetchall())


def _set_next_run(db: Path, job: str, when: float) -> None:
    """What a daemon stopped for hours leaves: a stored next run time in the past."""
    with sqlite3.connect(db) as conn:
        (state,) = conn.execute("SELECT job_state FROM schedule_jobs WHERE id = ?", [job]).fetchone()
        data = pickle.loads(state)
        data["next_run_time"] = datetime.fromtimestamp(when, timezone.utc)
        conn.execute("UPDATE schedule_jobs SET next_run_time = ?, job_state = ? WHERE id = ?",
                     [when, pickle.dumps(data), job])


def _runs(db: Path, job: str) -> list[tuple[str, str]]:
    with sqlite3.connect(db) as conn:
        return conn.execute("SELECT status, detail FROM job_runs WHERE job = ? ORDER BY id", [job]).fetchall()


def test_jobs_run_and_report_last_and_next_run(home: Path) -> None:
    running = start_thread_daemon(home, {"schedule": QUICK, "learning": {"rewrite_idle_s": 0.5}})
    try:
        with Client(running.socket) as c:
            c.chat([{"role": "user", "content": "Say hi."}], max_tokens=8)
            assert wait_for(lambda: any(j["last"] for j in c.schedule()["jobs"] if j["name"] == "training"), 30, 0.2)
            schedule = c.schedule()
            assert schedule["enabled"] and not schedule["paused"]
            jobs = {j["name"]: j for j in schedule["jobs"]}
            assert set(jobs) == set(JOBS)
            assert jobs["reward"]["interval_s"] == 0 and jobs["sampling"]["interval_s"] == 0
            assert jobs["detector"]["next_run"] and jobs["training"]["next_run"]
            # Too few pairs: the reason is stated, with the setting to change.
            last = jobs["training"]["last"]
            assert last["status"] == "skipped" and "train_min_new_pairs=3" in last["detail"], last
            assert wait_for(lambda: _runs(running.db_path, "detector"), 20, 0.2)
            assert _runs(running.db_path, "detector")[0][0] == "ok"
            # The TUI's training screen shows the same document, one line per job.
            shown = describe_schedule(c.schedule()).splitlines()
            assert [line.split()[0] for line in shown] == list(JOBS)
            assert "reward    off" in shown and any("train_min_new_pairs=3" in line for line in shown)
            # Run a job by hand: same checks, same row.
            outcome = c.run_job("persona")
            assert outcome["job"] == "persona" and outcome["status"] == "ok"
        status = __import__("tests.conftest", fromlist=["rlhi_cmd"]).rlhi_cmd(
            "status", env={"RLHI_HOME": str(home)})
        assert status.returncode == 0, status.stderr
        assert "learning  schedule" in status.stdout and "training" in status.stdout
        assert "train_min_new_pairs=3" in status.stdout
    finally:
        stop_thread_daemon(running)


def test_the_schedule_survives_a_restart_and_missed_runs_are_coalesced(home: Path) -> None:
    flags = {"schedule": {**QUICK, "detector_minutes": 60, "persona_minutes": 60, "training_minutes": 60,
                          "misfire_grace_minutes": 10}}
    running = start_thread_daemon(home, flags)
    db = running.db_path
    stop_thread_daemon(running)
    before = _jobs(db)
    assert set(before) == {"detector", "persona", "training"} and all(before.values())

    # A restart keeps the stored times (it does not push them an interval further).
    running = start_thread_daemon(home, flags)
    stop_thread_daemon(running)
    assert _jobs(db) == before

    # While the daemon was down: `detector` missed 5 hourly runs, the last 2 minutes ago (within
    # the 10-minute grace time); `persona`'s last missed run was 30 minutes ago (past it);
    # `training` changed its interval.
    now = time.time()
    _set_next_run(db, "detector", now - 4 * 3600 - 120)
    _set_next_run(db, "persona", now - 3 * 3600 - 1800)
    flags["schedule"]["training_minutes"] = 30
    running = start_thread_daemon(home, flags)
    try:
        assert wait_for(lambda: _runs(db, "detector") and _runs(db, "persona"), 20, 0.2)
        time.sleep(1.0)
        assert [s for s, _ in _runs(db, "detector")] == ["ok"]  # once, not five times
        persona = _runs(db, "persona")
        assert [s for s, _ in persona] == ["missed"] and "not replayed" in persona[0][1]
        after = _jobs(db)
        assert after["detector"] > now and after["persona"] > now
        assert 29 * 60 < after["training"] - now <= 30 * 60 + 5  # re-added with the new interval
    finally:
        stop_thread_daemon(running)


def test_a_damaged_job_row_is_recreated_from_the_config(home: Path) -> None:
    running = start_thread_daemon(home, {"schedule": QUICK})
    db = running.db_path
    stop_thread_daemon(running)
    with sqlite3.connect(db) as conn:
        conn.execute("UPDATE schedule_jobs SET job_state = x'00ff00' WHERE id = 'training'")
    running = start_thread_daemon(home, {"schedule": QUICK})
    try:
        assert wait_for(lambda: _runs(db, "training"), 20, 0.2)
        assert "training" in _jobs(db)
    finally:
        stop_thread_daemon(running)


def test_training_waits_for_the_window_and_pauses_with_learning(home: Path) -> None:
    hour = datetime.now().hour
    closed = f"{(hour + 2) % 24:02d}:00-{(hour + 3) % 24:02d}:00"
    running = start_thread_daemon(home, {"schedule": {**QUICK, "training_window": closed, "training_minutes": 60}})
    try:
        with Client(running.socket) as c:
            outcome = c.run_job("training")
            assert outcome["status"] == "skipped" and f"outside the training window {closed}" in outcome["detail"]
    finally:
        stop_thread_daemon(running)
    running = start_thread_daemon(home, {"schedule": {**QUICK, "training_minutes": 60},
                                         "learning": {"mining": False}})
    try:
        with Client(running.socket) as c:
            assert c.schedule()["paused"]
            outcome = c.run_job("detector")
            assert outcome["status"] == "skipped" and "paused" in outcome["detail"]
    finally:
        stop_thread_daemon(running)


def test_a_job_cut_short_by_a_stop_is_marked_interrupted(home: Path) -> None:
    running = start_thread_daemon(home, {"schedule": {**QUICK, "training_minutes": 60}})
    db = running.db_path
    stop_thread_daemon(running)
    with sqlite3.connect(db) as conn:  # what a kill -9 mid-job leaves behind
        conn.execute("INSERT INTO job_runs (job, status, detail, started_at) VALUES "
                     "('sampling', 'running', '', '2026-01-01T00:00:00.000+00:00')")
    running = start_thread_daemon(home, {"schedule": {**QUICK, "training_minutes": 60}})
    try:
        assert _runs(db, "sampling") == [("interrupted", "the daemon stopped during this run")]
    finally:
        stop_thread_daemon(running)
