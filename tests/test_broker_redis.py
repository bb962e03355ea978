"""RedisBroker over three real standalone redis-server shards, seen by two nodes."""

from __future__ import annotations

import asyncio
import os
import signal
from collections import defaultdict
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from typing import Generic, TypeVar

import pytest

from nextstar_rt.broker import _shard
from nextstar_rt.broker.base import Broker
from nextstar_rt.broker.redis import RedisBroker
from tests.services import TIMEOUT_SCALE, RedisProcess, wait_until

CHANNELS = [f"c:{n}" for n in range(30)]


class Recorder:
    """The callbacks of one node: every payload and every resync call."""

    def __init__(self) -> None:
        self.received: defaultdict[str, list[bytes]] = defaultdict(list)
        self.resyncs: list[set[str]] = []

    def deliver(self, channel: str, payload: bytes) -> None:
        self.received[channel].append(payload)

    def resync(self, channels: Iterable[str]) -> None:
        self.resyncs.append(set(channels))

    def resynced(self) -> set[str]:
        return set().union(*self.resyncs)

    def ends_with(self, channels: Iterable[str], payload: bytes) -> bool:
        return all(self.received[c][-1:] == [payload] for c in channels)


B = TypeVar("B", bound=Broker)


class Nodes(Generic[B]):
    """Brokers ("nodes") started on the same servers and closed together.

    Args:
        new_broker: Makes one unstarted broker.
    """

    def __init__(self, new_broker: Callable[[], B]) -> None:
        self._new_broker = new_broker
        self._brokers: list[B] = []

    async def start(self) -> tuple[B, Recorder]:
        """Start one more node and return it with its recorder."""
        broker = self._new_broker()
        recorder = Recorder()
        broker.bind(recorder.deliver, recorder.resync)
        self._brokers.append(broker)
        await broker.start()
        return broker, recorder

    async def close(self) -> None:
        for broker in self._brokers:
            await broker.close()


async def assert_exactly_once_in_order(
    publisher: Broker, subscriber: Broker, recorder: Recorder, channels: list[str]
) -> None:
    """Publish rounds over ``channels`` and check each arrives once, in order."""
    for channel in channels:
        await subscriber.subscribe(channel)

    for n in range(50):
        for channel in channels:
            publisher.publish(channel, b"%d" % n)
    for channel in channels:
        publisher.publish(channel, b"end")
    await wait_until(lambda: recorder.ends_with(channels, b"end"))

    expected = [b"%d" % n for n in range(50)] + [b"end"]
    for channel in channels:
        assert recorder.received[channel] == expected


async def assert_unsubscribe_stops_delivery(
    publisher: Broker, subscriber: Broker, recorder: Recorder, gone: str, marker: str
) -> None:
    """Unsubscribe ``gone`` and check it gets nothing sent before ``marker``.

    ``marker`` must share ``gone``'s shard, so that it is published on the same
    connection and arrives after anything published before it.
    """
    await subscriber.subscribe(gone)
    await subscriber.subscribe(marker)

    await subscriber.unsubscribe(gone)
    publisher.publish(gone, b"after")
    publisher.publish(marker, b"marker")
    await wait_until(lambda: recorder.ends_with([marker], b"marker"))

    assert recorder.received[gone] == []


async def assert_back_after_restart(
    publisher: Broker,
    subscriber: Broker,
    recorder: Recorder,
    server: RedisProcess,
    channels: set[str],
) -> None:
    """Restart ``server`` and check that its ``channels`` resync and flow again."""
    recorder.resyncs.clear()

    server.restart()
    await wait_until(lambda: publisher.is_ready() and subscriber.is_ready())
    assert channels <= recorder.resynced()

    for channel in channels:
        publisher.publish(channel, b"after")
    await wait_until(lambda: recorder.ends_with(channels, b"after"))


MakeNode = Callable[[], Awaitable[tuple[RedisBroker, Recorder]]]


@pytest.fixture
async def make_node(redis_shards: list[RedisProcess]) -> AsyncIterator[MakeNode]:
    """Start nodes on the same three shards; close them afterwards."""
    urls = [shard.url for shard in redis_shards]
    nodes = Nodes(lambda: RedisBroker(urls, reconnect_min=0.02, reconnect_max=0.2))
    yield nodes.start
    await nodes.close()


async def lose_shard(
    publisher: RedisBroker, subscriber: RedisBroker, shard: RedisProcess
) -> set[str]:
    """Subscribe every channel, kill ``shard`` and wait until both nodes see it.

    Returns:
        The channels that live on ``shard``.
    """
    for channel in CHANNELS:
        await subscriber.subscribe(channel)
    shard.kill()
    await wait_until(lambda: not publisher.is_ready() and not subscriber.is_ready())
    return {c for c in CHANNELS if subscriber.shard_for(c) == shard.url}


async def test_channels_spread_over_all_three_shards(
    make_node: MakeNode, redis_shards: list[RedisProcess]
) -> None:
    broker, _ = await make_node()

    assert {broker.shard_for(c) for c in CHANNELS} == {s.url for s in redis_shards}


async def test_publish_on_one_node_reaches_other_exactly_once_in_order(
    make_node: MakeNode,
) -> None:
    publisher, _ = await make_node()
    subscriber, recorder = await make_node()

    await assert_exactly_once_in_order(publisher, subscriber, recorder, CHANNELS)


async def test_stats_count_publishes_per_shard(make_node: MakeNode) -> None:
    publisher, _ = await make_node()
    subscriber, recorder = await make_node()
    for channel in CHANNELS:
        await subscriber.subscribe(channel)

    for channel in CHANNELS:
        publisher.publish(channel, b"x")
    await wait_until(lambda: recorder.ends_with(CHANNELS, b"x"))

    shards = publisher.stats()["shards"]
    assert sum(shard["published"] for shard in shards.values()) == len(CHANNELS)
    assert all(s["up"] and s["publish_errors"] == 0 for s in shards.values())
    subscribed = subscriber.stats()["shards"]
    assert sum(shard["subscribed"] for shard in subscribed.values()) == len(CHANNELS)


async def test_unsubscribe_stops_delivery(make_node: MakeNode) -> None:
    publisher, _ = await make_node()
    subscriber, recorder = await make_node()
    gone = CHANNELS[0]
    shard = subscriber.shard_for(gone)
    marker = next(c for c in CHANNELS[1:] if subscriber.shard_for(c) == shard)

    await assert_unsubscribe_stops_delivery(
        publisher, subscriber, recorder, gone, marker
    )


async def test_close_sends_what_is_still_queued(make_node: MakeNode) -> None:
    publisher, _ = await make_node()
    subscriber, recorder = await make_node()
    await subscriber.subscribe(CHANNELS[0])

    publisher.publish(CHANNELS[0], b"last words")
    await publisher.close()

    await wait_until(lambda: recorder.ends_with([CHANNELS[0]], b"last words"))


async def test_losing_a_shard_resyncs_its_channels_and_others_keep_flowing(
    make_node: MakeNode, redis_shards: list[RedisProcess]
) -> None:
    publisher, _ = await make_node()
    subscriber, recorder = await make_node()
    dead = redis_shards[0]

    on_dead = await lose_shard(publisher, subscriber, dead)
    elsewhere = set(CHANNELS) - on_dead
    await wait_until(lambda: on_dead <= recorder.resynced())
    for channel in CHANNELS:
        publisher.publish(channel, b"during")
    await wait_until(lambda: recorder.ends_with(elsewhere, b"during"))

    assert recorder.resynced() == on_dead
    assert all(recorder.received[c] == [] for c in on_dead)
    assert subscriber.stats()["shards"][dead.url]["up"] is False
    assert publisher.stats()["shards"][dead.url]["dropped"] == len(on_dead)


async def test_shard_back_resubscribes_and_resyncs_its_channels(
    make_node: MakeNode, redis_shards: list[RedisProcess]
) -> None:
    publisher, _ = await make_node()
    subscriber, recorder = await make_node()
    dead = redis_shards[1]
    on_dead = await lose_shard(publisher, subscriber, dead)
    for channel in on_dead:
        publisher.publish(channel, b"lost")

    await assert_back_after_restart(publisher, subscriber, recorder, dead, on_dead)

    assert all(recorder.received[c] == [b"after"] for c in on_dead)
    assert subscriber.stats()["shards"][dead.url]["reconnects"] == 1


async def test_subscribe_while_shard_is_down_takes_effect_when_it_is_back(
    make_node: MakeNode, redis_shards: list[RedisProcess]
) -> None:
    publisher, _ = await make_node()
    subscriber, recorder = await make_node()
    dead = redis_shards[2]
    channel = next(c for c in CHANNELS if subscriber.shard_for(c) == dead.url)
    dead.kill()
    await wait_until(lambda: not publisher.is_ready() and not subscriber.is_ready())

    await subscriber.subscribe(channel)
    dead.restart()
    await wait_until(lambda: publisher.is_ready() and subscriber.is_ready())
    publisher.publish(channel, b"hello")

    await wait_until(lambda: recorder.ends_with([channel], b"hello"))
    assert channel in recorder.resynced()


async def test_start_with_a_shard_down_reports_not_ready_then_heals(
    redis_shards: list[RedisProcess],
) -> None:
    redis_shards[0].kill()
    broker = RedisBroker([s.url for s in redis_shards], reconnect_min=0.02)
    try:
        await broker.start()
        assert not broker.is_ready()

        redis_shards[0].restart()
        await wait_until(broker.is_ready)
    finally:
        await broker.close()


@pytest.fixture
def quick_health_checks(monkeypatch: pytest.MonkeyPatch) -> float:
    """Check shard health every 50 ms instead of every few seconds."""
    interval = 0.05 * TIMEOUT_SCALE
    monkeypatch.setattr(_shard, "HEALTH_INTERVAL", interval)
    return interval


async def test_health_checks_keep_idle_shards_up(
    quick_health_checks: float, make_node: MakeNode
) -> None:
    # One node subscribes (pub/sub mode answers PING one way), the other does
    # not (plain mode answers it another way).
    publisher, _ = await make_node()
    subscriber, recorder = await make_node()
    await subscriber.subscribe(CHANNELS[0])

    await asyncio.sleep(quick_health_checks * 10)

    assert publisher.is_ready() and subscriber.is_ready()
    assert recorder.resyncs == []
    for broker in (publisher, subscriber):
        assert all(s["reconnects"] == 0 for s in broker.stats()["shards"].values())


async def test_shard_that_stops_answering_is_marked_lost(
    quick_health_checks: float,
    make_node: MakeNode,
    redis_shards: list[RedisProcess],
) -> None:
    subscriber, recorder = await make_node()
    for channel in CHANNELS:
        await subscriber.subscribe(channel)
    frozen = redis_shards[0]
    on_frozen = {c for c in CHANNELS if subscriber.shard_for(c) == frozen.url}

    # A stopped process keeps its sockets open: only the health check sees it.
    assert frozen.pid is not None
    os.kill(frozen.pid, signal.SIGSTOP)
    try:
        await wait_until(lambda: not subscriber.is_ready())
        assert recorder.resynced() == on_frozen
    finally:
        os.kill(frozen.pid, signal.SIGCONT)
    await wait_until(subscriber.is_ready)
