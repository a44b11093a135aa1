"""The one clock every part of mopq reads: aware UTC datetimes.

Stored times are UTC and compared with ``utcnow()``; naive datetimes would
fail those comparisons (see ``mopq.connection.prepared``).
"""

from __future__ import annotations

import datetime as dt


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)
