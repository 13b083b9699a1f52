"""A sampler thread: one sample every ``interval`` seconds, kept in order, until stopped.

The chaos runner samples row counts and the outlet's metrics once a second, the load
harness samples Kafka watermarks and every outlet twice a second; both subclass
:class:`PeriodicSampler` and implement :meth:`~PeriodicSampler.sample`.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Generic, TypeVar

T = TypeVar("T")
log = logging.getLogger("teststack.sampling")


class PeriodicSampler(threading.Thread, Generic[T]):
    """Calls :meth:`sample` on a fixed schedule (no drift: a slow sample shortens the next
    wait). A failing sample is logged and skipped: sampling never ends a run."""

    def __init__(self, interval: float, name: str = "sampler") -> None:
        super().__init__(name=name, daemon=True)
        self.interval = interval
        self.samples: list[T] = []
        self.failures = 0
        self.stop_event = threading.Event()
        self._lock = threading.Lock()

    def sample(self) -> T:
        raise NotImplementedError

    def run(self) -> None:
        nxt = time.monotonic()
        while not self.stop_event.is_set():
            try:
                smp = self.sample()
            except Exception as e:
                self.failures += 1
                log.warning("%s: sampling failed: %s", self.name, e, exc_info=log.isEnabledFor(
                    logging.DEBUG))
            else:
                with self._lock:
                    self.samples.append(smp)
            nxt += self.interval
            self.stop_event.wait(max(0.0, nxt - time.monotonic()))

    def last(self) -> T | None:
        with self._lock:
            return self.samples[-1] if self.samples else None

    def stop(self, timeout: float = 10.0) -> None:
        self.stop_event.set()
        if self.is_alive():
            self.join(timeout)
