"""A re-armable broadcast for "something changed": the outlet's event-driven waits.

Waiters check their condition, then ``await changed.wait()`` if it does not hold yet;
whoever changes the state calls ``notify()``. Trio switches tasks only at checkpoints,
so nothing can change between the check and the wait: no wake-up is lost, and no
sleep-polling loop is needed.
"""

from __future__ import annotations

import trio


class Notifier:
    """Wakes every task waiting at the time of ``notify()``."""

    def __init__(self) -> None:
        self._event = trio.Event()

    def notify(self) -> None:
        self._event.set()
        self._event = trio.Event()

    async def wait(self) -> None:
        await self._event.wait()
