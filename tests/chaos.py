"""Chaos run: kill everything at random moments, then prove nothing was lost or miscounted.

Run it as ``make chaos`` (``make chaos MINUTES=10``) or
``python -m tests.chaos [--minutes M] [--seed S] [--keep DIR]``. Everything stays
on 127.0.0.1, the run stops by itself (a hard deadline backs every wait), and
every process it started is gone when it returns.

What runs, each in an OS process of its own so that signals are real:

* the embedded engine (mongo-java-server, H2 storage in a fresh folder, one
  fixed free port, so clients reconnect by themselves after a restart);
* 2 producers: ``Queue.write``, ``Queue.write_many`` (some delayed, some with a
  priority) and ``mopq.emit`` + ``mopq.flush``;
* 3 workers (``mopq.Worker``, 2 threads each) over four queues: ``chaos_ok``
  (the handler succeeds), ``chaos_flaky`` (fails 30 % of attempts on purpose),
  ``chaos_poison`` (always fails, so dead after ``MAX_ATTEMPTS``) and
  ``chaos_slow`` (sleeps up to 2.5 s inside a 3 s lease, or works 4-6 s,
  past the lease, renewing it with ``Message.progress``);
* 2 collectors (``collectors.Collector``, 2 s leases, both running the monitor
  when they hold its lease).

During the chaos phase (``--minutes``, default 3) a seeded schedule, one
action at a time: SIGKILL a worker, a producer or a collector and start a new
one in its place; make a zombie (SIGSTOP a worker right after it claimed a slow
message, keep it stopped until its lease expired and another worker took the
message, SIGCONT it: its late acknowledgement must be refused); restart the
engine once gracefully (SIGTERM) and once with SIGKILL of the JVM.

Then quiet: producers stop (SIGTERM), workers drain what is left, collectors
catch up (no event waiting, no outbox left in a message, no journal open),
workers and collectors stop; the checks run on the database and on the files
below, and a table is printed. The exit status is 1 on any violation.

The ground truth lives in files, not in the engine under test: a kill -9 of
the engine must not be able to erase the evidence against it. Each line is
written with one ``write(2)`` on an ``O_APPEND`` descriptor, so it is in the
page cache when the call returns and survives a SIGKILL of its writer; a line
torn by a kill is skipped (it recorded nothing that was acknowledged).

* Producers write an ``intent`` line (the unique ``key`` of each message body)
  before each call and an ``acked`` line after it returned; emitted events get
  an ``emit`` line before ``emit()`` and an ``emit-acked`` line once
  ``mopq.flush()`` returned True (everything buffered before it is then in the
  business log).
* Handlers write an ``exec`` line at the end of each execution (before
  returning or raising, so before the worker acknowledges or fails it): key,
  message id, attempt, lease token, the lease deadline, claim time, outcome.
  The worker's settle step (acknowledge or fail) writes a ``settle`` line: did
  the library accept it. A worker killed in between leaves no ``settle``
  line, and a refusal that followed a connection error (the first try may
  have been applied and its answer lost) is uncertain: such outcomes are
  "unknown" and counted on both sides of every bound.

The checks, and why each is sound:

* written truth = keys acknowledged to a producer + keys executed + keys still
  stored. A write whose call failed may or may not have been stored; if it
  was, it is stored now or was executed, because nothing here expires or
  removes messages. So every message that ever existed is in this set, and
  nothing else is (a key no producer intended is reported as a phantom).
* lost = written keys that are neither still stored (pending, inflight,
  delayed or dead) nor have a successful execution whose acknowledgement was
  accepted (or unknown). Invariant 1 of the design: none.
* executed twice = keys with more than one successful execution. Allowed
  (at-least-once) when the earlier holder's lease had expired before the later
  claim, or its process had been killed before it (the monitor returns a dead
  process's messages at once), or, for a failed attempt, it had been failed.
  A later claim inside a live lease of a holder still alive, or any claim of a
  message whose acknowledgement had been accepted, is a violation (invariant
  2). Every pair of consecutive executions of a message is checked this way,
  failed ones too. Times are compared on one host's clock: the lease deadline
  a claim sets and the claim time the next claim compares it with are both
  stored by the claimers themselves, to the millisecond.
* zombies: the stopped worker's ``settle`` line for the token it held must say
  refused (``LeaseLost``): the message had another token by then, and every
  acknowledgement is a compare-and-set on the token.
* counter drift (``collectors.stats.read_stats`` and the total counters), per
  queue: written = |written truth|; done = keys gone (written, no longer
  stored, successfully executed), and within the acknowledgements the workers
  saw accepted (plus the unknown ones); failed within the failures accepted
  (plus unknown); claimed at least the executions recorded (each one began
  with a claim of its own token); dead (events counted) = dead messages
  stored. Per business metric, the total count and sum lie between what
  flush() confirmed and what was intended (values are positive, so both are
  monotone in the set of events that arrived).
* conservation per queue: written = done + expired + removed + dead + pending
  + inflight + delayed (invariant 3).

Until the engine commits before it answers (issue 10), the kill -9 of the
engine can lose acknowledged writes; this harness reports them as lost or as
drift rather than hiding them.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import ctypes
import datetime as dt
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import traceback
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parent.parent
DATABASE = "chaos"

OK, FLAKY, POISON, SLOW = "chaos_ok", "chaos_flaky", "chaos_poison", "chaos_slow"
QUEUES = (OK, FLAKY, POISON, SLOW)
QUEUE_WEIGHTS = (62, 25, 5, 8)
METRICS = ("chaos.orders", "chaos.clicks")

PRODUCERS, WORKERS, COLLECTORS = 2, 3, 2
ROLES = {"producer": PRODUCERS, "worker": WORKERS, "collector": COLLECTORS}
WORKER_THREADS = 2
VISIBILITY_TIMEOUT = 3.0
MAX_ATTEMPTS = 4
FLAKY_FAILURE_RATE = 0.3
SLOW_SECONDS = (0.5, 2.5)        # within the lease
LONG_SECONDS = (4.0, 6.0)        # past the lease, renewed by progress()
PROGRESS_EVERY = 0.8
COLLECTOR_LEASE_SECONDS = 2.0

DEFAULT_MINUTES = 3.0
SETUP_SECONDS = 60.0             # engine start and every process up
FINISH_SECONDS = 45.0            # stop everything, analyse
CHILD_RETRY_SECONDS = 60.0       # a child waits this long for the engine at start


def quiet_seconds(chaos_seconds: float) -> float:
    """How long the system may take to drain and catch up once the chaos stops."""
    return max(45.0, min(120.0, 0.15 * chaos_seconds))


# -- what every child shares -----------------------------------------------------------


def now() -> float:
    return time.time()


class Records:
    """JSON lines appended with one write(2) each: a SIGKILL never loses a returned line."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        self._lock = threading.Lock()

    def add(self, **record: Any) -> None:
        line = (json.dumps(record, separators=(",", ":")) + "\n").encode()
        with self._lock:
            os.write(self._fd, line)


def read_records(paths: Iterable[Path]) -> tuple[list[dict[str, Any]], int]:
    """Every whole line of the files, and the number of torn ones (a writer killed mid-line)."""
    records: list[dict[str, Any]] = []
    torn = 0
    for path in paths:
        for line in path.read_bytes().splitlines():
            try:
                records.append(json.loads(line))
            except ValueError:
                torn += 1
    return records, torn


def _die_with_parent(parent: int) -> None:
    """Ask Linux to SIGKILL this process when its parent dies (even a stopped one)."""
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    if os.getppid() != parent:
        os._exit(1)


class Stop:
    """SIGTERM asks a child to finish; so does its parent's death."""

    def __init__(self, parent: int) -> None:
        self.parent = parent
        self.event = threading.Event()
        signal.signal(signal.SIGTERM, lambda *_: self.event.set())
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle

    def wait(self, seconds: float) -> bool:
        self.event.wait(seconds)
        if os.getppid() != self.parent:
            self.event.set()
        return self.event.is_set()

    def __bool__(self) -> bool:
        return self.event.is_set() or os.getppid() != self.parent


def _patiently(make: Callable[[], Any], stop: Stop) -> Any:
    """``make()``, retried while the engine does not answer (a child may start during a restart)."""
    from pymongo.errors import PyMongoError

    deadline = time.monotonic() + CHILD_RETRY_SECONDS
    while True:
        try:
            return make()
        except PyMongoError:
            if time.monotonic() > deadline or stop.wait(0.5):
                raise


# -- producer --------------------------------------------------------------------------


def _body(rng: random.Random, queue: str) -> dict[str, Any]:
    body: dict[str, Any] = {"key": uuid.uuid4().hex}
    if queue == SLOW:
        long = rng.random() < 0.2
        body["long"] = long
        body["sleep"] = round(rng.uniform(*(LONG_SECONDS if long else SLOW_SECONDS)), 2)
    return body


def run_producer(args: argparse.Namespace) -> int:
    from pymongo.errors import PyMongoError

    import mopq
    from mopq import write_intents
    from mopq.publisher import publisher_for

    stop = Stop(args.parent)
    rng = random.Random(f"{args.seed}:producer:{args.index}:{os.getpid()}")
    out = Records(Path(args.dir) / f"producer-{args.index}-{os.getpid()}.jsonl")
    queues = {name: _patiently(lambda name=name: mopq.Queue(name, uri=args.uri,
                                                            database=DATABASE), stop)
              for name in QUEUES}
    publisher = publisher_for(queues[OK].db)
    unconfirmed: list[str] = []

    def confirm(timeout: float) -> None:
        if unconfirmed and mopq.flush(timeout) and publisher.dropped == 0:
            out.add(t="emit-acked", ops=list(unconfirmed), at=now())
            unconfirmed.clear()

    while not stop:
        op = uuid.uuid4().hex[:12]
        kind = rng.choices(("write", "write_many", "emit"), (4, 3, 3))[0]
        try:
            if kind == "emit":
                events = [(rng.choice(METRICS), rng.randint(1, 9))
                          for _ in range(rng.randint(1, 4))]
                tags = {"producer": str(args.index)} if rng.random() < 0.5 else None
                out.add(t="emit", op=op, events=events, at=now())
                unconfirmed.append(op)
                for name, value in events:
                    mopq.emit(name, value, tags=tags, uri=args.uri, database=DATABASE)
                confirm(3.0)
            else:
                queue = rng.choices(QUEUES, QUEUE_WEIGHTS)[0]
                count = 1 if kind == "write" else rng.randint(2, 8)
                # Some by a write intent; only to the quick queue, so that the run
                # drains in the same time.
                if kind == "write_many" and queue == "chaos_ok" and rng.random() < 0.2:
                    count = rng.randint(write_intents.MIN_MESSAGES, write_intents.MIN_MESSAGES + 16)
                bodies = [_body(rng, queue) for _ in range(count)]
                keys = [body["key"] for body in bodies]
                options: dict[str, Any] = {"priority": rng.choice((0, 0, 0, 1, 2))}
                if rng.random() < 0.1:
                    options["delay"] = round(rng.uniform(0.2, 2.0), 2)
                out.add(t="intent", op=op, kind=kind, queue=queue, keys=keys, at=now())
                if kind == "write":
                    queues[queue].write(bodies[0], **options)
                else:
                    queues[queue].write_many(bodies, **options)
                out.add(t="acked", op=op, keys=keys, at=now())
        except PyMongoError as error:
            out.add(t="error", op=op, error=str(error)[:200], at=now())
            stop.wait(0.3)
        stop.wait(rng.uniform(0.03, 0.25))
    confirm(10.0)
    return 0


# -- worker ----------------------------------------------------------------------------


def run_worker(args: argparse.Namespace) -> int:
    from mopq import LeaseLost, Worker, exponential_backoff
    from mopq.message import Message

    if not hasattr(Worker, "_settle") or not hasattr(Worker, "_acknowledge"):
        print("chaos: mopq.Worker has no _settle or _acknowledge any more; update "
              "tests/chaos.py", file=sys.stderr)
        return 2
    stop = Stop(args.parent)
    rng = random.Random(f"{args.seed}:worker:{args.index}:{os.getpid()}")
    rng_lock = threading.Lock()
    out = Records(Path(args.dir) / f"worker-{args.index}-{os.getpid()}.jsonl")

    def handle(message: Message) -> None:
        started = now()
        queue = message.queue.name
        outcome = "ok"
        try:
            if queue == SLOW:
                seconds = float(message.body.get("sleep", 1.0))
                if message.body.get("long"):
                    end = time.monotonic() + seconds
                    while time.monotonic() < end:
                        time.sleep(min(PROGRESS_EVERY, max(0.0, end - time.monotonic())))
                        left = max(0.0, end - time.monotonic())
                        message.progress(min(1.0, max(0.0, 1 - left / seconds)))
                else:
                    time.sleep(seconds)
            elif queue == POISON:
                outcome = "fail"
            elif queue == FLAKY:
                with rng_lock:
                    if rng.random() < FLAKY_FAILURE_RATE:
                        outcome = "fail"
        except LeaseLost:
            outcome = "lease-lost"
            raise
        except Exception:
            outcome = "error"
            raise
        finally:
            out.add(t="exec", key=message.body.get("key"), mid=str(message.id), queue=queue,
                    attempt=message.attempts, token=message.lease_token, pid=os.getpid(),
                    claimed=message.claimed_at.timestamp(),
                    lease=message.lease_expires_at.timestamp(),
                    started=started, ended=now(), outcome=outcome)
        if outcome == "fail":
            raise RuntimeError(f"failing on purpose ({queue}, attempt {message.attempts})")

    class ChaosWorker(Worker):
        """Records what became of each acknowledgement or failure the worker tried."""

        def _settle(self, message: Message, error: BaseException | None) -> bool:
            start = now()
            troubles: list[str] = []
            for name in ("delete", "fail"):
                setattr(message, name, _noting(getattr(message, name), troubles))
            accepted = super()._settle(message, error)
            # A refusal after a connection error is uncertain: the first try may have
            # been applied with its answer lost, and the retry then finds it done.
            out.add(t="settle", mid=str(message.id), token=message.lease_token,
                    ack=error is None, ok=bool(accepted), uncertain=bool(troubles),
                    start=start, end=now())
            return accepted

        def _acknowledge(self, messages: list[Message]) -> list[bool]:
            # Acknowledgements in bulk (Worker._ack_loop): one settle line per message.
            start = now()
            troubles: list[str] = []
            self._acknowledge_once = _noting(super()._acknowledge_once, troubles)
            accepted = super()._acknowledge(messages)
            for message, ok in zip(messages, accepted, strict=True):
                out.add(t="settle", mid=str(message.id), token=message.lease_token, ack=True,
                        ok=ok, uncertain=bool(troubles), start=start, end=now())
            return accepted

    worker = _patiently(lambda: ChaosWorker(
        list(QUEUES), handle, WORKER_THREADS, uri=args.uri, database=DATABASE,
        visibility_timeout=VISIBILITY_TIMEOUT, heartbeat_interval=1.0,
        max_attempts=MAX_ATTEMPTS, backoff=exponential_backoff(first=0.2, cap=2.0),
        poll_interval=0.2), stop)
    thread = worker.start()
    while thread.is_alive() and not stop.wait(0.5):
        pass
    return 0 if worker.stop(timeout=30) else 1


def _noting(method: Callable[..., Any], troubles: list[str]) -> Callable[..., Any]:
    """``method``, noting each PyMongoError it raises (LeaseLost is not one)."""
    from pymongo.errors import PyMongoError

    def noted(*args: Any, **kwargs: Any) -> Any:
        try:
            return method(*args, **kwargs)
        except PyMongoError as trouble:
            troubles.append(type(trouble).__name__)
            raise
    return noted


# -- collector -------------------------------------------------------------------------


def run_collector(args: argparse.Namespace) -> int:
    from mopq.collectors import Collector

    stop = Stop(args.parent)
    collector = Collector(uri=args.uri, database=DATABASE, poll_interval=0.1,
                          lease_seconds=COLLECTOR_LEASE_SECONDS, monitor_interval=1.0)
    _patiently(collector.start, stop)
    while collector.running and not stop.wait(0.5):
        pass
    collector.stop(5.0)
    return 0


CHILDREN = {"producer": run_producer, "worker": run_worker, "collector": run_collector}


# -- the orchestrator ------------------------------------------------------------------


@dataclass
class Child:
    role: str
    index: int
    process: subprocess.Popen[bytes]

    @property
    def pid(self) -> int:
        return self.process.pid


@dataclass
class Journal:
    """What the orchestrator did, for the table and for the checks."""

    kills: collections.Counter[str] = field(default_factory=collections.Counter)
    killed_at: dict[int, float] = field(default_factory=dict)
    zombies: list[dict[str, Any]] = field(default_factory=list)
    zombie_attempts: int = 0
    engine_restarts: collections.Counter[str] = field(default_factory=collections.Counter)


def _running(pid: int) -> bool:
    """Whether ``pid`` still runs (a process that died but was not reaped yet does not)."""
    import psutil

    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


class Deadline(Exception):
    """The run's hard deadline passed."""


class Chaos:
    def __init__(self, minutes: float, seed: int, run_dir: Path) -> None:
        from tests.helpers import free_port

        self.seconds = minutes * 60
        self.seed = seed
        self.rng = random.Random(seed)
        self.run_dir = run_dir
        self.logs = run_dir / "logs"
        self.logs.mkdir(parents=True, exist_ok=True)
        self.data = run_dir / "engine"
        self.port = free_port()
        self.uri = f"mongodb://127.0.0.1:{self.port}/"
        self.engine: Any = None
        self.children: dict[tuple[str, int], Child] = {}
        self.retired: list[Child] = []
        self.journal = Journal()
        self.began = time.monotonic()
        self.client: Any = None
        self.generation = collections.Counter[tuple[str, int]]()
        self._next_backlog_report = 0.0

    # -- plumbing --

    def say(self, text: str) -> None:
        print(f"[{time.monotonic() - self.began:7.1f} s] {text}", file=sys.stderr, flush=True)

    @property
    def db(self) -> Any:
        return self.client[DATABASE]

    def start_engine(self) -> None:
        from mopq.engine import Engine, EngineError

        for attempt in range(5):
            engine = Engine(port=self.port, data=self.data)
            try:
                engine.start()
            except EngineError:
                engine.stop()
                if attempt == 4:
                    raise
                time.sleep(1.0)  # the port may take a moment to be free again
                continue
            self.engine = engine
            return

    def spawn(self, role: str, index: int) -> Child:
        self.generation[(role, index)] += 1
        log_path = self.logs / f"{role}-{index}-{self.generation[(role, index)]}.log"
        env = {**os.environ, "MOPQ_MONGODB_URI": self.uri, "MOPQ_DATABASE": DATABASE,
               "PYTHONUNBUFFERED": "1"}
        with open(log_path, "wb") as log:
            process = subprocess.Popen(
                [sys.executable, "-m", "tests.chaos", "--role", role, "--index", str(index),
                 "--dir", str(self.run_dir), "--uri", self.uri, "--seed", str(self.seed),
                 "--parent", str(os.getpid())],
                cwd=REPO_ROOT, env=env, stdin=subprocess.DEVNULL, stdout=log,
                stderr=subprocess.STDOUT, start_new_session=True)
        child = Child(role, index, process)
        self.children[(role, index)] = child
        return child

    def pick(self, role: str) -> Child:
        return self.children[(role, self.rng.randrange(ROLES[role]))]

    def by_pid(self, pid: int) -> Child | None:
        return next((c for c in self.children.values() if c.pid == pid), None)

    def wait_for(self, what: str, predicate: Callable[[], bool], seconds: float,
                 interval: float = 0.25) -> bool:
        from pymongo.errors import PyMongoError

        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            try:
                if predicate():
                    return True
            except PyMongoError:
                pass
            time.sleep(interval)
        self.say(f"gave up waiting for {what} after {seconds:.0f} s")
        return False

    # -- actions --

    def kill(self, role: str) -> None:
        child = self.pick(role)
        self.journal.killed_at[child.pid] = now()
        with contextlib.suppress(ProcessLookupError):
            os.kill(child.pid, signal.SIGKILL)
        child.process.wait()
        self.retired.append(child)
        self.journal.kills[role] += 1
        replacement = self.spawn(role, child.index)
        self.say(f"SIGKILL {role} {child.index} (pid {child.pid}); started pid {replacement.pid}")

    def restart_engine(self, how: str) -> None:
        self.say(f"engine: {'SIGTERM' if how == 'graceful' else 'SIGKILL'} (pid {self.engine.pid})")
        if how == "graceful":
            self.engine.stop()
        else:
            os.kill(self.engine.pid, signal.SIGKILL)
            self.wait_for("the engine to die", lambda: not _running(self.engine.pid), 10, 0.02)
            self.engine.stop()  # reaps it
        down = time.monotonic()
        self.start_engine()
        self.journal.engine_restarts[how] += 1
        self.say(f"engine: up again after {time.monotonic() - down:.1f} s (pid {self.engine.pid})")

    def zombie(self, seconds: float = 20.0) -> bool:
        """SIGSTOP a worker holding a slow message, past its lease; SIGCONT; see it refused."""
        from pymongo.errors import PyMongoError

        from mopq import schema

        self.journal.zombie_attempts += 1
        messages = self.db[schema.MESSAGES]
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            try:
                held = list(messages.find({"queue": SLOW, "state": schema.INFLIGHT},
                                          {"body": 1, "lease_token": 1, "leased_by": 1,
                                           "claimed_at": 1, "visible_at": 1}))
            except PyMongoError:
                time.sleep(0.2)
                continue
            for message in held:
                child = self.by_pid(int(str(message.get("leased_by") or ":0").rsplit(":", 1)[1]))
                body = message.get("body") or {}
                if child is None or child.role != "worker" or body.get("long"):
                    continue
                age = (dt.datetime.now(dt.UTC) - message["claimed_at"]).total_seconds()
                if age > 0.5 or float(body.get("sleep", 0)) - age < 1.0:
                    continue
                if self._make_zombie(child, message):
                    return True
            time.sleep(0.05)
        self.say("zombie: no worker caught holding a slow message this time")
        return False

    def _make_zombie(self, child: Child, message: dict[str, Any]) -> bool:
        from pymongo.errors import PyMongoError

        from mopq import schema

        token = message["lease_token"]
        os.kill(child.pid, signal.SIGSTOP)
        stopped = now()
        try:
            time.sleep(0.2)  # an acknowledgement already on the wire lands now
            current = self.db[schema.MESSAGES].find_one({"_id": message["_id"]},
                                                        {"state": 1, "lease_token": 1})
            if not current or current.get("lease_token") != token:
                return False  # it finished just before the stop: not a zombie
            lease = message["visible_at"].timestamp()

            def taken_over() -> bool:
                again = self.db[schema.MESSAGES].find_one({"_id": message["_id"]},
                                                          {"lease_token": 1})
                return now() > lease + 0.3 and (again is None or again.get("lease_token") != token)

            if not self.wait_for("the zombie's message to be taken over", taken_over, 30, 0.1):
                return False
        except PyMongoError as error:
            self.say(f"zombie: engine trouble while holding pid {child.pid} stopped ({error})")
            return False
        finally:
            os.kill(child.pid, signal.SIGCONT)
        resumed = now()
        entry = {"pid": child.pid, "mid": str(message["_id"]), "token": token,
                 "stopped": stopped, "resumed": resumed, "lease": lease}
        self.journal.zombies.append(entry)
        path = self.run_dir / f"worker-{child.index}-{child.pid}.jsonl"

        def settled() -> bool:
            records, _ = read_records([path]) if path.exists() else ([], 0)
            return any(r.get("t") == "settle" and r.get("mid") == entry["mid"]
                       and r.get("token") == token for r in records)

        entry["settled"] = self.wait_for("the zombie to settle", settled, 15, 0.1)
        self.say(f"zombie: worker {child.index} (pid {child.pid}) stopped "
                 f"{resumed - stopped:.1f} s holding {entry['mid']}, lease ended "
                 f"{resumed - lease:.1f} s before SIGCONT")
        return True

    # -- the run --

    def plan(self) -> list[tuple[float, str]]:
        T = self.seconds
        rng = self.rng
        actions = [(rng.uniform(0.28, 0.38) * T, "engine graceful"),
                   (rng.uniform(0.58, 0.70) * T, "engine kill")]
        at = 0.1 * T
        while at < 0.85 * T:
            actions.append((at, "zombie"))
            at += 100.0
        kinds = list(ROLES)
        rng.shuffle(kinds)
        gap = min(8.0, max(4.0, T / 12))
        at = rng.uniform(2.0, 4.0)
        while at < 0.9 * T:
            kind = kinds.pop(0) if kinds else rng.choice(list(ROLES))
            actions.append((at, f"kill {kind}"))
            at += 1.0 + rng.expovariate(1 / gap)
        return sorted(actions)

    def running_ready(self) -> bool:
        from mopq import schema

        workers = self.db[schema.WORKERS].count_documents({"state": "running"})
        collectors = self.db[schema.LEASES].count_documents(
            {"kind": "collector", "expires_at": {"$gt": dt.datetime.now(dt.UTC)}})
        return workers >= WORKERS and collectors >= COLLECTORS

    def run(self) -> Report:
        from pymongo import MongoClient
        from pymongo.errors import PyMongoError

        from mopq import schema

        self.say(f"seed {self.seed}; {self.seconds:.0f} s of chaos; run folder {self.run_dir}")
        self.start_engine()
        self.say(f"engine on {self.uri} (H2 in {self.data}, pid {self.engine.pid})")
        self.client = MongoClient(self.uri, tz_aware=True, serverSelectionTimeoutMS=3000)
        schema.ensure_indexes(self.db)
        for role, count in ROLES.items():
            for index in range(count):
                self.spawn(role, index)
        if not self.wait_for("every worker and collector to start", self.running_ready,
                             SETUP_SECONDS):
            raise RuntimeError("the workers and collectors did not start; see " + str(self.logs))

        start = time.monotonic()
        self.say("chaos begins")
        pending = self.plan()
        while pending:
            at, action = pending.pop(0)
            time.sleep(max(0.0, start + at - time.monotonic()))
            if time.monotonic() >= self._next_backlog_report:
                self._next_backlog_report = time.monotonic() + 15.0
                with contextlib.suppress(PyMongoError):
                    self.say(self.backlog())
            if action.startswith("kill "):
                self.kill(action.split()[1])
            elif action == "zombie":
                if not self.zombie() and time.monotonic() - start < 0.9 * self.seconds \
                        and self.journal.zombie_attempts < 10:
                    pending.append((time.monotonic() - start + 2.0, "zombie"))
                    pending.sort()
            elif action == "engine graceful":
                self.restart_engine("graceful")
            elif action == "engine kill":
                self.restart_engine("kill -9")
        time.sleep(max(0.0, start + self.seconds - time.monotonic()))
        self.say("chaos ends; stopping producers, then waiting for quiet")
        self.stop_role("producer")
        self.say(f"producers stopped; {self.backlog()}")
        quiet = self.wait_for("quiet (queues drained, collectors caught up)", self.quiet,
                              quiet_seconds(self.seconds), 0.5)
        if quiet:
            self.say("quiet")
        self.stop_role("worker")
        self.stop_role("collector")
        self.save_journal(quiet)
        return analyse(self.db, self.run_dir, self.journal, quiet)

    def save_journal(self, quiet: bool) -> None:
        journal = self.journal
        (self.run_dir / "journal.json").write_text(json.dumps({
            "seed": self.seed, "seconds": self.seconds, "quiet": quiet,
            "kills": journal.kills, "killed_at": journal.killed_at, "zombies": journal.zombies,
            "engine_restarts": journal.engine_restarts}, indent=1))

    def backlog(self) -> str:
        from mopq import schema

        messages = self.db[schema.MESSAGES]
        held = {state: messages.count_documents({"state": state})
                for state in (schema.PENDING, schema.INFLIGHT)}
        return (f"{held[schema.PENDING]} pending, {held[schema.INFLIGHT]} inflight, "
                f"{messages.count_documents({'outbox.0': {'$exists': True}})} outboxes, "
                f"{self.unpublished_intents()} write intents, "
                f"{self.db[schema.EVENTS].count_documents({})} events waiting")

    def unpublished_intents(self) -> int:
        from mopq import schema, write_intents

        return self.db[schema.WRITE_INTENTS].count_documents(
            {"state": {"$in": [write_intents.OPEN, write_intents.PUBLISHING]}})

    def quiet(self) -> bool:
        from mopq import schema

        if time.monotonic() >= self._next_backlog_report:
            self._next_backlog_report = time.monotonic() + 5.0
            self.say(f"waiting for quiet: {self.backlog()}")
        messages = self.db[schema.MESSAGES]
        return (messages.count_documents({"state": {"$nin": [schema.DEAD]}}) == 0
                and messages.count_documents({"outbox.0": {"$exists": True}}) == 0
                and self.unpublished_intents() == 0
                and self.db[schema.EVENTS].count_documents({}) == 0
                and self.db[schema.LEASES].count_documents({"journal.seq": {"$exists": True}}) == 0)

    def stop_role(self, role: str) -> None:
        children = [c for c in self.children.values() if c.role == role]
        for child in children:
            with contextlib.suppress(ProcessLookupError):
                child.process.send_signal(signal.SIGTERM)
        for child in children:
            try:
                code = child.process.wait(30)
            except subprocess.TimeoutExpired:
                self.say(f"{role} {child.index} (pid {child.pid}) ignored SIGTERM; killing it")
                child.process.kill()
                code = child.process.wait()
            if code != 0:
                self.say(f"{role} {child.index} (pid {child.pid}) exited with {code}")

    def cleanup(self) -> list[int]:
        """Kill whatever is left (stopped ones too) and the engine; return pids still alive.

        Besides the pids it started, any process whose command line names the run
        folder (every child and engine of this run does) counts as left over.
        """
        import psutil

        everyone = list(self.children.values()) + self.retired
        for child in everyone:
            if child.process.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(child.pid, signal.SIGKILL)
                    os.kill(child.pid, signal.SIGCONT)
        for child in everyone:
            with contextlib.suppress(subprocess.TimeoutExpired):
                child.process.wait(10)
        engine_pid = self.engine.pid if self.engine else None
        if self.engine is not None:
            self.engine.stop()
        if self.client is not None:
            self.client.close()
        pids = {c.pid for c in everyone} | ({engine_pid} if engine_pid else set())
        for process in psutil.process_iter(["cmdline"]):
            if any(str(self.run_dir) in part for part in process.info["cmdline"] or ()):
                pids.add(process.pid)
        pids.discard(os.getpid())
        return sorted(pid for pid in pids if _running(pid))


# -- the checks ------------------------------------------------------------------------


@dataclass
class Report:
    sections: list[str] = field(default_factory=list)
    violations: list[str] = field(default_factory=list)
    info: list[str] = field(default_factory=list)


def _table(headers: list[str], rows: list[list[Any]], indent: str = "  ") -> str:
    cells = [headers] + [[str(cell) for cell in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    lines = []
    for number, row in enumerate(cells):
        parts = [cell.ljust(width) if i == 0 else cell.rjust(width)
                 for i, (cell, width) in enumerate(zip(row, widths, strict=True))]
        lines.append(indent + "  ".join(parts).rstrip())
        if number == 0:
            lines.append(indent + "  ".join("-" * width for width in widths))
    return "\n".join(lines)


def _bounded(value: float, low: float, high: float) -> float:
    """0 inside [low, high], else the signed distance to the nearest bound."""
    if value < low:
        return value - low
    if value > high:
        return value - high
    return 0


def _number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else f"{value:.2f}"


def pair_verdict(earlier: dict[str, Any], later: dict[str, Any], settles: dict[Any, Any],
                 killed_at: dict[int, float]) -> str:
    """Why ``later`` could claim the message ``earlier`` held (or the violation it shows)."""
    settle = settles.get((earlier["mid"], earlier["token"]))
    claimed = later["claimed"]
    if settle and settle["ok"] and settle["ack"]:
        return "despite an accepted ack"  # an accepted ack ends the message for good
    if claimed >= earlier["lease"] - 0.001:
        return "lease expired"
    killed = killed_at.get(earlier["pid"])
    if killed is not None and claimed >= killed:
        return "holder killed"
    if settle and (settle["ok"] or settle.get("uncertain")) and not settle["ack"] \
            and claimed >= settle["start"]:
        return "failed attempt"
    return "inside a live lease"


VIOLATING = ("despite an accepted ack", "inside a live lease")


def analyse(db: Any, run_dir: Path, journal: Journal, quiet: bool) -> Report:
    from mopq import schema
    from mopq.collectors.counters import TOTAL, counter_id, totals
    from mopq.collectors.stats import read_stats

    report = Report()
    produced, torn_p = read_records(sorted(run_dir.glob("producer-*.jsonl")))
    worked, torn_w = read_records(sorted(run_dir.glob("worker-*.jsonl")))
    if torn_p or torn_w:
        report.info.append(f"{torn_p + torn_w} line(s) torn by a SIGKILL were skipped")

    # What producers intended and were told.
    queue_of: dict[str, str] = {}
    acked: set[str] = set()
    emitted: dict[str, list[Any]] = {}
    confirmed_ops: set[str] = set()
    for record in produced:
        if record["t"] == "intent":
            for key in record["keys"]:
                queue_of[key] = record["queue"]
        elif record["t"] == "acked":
            acked.update(record["keys"])
        elif record["t"] == "emit":
            emitted[record["op"]] = record["events"]
        elif record["t"] == "emit-acked":
            confirmed_ops.update(record["ops"])
    intended = set(queue_of)

    # What handlers did.
    executions = [r for r in worked if r["t"] == "exec"]
    settles = {(r["mid"], r["token"]): r for r in worked if r["t"] == "settle"}
    for execution in executions:
        queue_of.setdefault(execution["key"], execution["queue"])

    def accepted(execution: dict[str, Any]) -> bool:  # ok, or unknown (killed, uncertain)
        settle = settles.get((execution["mid"], execution["token"]))
        return settle is None or settle["ok"] or settle.get("uncertain", False)

    # What is stored.
    stored: dict[str, dict[str, Any]] = {}
    duplicates = 0
    for document in db[schema.MESSAGES].find({}, {"body.key": 1, "queue": 1, "state": 1,
                                                  "visible_at": 1}):
        key = (document.get("body") or {}).get("key")
        if key in stored:
            duplicates += 1
        stored[key] = document
        queue_of.setdefault(key, document["queue"])
    unfinished = {k for k, d in stored.items()
                  if d["state"] in (schema.PENDING, schema.INFLIGHT, schema.DEAD)}

    written = acked | {e["key"] for e in executions} | set(stored)
    phantoms = written - intended
    succeeded = {e["key"] for e in executions if e["outcome"] == "ok" and accepted(e)}
    gone = written - unfinished
    lost = gone - succeeded
    lost_acked = lost & acked

    # Executions of one message, in claim order.
    by_message: dict[str, list[dict[str, Any]]] = collections.defaultdict(list)
    for execution in executions:
        by_message[execution["mid"]].append(execution)
    verdicts: collections.Counter[str] = collections.Counter()
    twice: collections.Counter[str] = collections.Counter()
    for runs in by_message.values():
        runs.sort(key=lambda e: (e["claimed"], e["attempt"]))
        for earlier, later in zip(runs, runs[1:], strict=False):
            verdict = pair_verdict(earlier, later, settles, journal.killed_at)
            verdicts[verdict] += 1
        successes = [i for i, e in enumerate(runs) if e["outcome"] == "ok"]
        if len(successes) > 1:
            first = successes[0]
            twice[pair_verdict(runs[first], runs[first + 1], settles, journal.killed_at)] += 1

    # Zombies: the stopped worker's settle for its old token must be a refusal.
    zombies_refused = 0
    for zombie in journal.zombies:
        settle = settles.get((zombie["mid"], zombie["token"]))
        mine = [e for e in executions
                if e["mid"] == zombie["mid"] and e["token"] == zombie["token"]]
        if settle is not None and not settle["ok"] and not settle.get("uncertain") and mine:
            zombies_refused += 1
        else:
            report.violations.append(
                f"zombie pid {zombie['pid']} on {zombie['mid']}: settle {settle}, "
                f"execution {'recorded' if mine else 'missing'}: its late ack was not refused")
    late_accepted = sum(1 for e in executions if e["outcome"] == "ok"
                        and (s := settles.get((e["mid"], e["token"])))
                        and s["ok"] and s["start"] > e["lease"])
    if late_accepted:
        report.info.append(f"{late_accepted} ack(s) accepted after their lease deadline, before "
                           "anyone else took the message (the token still matched)")

    # -- the table --
    chaos_rows = [
        ["kills worker", journal.kills["worker"]],
        ["kills producer", journal.kills["producer"]],
        ["kills collector", journal.kills["collector"]],
        ["zombies (late ack refused)", f"{len(journal.zombies)} ({zombies_refused})"],
        ["engine restarts graceful", journal.engine_restarts["graceful"]],
        ["engine restarts kill -9", journal.engine_restarts["kill -9"]],
    ]
    executed_ok = sum(1 for e in executions if e["outcome"] == "ok")
    message_rows = [
        ["written", len(written)],
        ["  acknowledged to producers", len(acked)],
        ["  intended (calls made)", len(intended)],
        ["  still stored (pending, inflight or dead)", len(unfinished)],
        ["executions (successful)", f"{len(executions)} ({executed_ok})"],
        ["lost", len(lost)],
        ["  of them acknowledged to a producer", len(lost_acked)],
        ["executed twice", sum(twice.values())],
        ["  across an expired lease", twice["lease expired"]],
        ["  after the holder was killed", twice["holder killed"]],
        ["  inside a live lease", twice["inside a live lease"]],
        ["  despite an accepted ack", twice["despite an accepted ack"]],
        ["claims inside a live lease (any outcome)", verdicts["inside a live lease"]],
        ["claims despite an accepted ack", verdicts["despite an accepted ack"]],
    ]
    if phantoms:
        message_rows.append(["phantoms (no producer intended them)", len(phantoms)])
    if duplicates:
        message_rows.append(["keys stored twice", duplicates])
    report.sections.append(_table(["chaos", "count"], chaos_rows))
    report.sections.append(_table(["messages", "count"], message_rows))

    if lost:
        report.violations.append(f"{len(lost)} message(s) lost ({len(lost_acked)} acknowledged to "
                                 f"a producer), e.g. {sorted(lost)[:5]}")
    if phantoms:
        report.violations.append(f"{len(phantoms)} phantom key(s), e.g. {sorted(phantoms)[:5]}")
    if duplicates:
        report.violations.append(f"{duplicates} key(s) stored in more than one message")
    for verdict in VIOLATING:
        if verdicts[verdict]:
            report.violations.append(f"{verdicts[verdict]} claim(s) {verdict}")

    # Counters, per queue.
    stats = read_stats(db)
    drift_rows = []
    conservation_rows = []
    for queue in QUEUES:
        row = stats["queues"].get(queue, {})
        counts = totals(db, queue)
        keys = {k for k in written if queue_of.get(k) == queue}
        mine = [e for e in executions if e["queue"] == queue]
        settled = [settles.get((e["mid"], e["token"])) for e in mine]
        acks_ok = sum(1 for s in settled if s and s["ok"] and s["ack"])
        acks_unknown = sum(1 for e, s in zip(mine, settled, strict=True) if e["outcome"] == "ok"
                           and (s is None or (not s["ok"] and s.get("uncertain"))))
        fails_ok = sum(1 for s in settled if s and s["ok"] and not s["ack"])
        fails_unknown = sum(1 for e, s in zip(mine, settled, strict=True) if e["outcome"] != "ok"
                            and (s is None or (not s["ok"] and s.get("uncertain"))))
        done = keys & gone & succeeded  # a lost key is reported as lost, not as drift
        claims = len({(e["mid"], e["token"]) for e in mine})
        dead_stored = sum(1 for k in keys if k in stored and stored[k]["state"] == schema.DEAD)
        checks = [
            ("written", row.get("written", 0), len(keys), len(keys)),
            ("done", row.get("done", 0), len(done), len(done)),
            ("done vs acks seen", row.get("done", 0), acks_ok, acks_ok + acks_unknown),
            ("failed", row.get("failed", 0), fails_ok, fails_ok + fails_unknown),
            ("claimed (>= executions)", row.get("claimed", 0), claims, float("inf")),
            ("dead (events)", counts.get(schema.DEAD_EVENT, 0), dead_stored, dead_stored),
        ]
        for name, counter, low, high in checks:
            drift = _bounded(counter, low, high)
            truth = (str(low) if low == high else f">= {low}" if high == float("inf")
                     else f"{low}..{high}")
            drift_rows.append([queue, name, counter, truth, _number(drift)])
            if drift:
                report.violations.append(f"{queue}: {name} counter {counter}, truth {truth}")
        rhs_fields = ("done", "expired", "removed", "dead", "pending", "inflight", "delayed")
        rhs = sum(row.get(f, 0) for f in rhs_fields)
        held = sum(row.get(f, 0) for f in ("pending", "inflight", "delayed"))
        conserved = row.get("written", 0) == rhs
        conservation_rows.append([queue, row.get("written", 0), rhs, row.get("done", 0),
                                  row.get("dead", 0), held,
                                  row.get("expired", 0) + row.get("removed", 0),
                                  "ok" if conserved else "VIOLATED"])
        if not conserved:
            report.violations.append(f"{queue}: written {row.get('written', 0)} != {rhs} "
                                     "(done + expired + removed + dead + pending + inflight "
                                     "+ delayed)")

    # Business metrics.
    for name in METRICS:
        document = db[schema.COUNTERS].find_one({"_id": counter_id(f"b:{name}:*", TOTAL, None)}) \
            or {}
        events = [(op, value) for op, batch in emitted.items() for n, value in batch if n == name]
        count_low = sum(1 for op, _ in events if op in confirmed_ops)
        sum_low = sum(value for op, value in events if op in confirmed_ops)
        count_high, sum_high = len(events), sum(value for _, value in events)
        for field_name, counter, low, high in (
                ("count", document.get("count", 0), count_low, count_high),
                ("sum", document.get("sum", 0), sum_low, sum_high)):
            drift = _bounded(counter, low, high)
            drift_rows.append([name, field_name, _number(counter), f"{low}..{high}",
                               _number(drift)])
            if drift:
                report.violations.append(f"metric {name}: {field_name} {counter} outside "
                                         f"[{low}, {high}] (confirmed .. intended)")
    dropped = db[schema.COUNTERS].find_one(
        {"_id": counter_id("b:mopq.events_dropped:*", TOTAL, None)})
    if dropped:
        report.info.append(f"publishers reported {dropped.get('sum', 0):.0f} dropped event(s)")

    report.sections.append(_table(["counter drift", "field", "counter", "truth", "drift"],
                                  drift_rows))
    report.sections.append(_table(
        ["conservation", "written", "= sum", "done", "dead", "held", "expired+removed", ""],
        conservation_rows))

    collector = stats["collector"]
    report.sections.append(_table(["after quiet", "value"], [
        ["quiet reached", "yes" if quiet else "NO"],
        ["events waiting", collector.get("events_waiting", 0)],
        ["collector lag (s)", collector.get("lag_seconds", 0)],
        ["events applied", collector.get("events_total", 0)],
        # Batches whose writer was killed between the insert and the publication.
        ["write intents the sweep counted",
         db[schema.WRITE_INTENTS].count_documents({"state": "swept"})],
    ]))
    if not quiet:
        report.violations.append("the system did not become quiet before the deadline")
    if collector.get("events_waiting") or collector.get("lag_seconds"):
        report.violations.append("the collectors did not catch up")
    return report


def reanalyse(run_dir: Path) -> int:
    """Check a kept run folder again: its engine data on a fresh port, its files, its journal."""
    from pymongo import MongoClient

    from mopq.engine import Engine
    from tests.helpers import free_port

    saved = json.loads((run_dir / "journal.json").read_text()) \
        if (run_dir / "journal.json").exists() else {}
    journal = Journal(kills=collections.Counter(saved.get("kills", {})),
                      killed_at={int(pid): at for pid, at in saved.get("killed_at", {}).items()},
                      zombies=saved.get("zombies", []),
                      engine_restarts=collections.Counter(saved.get("engine_restarts", {})))
    engine = Engine(port=free_port(), data=run_dir / "engine")
    client = MongoClient(engine.start(), tz_aware=True)
    try:
        report = analyse(client[DATABASE], run_dir, journal, saved.get("quiet", True))
    finally:
        client.close()
        engine.stop()
    print(render(report, f"mopq chaos: {run_dir} analysed again", []))
    return 1 if report.violations else 0


def render(report: Report, header: str, leftovers: list[int]) -> str:
    lines = [header, ""]
    for section in report.sections:
        lines += [section, ""]
    lines.append(_table(["processes", "count"], [["left running after the run", len(leftovers)]]))
    lines.append("")
    for note in report.info:
        lines.append(f"note: {note}")
    if report.violations:
        lines.append(f"VIOLATIONS ({len(report.violations)}):")
        lines += [f"  - {violation}" for violation in report.violations]
    else:
        lines.append("no violations")
    return "\n".join(lines)


# -- entry -----------------------------------------------------------------------------


def _on_signal(signum: int, frame: object) -> None:
    raise KeyboardInterrupt(signal.Signals(signum).name)


def orchestrate(args: argparse.Namespace) -> int:
    seed = args.seed if args.seed is not None else random.randrange(1_000_000)
    if args.keep:
        run_dir = Path(args.keep).resolve()
        if run_dir.exists() and any(run_dir.iterdir()):
            print(f"chaos: --keep {run_dir} is not empty", file=sys.stderr)
            return 2
        run_dir.mkdir(parents=True, exist_ok=True)
    else:
        run_dir = Path(tempfile.mkdtemp(prefix="mopq-chaos-"))
    chaos = Chaos(args.minutes, seed, run_dir)
    budget = SETUP_SECONDS + chaos.seconds * 1.3 + quiet_seconds(chaos.seconds) + FINISH_SECONDS

    def too_late(signum: int, frame: object) -> None:
        raise Deadline(f"the run passed its hard deadline of {budget:.0f} s")

    signal.signal(signal.SIGALRM, too_late)
    signal.signal(signal.SIGTERM, _on_signal)
    signal.alarm(int(budget))
    report: Report | None = None
    failure = None
    try:
        report = chaos.run()
    except (KeyboardInterrupt, Exception) as error:  # Deadline too: report, clean up, exit 1
        failure = f"{type(error).__name__}: {error}"
        if not isinstance(error, Deadline | KeyboardInterrupt):
            traceback.print_exc()
    finally:
        signal.alarm(0)
        leftovers = chaos.cleanup()
    header = (f"mopq chaos: seed {seed}, {chaos.seconds / 60:g} min of chaos, "
              f"{time.monotonic() - chaos.began:.0f} s in all, engine H2 on 127.0.0.1:{chaos.port}"
              + (" (MOPQ_ENGINE_ACK_BEFORE_COMMIT=1)"
                 if os.environ.get("MOPQ_ENGINE_ACK_BEFORE_COMMIT") == "1" else ""))
    if report is None:
        report = Report(violations=[f"the run did not finish: {failure}"])
    if leftovers:
        report.violations.append(f"processes left running: {leftovers}")
    table = render(report, header, leftovers)
    print(table, flush=True)
    with contextlib.suppress(OSError):
        (run_dir / "report.txt").write_text(table + "\n")
    failed = bool(report.violations)
    if args.keep or failed:
        print(f"run folder (logs, ground truth, engine data): {run_dir}", flush=True)
    else:
        shutil.rmtree(run_dir, ignore_errors=True)
    return 1 if failed else 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.chaos",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=DEFAULT_MINUTES,
                        help=f"length of the chaos phase (default {DEFAULT_MINUTES:g})")
    parser.add_argument("--seed", type=int, default=None, help="seed of the schedule")
    parser.add_argument("--keep", metavar="DIR", default=None,
                        help="keep logs, ground truth and engine data in DIR (must be empty)")
    parser.add_argument("--reanalyse", metavar="DIR", default=None,
                        help="check a folder kept with --keep again, without running anything")
    parser.add_argument("--role", choices=sorted(CHILDREN), help=argparse.SUPPRESS)
    parser.add_argument("--index", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--dir", help=argparse.SUPPRESS)
    parser.add_argument("--uri", help=argparse.SUPPRESS)
    parser.add_argument("--parent", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.role:
        _die_with_parent(args.parent)
        import logging

        logging.basicConfig(level=logging.WARNING,
                            format="%(asctime)s %(levelname)s %(name)s: %(message)s")
        return CHILDREN[args.role](args)
    if args.reanalyse:
        return reanalyse(Path(args.reanalyse).resolve())
    if args.minutes <= 0:
        parser.error("--minutes must be more than 0")
    return orchestrate(args)


if __name__ == "__main__":
    sys.exit(main())
