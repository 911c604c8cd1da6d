"""Wake waiters when a topic changes, on this replica or (through the change bus) another."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterator

from reckon_server.storage.bus import ChangeBus, Handler


class Subscription:
    """The changes of one topic since its subscriber last waited."""

    def __init__(self) -> None:
        self._changed = asyncio.Event()

    async def wait(self, within: float) -> None:
        """Return once the topic has changed since the last `wait` returned (at once if it
        already has), or after `within` seconds. Subscribers re-read state after every
        return; `within` bounds how stale they can be."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(within):
                await self._changed.wait()
        self._changed.clear()

    def wake(self) -> None:
        self._changed.set()


class Notifier:
    def __init__(self, bus: ChangeBus) -> None:
        self._bus = bus
        self._subscriptions: dict[str, set[Subscription]] = {}
        bus.subscribe(self._wake)

    async def publish(self, topic: str, payload: str = "") -> None:
        await self._bus.publish(topic, payload)

    def subscribe(self, handler: Handler) -> None:
        self._bus.subscribe(handler)

    @contextlib.contextmanager
    def watching(self, topic: str) -> Iterator[Subscription]:
        """A subscription to `topic` for the block. Subscribe before reading the state that
        changes are to be seen against: a change published while the subscriber reads, or
        does anything else, then wakes its next `wait`, instead of being missed."""
        subscription = Subscription()
        self._subscriptions.setdefault(topic, set()).add(subscription)
        try:
            yield subscription
        finally:
            subscribers = self._subscriptions[topic]
            subscribers.discard(subscription)
            if not subscribers:
                del self._subscriptions[topic]

    def wake_all(self) -> None:
        """Wake every subscriber of every topic, as a change would."""
        self._wake("*", "")

    def _wake(self, topic: str, _payload: str) -> None:
        if topic == "*":
            woken = [s for subscribers in self._subscriptions.values() for s in subscribers]
        else:
            woken = list(self._subscriptions.get(topic, ()))
        for subscription in woken:
            subscription.wake()
