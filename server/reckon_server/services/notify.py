"""Wake waiters when a topic changes, on this replica or (through the change bus) another."""

from __future__ import annotations

import asyncio
import contextlib

from reckon_server.storage.bus import ChangeBus, Handler


class Notifier:
    def __init__(self, bus: ChangeBus) -> None:
        self._bus = bus
        self._events: dict[str, asyncio.Event] = {}
        bus.subscribe(self._wake)

    async def publish(self, topic: str, payload: str = "") -> None:
        await self._bus.publish(topic, payload)

    def subscribe(self, handler: Handler) -> None:
        self._bus.subscribe(handler)

    def _wake(self, topic: str, _payload: str) -> None:
        woken = list(self._events.values()) if topic == "*" else [self._events.get(topic)]
        for event in woken:
            if event is not None:
                event.set()
        if topic == "*":
            self._events.clear()
        else:
            self._events.pop(topic, None)

    async def wait(self, topic: str, within: float) -> None:
        """Return when `topic` is published or after `within` seconds, whichever is first.
        Callers re-read state after every wake-up; `within` bounds how stale they can be."""
        event = self._events.setdefault(topic, asyncio.Event())
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(event.wait(), within)
