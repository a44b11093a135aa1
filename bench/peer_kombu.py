"""kombu's MongoDB transport for bench/peers.py: a consumer process and the sender.

kombu is a messaging library, not a task queue, so its "worker" is the
consumer loop its documentation shows (``Connection.Consumer`` with a
callback, ``drain_events`` in a loop), which is what ``ConsumerMixin`` runs:
``python peer_kombu.py`` in bench/. The callback records and acknowledges.
Settings are kombu's defaults (the virtual transport polls an empty queue
every ``polling_interval`` = 1 s). ``PEERS_MONGO_URL`` names the server and
the database (``mongodb://host:port/db``); the database's ``messages.broadcast``
must exist as a plain collection (bench/peers.py creates it), because kombu
would make it capped and the embedded engine refuses capped collections.
"""

from __future__ import annotations

import os
import signal
import threading
from collections.abc import Callable

from kombu import Connection, Exchange, Producer, Queue
from peer_common import body, record_body

EXCHANGE = Exchange("bench", type="direct")
QUEUE = Queue("bench", EXCHANGE, routing_key="bench")


def url() -> str:
    return os.environ["PEERS_MONGO_URL"]


def main() -> None:
    stopping = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stopping.set())

    def on_message(document: dict, message) -> None:
        record_body(document)
        message.ack()

    with Connection(url()) as connection, \
            connection.Consumer(QUEUE, callbacks=[on_message], accept=["json"]):
        while not stopping.is_set():
            try:
                connection.drain_events(timeout=1)
            except TimeoutError:
                pass


_connection: Connection | None = None


def sender() -> Callable[[str, int, float], object]:
    global _connection
    _connection = Connection(url())
    channel = _connection.channel()
    QUEUE.bind(channel).declare()
    producer = Producer(channel, exchange=EXCHANGE, routing_key="bench", serializer="json")
    return lambda phase, seq, sent: producer.publish(body(phase, seq, sent))


def close() -> None:
    if _connection is not None:
        _connection.release()


if __name__ == "__main__":
    main()
