"""The broker over Redis Cluster's sharded pub/sub (SPUBLISH, SSUBSCRIBE).

A shard channel lives in the hash slot of its name, like a key, and only the
master that owns the slot (and its replicas) carries it, so pub/sub traffic
scales with the number of masters instead of being broadcast to all of them.

redis-py 8.1 ships an asyncio ``ClusterPubSub``, but it reads by polling each
node's connection in turn with a timeout, and it reconnects and resubscribes
on its own, which would hide the losses that the gateway must hear of. This
module therefore keeps its own :class:`~._shard.ShardLink` per master and uses
redis-py's cluster client only for the slot map.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any
from urllib.parse import urlsplit

from redis.asyncio.cluster import ClusterNode, RedisCluster
from redis.asyncio.connection import parse_url
from redis.crc import key_slot
from redis.exceptions import RedisClusterException, RedisError, SlotNotCoveredError

from ._shard import Backoff, ShardedBroker, ShardLink, cancel_and_wait

__all__ = ["RedisClusterBroker"]

logger = logging.getLogger(__name__)


class RedisClusterBroker(ShardedBroker):
    """Publish and subscribe over a Redis Cluster with sharded pub/sub.

    The broker keeps one subscriber and one publisher connection per master.
    When the slot map changes (a MOVED reply, a slot migration that makes the
    server drop a subscription, a master lost or back), it reloads the map,
    moves each affected subscription to the new owner and reports those
    channels for resync.

    During such a move, publishes already queued for the old master may land
    after newer ones sent to the new master, so one channel's order holds only
    while its slot stays put; the resync that follows a move covers the gap.

    Args:
        startup_urls: ``redis://`` URLs of some cluster nodes; the credentials
            and TLS settings of the first one apply to every node.
        reconnect_min: Shortest delay in seconds before reconnecting a master.
        reconnect_max: Longest delay in seconds before reconnecting a master,
            and between reloads of the slot map while a master is down.

    Raises:
        ValueError: If ``startup_urls`` is empty.
    """

    kind = "redis_cluster"

    def __init__(
        self,
        startup_urls: list[str],
        *,
        reconnect_min: float = 0.1,
        reconnect_max: float = 5.0,
    ) -> None:
        super().__init__(reconnect_min=reconnect_min, reconnect_max=reconnect_max)
        if not startup_urls:
            raise ValueError("a cluster broker needs at least one startup URL")
        self._startup_urls = list(startup_urls)
        self._node_kwargs: dict[str, Any] = dict(parse_url(startup_urls[0]))
        for key in ("host", "port", "db"):
            self._node_kwargs.pop(key, None)
        self._cluster: RedisCluster | None = None

        # Every channel this node subscribes, and the link that carries it;
        # None while its slot has no known master.
        self._wanted: dict[str, ShardLink | None] = {}
        # Channels to report for resync once the slot map has been reloaded.
        self._unrouted: set[str] = set()
        self._refresh_task: asyncio.Task[None] | None = None
        self._refresh_again = False
        self._closing = False
        self.unroutable = 0

    async def start(self) -> None:
        """Load the slot map and connect to every master.

        Raises:
            redis.exceptions.RedisClusterException: If no startup node answers.
        """
        startup_nodes = [
            ClusterNode(parts.hostname or "127.0.0.1", parts.port or 6379)
            for parts in map(urlsplit, self._startup_urls)
        ]
        self._cluster = RedisCluster.from_url(
            self._startup_urls[0],
            startup_nodes=startup_nodes,
            require_full_coverage=False,
        )
        await self._cluster.initialize()
        self._add_masters()
        await self._start_links()

    async def close(self) -> None:
        self._closing = True
        if self._refresh_task is not None:
            await cancel_and_wait([self._refresh_task])
        await super().close()
        if self._cluster is not None:
            await self._cluster.aclose()

    def publish(self, channel: str, payload: bytes) -> None:
        link = self._link_for(channel)
        if link is None:
            self.unroutable += 1
            self._unrouted.add(channel)
            self._refresh_soon()
            return
        link.publish(channel, payload)

    async def subscribe(self, channel: str) -> None:
        link = self._link_for(channel)
        self._wanted[channel] = link
        if link is None:
            self._refresh_soon()
            return
        await link.subscribe(channel)

    async def unsubscribe(self, channel: str) -> None:
        link = self._wanted.pop(channel, None)
        if link is not None:
            await link.unsubscribe(channel)

    def is_ready(self) -> bool:
        """Tell whether every master is reachable and every channel placed."""
        placed = all(link is not None for link in self._wanted.values())
        return placed and super().is_ready()

    def stats(self) -> dict[str, object]:
        figures = super().stats()
        figures["unroutable"] = self.unroutable
        figures["unplaced"] = sum(link is None for link in self._wanted.values())
        return figures

    # Placing channels on masters.

    def _link_for(self, channel: str) -> ShardLink | None:
        if self._cluster is None:
            return None
        slot = key_slot(channel.encode())
        try:
            node = self._cluster.nodes_manager.get_node_from_slot(slot)
        except SlotNotCoveredError:
            return None
        return self._links.get(node.name) or self._add_link(node)

    def _masters(self) -> dict[str, ClusterNode]:
        """Return the nodes that own at least one slot, by name."""
        assert self._cluster is not None
        slots = self._cluster.nodes_manager.slots_cache
        return {nodes[0].name: nodes[0] for nodes in slots.values() if nodes}

    def _add_masters(self) -> None:
        for name, node in self._masters().items():
            if name not in self._links:
                self._add_link(node)

    def _add_link(self, node: ClusterNode) -> ShardLink:
        kwargs = {**self._node_kwargs, "host": node.host, "port": node.port}
        link = self._new_link(node.name, kwargs, sharded=True)
        link.launch()
        return link

    async def _move(self, channel: str) -> bool:
        """Subscribe ``channel`` where the slot map now puts it.

        Returns:
            True if the channel changed masters (or found one at last).
        """
        if channel not in self._wanted:
            return False
        old = self._wanted[channel]
        new = self._link_for(channel)
        if new is old:
            return False

        self._wanted[channel] = new
        if old is not None:
            await old.unsubscribe(channel)
        if new is not None:
            await new.subscribe(channel)
            # An unsubscribe may have come while this one was awaiting.
            if self._wanted.get(channel) is not new:
                await new.unsubscribe(channel)
        return True

    async def _refresh(self) -> None:
        """Reload the slot map, move subscriptions and retire old masters."""
        assert self._cluster is not None
        await self._cluster.nodes_manager.initialize()
        self._add_masters()

        wanted = list(self._wanted)
        results = await asyncio.gather(*(self._move(channel) for channel in wanted))
        moved = {channel for channel, did in zip(wanted, results) if did}

        # A node that owns no slot any more (a master demoted by a failover,
        # or removed) would otherwise keep reconnecting, and a replica would
        # deliver its shard's messages a second time.
        masters = self._masters()
        for name in [name for name in self._links if name not in masters]:
            link = self._links.pop(name)
            logger.info("retiring %s: it owns no slot", name)
            await link.close()

        if moved:
            logger.info("moved %d channels to their new masters", len(moved))
        channels, self._unrouted = moved | self._unrouted, set()
        self._report(channels)

    def _refresh_soon(self) -> None:
        """Reload the slot map in the background, once, whoever asks."""
        if self._cluster is None or self._closing:
            return
        self._refresh_again = True
        if self._refresh_task is None or self._refresh_task.done():
            self._refresh_task = asyncio.create_task(
                self._refresh_loop(), name="nextstar-cluster-refresh"
            )

    async def _refresh_loop(self) -> None:
        """Reload until the map is settled: every master up, every channel placed.

        A master lost for good is replaced by a failover that nothing else
        announces, so the map is reloaded with backoff while one is down.
        """
        backoff = Backoff(self._reconnect_min, self._reconnect_max)
        while True:
            self._refresh_again = False
            try:
                await self._refresh()
                failed = False
            except (RedisError, RedisClusterException, OSError) as exc:
                logger.warning("slot map reload failed: %s", exc)
                failed = True
            if not (failed or self._refresh_again or not self.is_ready()):
                return
            await asyncio.sleep(backoff.next_delay())

    # ShardEvents, called by the links.

    def link_lost(self, link: ShardLink, channels: set[str]) -> None:
        self._report(channels)
        self._refresh_soon()

    def link_back(self, link: ShardLink, channels: set[str]) -> None:
        self._report(channels)
        self._refresh_soon()

    def link_moved(self, link: ShardLink, channels: set[str]) -> None:
        # The server dropped or refused these subscriptions, so they count as
        # unplaced until the reloaded map says where they go.
        logger.info(
            "%s no longer serves %d channels; reloading the slot map",
            link.name,
            len(channels),
        )
        for channel in channels:
            if self._wanted.get(channel) is link:
                link.forget(channel)
                self._wanted[channel] = None
        self._unrouted.update(channels)
        self._refresh_soon()
