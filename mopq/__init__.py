"""mopq: a message queue in MongoDB with a live business log.

The public API is small on purpose: ``Queue`` and ``Message`` to hand work
over, ``Worker`` to run handlers, ``emit`` for business events, ``flush`` to
wait for buffered events before a short script exits.
"""

from mopq.business import emit
from mopq.errors import (
    InvalidBody,
    InvalidInput,
    InvalidQueueName,
    LeaseLost,
    MessageCancelled,
    MessageDead,
    MessageNotFound,
    MopqError,
    ResultTimeout,
)
from mopq.message import Message
from mopq.publisher import flush_all as flush
from mopq.queue import Envelope, Queue, Written, exponential_backoff
from mopq.worker import Worker

__version__ = "0.1.0"

__all__ = [
    "Envelope",
    "InvalidBody",
    "InvalidInput",
    "InvalidQueueName",
    "LeaseLost",
    "Message",
    "MessageCancelled",
    "MessageDead",
    "MessageNotFound",
    "MopqError",
    "Queue",
    "ResultTimeout",
    "Worker",
    "Written",
    "emit",
    "exponential_backoff",
    "flush",
]
