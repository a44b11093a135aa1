"""Doorbells: a write rings the consumers waiting on its queue, so they claim at once.

Why: polling alone cannot give both a quick pickup and a quiet engine (a
claim attempt every 10 ms is 100 queries a second per idle consumer). So a
process that waits for messages (a ``Worker``, or ``Queue.read(wait=...)``)
listens on a UDP port of its own and says so in the ``doorbells``
collection; after a write commits, the writer sends one datagram to each
live doorbell of that queue. A ring carries no message, only "look now":
the consumer then claims as usual, by compare-and-set, so a ring that is
lost, late, repeated or forged can cost a query but never a message. Waiting
consumers still look every ``FALLBACK_POLL_SECONDS`` in case a ring was lost
(another host's firewall, NAT, a writer in another language that does not
ring). Everything here is plain MongoDB documents and UDP: it works the same
on MongoDB and on the embedded engine.

A doorbell document, ``_id`` the identity ``ip:port:start_time:pid`` of the
listening process (a Worker's identity names this port)::

    {_id, ip, port, database, queues: [name, ...], expires_at}

renewed every ``RENEW_SECONDS`` while the process waits on those queues; an
expired one is ignored by writers and removed by the monitor. A datagram is
``<database>\\0<queue>`` in UTF-8.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import logging
import os
import socket
import threading
import time
from collections.abc import Iterable

import psutil
from pymongo.database import Database
from pymongo.errors import PyMongoError

from mopq import schema
from mopq.clock import utcnow
from mopq.config import settings
from mopq.hosts import host_ip

log = logging.getLogger("mopq.doorbell")

FALLBACK_POLL_SECONDS = 1.0
RENEW_SECONDS = 5.0
EXPIRE_SECONDS = 15.0
# Targets of a writer are re-read from ``doorbells`` at most this often.
TARGETS_MAX_AGE_SECONDS = 1.0
# After a ring that found nothing to claim (another consumer was faster, or the ring
# was forged), the next ring is answered no sooner than this: a flood of rings costs
# at most one claim attempt per gap, and no ring is ever dropped.
EMPTY_RING_GAP_SECONDS = 0.01
# Not a queue (queue names cannot hold '$'): a ring of it says the business log has new
# events. Publishers ring it after each batch; collectors wait on it between batches.
LOG = "$log"
# Likewise: a ring of it says a collector has applied a batch (counts moved). Collectors
# ring it after each batch; dashboards wait on it to read the stats and push at once.
COUNTED = "$counted"


class Doorbell:
    """This process's doorbell for one database: a UDP socket and its registration."""

    def __init__(self, db: Database, port: int = 0) -> None:
        self.db = db
        self._socket = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self._socket.bind(("0.0.0.0", port))
        self.port: int = self._socket.getsockname()[1]
        self.ip = host_ip()
        started = int(psutil.Process().create_time())
        self.identity = f"{self.ip}:{self.port}:{started}:{os.getpid()}"
        self._interest: dict[str, float] = {}     # queue -> when last waited on
        self._rung: dict[str, int] = {}           # queue -> rings so far
        self._empty_at: dict[str, float] = {}     # queue -> when a ring last found nothing
        self._condition = threading.Condition()
        self._registered: tuple[str, ...] = ()
        self._renewed_at = 0.0
        self._closed = False
        threading.Thread(target=self._listen, name="mopq-doorbell", daemon=True).start()

    # -- listening -----------------------------------------------------------------------

    def _listen(self) -> None:
        prefix = self.db.name.encode() + b"\x00"
        while not self._closed:
            try:
                datagram, _ = self._socket.recvfrom(1024)
            except OSError:
                return
            if not datagram.startswith(prefix):
                continue
            queue = datagram[len(prefix):].decode("utf-8", "replace")
            with self._condition:
                if queue in self._interest:
                    self._rung[queue] = self._rung.get(queue, 0) + 1
                    self._condition.notify_all()

    def found_nothing(self, queue: str) -> None:
        """A ring led to no claim: the next ring of this queue waits out the gap."""
        with self._condition:
            self._empty_at[queue] = time.monotonic()

    def _gap(self, queues: tuple[str, ...]) -> float:
        last = max((self._empty_at.get(queue, 0.0) for queue in queues), default=0.0)
        return max(0.0, last + EMPTY_RING_GAP_SECONDS - time.monotonic())

    def rings(self, queues: Iterable[str]) -> int:
        """A number that grows with every ring of these queues (compare before and after)."""
        with self._condition:
            return sum(self._rung.get(queue, 0) for queue in queues)

    def wait(self, queues: Iterable[str], seen: int, timeout: float) -> bool:
        """Wait until one of ``queues`` rings after ``seen`` (see ``rings``), or ``timeout``.

        Returns whether it rang. Also keeps the registration current, so that
        writers know to ring.
        """
        queues = tuple(queues)
        deadline = time.monotonic() + timeout
        while True:
            self.listen(queues)
            with self._condition:
                rang = self.rings(queues) != seen
                remaining = deadline - time.monotonic()
                if not rang and remaining > 0:
                    self._condition.wait(min(remaining, RENEW_SECONDS))
                    rang = self.rings(queues) != seen
                gap = self._gap(queues) if rang else 0.0
            if rang:
                if gap:
                    time.sleep(min(gap, max(0.0, deadline - time.monotonic())))
                return True
            if remaining <= 0:
                return False

    def ring_locally(self, queues: Iterable[str]) -> None:
        """Wake this process's waiters (a stop, or a write in this same process)."""
        with self._condition:
            for queue in queues:
                self._rung[queue] = self._rung.get(queue, 0) + 1
            self._condition.notify_all()

    # -- registration --------------------------------------------------------------------

    def listen(self, queues: Iterable[str]) -> None:
        """Say (at most every few seconds) that this process waits on ``queues``."""
        now = time.monotonic()
        with self._condition:
            for queue in queues:
                self._interest[queue] = now
            wanted = tuple(sorted(queue for queue, at in self._interest.items()
                                  if now - at < EXPIRE_SECONDS))
            due = wanted != self._registered or now - self._renewed_at >= RENEW_SECONDS
            if due:
                self._registered, self._renewed_at = wanted, now
        if due:
            self._register(wanted)

    def _register(self, queues: tuple[str, ...]) -> None:
        try:
            self.db[schema.DOORBELLS].update_one(
                {"_id": self.identity},
                {"$set": {"ip": self.ip, "port": self.port, "database": self.db.name,
                          "queues": list(queues),
                          "expires_at": utcnow() + dt.timedelta(seconds=EXPIRE_SECONDS)}},
                upsert=True)
        except PyMongoError as error:
            self._renewed_at = 0.0  # try again at the next wait
            log.debug("mopq doorbell: cannot register (%s); rings may be missed", error)

    def close(self) -> None:
        self._closed = True
        with contextlib.suppress(OSError):
            self._socket.close()
        with contextlib.suppress(PyMongoError):
            self.db[schema.DOORBELLS].delete_one({"_id": self.identity})


class Ringer:
    """Rings the doorbells of a queue after a write (one per process and database)."""

    def __init__(self, db: Database) -> None:
        self.db = db
        self.enabled = settings().rings  # read once: the environment is read per call otherwise
        self._socket = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self._targets: dict[str, list[tuple[str, int]]] = {}
        self._read_at = 0.0
        self._lock = threading.Lock()

    def _stale(self) -> bool:
        return time.monotonic() - self._read_at >= TARGETS_MAX_AGE_SECONDS

    def _reread_targets(self) -> dict[str, list[tuple[str, int]]]:
        with self._lock:
            if not self._stale():  # another thread read them meanwhile
                return self._targets
            targets: dict[str, list[tuple[str, int]]] = {}
            try:
                for bell in self.db[schema.DOORBELLS].find(
                        {"database": self.db.name, "expires_at": {"$gt": utcnow()}},
                        {"ip": 1, "port": 1, "queues": 1}):
                    for queue in bell.get("queues") or []:
                        targets.setdefault(queue, []).append((bell["ip"], int(bell["port"])))
            except PyMongoError as error:
                log.debug("mopq doorbell: cannot read doorbells (%s)", error)
            self._targets, self._read_at = targets, time.monotonic()
            return targets

    def ring(self, queue: str) -> int:
        """Ring every live doorbell of ``queue``; return how many were rung. Never raises.

        The doorbells known from the last read are rung first and only then, if
        that read is stale, the collection is read again and any doorbell new
        to it is rung too: so a consumer known already is not kept waiting by
        that read (a round trip, every ``TARGETS_MAX_AGE_SECONDS`` at most).
        """
        if not self.enabled:
            return 0
        datagram = self.db.name.encode() + b"\x00" + queue.encode()
        local = _doorbells.get((os.getpid(), id(self.db.client), self.db.name))
        if local is not None:
            local.ring_locally([queue])
        rung: set[tuple[str, int]] = set()
        self._send(datagram, self._targets.get(queue, []), rung)
        if self._stale():
            self._send(datagram, self._reread_targets().get(queue, []), rung)
        return len(rung)

    def _send(self, datagram: bytes, targets: list[tuple[str, int]],
              rung: set[tuple[str, int]]) -> None:
        """Send ``datagram`` to each of ``targets`` not in ``rung``, and add it there."""
        for address in targets:
            if address not in rung:
                rung.add(address)
                with contextlib.suppress(OSError):
                    self._socket.sendto(datagram, address)


_doorbells: dict[tuple[int, int, str], Doorbell] = {}
_ringers: dict[tuple[int, int, str], Ringer] = {}
_registry_lock = threading.Lock()


def doorbell_for(db: Database, port: int = 0) -> Doorbell:
    """This process's doorbell for ``db`` (a new one after a fork)."""
    key = (os.getpid(), id(db.client), db.name)
    with _registry_lock:
        bell = _doorbells.get(key)
        if bell is None:
            bell = _doorbells[key] = Doorbell(db, port)
        return bell


def ringer_for(db: Database) -> Ringer:
    key = (os.getpid(), id(db.client), db.name)
    with _registry_lock:
        ringer = _ringers.get(key)
        if ringer is None:
            ringer = _ringers[key] = Ringer(db)
        return ringer
