"""Consistent hashing of channel names onto Redis shards.

Every node must map a channel to the same shard without talking to the others,
so the ring hashes with BLAKE2b (Python's ``hash()`` is salted per process) and
depends only on the set of shard names, not on their order. Each shard owns
many points on the ring (virtual nodes) so that shares stay even and adding a
shard takes about ``1/N`` of the channels, all of them to the new shard.
"""

from __future__ import annotations

import bisect
import hashlib
from collections.abc import Sequence

__all__ = ["HashRing"]

DEFAULT_REPLICAS = 160


def _point(key: str) -> int:
    """Return the ring position of ``key``: 64 bits of its BLAKE2b digest."""
    digest = hashlib.blake2b(key.encode("utf-8"), digest_size=8).digest()
    return int.from_bytes(digest, "big")


class HashRing:
    """Map channel names onto shards by consistent hashing.

    Args:
        shards: Shard names, for example Redis URLs without credentials. Every
            node must use the same names; their order does not matter.
        replicas: Points per shard on the ring.

    Raises:
        ValueError: If ``shards`` is empty, holds a name twice, or
            ``replicas`` is below 1.
    """

    def __init__(self, shards: Sequence[str], replicas: int = DEFAULT_REPLICAS):
        if not shards:
            raise ValueError("a hash ring needs at least one shard")
        if len(set(shards)) != len(shards):
            raise ValueError("shard names must be unique")
        if replicas < 1:
            raise ValueError("replicas must be at least 1")

        # Ties between two shards' points are broken by name, so that the ring
        # is the same whatever order the shards were listed in.
        points = sorted(
            (_point(f"{shard}#{index}"), shard)
            for shard in shards
            for index in range(replicas)
        )
        self._points = [point for point, _ in points]
        self._owners = [shard for _, shard in points]
        self.shards: tuple[str, ...] = tuple(sorted(shards))
        self.replicas = replicas

    def shard_for(self, channel: str) -> str:
        """Return the shard that carries ``channel``."""
        index = bisect.bisect_right(self._points, _point(channel))
        return self._owners[index % len(self._owners)]

    def __repr__(self) -> str:
        return f"HashRing({list(self.shards)!r}, replicas={self.replicas})"
