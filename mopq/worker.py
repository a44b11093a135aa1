"""``Worker``: run a handler over messages of one or more queues, with heartbeats.

Each thread claims from its queues round-robin, calls ``handler(message)``,
acknowledges the message if the handler returns and records a failed attempt
(with the traceback) if it raises. Where handlers are quick, a thread claims
several messages of a queue at once (as many as its handlers lately got
through in about ``PREFETCH_SECONDS``, at most ``MAX_PREFETCH``; one while
that is unknown, or when the queue is rate limited) in two round trips, and
one acknowledger thread acknowledges handled messages in bulk (one round trip
for all that finished meanwhile), so a message costs a fraction of a round
trip instead of two. What it claimed ahead but has not started goes back to
the queue at once (``mopq.message.release_all``: pending again, the attempt
not counted) when the worker stops or goes quiet, the queue is paused, or it
waited longer than ``PREFETCH_HOLD_SECONDS`` (or a quarter of its lease). It
names itself ``ip:port:start_time:pid`` and claims under that name
(``leased_by`` on the message), so the monitor can give back the messages of
a worker whose heartbeat stopped; the visibility timeout gives them back in
any case. Delivery is at least once: a worker killed after the work and
before the acknowledgement leaves the message to be delivered again, so
handlers must be idempotent.

Identity ``ip:port:start_time:pid``:

* ip — the first non-loopback IPv4 address of this host's interfaces
  (``psutil.net_if_addrs()``; no socket is opened to discover it), else
  ``127.0.0.1``;
* port — the ``port`` argument, else the lowest TCP port this process
  listens on (a worker embedded in a web server), else 0;
* start_time — the process's start time, whole epoch seconds (so a reused
  pid is a different worker);
* pid — ``os.getpid()``.

The heartbeat document, in the ``workers`` collection (``_id`` = identity),
is upserted when the worker starts, rewritten every ``heartbeat_interval``
seconds by a daemon thread and at once when the worker starts stopping or
goes quiet, and marked ``stopped`` on a clean stop::

    {_id: "ip:port:start_time:pid",
     ip, port, pid, hostname,
     started_at,          # datetime: when run() began
     heartbeat_at,        # datetime: the last beat
     queues: [name, ...], routing_key, concurrency, visibility_timeout,
     state,               # "running", "quiet", "stopping" or "stopped"
     current: [{message_id: str, queue, since: datetime}, ...],
                          # the messages being handled, as of the last beat
     processed,           # messages acknowledged by this worker
     failed,              # failed attempts this worker recorded
     stopped_at}          # datetime of a clean stop, else None

A worker that dies without stopping (SIGKILL, power loss) leaves its document
in "running" or "stopping" with an old ``heartbeat_at``; telling alive, stale,
dead and zombie workers apart from that is the monitor's job.

Stopping: SIGTERM or SIGINT (handlers installed only when ``run()`` is called
in the main thread) or ``stop()``: stop claiming, let every handler that is
running finish and its message be acknowledged or failed, give back what was
claimed ahead and not started, write "stopped", return. A second signal while
stopping exits at once (``SystemExit``); the messages still held then come
back when their lease expires.

Control: each beat is one ``find_one_and_update`` that also returns the
``control`` an admin set on the document (``mopq.control``: the dashboard,
its API, ``mopq workers``), so a request is honoured at the next beat: stop
is a graceful stop as above; quiet stops claiming (handlers running finish,
beats go on, ``state`` "quiet") until resume.
"""

from __future__ import annotations

import collections
import datetime as dt
import functools
import logging
import os
import signal
import socket
import threading
import time
from collections.abc import Callable, Iterable
from typing import Any

import psutil
from pymongo import ReturnDocument
from pymongo.errors import PyMongoError

from mopq import control, schema, validation
from mopq.clock import utcnow
from mopq.config import settings
from mopq.connection import get_database
from mopq.doorbell import doorbell_for, ringer_for
from mopq.errors import InvalidInput, LeaseLost
from mopq.history import checked_result
from mopq.hosts import host_ip, listening_port
from mopq.message import Message, acknowledge_all, release_all
from mopq.queue import MAX_VISIBILITY_TIMEOUT, Backoff, Queue, first_claimable

log = logging.getLogger("mopq.worker")

RUNNING = schema.WORKER_RUNNING
QUIET = schema.WORKER_QUIET
STOPPING = schema.WORKER_STOPPING
STOPPED = schema.WORKER_STOPPED

FIRST_IDLE_WAIT_SECONDS = 0.05
FIRST_ERROR_WAIT_SECONDS = 0.5
MAX_ERROR_WAIT_SECONDS = 10.0
FINAL_WRITE_LOCK_SECONDS = 15.0
MAX_SETTLE_RETRY_WAIT_SECONDS = 2.0
# Idle threads other than the one that looks every poll_interval wait this long for a
# ring (a lost ring is found by the lookout, which then wakes them).
SIBLING_WAIT_SECONDS = 30.0
# Claiming ahead: a thread claims as many messages of a queue at once as its handlers,
# by their recent durations there, get through in about PREFETCH_SECONDS (one at first,
# at most MAX_PREFETCH). One it has not started within PREFETCH_HOLD_SECONDS (or a
# quarter of its lease) goes back to the queue, with the rest it holds.
PREFETCH_SECONDS = 0.1
MAX_PREFETCH = 32
PREFETCH_HOLD_SECONDS = 1.0
# The acknowledger waits this long after the first of a batch, so that acks go in bulk.
ACK_GATHER_SECONDS = 0.005
MAX_ACK_BATCH = 500

Handler = Callable[[Message], object]



def _positive_seconds(name: str, value: object, maximum: float | None = None) -> float:
    seconds = validation.non_negative(name, value)
    assert seconds is not None
    if seconds == 0 or (maximum is not None and seconds > maximum):
        limit = f" and at most {maximum:g}" if maximum is not None else ""
        raise InvalidInput(f"{name} must be more than 0{limit} seconds, got {value!r}.")
    return seconds


class Worker:
    """Run ``handler(message)`` over the messages of ``queues`` in ``concurrency`` threads.

    ``handler`` returning acknowledges the message (``Message.delete``); raising
    records a failed attempt with the traceback (``Message.fail``), so the
    message is retried after the queue's backoff and is dead after
    ``max_attempts``. ``run()`` blocks until stopped; ``start()`` runs it in a
    background thread; ``stop()`` stops it gracefully.
    """

    def __init__(self, queues: str | Iterable[str], handler: Handler, concurrency: int = 1, *,
                 uri: str | None = None, database: str | None = None,
                 visibility_timeout: float | None = None, heartbeat_interval: float = 5.0,
                 routing_key: str | None = None, max_attempts: int | None = None,
                 backoff: Backoff | None = None, poll_interval: float = 1.0,
                 port: int | None = None) -> None:
        names = [queues] if isinstance(queues, str) else list(queues)
        names = list(dict.fromkeys(validation.queue_name(name) for name in names))
        if not names:
            raise InvalidInput("A worker needs at least one queue name.")
        if not callable(handler):
            raise InvalidInput(f"handler must be a function taking a Message, got {handler!r}.")
        self.handler = handler
        self.concurrency = validation.integer("concurrency", concurrency, 1, 1000)
        # None: each queue's policy (mopq.policy), 30 s unless stored.
        self.visibility_timeout = None if visibility_timeout is None else _positive_seconds(
            "visibility_timeout", visibility_timeout, MAX_VISIBILITY_TIMEOUT)
        self.heartbeat_interval = _positive_seconds("heartbeat_interval", heartbeat_interval)
        self.poll_interval = _positive_seconds("poll_interval", poll_interval)
        self.routing_key = validation.optional_key("routing_key", routing_key)
        if port is not None:
            port = validation.integer("port", port, 0, 65535)

        process = psutil.Process()
        self.pid = os.getpid()
        self.ip = host_ip()
        self.hostname = socket.gethostname()
        self.db = get_database(uri, database)
        # Writers ring the worker on its doorbell's port, the port its identity names.
        self.doorbell = doorbell_for(self.db, port or 0) if settings().rings else None
        if port is None:
            port = self.doorbell.port if self.doorbell else listening_port(process)
        self.port = port
        self.identity = f"{self.ip}:{self.port}:{int(process.create_time())}:{self.pid}"

        self.queues = [Queue(name, db=self.db, max_attempts=max_attempts,
                             backoff=backoff, worker=self.identity) for name in names]
        self.workers = self.db[schema.WORKERS]

        self.started_at: dt.datetime | None = None
        self.stopped_at: dt.datetime | None = None
        self._processed = 0
        self._failed = 0
        self._current: dict[int, dict[str, Any]] = {}
        self._lock = threading.Lock()
        self._write_lock = threading.Lock()
        self._final_written = False
        self._ran = False
        self._stopping = threading.Event()
        self._taking = threading.Event()  # cleared while quiet (mopq.control)
        self._taking.set()
        self._beat_now = threading.Event()
        self._heartbeat_done = threading.Event()
        self._started = threading.Event()
        self._finished = threading.Event()
        self._loop_threads: set[int] = set()
        self._thread: threading.Thread | None = None
        self._beat_failing = False
        self._names = [queue.name for queue in self.queues]
        self._lookout = threading.Lock()
        # Per loop thread (by ident): messages claimed ahead, not started, and when claimed.
        self._held: dict[int, collections.deque[tuple[Message, float]]] = {}
        self._pace: dict[str, float] = {}  # queue name -> seconds a handler takes there
        self._acks: list[Message] = []
        self._acks_ready = threading.Condition()
        self._acks_closing = False
        # Queues found empty: name -> (its ring marker then, when); see _skippable.
        self._empty: dict[str, tuple[int, float]] = {}
        self._looking_again = threading.Lock()  # one thread at a time: _look_again
        self._own_rings: collections.Counter[str] = collections.Counter()
        self._rings_lock = threading.Lock()

    def __repr__(self) -> str:
        return (f"Worker({self.identity!r}, queues={[q.name for q in self.queues]!r}, "
                f"concurrency={self.concurrency})")

    # -- what the heartbeat shows ------------------------------------------------

    @property
    def processed(self) -> int:
        """Messages this worker acknowledged."""
        with self._lock:
            return self._processed

    @property
    def failed(self) -> int:
        """Failed attempts this worker recorded (handler exceptions)."""
        with self._lock:
            return self._failed

    @property
    def state(self) -> str:
        if self._finished.is_set():
            return STOPPED
        return self._live_state()

    def _live_state(self) -> str:
        if self._stopping.is_set():
            return STOPPING
        return RUNNING if self._taking.is_set() else QUIET

    def current(self) -> list[dict[str, Any]]:
        """The messages being handled now: ``{message_id, queue, since}`` each."""
        with self._lock:
            return [dict(entry) for entry in self._current.values()]

    def _document(self, state: str, now: dt.datetime) -> dict[str, Any]:
        with self._lock:
            current = [dict(entry) for entry in self._current.values()]
            processed, failed = self._processed, self._failed
        return {"ip": self.ip, "port": self.port, "pid": self.pid, "hostname": self.hostname,
                "started_at": self.started_at, "heartbeat_at": now,
                "queues": [queue.name for queue in self.queues],
                "routing_key": self.routing_key, "concurrency": self.concurrency,
                "visibility_timeout": self.visibility_timeout, "state": state,
                "current": current, "processed": processed, "failed": failed,
                "stopped_at": now if state == STOPPED else None}

    def _beat(self) -> None:
        """Write the heartbeat document (upsert: a beat also registers a late start).

        The same command reads back what an admin asked of the worker (its
        ``control``), which is then honoured.
        """
        with self._write_lock:
            if self._final_written:
                return
            try:
                written = self.workers.find_one_and_update(
                    {"_id": self.identity},
                    {"$set": self._document(self._live_state(), utcnow())}, upsert=True,
                    projection={control.FIELD: 1}, return_document=ReturnDocument.AFTER)
            except PyMongoError as error:
                if not self._beat_failing:
                    log.warning("mopq worker %s: cannot write its heartbeat (%s); retrying "
                                "every %.1f s", self.identity, error, self.heartbeat_interval)
                self._beat_failing = True
                return
        if self._beat_failing:
            log.info("mopq worker %s: heartbeat written again", self.identity)
            self._beat_failing = False
        self._obey(written)

    def _obey(self, document: dict[str, Any] | None) -> None:
        """Do what the worker's document asks (``mopq.control``), once per change."""
        command = control.requested(document)
        if self._stopping.is_set():
            return
        asked = (document or {}).get(control.FIELD) or {}
        who = (asked.get("by") or {}).get("name") or "someone"
        if command == control.STOP:
            log.info("mopq worker %s: asked by %s to stop; finishing current messages, then "
                     "stopping", self.identity, who)
            self._request_stop()
        elif command == control.QUIET and self._taking.is_set():
            log.info("mopq worker %s: asked by %s to go quiet; taking no new messages until "
                     "resumed", self.identity, who)
            self._taking.clear()
            self._beat_now.set()  # report "quiet" now rather than at the next beat
        elif command != control.QUIET and not self._taking.is_set():
            log.info("mopq worker %s: asked by %s to resume; taking messages again",
                     self.identity, who)
            self._taking.set()
            self._beat_now.set()

    def _write_stopped(self) -> None:
        acquired = self._write_lock.acquire(timeout=FINAL_WRITE_LOCK_SECONDS)
        try:
            now = utcnow()
            self.stopped_at = now
            self.workers.update_one({"_id": self.identity},
                                    {"$set": self._document(STOPPED, now)}, upsert=True)
            self._final_written = True
        except PyMongoError as error:
            log.warning("mopq worker %s: stopped, but cannot record it (%s)",
                        self.identity, error)
        finally:
            if acquired:
                self._write_lock.release()

    def _heartbeat_loop(self) -> None:
        while True:
            self._beat_now.wait(self.heartbeat_interval)
            self._beat_now.clear()
            if self._heartbeat_done.is_set():
                return
            try:
                self._beat()
            except Exception:  # never let the heartbeat die: the monitor would call us dead
                log.exception("mopq worker %s: heartbeat error", self.identity)

    # -- running -----------------------------------------------------------------

    def _mark_ran(self) -> None:
        with self._lock:
            if self._ran:
                raise RuntimeError("A Worker runs once; create a new Worker to run again.")
            self._ran = True
        self._started.set()

    def run(self) -> None:
        """Work until stopped (SIGTERM/SIGINT when in the main thread, or ``stop()``)."""
        self._mark_ran()
        self._run()

    def start(self) -> threading.Thread:
        """Run the worker in a background (daemon) thread; return that thread."""
        self._mark_ran()
        self._thread = threading.Thread(target=self._run, name=f"mopq-worker {self.identity}",
                                        daemon=True)
        self._thread.start()
        return self._thread

    def stop(self, wait: bool = True, timeout: float | None = None) -> bool:
        """Stop claiming, let running handlers finish, record "stopped".

        With ``wait`` (and unless called from a handler), block until the worker
        has stopped or ``timeout`` passed; return whether it has stopped.
        """
        self._request_stop()
        if not wait or not self._started.is_set():
            return self._finished.is_set() or not self._started.is_set()
        if threading.get_ident() in self._loop_threads:
            return False  # a handler asking its own worker to stop cannot wait for itself
        return self._finished.wait(timeout)

    def _request_stop(self) -> None:
        self._stopping.set()
        self._taking.set()  # a quiet loop wakes, sees the stop and ends
        self._beat_now.set()
        if self.doorbell is not None:  # wake the threads waiting for a message
            self.doorbell.ring_locally(self._names)

    def _on_signal(self, signum: int, frame: object) -> None:
        if self._stopping.is_set():
            log.warning("mopq worker %s: second %s while stopping; exiting now (held messages "
                        "come back when their lease expires)", self.identity,
                        signal.Signals(signum).name)
            raise SystemExit(128 + signum)
        log.info("mopq worker %s: %s received; finishing current messages, then stopping "
                 "(send it again to exit at once)", self.identity, signal.Signals(signum).name)
        self._request_stop()

    def _install_signal_handlers(self) -> dict[int, Any]:
        if threading.current_thread() is not threading.main_thread():
            return {}
        return {signum: signal.signal(signum, self._on_signal)
                for signum in (signal.SIGTERM, signal.SIGINT)}

    def _run(self) -> None:
        previous = self._install_signal_handlers()
        try:
            self.started_at = utcnow()
            self._beat()
            heartbeat = threading.Thread(target=self._heartbeat_loop, daemon=True,
                                         name=f"mopq-heartbeat {self.identity}")
            heartbeat.start()
            acknowledger = threading.Thread(target=self._ack_loop, daemon=True,
                                            name=f"mopq-acks {self.identity}")
            acknowledger.start()
            loops = [threading.Thread(target=self._loop, args=(index,), daemon=True,
                                      name=f"mopq-worker-{index} {self.identity}")
                     for index in range(self.concurrency)]
            for thread in loops:
                thread.start()
            log.info("mopq worker %s: consuming %s with %d thread(s)", self.identity,
                     ", ".join(queue.name for queue in self.queues), self.concurrency)
            for thread in loops:
                while thread.is_alive():
                    thread.join(1.0)
            with self._acks_ready:
                self._acks_closing = True
                self._acks_ready.notify()
            while acknowledger.is_alive():
                acknowledger.join(1.0)
            self._stopping.set()
            self._heartbeat_done.set()
            self._beat_now.set()
            heartbeat.join(FINAL_WRITE_LOCK_SECONDS)
            self._write_stopped()
            log.info("mopq worker %s: stopped (%d processed, %d failed)", self.identity,
                     self.processed, self.failed)
        finally:
            self._finished.set()
            for signum, handler in previous.items():
                signal.signal(signum, handler)

    def _loop(self, index: int) -> None:
        self._loop_threads.add(threading.get_ident())
        turn = index % len(self.queues)
        idle_wait = 0.0
        error_wait = 0.0
        rang = False
        everywhere = True  # look in every queue, even those found empty just now
        while not self._stopping.is_set():
            if not self._taking.is_set():  # quiet: wait for resume (or a stop)
                self._give_back("the worker is quiet")
                self._taking.wait()
                everywhere = True
                continue
            seen = self.doorbell.rings(self._names) if self.doorbell else 0
            try:
                message, turn = self._claim(turn, everywhere)
                everywhere = False
            except PyMongoError as error:
                error_wait = min(MAX_ERROR_WAIT_SECONDS,
                                 max(FIRST_ERROR_WAIT_SECONDS, error_wait * 2))
                log.warning("mopq worker %s: cannot claim (%s); retrying in %.1f s",
                            self.identity, error, error_wait)
                self._stopping.wait(error_wait)
                continue
            except Exception:
                error_wait = min(MAX_ERROR_WAIT_SECONDS,
                                 max(FIRST_ERROR_WAIT_SECONDS, error_wait * 2))
                log.exception("mopq worker %s: error while claiming; retrying in %.1f s",
                              self.identity, error_wait)
                self._stopping.wait(error_wait)
                continue
            error_wait = 0.0
            if message is not None:
                idle_wait = 0.0
                rang = False  # the ring led to a claim: the next empty look is no wasted ring
                if self.doorbell is not None and self.concurrency > 1:
                    self._wake(self._names)  # more may wait: wake a sibling
                # An activity step's acknowledgement may claim its next step for this thread.
                message.follow = functools.partial(self._follow, threading.get_ident())
                self._handle(index, message)
                continue
            throttled = [queue.throttled_for() for queue in self.queues]
            if all(throttled):  # every queue's rate limit says wait: until a window opens
                self._stopping.wait(min(throttled))
                continue
            if self.doorbell is None:
                idle_wait = min(self.poll_interval, max(FIRST_IDLE_WAIT_SECONDS, idle_wait * 2))
                self._stopping.wait(idle_wait)
                continue
            if rang:
                for name in self._names:
                    self.doorbell.found_nothing(name)
            rang = self._wait_for_ring(seen)
            everywhere = not rang  # a look every poll_interval finds what rang no bell
        self._give_back("the worker is stopping")

    def _wait_for_ring(self, seen: int) -> bool:
        """Wait for a ring; one idle thread at a time also looks every poll_interval.

        So an idle worker sends the engine one claim attempt per queue and
        poll_interval whatever its concurrency; a ring wakes every thread.
        """
        assert self.doorbell is not None
        if self._lookout.acquire(blocking=False):
            try:
                return self.doorbell.wait(self._names, seen, self.poll_interval)
            finally:
                self._lookout.release()
        return self.doorbell.wait(self._names, seen, SIBLING_WAIT_SECONDS)

    def _follow(self, thread: int, name: str
                ) -> tuple[Queue, float | None, Callable[[Message], None]] | None:
        """Queue ``name``, this worker's lease (None: the queue's) and where a message
        claimed there goes (``thread``'s messages claimed ahead), if that thread would take
        one now (``mopq.activities.transitions``: claim on move)."""
        queue = next((queue for queue in self.queues if queue.name == name), None)
        if queue is None or self._stopping.is_set() or not self._taking.is_set():
            return None

        def take(message: Message) -> None:
            self._held.setdefault(thread, collections.deque()).append(
                (message, time.monotonic()))
            if self.doorbell is not None:
                self._wake([name])  # the thread may be waiting for work
        return queue, self.visibility_timeout, take

    def _wake(self, names: list[str]) -> None:
        """Wake this worker's threads waiting for a ring, for a reason of its own (a sibling
        may claim more; a thread holds a step claimed on move): nothing new was written
        to ``names``, so ``_skippable`` does not count these rings."""
        assert self.doorbell is not None
        with self._rings_lock:  # counted before the ring: a marker read between differs
            self._own_rings.update(names)
        self.doorbell.ring_locally(names)

    def _ring_marker(self, name: str) -> int | None:
        """A number that changes when queue ``name`` rings (but for ``_wake``); None
        without a doorbell."""
        if self.doorbell is None:
            return None
        with self._rings_lock:
            own = self._own_rings[name]
        return self.doorbell.rings([name]) - own

    def _skippable(self, name: str) -> bool:
        """Whether a thread may pass over queue ``name`` without reading it: it was found
        empty less than ``poll_interval`` ago and has not rung since.

        Why: a thread whose messages claimed ahead are used up would otherwise
        read every queue again on each pass, and each candidate read scans the
        collection on the embedded engine (an activity's later steps, which
        claim on move keeps empty, cost three reads for every one that finds
        work). Pickup stays as quick: a write rings the queue (a local write at
        once, another process's through the doorbell, whose registration this
        keeps current), which ends the skip; what rings no bell (a delayed
        message coming due, an expired lease, a lost datagram) is found by the
        next look after ``poll_interval``, as an idle worker's lookout finds it.
        """
        found = self._empty.get(name)
        if found is None:
            return False
        marker, looked_at = found
        if time.monotonic() - looked_at >= self.poll_interval or \
                self._ring_marker(name) != marker:
            return False
        assert self.doorbell is not None
        self.doorbell.listen(self._names)  # so that other processes' writes ring it
        return True

    def _look_again(self, everywhere: bool) -> set[str]:
        """Look, in one query, whether the queues found empty that are due for another
        look (all of them if ``everywhere``) are empty still; return those that are.

        Each would otherwise cost a candidate read of its own to find, most
        often, nothing again. Only queues that have not rung since are asked:
        one that rang is read.
        Unless two or more are due, nothing is asked here; nor while another
        thread of this worker asks (the due queues are then passed over, as
        still empty, until its answer: one look per ``poll_interval`` is the
        contract, not one per thread).
        """
        now = time.monotonic()
        due: dict[str, int] = {}
        for name, (marker, looked_at) in list(self._empty.items()):
            current = self._ring_marker(name)
            if current == marker and (everywhere or now - looked_at >= self.poll_interval):
                due[name] = marker
        if len(due) < 2:
            return set()
        if not self._looking_again.acquire(blocking=False):
            return set(due)
        try:
            looked_at = time.monotonic()
            found = first_claimable(self.db, list(due), self.routing_key)
        finally:
            self._looking_again.release()
        if found is not None:  # that one has work: read it; the others as usual
            self._empty.pop(found, None)
            return set()
        for name, marker in due.items():
            self._empty[name] = (marker, looked_at)
        return set(due)

    def _claim(self, turn: int, everywhere: bool = True) -> tuple[Message | None, int]:
        """The next message this thread claimed ahead, else one from the first queue, from
        ``turn`` on, that has one (with more of that queue claimed ahead: ``_ahead``).

        Unless ``everywhere``, a queue found empty just now and not rung since is
        passed over (``_skippable``); queues found empty that are due for another
        look are looked at together (``_look_again``).
        """
        held = self._held.setdefault(threading.get_ident(), collections.deque())
        while held:
            message, since = held[0]
            waited = time.monotonic() - since
            if waited <= min(PREFETCH_HOLD_SECONDS, message.visibility_timeout / 4) \
                    and not message.queue.paused:
                held.popleft()
                return message, turn
            self._give_back_held(held, "paused" if message.queue.paused else
                                 f"not started {waited:.1f} s after its claim")
        still_empty = self._look_again(everywhere)
        count = len(self.queues)
        for step in range(count):
            position = (turn + step) % count
            queue = self.queues[position]
            if queue.name in still_empty or (not everywhere and self._skippable(queue.name)):
                continue
            marker, looked_at = self._ring_marker(queue.name), time.monotonic()
            # After finding the queue empty, take one: the engine picks it in one
            # round trip (Queue._claim_first), where several cost a read and a claim.
            limit = 1 if queue.found_none(self.routing_key) else self._ahead(queue)
            messages = queue.read(routing_key=self.routing_key,
                                  visibility_timeout=self.visibility_timeout, limit=limit)
            if messages:
                self._empty.pop(queue.name, None)
                claimed_at = time.monotonic()
                held.extend((message, claimed_at) for message in messages[1:])
                return messages[0], (position + 1) % count
            if marker is not None and queue.found_none(self.routing_key):
                self._empty[queue.name] = (marker, looked_at)
        return None, turn

    def _ahead(self, queue: Queue) -> int:
        """How many messages of ``queue`` to claim at once: as many as its handlers get
        through in about ``PREFETCH_SECONDS`` lately; one while unknown or rate limited."""
        pace = self._pace.get(queue.name)
        if pace is None or queue.record.rate_limit() is not None:
            return 1
        return max(1, min(MAX_PREFETCH, int(PREFETCH_SECONDS / max(pace, 1e-6))))

    def _paced(self, message: Message, seconds: float) -> None:
        """Note how long a handler took: a slower one counts at once, faster ones by halves."""
        name = message.queue.name
        before = self._pace.get(name)
        self._pace[name] = seconds if before is None or seconds > before \
            else (before + seconds) / 2

    def _give_back(self, why: str) -> None:
        held = self._held.get(threading.get_ident())
        if held:
            self._give_back_held(held, why)

    def _give_back_held(self, held: collections.deque[tuple[Message, float]], why: str) -> None:
        """Release the messages this thread claimed ahead and has not started, at once
        (``mopq.message.release_all``), so that another consumer takes them now rather
        than when their leases run out; if the engine does not answer, they come back then."""
        messages = [message for message, _ in held]
        held.clear()
        try:
            released = release_all(messages)
        except PyMongoError as error:
            log.warning("mopq worker %s: could not give back %d message(s) claimed ahead (%s); "
                        "they come back when their leases run out", self.identity,
                        len(messages), error)
            return
        log.debug("mopq worker %s: gave back %d of %d message(s) claimed ahead (%s)",
                  self.identity, len(released), len(messages), why)
        for name in {message.queue.name for message in released}:
            ringer_for(self.db).ring(name)

    def _handle(self, index: int, message: Message) -> None:
        with self._lock:
            self._current[index] = {"message_id": str(message.id), "queue": message.queue.name,
                                    "since": utcnow()}
        started = time.monotonic()
        try:
            try:
                returned = self.handler(message)
            except Exception as error:
                log.warning("mopq worker %s: handler failed on %r: %s: %s", self.identity,
                            message, type(error).__name__, error)
                if self._settle(message, error):
                    with self._lock:
                        self._failed += 1
            except BaseException as error:
                # SystemExit/KeyboardInterrupt raised by the handler itself: record the
                # attempt, then stop the whole worker, as the handler asked.
                log.warning("mopq worker %s: handler raised %s on %r; stopping", self.identity,
                            type(error).__name__, message)
                if self._settle(message, error):
                    with self._lock:
                        self._failed += 1
                self._request_stop()
            else:
                message.result = self._keepable(message, returned)
                if message.bulk_ackable:
                    self._ack_soon(message)
                elif self._settle(message, None):
                    with self._lock:
                        self._processed += 1
        finally:
            self._paced(message, time.monotonic() - started)
            with self._lock:
                self._current.pop(index, None)

    def _ack_soon(self, message: Message) -> None:
        """Hand a handled message to the acknowledger (``_ack_loop``)."""
        with self._acks_ready:
            self._acks.append(message)
            self._acks_ready.notify()

    def _ack_loop(self) -> None:
        """Acknowledge handled messages in bulk, off the handlers' threads, until closed.

        So a thread claims and handles its next message while the engine
        records the last ones, and a slow handler never holds up the
        acknowledgement of messages handled before it. Gathers for
        ``ACK_GATHER_SECONDS`` after the first so that acks go together.
        """
        while True:
            with self._acks_ready:
                while not self._acks and not self._acks_closing:
                    self._acks_ready.wait()
                if not self._acks:
                    return
                closing = self._acks_closing
            if not closing:
                time.sleep(ACK_GATHER_SECONDS)
            with self._acks_ready:
                batch = self._acks[:MAX_ACK_BATCH]
                del self._acks[:MAX_ACK_BATCH]
            try:
                accepted = self._acknowledge(batch)
            except Exception:  # never let it die: handled messages would wait for nothing
                log.exception("mopq worker %s: error while acknowledging %d message(s); they "
                              "are delivered again when their leases run out", self.identity,
                              len(batch))
                continue
            with self._lock:
                self._processed += sum(accepted)

    def _acknowledge(self, messages: list[Message]) -> list[bool]:
        """Acknowledge ``messages`` in bulk; for each, whether it was recorded.

        As ``_settle``: a lost lease is a warning, and if the engine does not
        answer, retry until the leases would expire anyway (a retry finds what
        the failed try did: ``mopq.message.acknowledge_all``).
        """
        latest = max(message.lease_expires_at for message in messages)
        deadline = time.monotonic() + max(1.0, (latest - utcnow()).total_seconds())
        wait = 0.2
        while True:
            try:
                refusals = self._acknowledge_once(messages)
                break
            except PyMongoError as trouble:
                if time.monotonic() + wait >= deadline:
                    log.warning("mopq worker %s: could not acknowledge %d message(s) (%s); "
                                "they will be delivered again when their leases expire",
                                self.identity, len(messages), trouble)
                    return [False] * len(messages)
                log.warning("mopq worker %s: could not acknowledge %d message(s) yet (%s); "
                            "retrying in %.1f s", self.identity, len(messages), trouble, wait)
                time.sleep(wait)
                wait = min(wait * 2, MAX_SETTLE_RETRY_WAIT_SECONDS)
        for refusal in refusals:
            if refusal is not None:
                log.warning("mopq worker %s: %s", self.identity, refusal)
        return [refusal is None for refusal in refusals]

    def _acknowledge_once(self, messages: list[Message]) -> list[LeaseLost | None]:
        return acknowledge_all(messages)

    def _keepable(self, message: Message, returned: object) -> object:
        """The handler's return value as the message's result, or None if it cannot be kept."""
        try:
            return checked_result(returned)
        except InvalidInput as problem:
            log.warning("mopq worker %s: the result of %r is not kept: %s", self.identity,
                        message, problem)
            return None

    def _settle(self, message: Message, error: BaseException | None) -> bool:
        """Acknowledge (``error`` None) or fail the message; True if it was recorded.

        A lost lease is a warning (another consumer may have it now). If the
        engine does not answer, retry until the lease would expire anyway: after
        that the message is delivered again, which is what at-least-once means.
        """
        what = "acknowledge" if error is None else "fail"
        remaining = (message.lease_expires_at - utcnow()).total_seconds()
        deadline = time.monotonic() + max(1.0, remaining)
        wait = 0.2
        while True:
            try:
                if error is None:
                    message.delete(result=message.result)
                else:
                    message.fail(error)
                return True
            except LeaseLost as lost:
                log.warning("mopq worker %s: %s", self.identity, lost)
                return False
            except PyMongoError as trouble:
                if time.monotonic() + wait >= deadline:
                    log.warning("mopq worker %s: could not %s %r (%s); it will be delivered "
                                "again when its lease expires", self.identity, what, message,
                                trouble)
                    return False
                log.warning("mopq worker %s: could not %s %r yet (%s); retrying in %.1f s",
                            self.identity, what, message, trouble, wait)
                time.sleep(wait)
                wait = min(wait * 2, MAX_SETTLE_RETRY_WAIT_SECONDS)
