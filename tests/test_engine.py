"""The embedded engine is real: pymongo round trips, the command, H2 persistence."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys

import psutil
import pytest
from pymongo import MongoClient
from pymongo.errors import DuplicateKeyError

from mopq import Queue, flush, schema
from mopq.collectors import Collector
from mopq.collectors.stats import read_stats
from mopq.connection import get_client, get_database
from mopq.engine import Engine
from tests.helpers import free_port, wait_until

needs_java = pytest.mark.skipif(shutil.which("java") is None, reason="Java is not installed")


def test_round_trip_through_pymongo(db):
    db.things.insert_one({"_id": "a", "n": 1})
    db.things.update_one({"_id": "a"}, {"$inc": {"n": 41}})
    assert db.things.find_one({"_id": "a"})["n"] == 42
    wire_versions = [server.max_wire_version for server in
                     db.client.topology_description.server_descriptions().values()]
    assert wire_versions and min(wire_versions) >= 9


def _interruptible() -> None:
    """Ctrl-C as a terminal delivers it, even when the suite runs as a background job
    (a shell starts those with SIGINT ignored, and the JVM then keeps ignoring it)."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _start_engine_command(*extra: str) -> tuple[subprocess.Popen, str]:
    process = subprocess.Popen([sys.executable, "-m", "mopq", "engine", *extra],
                               stdout=subprocess.PIPE, text=True, preexec_fn=_interruptible)
    first_line = process.stdout.readline().strip()
    return process, first_line


def _ping(uri: str) -> bool:
    client = MongoClient(uri, serverSelectionTimeoutMS=2000)
    try:
        return client.admin.command("ping")["ok"] == 1.0
    finally:
        client.close()


def _refuses(uri: str) -> bool:
    client = MongoClient(uri, serverSelectionTimeoutMS=300, connectTimeoutMS=300)
    try:
        client.admin.command("ping")
        return False
    except Exception:
        return True
    finally:
        client.close()


@needs_java
def test_engine_command_prints_uri_first_and_runs_two_at_once():
    first, first_uri = _start_engine_command()
    second, second_uri = _start_engine_command("--port", "0")
    try:
        assert first_uri.startswith("mongodb://127.0.0.1:")
        assert second_uri.startswith("mongodb://127.0.0.1:")
        assert first_uri != second_uri
        assert _ping(first_uri) and _ping(second_uri)
        client = MongoClient(first_uri)
        client.t.x.insert_one({"only": "first"})
        assert MongoClient(second_uri).t.x.count_documents({}) == 0
        client.close()
    finally:
        for process in (first, second):
            process.send_signal(signal.SIGINT)
    assert first.wait(15) is not None and second.wait(15) is not None
    wait_until(lambda: _refuses(first_uri) and _refuses(second_uri), message="engines to stop")


@needs_java
def test_h2_data_survives_a_restart(tmp_path):
    with Engine(data=tmp_path) as engine:
        client = MongoClient(engine.uri)
        client.keep.docs.insert_many([{"n": i} for i in range(500)])
        client.close()
    with Engine(data=tmp_path) as engine:
        client = MongoClient(engine.uri)
        assert client.keep.docs.count_documents({}) == 500
        client.close()


@needs_java
def test_engine_dies_with_its_owner_even_on_sigkill():
    owner = subprocess.Popen(
        [sys.executable, "-c",
         "from mopq.engine import Engine; import sys, time\n"
         "e = Engine(); print(e.start(), e.pid, flush=True); time.sleep(600)"],
        stdout=subprocess.PIPE, text=True,
    )
    uri, jvm_pid = owner.stdout.readline().split()
    jvm = psutil.Process(int(jvm_pid))
    assert jvm.is_running() and _ping(uri)
    owner.kill()
    owner.wait()
    wait_until(lambda: not jvm.is_running() or jvm.status() == psutil.STATUS_ZOMBIE,
               timeout=15, message="the JVM to exit after its owner was killed")


def test_missing_java_is_explained(tmp_path):
    env = dict(os.environ, PATH=str(tmp_path), MOPQ_CACHE_DIR=str(tmp_path / "cache"))
    env.pop("MOPQ_MONGODB_URI", None)
    result = subprocess.run([sys.executable, "-m", "mopq", "engine"], env=env,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert "needs Java 17+" in result.stderr
    assert "java, javac, mvn are not on PATH" in result.stderr
    assert "MOPQ_MONGODB_URI" in result.stderr


def _filters_pinning_a_unique_index_match_exactly(db) -> None:
    things = db.things
    things.insert_many([{"_id": f"t{i}", "n": i % 3, **({"email": f"u{i}@x"} if i % 2 else {})}
                        for i in range(30)])
    things.create_index([("email", 1)], unique=True, sparse=True)

    assert things.find_one({"_id": "t4", "n": 1})["_id"] == "t4"
    assert things.find_one({"_id": "t4", "n": 2}) is None
    found = things.find({"_id": {"$in": ["t1", "t2", "t4", "missing"]}, "n": 1}).sort("_id", -1)
    assert [d["_id"] for d in found] == ["t4", "t1"]
    assert [d["_id"] for d in things.find({"_id": {"$in": ["t1", "t4", "t7"]}, "n": 1},
                                          skip=1, limit=1).sort("_id", 1)] == ["t4"]
    assert things.find_one({"email": "u3@x", "n": 0})["_id"] == "t3"
    assert things.find_one({"email": "u3@x", "n": 1}) is None
    assert [d["_id"] for d in things.find({"email": None, "n": 2}).sort("_id", 1)] == [
        "t14", "t2", "t20", "t26", "t8"]

    assert things.update_one({"_id": "t5", "n": 0}, {"$inc": {"n": 10}}).modified_count == 0
    assert things.update_one({"_id": "t5", "n": 2}, {"$inc": {"n": 10}}).modified_count == 1
    assert things.find_one({"_id": "t5"})["n"] == 12
    with pytest.raises(DuplicateKeyError):
        things.update_one({"_id": "t5", "n": 0}, {"$set": {"x": 1}}, upsert=True)
    assert things.find_one_and_update({"_id": "t6", "n": 0}, {"$set": {"x": 1}})["_id"] == "t6"
    assert things.find_one_and_update({"_id": "t6", "n": 1}, {"$set": {"x": 2}}) is None
    assert things.delete_one({"_id": "t8", "n": 0}).deleted_count == 0
    assert things.delete_one({"_id": "t8", "n": 2}).deleted_count == 1
    assert things.count_documents({}) == 29


def test_filters_pinning_a_unique_index_match_exactly_in_memory(db):
    """`_id` plus conditions is answered from the index (IndexFirst.java); results stay exact."""
    _filters_pinning_a_unique_index_match_exactly(db)


@needs_java
def test_filters_pinning_a_unique_index_match_exactly_in_h2(tmp_path):
    with Engine(data=tmp_path) as engine:
        client = MongoClient(engine.uri)
        _filters_pinning_a_unique_index_match_exactly(client.pinned)
        client.close()
    with Engine(data=tmp_path) as engine:
        client = MongoClient(engine.uri)
        assert client.pinned.things.find_one({"_id": "t5", "n": 12})["_id"] == "t5"
        client.close()


def _kill_and_restart(engine: Engine) -> Engine:
    """SIGKILL the engine's JVM now, then start a new one on the same port and data."""
    os.kill(engine.pid, signal.SIGKILL)
    wait_until(lambda: not engine.running(), message="the killed JVM to exit")
    engine.stop()  # only releases the pipes: the process is gone
    restarted = Engine(port=engine.port, data=engine.data)
    restarted.start()
    return restarted


@needs_java
def test_h2_keeps_an_acknowledged_write_across_a_sigkill(tmp_path):
    """Issue 10: a write the engine acknowledged is in the H2 file before the answer,
    so killing the engine a moment later loses nothing (10 kills in a row)."""
    engine = Engine(port=free_port(), data=tmp_path)
    engine.start()
    try:
        for round_ in range(10):
            client = MongoClient(engine.uri)
            client.durable.docs.insert_many([{"round": round_, "n": i} for i in range(20)])
            engine = _kill_and_restart(engine)  # within a millisecond or so of the ack
            client.close()
            client = MongoClient(engine.uri)
            try:
                assert client.durable.docs.count_documents({"round": round_}) == 20, round_
                assert client.durable.docs.count_documents({}) == 20 * (round_ + 1)
            finally:
                client.close()
    finally:
        engine.stop()


# Each round restarts the engine (about 2 s); 10 rounds were run by hand for issue 10.
REPRODUCTION_ROUNDS = 5


@needs_java
def test_mopq_conserves_messages_when_the_engine_is_killed_after_write_many(tmp_path,
                                                                              monkeypatch):
    """Issue 10, the reproduction: write_many acknowledged, the engine SIGKILLed at once and
    restarted; the publisher then publishes the 'written' events it still holds. Every one of
    them must have its message stored, so ``written`` stays equal to the messages' states."""
    engine = Engine(port=free_port(), data=tmp_path)
    monkeypatch.setenv("MOPQ_MONGODB_URI", engine.start())
    monkeypatch.setenv("MOPQ_DATABASE", "killed")
    db = get_database()
    collector = Collector(db=db, monitor=False)  # one for all rounds: it keeps its leases
    try:
        for round_ in range(REPRODUCTION_ROUNDS):
            Queue("q").write_many([{"round": round_, "n": i} for i in range(20)])
            engine = _kill_and_restart(engine)
            assert flush(40), "the publisher did not publish after the restart"
            collector.partitions.rebalance({})
            while collector.step().applied:
                pass
            assert db[schema.EVENTS].count_documents({}) == 0
            row = read_stats(db)["queues"]["q"]
            stored = db[schema.MESSAGES].count_documents({"queue": "q"})
            states = sum(row[f] for f in ("pending", "inflight", "delayed", "done", "dead",
                                          "expired", "removed"))
            assert (row["written"], states, stored) == (20 * (round_ + 1),) * 3, (
                f"round {round_}: written {row['written']}, states {states}, stored {stored}")
    finally:
        get_client().close()
        engine.stop()
