"""Exceptions a user of mopq can catch; each message says what to do."""

from __future__ import annotations


class MopqError(Exception):
    """Base of every mopq exception."""


class InvalidInput(MopqError, ValueError):
    """An argument was refused before anything was written."""


class InvalidQueueName(InvalidInput):
    """A queue name is empty, too long, or holds ``$`` or NUL."""


class InvalidBody(InvalidInput):
    """A message body is not a JSON-like document, or is too large."""


class LeaseLost(MopqError):
    """The message is no longer held under this lease.

    The lease expired and the message was (or may be) delivered to another
    consumer, or it was already acknowledged, failed or removed. Nothing was
    changed. Make handlers idempotent, and use ``Message.extend()`` or
    ``Message.progress()`` for work that outlasts the visibility timeout.
    """


class MessageCancelled(LeaseLost):
    """An operator cancelled the message while it was held: stop working on it.

    Raised by the holder's next extend, progress, log or acknowledgement (and
    ``Message.cancelled`` says so without raising). The message is removed and
    counted as cancelled; nothing the holder does now changes it.
    """


class MessageNotFound(MopqError):
    """No message with that id is in the state the operation needs."""


class MessageDead(MopqError):
    """The message ran out of attempts; ``last_error`` says why its last attempt failed."""

    def __init__(self, message: str, last_error: str | None = None) -> None:
        super().__init__(message)
        self.last_error = last_error


class ResultTimeout(MopqError, TimeoutError):
    """The message did not finish within the time asked for (it may still)."""
