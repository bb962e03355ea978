"""RedisClusterBroker over a real three-master Redis Cluster, seen by two nodes."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest
import redis.cluster
from redis.crc import key_slot

from nextstar_rt.broker.redis_cluster import RedisClusterBroker
from tests.services import TIMEOUT, RedisClusterProcesses, wait_until
from tests.test_broker_redis import (
    Nodes,
    Recorder,
    assert_back_after_restart,
    assert_exactly_once_in_order,
    assert_unsubscribe_stops_delivery,
)

CHANNELS = [f"u:{n}" for n in range(40)]

MakeNode = Callable[[], Awaitable[tuple[RedisClusterBroker, Recorder]]]


def cluster_nodes(cluster: RedisClusterProcesses) -> Nodes[RedisClusterBroker]:
    return Nodes(
        lambda: RedisClusterBroker(cluster.urls, reconnect_min=0.02, reconnect_max=0.2)
    )


@pytest.fixture
async def make_node(redis_cluster: RedisClusterProcesses) -> AsyncIterator[MakeNode]:
    """Start nodes on the shared cluster; close them afterwards."""
    nodes = cluster_nodes(redis_cluster)
    yield nodes.start
    await nodes.close()


@pytest.fixture
async def make_fresh_node(
    fresh_redis_cluster: RedisClusterProcesses,
) -> AsyncIterator[MakeNode]:
    """Start nodes on a private cluster that the test may break."""
    nodes = cluster_nodes(fresh_redis_cluster)
    yield nodes.start
    await nodes.close()


def masters_of(cluster: RedisClusterProcesses, channels: list[str]) -> dict[str, int]:
    """Return the port of the master that owns each channel's slot."""
    client = redis.cluster.RedisCluster(host="127.0.0.1", port=cluster.nodes[0].port)
    try:
        return {channel: client.get_node_from_key(channel).port for channel in channels}
    finally:
        client.close()


def move_slot(cluster: RedisClusterProcesses, channel: str) -> None:
    """Reassign ``channel``'s slot to another master, as resharding does."""
    slot = key_slot(channel.encode())
    source = masters_of(cluster, [channel])[channel]
    clients = {node.port: node.client() for node in cluster.nodes}
    try:
        ids = {port: c.execute_command("CLUSTER MYID") for port, c in clients.items()}
        target = next(port for port in clients if port != source)

        clients[target].execute_command(
            "CLUSTER SETSLOT", slot, "IMPORTING", ids[source]
        )
        clients[source].execute_command(
            "CLUSTER SETSLOT", slot, "MIGRATING", ids[target]
        )
        others = [port for port in clients if port not in (source, target)]
        for port in [target, source, *others]:
            clients[port].execute_command("CLUSTER SETSLOT", slot, "NODE", ids[target])
    finally:
        for client in clients.values():
            client.close()


async def test_broker_connects_to_every_master(
    make_node: MakeNode, redis_cluster: RedisClusterProcesses
) -> None:
    broker, _ = await make_node()

    assert broker.is_ready()
    assert set(broker.stats()["shards"]) == {
        f"127.0.0.1:{node.port}" for node in redis_cluster.nodes
    }


async def test_publish_reaches_other_node_exactly_once_in_order_on_all_masters(
    make_node: MakeNode, redis_cluster: RedisClusterProcesses
) -> None:
    publisher, _ = await make_node()
    subscriber, recorder = await make_node()
    masters = set(masters_of(redis_cluster, CHANNELS).values())

    await assert_exactly_once_in_order(publisher, subscriber, recorder, CHANNELS)

    assert masters == {node.port for node in redis_cluster.nodes}
    shards = subscriber.stats()["shards"]
    assert all(shard["subscribed"] > 0 for shard in shards.values())


async def test_unsubscribe_stops_delivery(make_node: MakeNode) -> None:
    publisher, _ = await make_node()
    subscriber, recorder = await make_node()

    # A hash tag puts both channels in one slot, hence on one master.
    await assert_unsubscribe_stops_delivery(
        publisher, subscriber, recorder, "c:{7}:gone", "c:{7}:marker"
    )
    assert recorder.resyncs == []


async def test_losing_a_master_resyncs_its_channels_until_it_is_back(
    make_fresh_node: MakeNode, fresh_redis_cluster: RedisClusterProcesses
) -> None:
    publisher, _ = await make_fresh_node()
    subscriber, recorder = await make_fresh_node()
    for channel in CHANNELS:
        await subscriber.subscribe(channel)
    dead = fresh_redis_cluster.nodes[0]
    owners = masters_of(fresh_redis_cluster, CHANNELS)
    on_dead = {channel for channel, port in owners.items() if port == dead.port}

    dead.kill()
    await wait_until(lambda: not subscriber.is_ready())
    await wait_until(lambda: on_dead <= recorder.resynced())
    assert recorder.resynced() == on_dead

    await assert_back_after_restart(publisher, subscriber, recorder, dead, on_dead)


async def test_moved_slot_moves_subscription_to_new_master_and_resyncs(
    make_fresh_node: MakeNode, fresh_redis_cluster: RedisClusterProcesses
) -> None:
    publisher, _ = await make_fresh_node()
    subscriber, recorder = await make_fresh_node()
    channel = CHANNELS[0]
    await subscriber.subscribe(channel)

    move_slot(fresh_redis_cluster, channel)
    await wait_until(lambda: channel in recorder.resynced())
    await wait_until(lambda: publisher.is_ready() and subscriber.is_ready())

    # The publisher learns of the move from a MOVED reply, which costs the
    # publish that met it; keep publishing until one gets through.
    for _ in range(int(TIMEOUT / 0.05)):
        publisher.publish(channel, b"moved")
        await asyncio.sleep(0.05)
        if recorder.received[channel]:
            break
    assert recorder.received[channel][-1:] == [b"moved"]
