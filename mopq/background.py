"""A loop that runs in a daemon thread or in the foreground, and stops when asked.

The collector (``mopq collect``) and the scheduler (``mopq schedule``) have the
same life: embedded in a service as a daemon thread (``start()`` ...
``stop()``), or run by a command in the foreground until Ctrl-C or SIGTERM;
and both retry the engine with the same backoff. That shape is here once;
each subclass writes its ``run`` loop, which returns once ``stopping`` is set.
"""

from __future__ import annotations

import signal
import threading
from typing import Self


def retry_delay(failures: int) -> float:
    """Seconds to wait after ``failures`` engine errors in a row: 0.4, 0.8, ... up to 5."""
    return min(5.0, 0.2 * 2 ** min(failures, 5))


class Background:
    """Run ``run`` in a daemon thread (``start``) or in the foreground; ``stop`` ends it."""

    thread_name = "mopq-background"

    def __init__(self) -> None:
        self.stopping = threading.Event()
        self._thread: threading.Thread | None = None

    def run(self) -> None:
        """The loop; it must return soon after ``stopping`` is set (wait on it, not sleep)."""
        raise NotImplementedError

    def start(self) -> Self:
        """Run in a daemon thread; returns self."""
        self.stopping.clear()
        self._thread = threading.Thread(target=self.run, name=self.thread_name, daemon=True)
        self._thread.start()
        return self

    def stop(self, timeout: float = 5.0) -> None:
        """Ask the loop to stop and wait up to ``timeout`` s for it (leases lapse if it cannot)."""
        self.stopping.set()
        if self._thread is not None:
            self._thread.join(timeout)

    @property
    def running(self) -> bool:
        """Whether the loop's thread is alive."""
        return self._thread is not None and self._thread.is_alive()

    def run_in_foreground(self, stop_timeout: float = 5.0) -> None:
        """Run until the loop ends, Ctrl-C or SIGTERM (for the commands); then stop."""
        signal.signal(signal.SIGTERM, lambda *_: self.stopping.set())
        self.start()
        try:
            while self.running:
                self._thread.join(0.5)
        except KeyboardInterrupt:
            pass
        self.stop(stop_timeout)
