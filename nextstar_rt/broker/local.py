"""The in-process broker: one node, no network, same interface."""

from __future__ import annotations

from .base import Broker

__all__ = ["LocalBroker"]


class LocalBroker(Broker):
    """Deliver each publish synchronously to this process's subscriptions."""

    def __init__(self) -> None:
        super().__init__()
        self._channels: set[str] = set()
        self.published = 0

    def publish(self, channel: str, payload: bytes) -> None:
        self.published += 1
        if channel in self._channels:
            self._deliver(channel, payload)

    async def subscribe(self, channel: str) -> None:
        self._channels.add(channel)

    async def unsubscribe(self, channel: str) -> None:
        self._channels.discard(channel)

    def stats(self) -> dict[str, object]:
        return {"kind": "local", "subscriptions": len(self._channels)}
