"""The fan-out, and the running set of destinations it hands batches to.

``FanOut(committer)`` registers each encoded batch with the committer for the
destinations in the fan-out at that moment, then queues it on each of them (additional
ones first: they never block; the primary last: it blocks when its queue is full, the
backpressure). Its set is replaced whole (``replace``): a call in progress keeps the set
it started with, so a batch is always settled by exactly the destinations it was
registered for.

``DestinationSet`` runs one task per destination, all in its own nursery, and is the
only place the set changes (live reconfiguration, outlet/reconfig.py): a change is a
request its own task applies, so every destination task is a child of that nursery.

- added: the destination opens its resources (writers, spool) in its task, then joins
  the fan-out: it receives the batches sealed from then on (no backfill);
- removed: it leaves the fan-out at once; once no fan-out call that started before can
  still queue on it, its queue is closed and it gets ``grace_period`` to insert what it
  holds, then hands every remaining batch to its fallback (``Destination.retire``). Its
  resources close when it is done, its gauges go; a destination of the same name added
  back meanwhile waits for that (it reopens the same spool);
- updated: new settings (``Destination.update``) and, when the connection changed, new
  writers (``ReplaceableWriter.replace``: between two inserts).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

import trio

from outlet.batch import EncodedJob
from outlet.committer import Committer
from outlet.config import ConnectionConfig, DestinationConfig
from outlet.destination import Destination
from outlet.metrics import Metrics
from outlet.notify import Notifier
from outlet.writer import ReplaceableWriter, Writer

log = logging.getLogger(__name__)


class FanOut:
    """Hands the same encoded batch to every destination's queue, after registering it."""

    def __init__(self, committer: Committer) -> None:
        self.committer = committer
        self.destinations: tuple[Destination, ...] = ()  # additional ones first
        self._calls = 0
        self._in_flight: set[int] = set()
        self._finished = Notifier()

    def replace(self, destinations: Iterable[Destination]) -> int:
        """Fan out to ``destinations`` from the next call on. Returns a mark for
        ``wait_calls``: the calls started so far."""
        self.destinations = tuple(sorted(destinations, key=lambda d: d.cfg.primary))
        self.committer.names = frozenset(d.name for d in self.destinations)
        return self._calls

    async def wait_calls(self, mark: int) -> None:
        """Return once every call started before ``mark`` (see replace) has finished."""
        while any(call <= mark for call in self._in_flight):
            await self._finished.wait()

    async def __call__(self, job: EncodedJob) -> None:
        targets = self.destinations
        self._calls += 1
        call = self._calls
        self._in_flight.add(call)
        try:
            self.committer.register(job, (d.name for d in targets))
            if job.rows == 0:
                for d in targets:
                    self.committer.settled(job, d.name, True)
                return
            for d in targets:
                await d.submit(job)
        finally:
            self._in_flight.discard(call)
            self._finished.notify()


@dataclass
class Opened:
    """A destination with the writers it owns (live path, audit, probes, spool replay)."""

    destination: Destination
    writers: Sequence[ReplaceableWriter]  # every user of its connection


#: Builds a destination; its resources go into the stack (closed when it is done).
OpenDestination = Callable[[DestinationConfig, contextlib.AsyncExitStack], Opened]


@dataclass
class _Running:
    opened: Opened
    done: trio.Event = field(default_factory=trio.Event)

    @property
    def destination(self) -> Destination:
        return self.opened.destination


@dataclass
class _Change:
    added: tuple[DestinationConfig, ...]
    removed: tuple[str, ...]
    updated: tuple[DestinationConfig, ...]
    done: trio.Event = field(default_factory=trio.Event)
    applied: bool = False


class DestinationSet:
    """The running destinations: one task each, in one nursery; changed only from there."""

    def __init__(
        self,
        destinations: Sequence[DestinationConfig],
        open_destination: OpenDestination,
        writer: Callable[[ConnectionConfig], Writer],
        fanout: FanOut,
        metrics: Metrics,
        grace_period: float,
    ) -> None:
        self._initial = tuple(destinations)
        self._open = open_destination
        self._writer = writer
        self.fanout = fanout
        self.metrics = metrics
        self.grace_period = grace_period
        self._running: dict[str, _Running] = {}  # in the fan-out (primary first)
        self._retiring: dict[str, _Running] = {}  # removed, still draining
        self._requests, self._incoming = trio.open_memory_channel[_Change](0)
        self._closed = False

    @property
    def destinations(self) -> list[Destination]:
        """In the fan-out, the primary first."""
        return [r.destination for r in self._running.values()]

    @property
    def primary(self) -> Destination:
        return next(d for d in self.destinations if d.cfg.primary)

    def get(self, name: str) -> Destination | None:
        running = self._running.get(name) or self._retiring.get(name)
        return running.destination if running is not None else None

    async def run(self, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Start every destination, then apply changes until ``close``; returns once every
        destination drained its queue (or the caller cancels)."""
        async with trio.open_nursery() as nursery:
            for cfg in self._initial:
                self._running[cfg.name] = await nursery.start(self._serve, cfg)
            self.fanout.replace(self.destinations)
            task_status.started()
            async with self._incoming:
                async for change in self._incoming:
                    try:
                        if not self._closed:
                            change.applied = await self._apply(nursery, change)
                    finally:
                        change.done.set()

    async def change(
        self,
        added: Sequence[DestinationConfig] = (),
        removed: Sequence[str] = (),
        updated: Sequence[DestinationConfig] = (),
    ) -> bool:
        """Apply a change from the set's own task; False when the set is closing."""
        if self._closed:
            return False
        request = _Change(tuple(added), tuple(removed), tuple(updated))
        try:
            await self._requests.send(request)
        except (trio.ClosedResourceError, trio.BrokenResourceError):
            return False
        await request.done.wait()
        return request.applied

    def close(self) -> None:
        """No more batches and no more changes: every queue drains, then run() returns."""
        self._closed = True
        self._requests.close()
        for d in self.destinations:
            d.close_queue()

    # -- inside the set's task ------------------------------------------------------------
    async def _serve(self, cfg: DestinationConfig, task_status: trio.TaskStatus[_Running]
                     ) -> None:
        removed = False
        async with contextlib.AsyncExitStack() as stack:
            running = _Running(self._open(cfg, stack))
            try:
                task_status.started(running)
                await running.destination.run()
            finally:
                removed = self._retiring.pop(cfg.name, None) is running
                running.done.set()
        if removed:
            self.metrics.forget_destination(cfg.name)
            log.info("destination %s removed: done", cfg.name)

    async def _apply(self, nursery: trio.Nursery, change: _Change) -> bool:
        for cfg in change.updated:
            await self._update(self._running[cfg.name], cfg)
        for cfg in change.added:
            previous = self._retiring.get(cfg.name)
            if previous is not None:
                log.info("destination %s: waiting for the removed one of that name to finish",
                         cfg.name)
                await previous.done.wait()
            if self._closed:
                return False
            self._running[cfg.name] = await nursery.start(self._serve, cfg)
            log.info("destination %s added: it receives the batches sealed from now on "
                     "(no backfill)", cfg.name)
        removed = [(name, self._running.pop(name)) for name in change.removed]
        mark = self.fanout.replace(self.destinations)
        for name, running in removed:
            self._retiring[name] = running
            nursery.start_soon(self._retire, name, running.destination, mark)
        return True

    async def _update(self, running: _Running, cfg: DestinationConfig) -> None:
        dest = running.destination
        reconnect = dest.cfg.connection != cfg.connection
        if reconnect:  # first: the probe update() may start must use the new settings
            for writer in running.opened.writers:
                await writer.replace(self._writer(writer.connection(cfg.connection)))
            log.info("destination %s: new connection settings, used from its next insert",
                     cfg.name)
        dest.update(cfg)

    async def _retire(self, name: str, dest: Destination, mark: int) -> None:
        """Close the removed destination's queue once no fan-out call can still use it."""
        await self.fanout.wait_calls(mark)
        queued = dest.queued
        where = "its spool" if dest.cfg.spool.enable and not dest.retry.forever else "give-up"
        log.info("destination %s removed: no new batches; inserting its %d queued batch(es) "
                 "within %gs, then the rest goes to %s", name, queued, self.grace_period, where)
        dest.retire(self.grace_period)
