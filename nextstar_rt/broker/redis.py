"""The broker over standalone Redis servers, sharded by consistent hashing.

Each channel lives on one server, chosen by a :class:`~.hashring.HashRing`
over the configured URLs, so every node that lists the same servers agrees on
where a channel is without talking to the others. A node keeps one subscriber
and one publisher connection per server (see :mod:`._shard`).
"""

from __future__ import annotations

from redis.asyncio.connection import parse_url

from ._shard import ShardedBroker, ShardLink, redact_url
from .hashring import HashRing

__all__ = ["RedisBroker"]


class RedisBroker(ShardedBroker):
    """Publish and subscribe over several standalone Redis servers.

    The ring is built over the URLs without their credentials, so that
    changing a password moves no channel. Every node must list the same
    servers; their order does not matter.

    Args:
        urls: One ``redis://`` or ``rediss://`` URL per shard.
        reconnect_min: Shortest delay in seconds before reconnecting a shard.
        reconnect_max: Longest delay in seconds before reconnecting a shard.

    Raises:
        ValueError: If ``urls`` is empty, names a server twice or holds a URL
            that redis-py cannot parse.
    """

    kind = "redis"

    def __init__(
        self,
        urls: list[str],
        *,
        reconnect_min: float = 0.1,
        reconnect_max: float = 5.0,
    ) -> None:
        super().__init__(reconnect_min=reconnect_min, reconnect_max=reconnect_max)
        names = [redact_url(url) for url in urls]
        self._ring = HashRing(names)
        for name, url in zip(names, urls):
            self._new_link(name, dict(parse_url(url)), sharded=False)

    async def start(self) -> None:
        """Connect to every shard; a shard that is down keeps reconnecting."""
        await self._start_links()

    def shard_for(self, channel: str) -> str:
        """Return the name (URL without credentials) of ``channel``'s shard."""
        return self._ring.shard_for(channel)

    def _link_for(self, channel: str) -> ShardLink:
        return self._links[self._ring.shard_for(channel)]
