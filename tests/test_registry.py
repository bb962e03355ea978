"""The node registry: live nodes and per-user presence across nodes."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest

from nextstar_rt.broker.registry import LocalRegistry, RedisRegistry
from tests.services import TIMEOUT, TIMEOUT_SCALE, RedisProcess

#: A TTL short enough to watch a node expire, stretched on slow machines.
SHORT_TTL = 0.6 * TIMEOUT_SCALE

MakeRegistry = Callable[..., Awaitable[RedisRegistry]]


@pytest.fixture
async def make_registry(redis_server: RedisProcess) -> AsyncIterator[MakeRegistry]:
    """Start registries on one server; close the ones still open afterwards."""
    registries: list[RedisRegistry] = []

    async def make(node_id: str, ttl: float = 15.0) -> RedisRegistry:
        registry = RedisRegistry(node_id, redis_server.url, ttl=ttl)
        await registry.start()
        registries.append(registry)
        return registry

    yield make
    for registry in registries:
        await registry.close()


async def eventually(check: Callable[[], Awaitable[bool]]) -> None:
    """Await ``check`` until it holds, or fail after the scaled timeout."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + TIMEOUT
    while not await check():
        assert loop.time() < deadline, "condition not met in time"
        await asyncio.sleep(0.05)


async def test_presence_adds_up_sessions_across_two_nodes(
    make_registry: MakeRegistry,
) -> None:
    first, second = await make_registry("node-a"), await make_registry("node-b")

    await first.set_presence(7, 2)
    await second.set_presence(7, 1)

    assert await first.presence(7) == {"node-a": 2, "node-b": 1}
    assert await second.presence(7) == {"node-a": 2, "node-b": 1}
    assert await first.presence(8) == {}


async def test_zero_devices_removes_the_node_from_presence(
    make_registry: MakeRegistry,
) -> None:
    first, second = await make_registry("node-a"), await make_registry("node-b")
    await first.set_presence(7, 2)
    await second.set_presence(7, 1)

    await first.set_presence(7, 0)

    assert await second.presence(7) == {"node-b": 1}


async def test_live_nodes_lists_every_registered_node(
    make_registry: MakeRegistry,
) -> None:
    first = await make_registry("node-a")
    await make_registry("node-b")

    assert await first.live_nodes() == ["node-a", "node-b"]


async def test_closed_node_leaves_live_nodes_and_presence_at_once(
    make_registry: MakeRegistry,
) -> None:
    first, second = await make_registry("node-a"), await make_registry("node-b")
    await first.set_presence(7, 1)
    await second.set_presence(7, 1)

    await first.close()

    assert await second.live_nodes() == ["node-b"]
    assert await second.presence(7) == {"node-b": 1}


async def test_node_whose_heartbeat_stops_expires_from_presence_and_live_nodes(
    make_registry: MakeRegistry,
) -> None:
    crashed = await make_registry("node-a", ttl=SHORT_TTL)
    survivor = await make_registry("node-b", ttl=SHORT_TTL)
    await crashed.set_presence(7, 3)
    await survivor.set_presence(7, 1)
    # Past one TTL, heartbeats alone keep a node alive.
    await asyncio.sleep(SHORT_TTL * 2)
    assert await survivor.live_nodes() == ["node-a", "node-b"]

    await crashed.close(deregister=False)

    async def crashed_is_gone() -> bool:
        return await survivor.live_nodes() == ["node-b"]

    await eventually(crashed_is_gone)
    assert await survivor.presence(7) == {"node-b": 1}


async def test_restart_under_same_id_clears_what_the_crashed_run_left(
    make_registry: MakeRegistry,
) -> None:
    crashed = await make_registry("node-a")
    await crashed.set_presence(7, 3)
    await crashed.close(deregister=False)

    restarted = await make_registry("node-a")

    assert await restarted.presence(7) == {}


async def test_local_registry_reports_its_own_node_only() -> None:
    registry = LocalRegistry("solo")
    await registry.set_presence(7, 2)
    await registry.set_presence(8, 1)
    await registry.set_presence(8, 0)

    assert await registry.presence(7) == {"solo": 2}
    assert await registry.presence(8) == {}
    assert await registry.live_nodes() == ["solo"]
