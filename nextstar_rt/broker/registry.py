"""The node registry: which nodes are alive, and where each user is connected.

Every node registers itself under a key that expires unless its heartbeat
refreshes it, and writes, per user, how many of that user's sessions it holds.
A node that dies stops refreshing its key, and from then on its presence
counts are ignored (and lazily removed), so presence never names a dead node
for longer than one TTL.
"""

from __future__ import annotations

import abc
import asyncio
import logging
import time

from redis.asyncio import Redis
from redis.asyncio.cluster import RedisCluster
from redis.exceptions import RedisError

from ._shard import cancel_and_wait

__all__ = ["NodeRegistry", "LocalRegistry", "RedisRegistry"]

logger = logging.getLogger(__name__)

#: Seconds a node's list of users outlives its last heartbeat, long enough for
#: a node restarting under the same id to find and clear what it left behind.
USERS_TTL = 24 * 3600

# The "{nextstar}" hash tag puts every registry key in one Redis Cluster slot,
# so pipelines over several keys work on a cluster as on one server.
_NODES_KEY = "{nextstar}:nodes"


def _node_key(node_id: str) -> str:
    return f"{{nextstar}}:node:{node_id}"


def _users_key(node_id: str) -> str:
    return f"{{nextstar}}:nodeusers:{node_id}"


def _presence_key(user_id: int) -> str:
    return f"{{nextstar}}:presence:{user_id}"


class NodeRegistry(abc.ABC):
    """Track live nodes and each user's sessions across them."""

    def __init__(self, node_id: str) -> None:
        self.node_id = node_id

    async def start(self) -> None:
        """Register this node."""

    async def close(self) -> None:
        """Deregister this node and remove its presence."""

    @abc.abstractmethod
    async def set_presence(self, user_id: int, devices: int) -> None:
        """Record that this node holds ``devices`` sessions of ``user_id``.

        Zero removes this node from the user's presence.
        """

    @abc.abstractmethod
    async def presence(self, user_id: int) -> dict[str, int]:
        """Return the user's session count per live node, without zeros."""

    @abc.abstractmethod
    async def live_nodes(self) -> list[str]:
        """Return the ids of the nodes that are alive, sorted."""


class LocalRegistry(NodeRegistry):
    """The registry of a single node, kept in this process."""

    def __init__(self, node_id: str) -> None:
        super().__init__(node_id)
        self._devices: dict[int, int] = {}

    async def set_presence(self, user_id: int, devices: int) -> None:
        if devices > 0:
            self._devices[user_id] = devices
        else:
            self._devices.pop(user_id, None)

    async def presence(self, user_id: int) -> dict[str, int]:
        devices = self._devices.get(user_id, 0)
        return {self.node_id: devices} if devices else {}

    async def live_nodes(self) -> list[str]:
        return [self.node_id]


class RedisRegistry(NodeRegistry):
    """The registry shared by all nodes through one Redis server.

    Keys: ``{nextstar}:node:<id>`` (expires after ``ttl`` unless refreshed),
    the set ``{nextstar}:nodes`` of ids ever seen, the hash
    ``{nextstar}:presence:<user>`` mapping node id to session count, and
    ``{nextstar}:nodeusers:<id>``, the users a node wrote presence for.
    With Redis Cluster (``cluster=True``) every key shares one hash slot, so
    the registry lives on one master; its load is small enough for that.

    Args:
        node_id: This node's id.
        url: A ``redis://`` URL.
        ttl: Seconds after the last heartbeat that a node counts as dead; the
            heartbeat runs every third of it.
    """

    def __init__(
        self, node_id: str, url: str, ttl: float = 15.0, *, cluster: bool = False
    ) -> None:
        super().__init__(node_id)
        self._redis: Redis | RedisCluster = (
            RedisCluster.from_url(url) if cluster else Redis.from_url(url)
        )
        self._ttl_ms = max(1, int(ttl * 1000))
        self._interval = ttl / 3
        # A copy of what this node wrote, to write it again if its key expired
        # (a stall longer than the TTL) or the server lost its data.
        self._devices: dict[int, int] = {}
        self._heartbeat: asyncio.Task[None] | None = None
        self._closed = False

    async def start(self) -> None:
        """Clear what a previous run under this id left, register, and beat.

        Raises:
            redis.exceptions.RedisError: If the server does not answer.
        """
        await self._clear_leftovers()
        await self._register()
        self._heartbeat = asyncio.create_task(
            self._beat(), name=f"nextstar-registry {self.node_id}"
        )
        logger.info("registered node %s", self.node_id)

    async def close(self, *, deregister: bool = True) -> None:
        """Stop the heartbeat and, unless told not to, remove this node's keys.

        Closing again does nothing.

        Args:
            deregister: False leaves the keys to expire, as after a crash.
        """
        if self._closed:
            return
        self._closed = True
        if self._heartbeat is not None:
            await cancel_and_wait([self._heartbeat])
            self._heartbeat = None

        if deregister:
            try:
                await self._deregister()
            except RedisError as exc:
                logger.warning("could not deregister node %s: %s", self.node_id, exc)
        await self._redis.aclose()

    async def set_presence(self, user_id: int, devices: int) -> None:
        async with self._redis.pipeline(transaction=False) as pipe:
            if devices > 0:
                self._devices[user_id] = devices
                pipe.hset(_presence_key(user_id), self.node_id, devices)
                pipe.sadd(_users_key(self.node_id), user_id)
            else:
                self._devices.pop(user_id, None)
                pipe.hdel(_presence_key(user_id), self.node_id)
                pipe.srem(_users_key(self.node_id), user_id)
            await pipe.execute()

    async def presence(self, user_id: int) -> dict[str, int]:
        key = _presence_key(user_id)
        fields = await self._redis.hgetall(key)
        counts = {node.decode(): int(devices) for node, devices in fields.items()}
        alive = await self._alive(list(counts))

        dead = [node for node in counts if node not in alive]
        if dead:
            await self._redis.hdel(key, *dead)
        return {node: n for node, n in counts.items() if node in alive and n > 0}

    async def live_nodes(self) -> list[str]:
        members = await self._redis.smembers(_NODES_KEY)
        nodes = [member.decode() for member in members]
        alive = await self._alive(nodes)

        dead = [node for node in nodes if node not in alive]
        if dead:
            await self._redis.srem(_NODES_KEY, *dead)
        return sorted(alive)

    async def _alive(self, nodes: list[str]) -> set[str]:
        """Return those of ``nodes`` whose registration has not expired."""
        if not nodes:
            return set()
        async with self._redis.pipeline(transaction=False) as pipe:
            for node in nodes:
                pipe.exists(_node_key(node))
            found = await pipe.execute()
        return {node for node, exists in zip(nodes, found) if exists}

    async def _register(self) -> bool:
        """Refresh this node's key; tell whether it had expired meanwhile."""
        async with self._redis.pipeline(transaction=False) as pipe:
            pipe.set(
                _node_key(self.node_id),
                str(int(time.time())),
                px=self._ttl_ms,
                get=True,
            )
            pipe.sadd(_NODES_KEY, self.node_id)
            pipe.expire(_users_key(self.node_id), USERS_TTL)
            previous, _, _ = await pipe.execute()
        return previous is None

    async def _beat(self) -> None:
        """Refresh the registration every third of the TTL, forever."""
        while True:
            await asyncio.sleep(self._interval)
            try:
                expired = await self._register()
                if expired and self._devices:
                    # Others may have removed this node's presence while it
                    # looked dead; write it again.
                    logger.warning("node %s re-registered after expiry", self.node_id)
                    await self._rewrite_presence()
            except RedisError as exc:
                logger.warning("heartbeat of node %s failed: %s", self.node_id, exc)

    async def _rewrite_presence(self) -> None:
        async with self._redis.pipeline(transaction=False) as pipe:
            for user_id, devices in self._devices.items():
                pipe.hset(_presence_key(user_id), self.node_id, devices)
                pipe.sadd(_users_key(self.node_id), user_id)
            await pipe.execute()

    async def _clear_leftovers(self) -> None:
        users = await self._redis.smembers(_users_key(self.node_id))
        async with self._redis.pipeline(transaction=False) as pipe:
            for user in users:
                pipe.hdel(_presence_key(int(user)), self.node_id)
            pipe.delete(_users_key(self.node_id))
            await pipe.execute()

    async def _deregister(self) -> None:
        await self._clear_leftovers()
        async with self._redis.pipeline(transaction=False) as pipe:
            pipe.delete(_node_key(self.node_id))
            pipe.srem(_NODES_KEY, self.node_id)
            await pipe.execute()
        self._devices.clear()
        logger.info("deregistered node %s", self.node_id)
