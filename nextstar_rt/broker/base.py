"""The one interface every broker implements.

A broker moves opaque byte payloads between nodes over named channels
(``u:<user>``, ``c:<conversation>``, ``n:<node>``). It is the fast path only:
delivery is at most once, and the store stays the truth. When a broker knows it
may have dropped messages (a shard connection was lost), it names the affected
channels through the resync callback so that sessions can catch up by cursor.
"""

from __future__ import annotations

import abc
from collections.abc import Callable, Iterable

__all__ = [
    "Broker",
    "DeliverFn",
    "ResyncFn",
    "user_channel",
    "conversation_channel",
    "node_channel",
]

DeliverFn = Callable[[str, bytes], None]
ResyncFn = Callable[[Iterable[str]], None]


def user_channel(user_id: int) -> str:
    return f"u:{user_id}"


def conversation_channel(conversation_id: int) -> str:
    return f"c:{conversation_id}"


def node_channel(node_id: str) -> str:
    return f"n:{node_id}"


class Broker(abc.ABC):
    """Publish and subscribe over channels.

    Subscriptions are per node: the gateway reference-counts sessions and
    calls :meth:`subscribe` once for the first local interest in a channel and
    :meth:`unsubscribe` when the last one goes.
    """

    #: True when payloads cross process boundaries (several nodes may run).
    is_distributed = False

    def __init__(self) -> None:
        self._deliver: DeliverFn = _drop
        self._resync: ResyncFn = _ignore

    def bind(self, deliver: DeliverFn, resync: ResyncFn) -> None:
        """Set the callbacks for incoming payloads and for possible losses."""
        self._deliver = deliver
        self._resync = resync

    async def start(self) -> None:
        """Connect; return once the broker can publish and subscribe."""

    async def close(self) -> None:
        """Flush pending publishes where possible and disconnect."""

    @abc.abstractmethod
    def publish(self, channel: str, payload: bytes) -> None:
        """Queue ``payload`` for ``channel``; never blocks, never raises.

        Publishes to one channel are delivered in the order they were queued.
        A payload queued while its shard is down is dropped and its channel is
        reported for resync.
        """

    @abc.abstractmethod
    async def subscribe(self, channel: str) -> None:
        """Start delivering ``channel``'s payloads to this node."""

    @abc.abstractmethod
    async def unsubscribe(self, channel: str) -> None:
        """Stop delivering ``channel``'s payloads to this node."""

    def is_ready(self) -> bool:
        """Tell whether every shard is reachable."""
        return True

    def stats(self) -> dict[str, object]:
        """Return figures for ``/metrics`` and ``/readyz``."""
        return {}


def _drop(channel: str, payload: bytes) -> None:
    pass


def _ignore(channels: Iterable[str]) -> None:
    pass
