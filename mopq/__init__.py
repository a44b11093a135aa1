"""mopq: a message queue in MongoDB with a live business log.

The public API is small on purpose: ``Queue`` and ``Message`` to hand work
over, ``Worker`` to run handlers, ``emit`` for business events.
"""

__version__ = "0.1.0"
