"""``mopq demo``: a few minutes of believable traffic, so a first look shows every page alive.

Why it exists: an empty dashboard teaches nothing. In threads of one process,
against ``MOPQ_MONGODB_URI`` (the database the dashboard reads), it runs

* producers writing to three queues: ``orders`` (some with priority, a few
  poison messages that always fail and end dead), ``emails`` (some delayed)
  and ``reports`` (slow work), plus one activity of about 500 messages;
* one worker per queue (``mopq.Worker``): order handlers fail at random and
  are retried with a short backoff, report handlers are slow and call
  ``message.progress()``;
* an activity sequence, ``fulfilment`` (reserve stock -> pack each line, a
  fan-out step -> charge -> ship), started every few seconds with its own
  worker: one order in four has its card declined at the charge step, which
  goes dead and runs the compensations (unpack, release stock) in reverse,
  so the Activities page shows instances running, completed and compensated;
* business events (``order.paid`` with a value and a region tag, ``signup``);
* a collector (unless ``--no-collector``), so the counters and charts move.

It declares ``orders: order_id`` as a search field and says which order to
search for (the first it writes: found while it waits, once done from
history, or dead), prints what it does, and stops cleanly when its time is up
or on Ctrl-C. Several demos may run at once on one machine (against
different databases).
"""

from __future__ import annotations

import datetime as dt
import itertools
import logging
import random
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from mopq import Envelope, Message, Queue, Worker, emit, exponential_backoff, flush
from mopq.activities import Activity, Step
from mopq.clock import utcnow
from mopq.connection import get_database, resolve_uri
from mopq.search import declare_search_field

QUEUES = ("orders", "emails", "reports")
REGIONS = ("eu", "us", "cn")
ACTIVITY_SIZE = 500
MAX_ATTEMPTS = 3
FIRST_ORDER_ID = 1000  # the order the Search hint names
REPORT_EVERY_SECONDS = 10.0
ACTIVITY = "fulfilment"
DECLINED_EVERY = 4      # every fourth fulfilment's card is declined: it is compensated
# Seconds between two fulfilments at the default rate of 20 messages/s (faster when higher).
FULFILMENT_EVERY_SECONDS = 3.0


def free_ports(count: int) -> list[int]:
    """``count`` different UDP ports that were free a moment ago.

    Each demo worker takes one so that, like separate processes, each has an
    identity (ip:port:start_time:pid) and a row on the Workers page; the first
    is the doorbell's. Fixed numbers made a second demo on the machine fail
    (address already in use).
    """
    probes = [socket.socket(socket.AF_INET, socket.SOCK_DGRAM) for _ in range(count)]
    try:
        for probe in probes:
            probe.bind(("0.0.0.0", 0))
        return [probe.getsockname()[1] for probe in probes]
    finally:
        for probe in probes:
            probe.close()


class PaymentDeclined(Exception):
    """A card was declined: the order handler's everyday failure."""


class GatewayTimeout(Exception):
    """The payment gateway did not answer in time."""


@dataclass
class Tally:
    """What the demo did, for its progress lines."""

    written: int = 0
    handled: int = 0
    raised: int = 0
    events: int = 0
    fulfilments: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, **counts: int) -> None:
        with self.lock:
            for name, count in counts.items():
                setattr(self, name, getattr(self, name) + count)

    def line(self) -> str:
        with self.lock:
            return (f"{self.written:,} written, {self.handled:,} handled, "
                    f"{self.raised:,} handler errors, {self.events:,} business events, "
                    f"{self.fulfilments:,} fulfilments started")


class Demo:
    """Producers, workers and a collector against one database, for a bounded time."""

    def __init__(self, uri: str | None = None, database: str | None = None, *,
                 rate: float = 20.0, collector: bool = True, seed: int | None = None,
                 say: Callable[[str], None] = print) -> None:
        self.uri = resolve_uri(uri)
        self.db = get_database(self.uri, database)
        self.database = self.db.name
        self.rate = max(0.5, float(rate))
        self.with_collector = collector
        self.say = say
        self.random = random.Random(seed)
        self.tally = Tally()
        self.stopping = threading.Event()
        self.threads: list[threading.Thread] = []
        self.workers: list[Worker] = []
        self.collector = None
        self._order_ids = itertools.count(FIRST_ORDER_ID)
        self._fulfilments = itertools.count(1)
        self.fulfilment = Activity(ACTIVITY, [
            Step("reserve", "stock-reserve", self.counted(self.reserve),
                 compensate=self.counted(self.release)),
            Step("pack", "packing", self.counted(self.pack), fan_out=True,
                 compensate=self.counted(self.unpack)),
            Step("charge", "payment-charge", self.counted(self.charge)),
            Step("ship", "shipping", self.counted(self.ship)),
        ], uri=self.uri, database=self.database, define=False)

    def queue(self, name: str) -> Queue:
        return Queue(name, uri=self.uri, database=self.database, max_attempts=MAX_ATTEMPTS,
                     backoff=exponential_backoff(first=0.5, cap=4.0))

    # -- handlers: what the workers do ------------------------------------------------------

    def handle_order(self, message: Message) -> None:
        body = message.body
        if body.get("amount", 0) < 0:
            raise ValueError(f"order {body.get('order_id')}: amount must be positive, "
                             f"got {body.get('amount')}")
        roll = self.random.random()
        if roll < 0.08:
            raise PaymentDeclined(f"card ending {self.random.randint(1000, 9999)} declined")
        if roll < 0.12:
            raise GatewayTimeout("payment gateway did not answer within 2 s")
        time.sleep(self.random.uniform(0.02, 0.15))
        self.event("order.paid", body["amount"], {"region": body["region"]})

    def handle_email(self, message: Message) -> None:
        if self.random.random() < 0.05:
            raise ConnectionError("SMTP server closed the connection")
        time.sleep(self.random.uniform(0.01, 0.05))
        if message.body.get("template") == "welcome":
            self.event("signup", 1, {"source": message.body.get("source", "web")})

    def handle_report(self, message: Message) -> None:
        steps = 1 if message.activity else self.random.randint(3, 8)
        for step in range(steps):
            if self.stopping.is_set() and step:
                break
            time.sleep(0.02 if message.activity else self.random.uniform(0.3, 0.8))
            message.progress((step + 1) / steps, f"page {step + 1} of {steps}")
        if message.activity and self.random.random() < 0.01:
            raise RuntimeError(f"row {message.body.get('row')} has a malformed date")

    # The fulfilment activity's steps: each returns what the next one reads.

    def reserve(self, message: Message) -> list[dict[str, object]]:
        time.sleep(self.random.uniform(0.02, 0.1))
        return message.body["input"]["lines"]

    def pack(self, message: Message) -> dict[str, object]:
        time.sleep(self.random.uniform(0.05, 0.3))
        return {"sku": message.body["item"]["sku"], "box": self.random.randint(1, 40)}

    def charge(self, message: Message) -> dict[str, object]:
        given = message.body["input"]
        if given.get("declined"):
            raise PaymentDeclined(f"{given['order']}: card declined")
        time.sleep(self.random.uniform(0.05, 0.2))
        return {"charged": given["amount"]}

    def ship(self, message: Message) -> dict[str, object]:
        time.sleep(self.random.uniform(0.05, 0.2))
        return {"tracking": f"TRK{self.random.randint(100_000, 999_999)}",
                "charged": message.body["previous"]["charged"]}

    def release(self, message: Message) -> None:
        time.sleep(0.02)

    def unpack(self, message: Message) -> None:
        time.sleep(0.02)

    def start_fulfilment(self) -> None:
        n = next(self._fulfilments)
        lines = [{"sku": f"SKU-{self.random.randint(100, 999)}", "quantity":
                  self.random.randint(1, 3)} for _ in range(self.random.randint(1, 4))]
        self.fulfilment.start(f"order-{n}", {
            "order": f"order-{n}", "lines": lines,
            "amount": round(self.random.uniform(5, 400), 2),
            "declined": n % DECLINED_EVERY == 0})
        self.tally.add(fulfilments=1)

    def fulfil(self) -> None:
        """Start a fulfilment now and then, the more often the higher the rate."""
        pause = FULFILMENT_EVERY_SECONDS * 20.0 / self.rate
        while not self.stopping.is_set():
            self.start_fulfilment()
            self.stopping.wait(pause)

    def counted(self, handler: Callable[[Message], object]) -> Callable[[Message], object]:
        def run(message: Message) -> object:
            try:
                result = handler(message)
            except Exception:
                self.tally.add(raised=1)
                raise
            self.tally.add(handled=1)
            return result
        return run

    def event(self, name: str, value: float, tags: dict[str, str]) -> None:
        if emit(name, value=value, tags=tags, uri=self.uri, database=self.database):
            self.tally.add(events=1)

    # -- producers ----------------------------------------------------------------------------

    def write_order(self, orders: Queue) -> None:
        order_id = next(self._order_ids)
        poison = self.random.random() < 0.03
        amount = -1.0 if poison else round(self.random.uniform(5, 400), 2)
        orders.write({"order_id": order_id, "amount": amount,
                      "region": self.random.choice(REGIONS),
                      "items": self.random.randint(1, 6)},
                     priority=9 if self.random.random() < 0.2 else 0)

    def write_email(self, emails: Queue) -> None:
        n = self.random.randint(1, 99_999)
        delayed = self.random.random() < 0.25
        emails.write({"to": f"user{n}@example.com",
                      "template": "reminder" if delayed else "welcome",
                      "source": self.random.choice(("web", "app", "partner"))},
                     delay=self.random.uniform(5, 40) if delayed else 0)

    def write_report(self, reports: Queue) -> None:
        reports.write({"report": self.random.choice(("sales", "stock", "churn")),
                       "day": dt.date.today().isoformat()})

    def produce(self) -> None:
        """Write at about ``rate`` messages a second, mostly orders and emails."""
        queues = {name: self.queue(name) for name in QUEUES}
        writers = [(0.55, lambda: self.write_order(queues["orders"])),
                   (0.35, lambda: self.write_email(queues["emails"])),
                   (0.10, lambda: self.write_report(queues["reports"]))]
        next_at = time.monotonic()
        while not self.stopping.is_set():
            roll, total = self.random.random(), 0.0
            for share, write in writers:
                total += share
                if roll < total:
                    write()
                    break
            self.tally.add(written=1)
            next_at += self.random.expovariate(self.rate)
            self.stopping.wait(max(0.0, next_at - time.monotonic()))

    def write_activity(self) -> str:
        name = f"nightly-import-{utcnow():%Y%m%d-%H%M%S}"
        ids = self.queue("reports").write_many(
            [Envelope({"row": row, "file": "customers.csv"}) for row in range(ACTIVITY_SIZE)],
            activity=name)
        self.tally.add(written=len(ids))
        return name

    # -- running ------------------------------------------------------------------------------

    def quiet_expected_failures(self) -> None:
        """Handler errors are the point of the demo: count them instead of logging each."""
        worker_log = logging.getLogger("mopq.worker")
        if not logging.getLogger().handlers and worker_log.level == logging.NOTSET:
            worker_log.setLevel(logging.ERROR)

    def start(self) -> None:
        self.quiet_expected_failures()
        declare_search_field("orders", "order_id", db=self.db)
        self.say(f"mopq demo: database {self.database!r} at {self.uri}")
        self.say("mopq demo: declared search field orders.order_id "
                 f"(try order_id={FIRST_ORDER_ID} on the Search page)")
        if self.with_collector:
            from mopq.collectors import Collector

            self.collector = Collector(self.uri, self.database).start()
            self.say(f"mopq demo: collector {self.collector.id} counting the business log")
        else:
            self.say("mopq demo: no collector (--no-collector): run `mopq collect` to count")
        handlers = {"orders": (self.handle_order, 3), "emails": (self.handle_email, 2),
                    "reports": (self.handle_report, 3)}
        for (name, (handler, concurrency)), port in zip(handlers.items(),
                                                       free_ports(len(handlers)), strict=True):
            worker = Worker([name], self.counted(handler), concurrency, uri=self.uri,
                            database=self.database, max_attempts=MAX_ATTEMPTS,
                            backoff=exponential_backoff(first=0.5, cap=4.0),
                            heartbeat_interval=2.0, poll_interval=0.5,
                            port=port)
            worker.start()
            self.workers.append(worker)
            self.say(f"mopq demo: worker {worker.identity} on {name} ({concurrency} threads)")
        self.fulfilment.define()
        steps = self.fulfilment.worker(2, max_attempts=MAX_ATTEMPTS,
                                       backoff=exponential_backoff(first=0.5, cap=4.0),
                                       heartbeat_interval=2.0, poll_interval=0.5,
                                       port=free_ports(1)[0])
        steps.start()
        self.workers.append(steps)
        self.say(f"mopq demo: worker {steps.identity} on the {ACTIVITY} activity's steps "
                 "(reserve -> pack each line -> charge -> ship; one card in "
                 f"{DECLINED_EVERY} declined, then compensated)")
        activity = self.write_activity()
        self.say(f"mopq demo: activity {activity!r}: {ACTIVITY_SIZE} messages to reports")
        for target, name in ((self.produce, "producer"), (self.fulfil, "fulfilments")):
            thread = threading.Thread(target=target, name=f"mopq-demo-{name}", daemon=True)
            thread.start()
            self.threads.append(thread)
        self.say(f"mopq demo: producing about {self.rate:g} messages/s to "
                 f"{', '.join(QUEUES)}; some fail, some are slow, a few end dead")

    def stop(self) -> None:
        self.stopping.set()
        for thread in self.threads:
            thread.join(5)
        for worker in self.workers:
            worker.stop(timeout=15)
        flush(10)
        if self.collector is not None:
            self.collector.stop(5)

    def run(self, seconds: float) -> int:
        """Run for ``seconds`` (or until Ctrl-C); return the exit status."""
        self.start()
        deadline = time.monotonic() + seconds
        next_report = time.monotonic() + REPORT_EVERY_SECONDS
        try:
            while not self.stopping.wait(max(0.0, min(deadline, next_report)
                                             - time.monotonic())):
                if time.monotonic() >= deadline:
                    break
                self.say(f"mopq demo: {self.tally.line()}")
                next_report += REPORT_EVERY_SECONDS
        except KeyboardInterrupt:
            self.say("mopq demo: interrupted")
        self.say("mopq demo: stopping (letting running handlers finish)…")
        self.stop()
        self.say(f"mopq demo: done: {self.tally.line()}. The data stays: open the "
                 "dashboard (`make run` or `mopq serve`) to look around.")
        return 0


def run(seconds: float = 120.0, rate: float = 20.0, collector: bool = True,
        uri: str | None = None, database: str | None = None) -> int:
    """What ``mopq demo`` calls."""
    return Demo(uri, database, rate=rate, collector=collector).run(seconds)
