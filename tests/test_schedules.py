"""Schedules against the real engine: each tick fires once, whoever runs the schedulers.

Two schedulers over several ticks of a 1 s interval write each tick once (the
messages are counted by their keys); a scheduler SIGKILLed mid-tick and
restarted does not double that tick; each catch-up policy does after an
outage what mopq.schedules documents (the outage is a clock moved forward);
cron with a time zone ticks right across daylight-saving changes; YAML files,
the API and the command with the audit log, and the Schedules page in a browser.
"""

from __future__ import annotations

import base64
import datetime as dt
import json
import re
import signal
import subprocess
import sys
import threading
import time
import zoneinfo
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mopq import InvalidInput, schema
from mopq.cli import main as cli_main
from mopq.dashboard import create_app
from mopq.schedules import (
    ALREADY_WRITTEN,
    CRON_PATTERN,
    MAX_CRON_LENGTH,
    WRITTEN,
    Schedule,
    Scheduler,
    Timing,
    define,
    load_file,
    pause,
    resume,
    run_now,
    tick_key,
)
from tests.browsers import needs_chromium
from tests.helpers import wait_until
from tests.live_server import live_dashboard

UTC = dt.UTC
ROOT = Path(__file__).resolve().parent.parent


def at(*parts: int) -> dt.datetime:
    return dt.datetime(*parts, tzinfo=UTC)


def keys_written(db, queue: str) -> list[str]:
    """The write_once keys of every message of ``queue``, waiting or finished."""
    found = [m["dedupe_key"] for m in db[schema.MESSAGES].find({"queue": queue},
                                                                {"dedupe_key": 1})]
    found += [m["dedupe_key"] for m in db[schema.HISTORY].find({"queue": queue},
                                                               {"dedupe_key": 1})]
    return sorted(found)


def tick_of(key: str) -> dt.datetime:
    """The tick a key names: schedule:<name>:<YYYY-MM-DDTHH:MM:SSZ>."""
    stamp = re.fullmatch(r"schedule:[^:]+:(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ)", key).group(1)
    return dt.datetime.strptime(stamp, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)


def assert_each_tick_once(db, queue: str, every: int = 1) -> list[dt.datetime]:
    """No key written twice, and no tick missing between the first and the last."""
    keys = keys_written(db, queue)
    assert len(keys) == len(set(keys)), [k for k in keys if keys.count(k) > 1]
    ticks = sorted(tick_of(key) for key in keys)
    expected = [ticks[0] + dt.timedelta(seconds=every * n) for n in range(len(ticks))]
    assert ticks == expected, "a tick is missing"
    return ticks


def stored(db, name: str) -> dict:
    return db[schema.SCHEDULES].find_one({"_id": name})


# -- each tick once ---------------------------------------------------------------------------

def test_two_schedulers_fire_each_tick_once(db):
    ping = Schedule("ping", "pings", {"n": 1}, every=1, catch_up="all")
    first = Scheduler([ping], db=db, poll_interval=0.2).start()
    second = Scheduler([ping], db=db, poll_interval=0.2).start()
    try:
        wait_until(lambda: len(keys_written(db, "pings")) >= 6, timeout=20,
                   message="six ticks")
    finally:
        first.stop()
        second.stop()
    assert not first.running and not second.running
    ticks = assert_each_tick_once(db, "pings")
    document = stored(db, "ping")
    assert document["fired"] == len(ticks) and document["firing"] is None
    assert document["last_run"] == ticks[-1] and document["last_outcome"] == WRITTEN
    assert str(document["last_message"]) in {
        str(m["_id"]) for m in db[schema.MESSAGES].find({"queue": "pings"})}
    assert db[schema.MESSAGES].find_one({"dedupe_key": tick_key("ping", ticks[0])})["body"] \
        == {"n": 1}
    both = first.fired + second.fired
    assert sorted(f.tick for f in both if f.outcome == WRITTEN) == ticks


KILLED_MID_TICK = """
import sys, time
from mopq import cli, schedules

original = schedules.Scheduler._write

def write_then_hang(self, document, tick):
    if "{when}" == "before":
        print("CLAIMED", schedules.tick_key(document["_id"], tick), flush=True)
        time.sleep(3600)
    fired = original(self, document, tick)
    print("WROTE", schedules.tick_key(document["_id"], tick), flush=True)
    time.sleep(3600)

schedules.Scheduler._write = write_then_hang
sys.exit(cli.main(["schedule", "--lease-seconds", "1", "--poll-interval", "0.2"]))
"""


@pytest.mark.parametrize("when", ["before", "after"])
def test_a_scheduler_killed_mid_tick_and_restarted_does_not_double_it(db, reap, when):
    """Killed after claiming a tick, before (or after) writing its message, then restarted."""
    define(db, Schedule("tick", "ticks", {}, every=1, catch_up="all"))
    process = subprocess.Popen([sys.executable, "-c", KILLED_MID_TICK.format(when=when)],
                               stdout=subprocess.PIPE, text=True, cwd=ROOT)
    reap.append(process)
    line = ""
    while not line.startswith(("CLAIMED", "WROTE")):
        line = process.stdout.readline()
        assert line or process.poll() is None, "the scheduler exited"
    key = line.split()[1]
    process.send_signal(signal.SIGKILL)
    process.wait(10)
    firing = stored(db, "tick")["firing"]
    assert firing is not None and tick_key("tick", firing["tick"]) == key
    assert keys_written(db, "ticks") == ([key] if when == "after" else [])

    restarted = Scheduler(db=db, poll_interval=0.2).start()   # the claim lapses after 1 s
    try:
        wait_until(lambda: any(tick_key("tick", f.tick) == key for f in restarted.fired),
                   timeout=15, message="the restarted scheduler to finish the tick")
        wait_until(lambda: len(keys_written(db, "ticks")) >= 4, timeout=15,
                   message="more ticks")
    finally:
        restarted.stop()
    finished = next(f for f in restarted.fired if tick_key("tick", f.tick) == key)
    assert finished.outcome == (ALREADY_WRITTEN if when == "after" else WRITTEN)
    assert keys_written(db, "ticks").count(key) == 1
    assert_each_tick_once(db, "ticks")


def test_schedulers_killed_at_random_moments_never_double_a_tick(db, reap):
    """`mopq schedule` SIGKILLed at another moment of a tick, three times, restarted each time."""
    define(db, Schedule("beat", "beats", {}, every=1, catch_up="all"))
    command = [sys.executable, "-m", "mopq", "schedule", "--lease-seconds", "1",
               "--poll-interval", "0.2"]
    for offset in (0.05, 0.45, 0.85):
        fired = len(keys_written(db, "beats"))
        process = subprocess.Popen(command, stdout=subprocess.DEVNULL,
                                   stderr=subprocess.DEVNULL, cwd=ROOT)
        reap.append(process)
        wait_until(lambda: len(keys_written(db, "beats")) > fired, timeout=30,  # noqa: B023
                   message="the scheduler to fire a tick")
        time.sleep(offset)   # not a wait: where in the next tick the kill falls
        process.send_signal(signal.SIGKILL)
        process.wait(10)
    restarted = dt.datetime.now(UTC)
    last = Scheduler(db=db, poll_interval=0.2).start()
    try:   # catch_up all: every tick missed while none ran is written, then one after
        wait_until(lambda: stored(db, "beat")["firing"] is None
                   and max(map(tick_of, keys_written(db, "beats"))) >= restarted,
                   timeout=15, message="a tick after the restart, every claim finished")
    finally:
        last.stop()
    ticks = assert_each_tick_once(db, "beats")
    assert len(ticks) >= 4


def test_a_lapsed_claim_is_taken_over_by_one_scheduler_only(db):
    """Schedulers that read the same lapsed claim race for it: one wins, the first is out."""
    clock = Clock(at(2030, 1, 1, 0, 0, 30))
    define(db, Schedule("race", "races", {}, every=60), clock.now)
    dead = Scheduler(db=db, clock=clock, lease_seconds=5)
    clock.now = at(2030, 1, 1, 0, 1, 1)
    document = stored(db, "race")
    stale = db[schema.SCHEDULES].find_one_and_update(   # dead's claim, as if it then died
        {"_id": "race"}, {"$set": {"next_run": at(2030, 1, 1, 0, 2),
                                   "firing": dead._claim(document["next_run"], clock.now)}},
        return_document=True)
    clock.now = at(2030, 1, 1, 0, 1, 7)                 # its lease has passed
    first, second = (Scheduler(db=db, clock=clock) for _ in range(2))
    taken = first._take_over(stale, stale["firing"], clock.now)
    assert taken is not None and taken["firing"]["by"] == first.id
    assert taken["firing"]["token"] != stale["firing"]["token"]
    assert second._take_over(stale, stale["firing"], clock.now) is None
    assert dead._finish(stale, clock.now).outcome == WRITTEN    # it was only stalled
    assert stored(db, "race")["firing"]["by"] == first.id       # its outcome is not recorded
    assert first._finish(taken, clock.now).outcome == ALREADY_WRITTEN
    document = stored(db, "race")
    assert document["firing"] is None and document["last_by"] == first.id
    assert keys_written(db, "races") == [tick_key("race", at(2030, 1, 1, 0, 1))]


def test_a_schedule_that_cannot_be_read_does_not_stop_the_others(db, caplog):
    clock = Clock(at(2030, 1, 1, 0, 0, 30))
    for name in ("broken", "fine"):
        define(db, Schedule(name, "q", {}, cron="* * * * *"), clock.now)
    db[schema.SCHEDULES].update_one({"_id": "broken"}, {"$set": {"timezone": "Mars/Olympus"}})
    clock.now = at(2030, 1, 1, 0, 1, 1)
    Scheduler(db=db, clock=clock).run_once()
    assert keys_written(db, "q") == [tick_key("fine", at(2030, 1, 1, 0, 1))]
    assert "mopq schedule broken cannot be fired" in caplog.text
    assert "define it again" in caplog.text


# -- catch-up after an outage -----------------------------------------------------------------

class Clock:
    def __init__(self, now: dt.datetime) -> None:
        self.now = now

    def __call__(self) -> dt.datetime:
        return self.now


def outage(db, catch_up: str, **options) -> tuple[Scheduler, Clock]:
    """A minute schedule defined at 00:00:30, its scheduler down until 00:11:30 (11 ticks)."""
    clock = Clock(at(2030, 1, 1, 0, 0, 30))
    scheduler = Scheduler([Schedule("report", "reports", {"r": 1}, every=60, catch_up=catch_up,
                                    **options)], db=db, clock=clock)
    scheduler.define_all()
    assert stored(db, "report")["next_run"] == at(2030, 1, 1, 0, 1)
    clock.now = at(2030, 1, 1, 0, 11, 30)
    return scheduler, clock


def minutes_fired(db) -> list[int]:
    return [tick_of(key).minute for key in keys_written(db, "reports")]


def test_catch_up_latest_fires_the_most_recent_missed_tick_once(db):
    scheduler, clock = outage(db, "latest")
    assert scheduler.run_once() == at(2030, 1, 1, 0, 12)
    assert minutes_fired(db) == [11]
    document = stored(db, "report")
    assert document["last_run"] == at(2030, 1, 1, 0, 11) and document["skipped"] == 10
    assert document["last_skipped"]["first"] == at(2030, 1, 1, 0, 1)
    assert document["last_skipped"]["last"] == at(2030, 1, 1, 0, 10)
    assert document["next_run"] == at(2030, 1, 1, 0, 12)
    scheduler.run_once()                                  # nothing more is due
    clock.now = at(2030, 1, 1, 0, 12, 0, 300_000)
    scheduler.run_once()                                  # on time again
    assert minutes_fired(db) == [11, 12] and stored(db, "report")["skipped"] == 10


def test_catch_up_skip_fires_no_missed_tick(db):
    scheduler, clock = outage(db, "skip", grace_seconds=10)
    scheduler.run_once()
    assert minutes_fired(db) == []
    document = stored(db, "report")
    assert document["skipped"] == 11 and document.get("last_run") is None
    assert document["next_run"] == at(2030, 1, 1, 0, 12)
    clock.now = at(2030, 1, 1, 0, 12, 5)                  # 5 s late: within the grace
    scheduler.run_once()
    assert minutes_fired(db) == [12]


def test_catch_up_skip_fires_the_last_tick_within_its_grace(db):
    scheduler, _ = outage(db, "skip")                     # 30 s late, grace 60 s
    scheduler.run_once()
    assert minutes_fired(db) == [11] and stored(db, "report")["skipped"] == 10


def test_catch_up_all_fires_every_missed_tick_up_to_the_cap(db):
    scheduler, _ = outage(db, "all", max_catch_up=5)
    scheduler.run_once()
    assert minutes_fired(db) == [7, 8, 9, 10, 11]
    document = stored(db, "report")
    assert document["skipped"] == 6 and document["fired"] == 5
    assert document["next_run"] == at(2030, 1, 1, 0, 12)
    order = [f.tick.minute for f in scheduler.fired]
    assert order == [7, 8, 9, 10, 11], "oldest first"


def test_catch_up_all_within_the_cap_fires_them_all(db):
    scheduler, _ = outage(db, "all")
    scheduler.run_once()
    assert minutes_fired(db) == list(range(1, 12)) and stored(db, "report")["skipped"] == 0


def test_a_restart_with_the_same_definition_keeps_the_next_run_and_a_pause(db):
    scheduler, clock = outage(db, "latest")
    pause(db, "report", clock.now)
    again = Scheduler([Schedule("report", "reports", {"r": 2}, every=60)], db=db, clock=clock)
    again.define_all()                                    # the same timing: next run kept
    document = stored(db, "report")
    assert document["next_run"] == at(2030, 1, 1, 0, 1) and document["paused"] is True
    assert document["body"] == {"r": 2}
    again.run_once()
    assert minutes_fired(db) == []                        # paused: nothing fires
    assert resume(db, "report", clock.now) is True
    assert stored(db, "report")["next_run"] == at(2030, 1, 1, 0, 12)  # paused ticks dropped
    define(db, Schedule("report", "reports", {}, every=300), clock.now)  # a new timing
    assert stored(db, "report")["next_run"] == at(2030, 1, 1, 0, 15)


def test_run_now_writes_at_once_even_when_paused(db):
    define(db, Schedule("adhoc", "reports", {"x": 1}, every=3600))
    pause(db, "adhoc")
    fired = [run_now(db, "adhoc"), run_now(db, "adhoc")]
    assert [f.outcome for f in fired] == [WRITTEN, WRITTEN]
    assert fired[0].message_id != fired[1].message_id
    document = stored(db, "adhoc")
    assert document["last_trigger"] == "manual" and document["last_message"] == \
        fired[1].message_id and document["paused"] is True and document["fired"] == 2


def test_a_tick_that_cannot_be_written_is_recorded_as_an_error(db):
    define(db, Schedule("broken", "reports", {}, every=60), at(2030, 1, 1))
    db[schema.SCHEDULES].update_one({"_id": "broken"}, {"$set": {"queue": "bad/name"}})
    scheduler = Scheduler(db=db, clock=Clock(at(2030, 1, 1, 0, 1, 1)))
    scheduler.run_once()
    document = stored(db, "broken")
    assert document["last_outcome"] == "error" and "queue" in document["last_error"].lower()
    assert document["firing"] is None and document["next_run"] == at(2030, 1, 1, 0, 2)


# -- timing: cron in a time zone --------------------------------------------------------------

def test_cron_in_a_time_zone_across_daylight_saving_changes():
    daily = Timing(cron="30 2 * * *", timezone="Europe/Berlin")
    # Spring: 02:30 does not exist on 31 March 2024; it runs at 03:00 CEST (01:00 UTC).
    first = daily.after(at(2024, 3, 30, 12))
    assert first == at(2024, 3, 31, 1, 0)
    assert daily.after(first) == at(2024, 4, 1, 0, 30)
    # Autumn: 02:30 happens twice on 27 October 2024; it runs once, the first time.
    first = daily.after(at(2024, 10, 26, 12))
    assert first == at(2024, 10, 27, 0, 30)
    assert daily.after(first) == at(2024, 10, 28, 1, 30)
    assert daily.at_or_before(at(2024, 10, 27, 1, 15)) == at(2024, 10, 27, 0, 30)
    # Hourly: both 02:00s of the autumn night are ticks (an hour apart in UTC).
    hourly = Timing(cron="0 * * * *", timezone="Europe/Berlin")
    ticks, tick = [], at(2024, 10, 26, 23, 30)
    for _ in range(4):
        tick = hourly.after(tick)
        ticks.append(tick.hour)
    assert ticks == [0, 1, 2, 3]
    weekdays = Timing(cron="0 9 * * MON-FRI", timezone="America/New_York")
    assert weekdays.after(at(2024, 3, 8, 15)) == at(2024, 3, 11, 13)   # EDT from the 10th


@pytest.mark.parametrize("cron, zone, start", [
    ("30 2 * * *", "Europe/Berlin", at(2024, 10, 26)),
    ("*/20 1-3 * * *", "Europe/Berlin", at(2024, 10, 26, 20)),
    ("15 2 * * *", "America/New_York", at(2024, 3, 9)),
    ("0 */2 * * *", "Australia/Adelaide", at(2024, 4, 6)),
    ("45 * * * 0", "Europe/London", at(2024, 3, 30)),
])
def test_looking_back_agrees_with_looking_forward(cron, zone, start):
    timing = Timing(cron=cron, timezone=zone)
    ticks = [timing.after(start)]
    while ticks[-1] < start + dt.timedelta(days=2):
        ticks.append(timing.after(ticks[-1]))
    assert ticks == sorted(set(ticks))
    moment = ticks[0]
    while moment < ticks[-1]:
        before = [t for t in ticks if t <= moment]
        assert timing.at_or_before(moment) == before[-1], moment
        assert timing.after(moment) == next(t for t in ticks if t > moment), moment
        assert timing.back(moment, 3, floor=ticks[0]) == before[::-1][:3]
        moment += dt.timedelta(minutes=7, seconds=13)
    assert timing.count_between(ticks[0], ticks[-1]) == len(ticks)


@settings(max_examples=300, deadline=None, suppress_health_check=list(HealthCheck))
@given(st.from_regex(f"^{CRON_PATTERN}$", fullmatch=True)
       .filter(lambda cron: len(cron) <= MAX_CRON_LENGTH))
def test_every_expression_the_grammar_admits_is_read(cron):
    schedule = Schedule("c", "q", cron=cron, timezone="Europe/Paris")
    moment = at(2026, 5, 17, 8, 30)
    following = schedule.timing.after(moment)   # None only for a time that never comes
    assert following is None or following > moment


@pytest.mark.parametrize("cron", ["60 * * * *", "* 24 * * *", "5-1 * * * *", "* * * *",
                                  "*/0 * * * *", "0 0 ? * *", "0 0 * * * *", "07 * * * *",
                                  "0 0 1 FEB-JAN *", "0 0 * * FRI-MON", "0 0 * * 8"])
def test_bad_cron_expressions_are_refused(cron):
    with pytest.raises(InvalidInput, match="cron must be"):
        Schedule("c", "q", cron=cron)


def test_a_time_that_never_comes_is_accepted_and_never_fires(db):
    document = define(db, Schedule("never", "q", cron="0 0 30 2 *"))
    assert document["next_run"] is None
    Scheduler(db=db).run_once()
    assert keys_written(db, "q") == []


@pytest.mark.parametrize("fields, problem", [
    ({"every": 60, "cron": "* * * * *"}, "not both"),
    ({}, "not both and not neither"),
    ({"every": 0}, "every must be"),
    ({"every": 1.5}, "every must be"),
    ({"cron": "* * * * *", "timezone": "Mars/Olympus"}, "timezone"),
    ({"every": 5, "timezone": "Europe/Paris"}, "timezone goes with cron"),
    ({"every": 5, "catch_up": "some"}, "catch_up"),
    ({"every": 5, "max_catch_up": 0}, "max_catch_up"),
    ({"every": 5, "body": {"$set": 1}}, "operator"),
])
def test_bad_definitions_are_refused(fields, problem):
    with pytest.raises(InvalidInput, match=re.escape(problem)):
        Schedule("s", "q", **fields)
    with pytest.raises(InvalidInput, match="schedule name"):
        Schedule("../x", "q", every=5)


# -- files and the command --------------------------------------------------------------------

SCHEDULES_YAML = """
schedules:
  - name: nightly-report
    queue: reports
    body: {kind: nightly, recipients: [ops@example.com]}
    cron: "0 3 * * *"
    timezone: Europe/Paris
    catch_up: latest
  - name: heartbeat
    queue: pings
    every: 60
    catch_up: all
    max_catch_up: 5
    routing_key: health
    priority: 3
"""


def test_a_yaml_file_defines_schedules(db, tmp_path):
    path = tmp_path / "schedules.yaml"
    path.write_text(SCHEDULES_YAML)
    nightly, heartbeat = load_file(path)
    assert nightly.cron == "0 3 * * *" and nightly.timezone == "Europe/Paris"
    assert nightly.body == {"kind": "nightly", "recipients": ["ops@example.com"]}
    assert (heartbeat.every, heartbeat.routing_key, heartbeat.priority) == (60, "health", 3)
    assert nightly.source == heartbeat.source == "file"
    Scheduler(file=str(path), db=db).define_all()
    assert stored(db, "nightly-report")["source"] == "file"
    assert stored(db, "heartbeat")["max_catch_up"] == 5
    fired = run_now(db, "heartbeat")
    message = db[schema.MESSAGES].find_one({"_id": fired.message_id})
    assert (message["routing_key"], message["priority"]) == ("health", 3)

    json_path = tmp_path / "schedules.json"
    json_path.write_text(json.dumps([{"name": "j", "queue": "q", "every": 5}]))
    assert [s.name for s in load_file(json_path)] == ["j"]


@pytest.mark.parametrize("text, problem", [
    ("- name: a\n  queue: q\n  every: 5\n  evrey: 6\n", "unknown field(s) evrey"),
    ("- name: a\n  queue: q\n  every: 5\n- name: a\n  queue: q\n  every: 6\n",
     "named more than once: a"),
    ("- name: a\n  every: 5\n", "queue is required"),
    ("schedules: {name: a}\n", "expected a list"),
    ("- [unclosed\n", "not valid YAML"),
])
def test_a_bad_yaml_file_is_refused_whole(tmp_path, text, problem):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(InvalidInput, match=re.escape(problem)):
        load_file(path)


def test_the_command_checks_a_file(tmp_path):
    path = tmp_path / "schedules.yaml"
    path.write_text(SCHEDULES_YAML)
    checked = subprocess.run([sys.executable, "-m", "mopq", "schedule", "--file", str(path),
                              "--check"], capture_output=True, text=True, timeout=60)
    assert checked.returncode == 0, checked.stderr
    assert "nightly-report: cron '0 3 * * *' in Europe/Paris" in checked.stdout
    path.write_text("- name: a\n  queue: q\n  every: 0\n")
    refused = subprocess.run([sys.executable, "-m", "mopq", "schedule", "--file", str(path)],
                             capture_output=True, text=True, timeout=60)
    assert refused.returncode == 2 and "every must be" in refused.stderr


# -- the API and the audit log ----------------------------------------------------------------

ADMIN_TOKEN = "schedule-admin-token"
READ_TOKEN = "schedule-read-token"
ADMIN = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
READER = {"Authorization": f"Bearer {READ_TOKEN}"}
OPS = {"Authorization": "Basic " + base64.b64encode(b"ops:ops-password").decode()}
AUTH_ENV = ("MOPQ_ADMIN_TOKEN", "MOPQ_READ_TOKEN", "MOPQ_BASIC_AUTH_USERS", "MOPQ_ADMIN_USERS")


@pytest.fixture
def client(engine_uri, db_name, monkeypatch):
    for name in AUTH_ENV:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("MOPQ_ADMIN_TOKEN", ADMIN_TOKEN)
    monkeypatch.setenv("MOPQ_READ_TOKEN", READ_TOKEN)
    monkeypatch.setenv("MOPQ_ADMIN_USERS", "ops:ops-password")
    app = create_app({"MOPQ_MONGODB_URI": engine_uri, "MOPQ_DATABASE": db_name,
                      "TESTING": True})
    return app.test_client()


def call(client, method, url, status=200, body=None, headers=None):
    if body is None and method == "POST":
        body = {}
    kwargs = {"json": body} if body is not None else {}
    response = client.open(url, method=method, headers=headers or READER, **kwargs)
    assert response.status_code == status, (url, response.status_code, response.get_data())
    assert response.mimetype == "application/json"
    return response.get_json()


def test_admins_define_pause_resume_run_and_delete_schedules(client, db):
    assert call(client, "GET", "/api/schedules")["items"] == []
    nightly = {"queue": "reports", "body": {"kind": "nightly"}, "cron": "0 3 * * *",
               "timezone": "Europe/Paris", "catch_up": "skip", "priority": 2}
    assert call(client, "PUT", "/api/schedules/nightly", body=nightly,
                headers=ADMIN)["count"] == 1
    [row] = call(client, "GET", "/api/schedules")["items"]
    assert (row["name"], row["cron"], row["timezone"], row["catch_up"], row["source"]) == \
        ("nightly", "0 3 * * *", "Europe/Paris", "skip", "dashboard")
    assert row["next_run"] and row["last_run"] is None and row["paused"] is False
    next_run = dt.datetime.fromisoformat(row["next_run"])
    assert next_run > dt.datetime.now(UTC)
    assert next_run.astimezone(zoneinfo.ZoneInfo("Europe/Paris")).hour == 3

    assert call(client, "POST", "/api/schedules/nightly/pause", headers=ADMIN)["count"] == 1
    assert call(client, "POST", "/api/schedules/nightly/pause", headers=ADMIN)["count"] == 0
    assert call(client, "GET", "/api/schedules/nightly")["paused"] is True
    assert call(client, "POST", "/api/schedules/nightly/resume", headers=ADMIN)["count"] == 1
    assert call(client, "POST", "/api/schedules/nightly/run", headers=ADMIN)["count"] == 1
    row = call(client, "GET", "/api/schedules/nightly")
    assert row["last_outcome"] == "written" and row["last_trigger"] == "manual"
    message = call(client, "GET", f"/api/messages/{row['last_message']}")
    assert (message["queue"], message["body"], message["priority"]) == \
        ("reports", {"kind": "nightly"}, 2)

    every = {"queue": "reports", "every": 600}
    assert call(client, "PUT", "/api/schedules/nightly", body=every, headers=ADMIN)["count"] == 1
    row = call(client, "GET", "/api/schedules/nightly")
    assert (row["every"], row["cron"], row["timezone"], row["catch_up"]) == \
        (600, None, None, "latest")
    assert call(client, "DELETE", "/api/schedules/nightly", headers=ADMIN)["count"] == 1
    assert call(client, "DELETE", "/api/schedules/nightly", headers=ADMIN)["count"] == 0
    call(client, "GET", "/api/schedules/nightly", 404)

    log = call(client, "GET", "/api/audit")["items"]
    assert [entry["action"] for entry in log][::-1] == [
        "schedule.define", "schedule.pause", "schedule.pause", "schedule.resume",
        "schedule.run", "schedule.define", "schedule.delete", "schedule.delete"]
    assert [entry["count"] for entry in log][::-1] == [1, 1, 0, 1, 1, 1, 1, 0]
    assert log[-1]["target"] == {"schedule": "nightly", "queue": "reports"}
    assert log[0]["target"] == {"schedule": "nightly"}
    assert all(entry["who"] == {"name": "admin-token", "via": "token"} for entry in log)


@pytest.mark.parametrize("body, parameter", [
    ({"queue": "q", "every": 60, "cron": "* * * * *"}, "cron"),
    ({"queue": "q"}, "cron"),
    ({"queue": "q", "cron": "61 * * * *"}, "cron"),
    ({"queue": "q", "cron": "* * * * *", "timezone": "Europe/Atlantis"}, "timezone"),
    ({"queue": "q", "every": 0}, "every"),
    ({"queue": "q", "every": "60"}, "every"),
    ({"queue": "q/x", "every": 60}, "queue"),
    ({"queue": "q", "every": 60, "catch_up": "never"}, "catch_up"),
    ({"queue": "q", "every": 60, "body": []}, "body"),
])
def test_a_bad_definition_gets_a_400_naming_it_and_changes_nothing(client, db, body,
                                                                     parameter):
    answer = call(client, "PUT", "/api/schedules/s", 400, body=body, headers=ADMIN)
    assert answer["parameter"] == parameter, answer
    assert db[schema.SCHEDULES].count_documents({}) == 0
    assert db[schema.AUDIT].count_documents({}) == 0


def test_schedule_actions_follow_the_admin_rules(client, db):
    define(db, Schedule("s", "q", every=3600))
    call(client, "POST", "/api/schedules/s/run", 403)                 # a reader
    call(client, "POST", "/api/schedules/s/run", 401, headers={"X": "none"})
    call(client, "PUT", "/api/schedules/t", 403, body={"queue": "q", "every": 5})
    call(client, "POST", "/api/schedules/nope/pause", 404, headers=ADMIN)
    call(client, "POST", "/api/schedules/bad%2Fname/pause", 404, headers=ADMIN)
    call(client, "POST", "/api/schedules/-x/pause", 400, headers=ADMIN)
    bare = client.post("/api/schedules/s/pause", headers=ADMIN)          # no JSON body
    assert bare.status_code == 400 and bare.get_json()["parameter"] == "body"
    extra = call(client, "POST", "/api/schedules/s/pause", 400, body={"now": True},
                 headers=ADMIN)
    assert extra["parameter"] == "now"
    # A browser's admin (basic auth) needs the page's CSRF token, like every admin action.
    answer = call(client, "POST", "/api/schedules/s/pause", 403, headers=OPS)
    assert "CSRF" in answer["error"]
    page = client.get("/schedules", headers=OPS)
    assert page.status_code == 200
    token = re.search(r'<meta name="csrf-token" content="([^"]+)"',
                      page.get_data(as_text=True)).group(1)
    answer = call(client, "POST", "/api/schedules/s/pause", headers={
        **OPS, "X-CSRF-Token": token, "Sec-Fetch-Site": "same-origin"})
    assert answer["count"] == 1
    assert db[schema.MESSAGES].count_documents({}) == 0
    [entry] = call(client, "GET", "/api/audit")["items"]
    assert (entry["action"], entry["who"]) == ("schedule.pause", {"name": "ops", "via": "basic"})


def test_the_document_describes_the_schedule_endpoints(client):
    document = call(client, "GET", "/openapi.json")
    put = document["paths"]["/api/schedules/{name}"]["put"]
    assert put["x-access"] == "admin" and put["x-idempotent"] is True
    cron = document["components"]["schemas"]["CronDefinition"]["properties"]["cron"]
    assert CRON_PATTERN in cron["pattern"]
    assert "Europe/Paris" in document["components"]["schemas"]["CronDefinition"][
        "properties"]["timezone"]["enum"]
    for path in ("/pause", "/resume", "/run"):
        assert "post" in document["paths"]["/api/schedules/{name}" + path]


def test_the_schedules_command_lists_and_acts_and_is_audited(db, db_name, capsys):
    define(db, Schedule("nightly", "reports", {"kind": "nightly"}, cron="0 3 * * *",
                        timezone="Europe/Paris"))
    assert cli_main(["schedules"]) == 0
    out = capsys.readouterr().out
    assert "nightly" in out and "0 3 * * * Europe/Paris" in out and "not run yet" in out
    assert cli_main(["schedules", "pause", "nightly"]) == 0
    assert "nightly paused" in capsys.readouterr().out
    assert cli_main(["schedules", "pause", "nightly"]) == 0
    assert "paused already; nothing changed" in capsys.readouterr().out
    assert cli_main(["schedules", "run", "nightly"]) == 0
    out = capsys.readouterr().out
    message = stored(db, "nightly")["last_message"]
    assert f"nightly run now: message {message}" in out
    assert db[schema.MESSAGES].find_one({"_id": message})["body"] == {"kind": "nightly"}
    assert cli_main(["schedules", "resume", "nightly"]) == 0
    assert cli_main(["schedules", "resume", "nope"]) == 1
    assert "no schedule named 'nope'" in capsys.readouterr().err
    entries = list(db[schema.AUDIT].find({}).sort("at", 1))
    assert [(e["action"], e["count"], e["status"]) for e in entries] == [
        ("schedule.pause", 1, "done"), ("schedule.pause", 0, "done"),
        ("schedule.run", 1, "done"), ("schedule.resume", 1, "done")]
    assert all(e["who"]["via"] == "cli" and e["target"] == {"schedule": "nightly",
                                                            "queue": "reports"}
               for e in entries)
    assert cli_main(["schedules", "delete", "nightly"]) == 0
    assert stored(db, "nightly") is None


# -- the page in a browser --------------------------------------------------------------------

BROWSER_ADMIN = ("admin", "secret")
BROWSER_READER = ("reader", "readpw")


@needs_chromium
def test_the_schedules_page_lists_a_schedule_and_runs_it_now(page_opener, engine_uri, db_name,
                                                             db, tmp_path, collector):
    define(db, Schedule("hourly-digest", "digests", {"kind": "digest", "html": "<b>x</b>"},
                        cron="0 * * * *", timezone="Asia/Tokyo"))
    auth = {"MOPQ_ADMIN_USERS": ":".join(BROWSER_ADMIN),
            "MOPQ_BASIC_AUTH_USERS": ":".join(BROWSER_READER)}
    with live_dashboard(engine_uri, db_name, tmp_path, **auth) as server:
        watched = page_opener(BROWSER_ADMIN, viewport={"width": 1280, "height": 900})
        page = watched.page
        assert page.goto(server + "/schedules").status == 200
        row = page.locator('tr[data-schedule="hourly-digest"]')
        row.wait_for()
        assert "0 * * * *" in row.text_content() and "Asia/Tokyo" in row.text_content()
        assert "not run yet" in row.locator("td.outcome").text_content()
        row.locator('button[data-action="run"]').click()
        page.wait_for_selector("#action-status.ok")
        assert "message written" in page.text_content("#action-status")
        link = page.locator('tr[data-schedule="hourly-digest"] td.last-message a')
        link.wait_for()
        message_id = link.text_content()
        message = db[schema.MESSAGES].find_one({"queue": "digests"})
        assert str(message["_id"]) == message_id and message["body"]["kind"] == "digest"
        assert link.get_attribute("href") == f"/search?id={message_id}"

        # Define another from the form, then pause it.
        page.fill('#define-form input[name="name"]', "ping")
        page.fill('#define-form input[name="queue"]', "pings")
        page.select_option('#define-form select[name="kind"]', "every")
        page.fill('#define-form input[name="every"]', "3600")
        page.click('#define-form button[data-action="define"]')
        page.locator('tr[data-schedule="ping"]').wait_for()
        page.click('tr[data-schedule="ping"] button[data-action="pause"]')
        page.locator('tr[data-schedule="ping"] td.state', has_text="paused").wait_for()
        assert stored(db, "ping")["paused"] is True and stored(db, "ping")["every"] == 3600

        page.goto(server + "/audit")
        page.wait_for_selector("#audit-rows tr")
        assert "schedule hourly-digest" in page.text_content("#audit-rows")
        assert watched.csp_violations() == [] and watched.errors == []
        assert watched.dialogs == []

        reader = page_opener(BROWSER_READER).page
        assert reader.goto(server + "/schedules").status == 200
        button = reader.locator('tr[data-schedule="ping"] button[data-action="resume"]')
        button.wait_for()
        assert button.is_disabled() and "MOPQ_ADMIN_USERS" in button.get_attribute("title")


def test_an_embedded_scheduler_stops_cleanly(db):
    scheduler = Scheduler([Schedule("quiet", "q", every=3600)], db=db).start()
    wait_until(lambda: stored(db, "quiet") is not None, message="the schedule defined")
    started = time.monotonic()
    scheduler.stop()
    assert not scheduler.running and time.monotonic() - started < 3
    assert threading.active_count() >= 1
