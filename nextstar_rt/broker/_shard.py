"""One node's link to one Redis server, shared by both Redis brokers.

A :class:`ShardLink` keeps two connections to a server: a subscriber that sits
in pub/sub mode and a publisher that sends queued publishes in pipelines. The
link talks RESP directly over redis-py's :class:`~redis.asyncio.Connection`
rather than through :class:`redis.asyncio.client.PubSub`, because the latter
reconnects and resubscribes behind its caller's back, and the broker must know
of every loss: Redis pub/sub is at most once, so whatever was published while
a connection was down is gone and the sessions concerned must resync.

:class:`ShardedBroker` holds the parts of a broker that do not depend on how
channels are placed on shards (a hash ring, or Redis Cluster's hash slots).
"""

from __future__ import annotations

import abc
import asyncio
import logging
import math
import random
from collections import defaultdict, deque
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, Protocol
from urllib.parse import urlsplit, urlunsplit

from redis.asyncio.connection import AbstractConnection, Connection
from redis.backoff import NoBackoff
from redis.crc import key_slot
from redis.exceptions import (
    AskError,
    BusyLoadingError,
    ClusterDownError,
    MovedError,
    RedisError,
    ResponseError,
    TryAgainError,
)
from redis.retry import Retry

from .base import Broker

__all__ = [
    "Backoff",
    "ShardEvents",
    "ShardLink",
    "ShardedBroker",
    "cancel_and_wait",
    "redact_url",
]

logger = logging.getLogger(__name__)

#: Publishes sent in one round trip at most; a longer queue takes several, so
#: that one burst does not build a pipeline of unbounded size.
MAX_BATCH = 1024

#: Publishes a link holds for its next round trip before it drops new ones.
MAX_QUEUED = 65536

#: Channels named in one SUBSCRIBE when a link resubscribes everything.
SUBSCRIBE_CHUNK = 512

#: Seconds between health checks on the subscriber connection; a server that
#: does not answer a PING within as long again counts as lost.
HEALTH_INTERVAL = 5.0

#: Seconds allowed for connecting and for each publisher round trip.
SOCKET_TIMEOUT = 5.0

#: Seconds that closing waits for queued publishes to be sent.
CLOSE_FLUSH_TIMEOUT = 2.0

#: Error replies that mean the server does not own the channel's slot.
_REDIRECTS = (MovedError, AskError)

#: Error replies that mean the server cannot serve yet (a cluster still
#: forming, a dataset still loading); the link starts over after a backoff.
_TRANSIENT = (ClusterDownError, TryAgainError, BusyLoadingError)


def redact_url(url: str) -> str:
    """Return ``url`` without user name, password or query, for logs and stats."""
    parts = urlsplit(url)
    host = parts.netloc.rpartition("@")[2]
    return urlunsplit((parts.scheme, host, parts.path, "", ""))


async def cancel_and_wait(
    tasks: Iterable[asyncio.Future[Any]], patience: float = 0.5
) -> None:
    """Cancel ``tasks`` and return once every one of them has ended.

    A task still running after ``patience`` seconds is cancelled again: on
    Python 3.11, ``asyncio.wait_for``, which redis-py uses for its socket
    timeouts, loses a cancellation that arrives just as the operation it wraps
    completes (https://github.com/python/cpython/issues/86296, fixed in 3.12),
    and the task then carries on as if never cancelled.
    """
    pending = {task for task in tasks if not task.done()}
    while pending:
        for task in pending:
            task.cancel()
        _, pending = await asyncio.wait(pending, timeout=patience)


class Backoff:
    """Produce jittered, exponentially growing delays between attempts.

    Each delay is drawn between half and all of the current step, so that the
    nodes that lost the same server do not all come back in the same instant.
    """

    def __init__(self, minimum: float, maximum: float) -> None:
        self._minimum = minimum
        self._maximum = max(minimum, maximum)
        self._step = minimum

    def reset(self) -> None:
        """Start again from the shortest delay."""
        self._step = self._minimum

    def next_delay(self) -> float:
        """Return the delay before the next attempt and grow the step."""
        delay = random.uniform(self._step / 2, self._step)
        self._step = min(self._step * 2, self._maximum)
        return delay


class ShardEvents(Protocol):
    """What a :class:`ShardLink` reports to the broker that owns it."""

    def link_message(self, channel: str, payload: bytes) -> None:
        """Take one payload that arrived on a subscribed channel."""

    def link_lost(self, link: ShardLink, channels: set[str]) -> None:
        """Hear that ``link`` went down; ``channels`` may have lost payloads."""

    def link_back(self, link: ShardLink, channels: set[str]) -> None:
        """Hear that ``link`` is up and resubscribed after a loss."""

    def link_moved(self, link: ShardLink, channels: set[str]) -> None:
        """Hear that the server no longer owns the slots of ``channels``."""

    def link_dropped(self, link: ShardLink, channels: set[str]) -> None:
        """Hear that publishes to ``channels`` were dropped on a full queue."""


@dataclass
class _Expected:
    """Replies that one command sent on the subscriber connection will bring.

    Redis answers SUBSCRIBE and its kin with one reply per channel, in order,
    and PING with a single ``pong``; ``done`` resolves to True once every reply
    came, to False if the server refused the command, and to None if the
    connection was lost first.
    """

    kind: bytes
    channels: deque[bytes]
    done: asyncio.Future[bool | None] = field(repr=False)

    def resolve(self, result: bool | None) -> None:
        if not self.done.done():
            self.done.set_result(result)


class _Commands:
    """The command names and reply kinds of classic or sharded pub/sub."""

    def __init__(self, sharded: bool) -> None:
        prefix = "S" if sharded else ""
        self.subscribe = f"{prefix}SUBSCRIBE"
        self.unsubscribe = f"{prefix}UNSUBSCRIBE"
        self.publish = f"{prefix}PUBLISH"
        self.message = b"smessage" if sharded else b"message"
        self.subscribed = self.subscribe.lower().encode()
        self.unsubscribed = self.unsubscribe.lower().encode()


class ShardLink:
    """Keep one subscriber and one publisher connection to one Redis server.

    The link reconnects by itself with jittered exponential backoff. While it
    is down, publishes are dropped (the store is the truth) and subscriptions
    are only remembered; once it is back, it resubscribes every remembered
    channel before it reports itself up.

    Args:
        name: The server's address without credentials, for logs and stats.
        connection_kwargs: Keyword arguments for redis-py's connection class,
            as :func:`redis.asyncio.connection.parse_url` returns them.
        events: The owner that hears of messages, losses and recoveries.
        sharded: Use SSUBSCRIBE and SPUBLISH (Redis Cluster) instead of
            SUBSCRIBE and PUBLISH.
        reconnect_min: Shortest delay in seconds before reconnecting.
        reconnect_max: Longest delay in seconds before reconnecting.
    """

    def __init__(
        self,
        name: str,
        connection_kwargs: dict[str, Any],
        events: ShardEvents,
        *,
        sharded: bool = False,
        reconnect_min: float = 0.1,
        reconnect_max: float = 5.0,
    ) -> None:
        self.name = name
        kwargs = dict(connection_kwargs)
        self._connection_class: type[AbstractConnection] = kwargs.pop(
            "connection_class", Connection
        )
        # One attempt per connect: the link runs its own backoff, and a hidden
        # retry would hide a loss. RESP2 because the reader expects pub/sub
        # messages as plain replies; redis-py 8 speaks RESP3 by default and
        # would hand them to a push handler instead.
        kwargs.update(
            socket_timeout=SOCKET_TIMEOUT,
            socket_connect_timeout=SOCKET_TIMEOUT,
            retry=Retry(NoBackoff(), 0),
            protocol=2,
        )
        self._connection_kwargs = kwargs
        self._events = events
        self._commands = _Commands(sharded)
        self._sharded = sharded
        self._reconnect_min = reconnect_min
        self._reconnect_max = reconnect_max

        #: Channels this node wants from this server, subscribed or not yet.
        self.channels: set[str] = set()
        self._subscriber: AbstractConnection | None = None
        self._write_lock = asyncio.Lock()
        self._expected: deque[_Expected] = deque()

        self._queue: list[tuple[str, bytes]] = []
        self._in_flight: list[tuple[str, bytes]] = []
        self._wake = asyncio.Event()
        self._drained = asyncio.Event()
        self._drained.set()
        # Channels whose publishes were dropped since they were last reported.
        self._dropped_channels: set[str] = set()

        self._up = False
        self._was_up = False
        self._first_attempt = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._teardown: asyncio.Future[None] | None = None
        self.published = 0
        self.publish_errors = 0
        self.dropped = 0
        self.reconnects = 0

    def is_up(self) -> bool:
        """Tell whether both connections are open and resubscribed."""
        return self._up

    def stats(self) -> dict[str, object]:
        """Return this link's counters and state."""
        return {
            "up": self._up,
            "published": self.published,
            "publish_errors": self.publish_errors,
            "dropped": self.dropped,
            "reconnects": self.reconnects,
            "subscribed": len(self.channels),
            "queued": len(self._queue),
        }

    def launch(self) -> None:
        """Start connecting in the background."""
        if self._task is None:
            self._task = asyncio.create_task(
                self._run(), name=f"nextstar-shard {self.name}"
            )

    async def start(self) -> None:
        """Start connecting; return after the first attempt succeeded or failed."""
        self.launch()
        await self._first_attempt.wait()

    async def close(self) -> None:
        """Send what is queued, within a short grace, and disconnect."""
        if self._up and not self._drained.is_set():
            try:
                await asyncio.wait_for(self._drained.wait(), CLOSE_FLUSH_TIMEOUT)
            except asyncio.TimeoutError:
                logger.warning(
                    "shard %s: closing with %d publishes unsent",
                    self.name,
                    len(self._queue) + len(self._in_flight),
                )

        task, self._task = self._task, None
        if task is not None:
            await cancel_and_wait([task])
        if self._teardown is not None:
            await self._teardown
        self._up = False

    # Publishing.

    def publish(self, channel: str, payload: bytes) -> None:
        """Queue ``payload`` for the next round trip; never blocks, never raises."""
        if not self._up or len(self._queue) >= MAX_QUEUED:
            self.dropped += 1
            self._dropped_channels.add(channel)
            return

        self._queue.append((channel, payload))
        self._drained.clear()
        self._wake.set()

    async def _flush(self, publisher: AbstractConnection) -> None:
        """Send everything queued whenever the loop wakes this task."""
        while True:
            await self._wake.wait()
            self._wake.clear()

            while self._queue:
                self._in_flight = self._queue[:MAX_BATCH]
                del self._queue[:MAX_BATCH]
                await self._send_batch(publisher, self._in_flight)
                self._in_flight = []
            self._drained.set()

            # Publishes dropped on a full queue while the link stayed up are
            # reported here; those dropped while it was down wait for recovery.
            if self._dropped_channels:
                channels, self._dropped_channels = self._dropped_channels, set()
                self._events.link_dropped(self, channels)

    async def _send_batch(
        self, publisher: AbstractConnection, batch: list[tuple[str, bytes]]
    ) -> None:
        """Send ``batch`` as one pipeline and read one reply per publish."""
        command = self._commands.publish
        packed = publisher.pack_commands(
            [(command, channel, payload) for channel, payload in batch]
        )
        await publisher.send_packed_command(packed, check_health=False)

        redirected: set[str] = set()
        refusal: ResponseError | None = None
        for channel, _ in batch:
            try:
                await publisher.read_response()
            except ResponseError as exc:
                self.publish_errors += 1
                if isinstance(exc, _REDIRECTS):
                    redirected.add(channel)
                else:
                    refusal = exc
                    self._dropped_channels.add(channel)
            else:
                self.published += 1

        if refusal is not None:
            logger.warning("shard %s: publishes refused: %s", self.name, refusal)
        if redirected:
            self._events.link_moved(self, redirected)

    # Subscribing.

    async def subscribe(self, channel: str) -> None:
        """Subscribe to ``channel``; return once the server confirmed it.

        While the link is down the channel is only remembered; it is subscribed
        when the link is back, and reported for resync then.
        """
        self.channels.add(channel)
        await self._send_expecting(
            (self._commands.subscribe, channel),
            self._commands.subscribed,
            [channel.encode()],
        )

    async def unsubscribe(self, channel: str) -> None:
        """Unsubscribe from ``channel``; return once the server confirmed it."""
        self.forget(channel)
        await self._send_expecting(
            (self._commands.unsubscribe, channel),
            self._commands.unsubscribed,
            [channel.encode()],
        )

    def forget(self, channel: str) -> None:
        """Stop wanting ``channel`` here, without telling the server."""
        self.channels.discard(channel)

    async def _send_expecting(
        self, command: tuple[str, ...], kind: bytes, channels: list[bytes]
    ) -> bool | None:
        """Send ``command`` to the subscriber connection and await its replies.

        Returns:
            True once every reply came, False if the server refused the
            command, None if the link is down or went down meanwhile.
        """
        async with self._write_lock:
            subscriber = self._subscriber
            # A closed connection would reconnect on send, and nobody would
            # read the replies on the new socket.
            if subscriber is None or not subscriber.is_connected:
                return None
            future = asyncio.get_running_loop().create_future()
            expected = _Expected(kind, deque(channels), future)
            self._expected.append(expected)
            try:
                await subscriber.send_command(*command, check_health=False)
            except (RedisError, OSError):
                # The reader sees the same failure, ends the session and
                # resolves every expected reply; the link then reconnects.
                expected.resolve(None)
        return await future

    async def _resubscribe(self, subscriber: AbstractConnection) -> None:
        """Open the subscriber for use and subscribe every remembered channel.

        Raises:
            ConnectionError: If the connection was lost before every
                subscription was confirmed.
        """
        # Taking the lock orders this snapshot against concurrent subscribe
        # calls: a channel added before it is in the snapshot, and a call that
        # gets the lock after it sends on the new connection itself.
        async with self._write_lock:
            self._subscriber = subscriber
            channels = [channel.encode() for channel in self.channels]
        pending = [
            self._send_expecting(
                (self._commands.subscribe, *chunk), self._commands.subscribed, chunk
            )
            for chunk in self._chunks(channels)
        ]
        results = await asyncio.gather(*pending)
        if None in results:
            raise ConnectionError(f"lost {self.name} while resubscribing")

    def _chunks(self, channels: list[bytes]) -> Iterable[list[bytes]]:
        """Split ``channels`` into groups that one SUBSCRIBE may name.

        One SSUBSCRIBE may only name channels of one hash slot.
        """
        groups: dict[int, list[bytes]] = defaultdict(list)
        for channel in channels:
            groups[key_slot(channel) if self._sharded else 0].append(channel)
        for group in groups.values():
            for start in range(0, len(group), SUBSCRIBE_CHUNK):
                yield group[start : start + SUBSCRIBE_CHUNK]

    async def _read(self, subscriber: AbstractConnection) -> None:
        """Deliver messages and match confirmations until the connection fails."""
        try:
            while True:
                try:
                    # The session closes the connection itself; closing it
                    # here would leave a moment in which a subscribe call
                    # could reconnect it behind this reader's back.
                    reply = await subscriber.read_response(
                        timeout=math.inf, disconnect_on_error=False
                    )
                except ResponseError as exc:
                    self._refused(exc)
                    continue
                self._dispatch(reply)
        finally:
            if self._subscriber is subscriber:
                self._subscriber = None
            while self._expected:
                self._expected.popleft().resolve(None)

    def _dispatch(self, reply: Any) -> None:
        """Route one reply: a message, a confirmation, or a PING's answer."""
        if isinstance(reply, list):
            if reply[0] == self._commands.message:
                self._deliver(reply[1], reply[2])
            else:
                self._confirm(reply[0], reply[1])
        elif reply == b"PONG":
            # Outside subscribed mode (no channel yet, or none left) Redis
            # answers PING with a plain status instead of a pub/sub reply.
            self._confirm(b"pong", b"")
        else:
            logger.warning("shard %s: unexpected reply %.80r", self.name, reply)

    def _deliver(self, channel: bytes, payload: bytes) -> None:
        try:
            self._events.link_message(channel.decode(), payload)
        except Exception:
            # A failing consumer must not stop this shard's other channels.
            logger.exception("shard %s: delivery failed", self.name)

    def _confirm(self, kind: bytes, channel: bytes) -> None:
        """Match one confirmation with the oldest command still awaiting it."""
        if self._expected:
            head = self._expected[0]
            if head.kind == kind and head.channels and head.channels[0] == channel:
                head.channels.popleft()
                if not head.channels:
                    self._expected.popleft()
                    head.resolve(True)
                return

        # Redis 7 unsubscribes clients from the shard channels of a slot that
        # moved to another node; nothing here asked for it.
        name = channel.decode()
        if kind == self._commands.unsubscribed and name in self.channels:
            self._events.link_moved(self, {name})

    def _refused(self, exc: ResponseError) -> None:
        """Resolve the oldest awaiting command with the server's refusal."""
        if not self._expected:
            logger.warning("shard %s: unexpected error reply: %s", self.name, exc)
            return

        head = self._expected.popleft()
        head.resolve(False)
        channels = {name.decode() for name in head.channels}
        if head.kind == self._commands.unsubscribed:
            # A server that no longer owns a slot holds no subscription in it.
            logger.debug("shard %s: unsubscribe refused: %s", self.name, exc)
        elif isinstance(exc, _REDIRECTS):
            self._events.link_moved(self, channels)
        elif isinstance(exc, _TRANSIENT):
            # Starting over resubscribes every channel once the server can.
            raise ConnectionError(f"{self.name} refused to subscribe: {exc}")
        else:
            logger.error("shard %s: subscription refused: %s", self.name, exc)
            self.channels.difference_update(channels)

    async def _check_health(self) -> None:
        """PING the subscriber now and then; raise if no answer comes in time."""
        while True:
            await asyncio.sleep(HEALTH_INTERVAL)
            ping = self._send_expecting(("PING",), b"pong", [b""])
            try:
                await asyncio.wait_for(ping, HEALTH_INTERVAL)
            except asyncio.TimeoutError:
                raise ConnectionError(f"{self.name} did not answer PING") from None

    # The connection life cycle.

    async def _run(self) -> None:
        """Connect, serve until the connection fails, and start again."""
        backoff = Backoff(self._reconnect_min, self._reconnect_max)
        while True:
            try:
                await self._session()
            except (RedisError, OSError) as exc:
                self._failed(exc, backoff)
            except Exception as exc:
                logger.exception("shard %s: unexpected failure", self.name)
                self._failed(exc, backoff)
            self._first_attempt.set()
            await asyncio.sleep(backoff.next_delay())

    def _failed(self, exc: BaseException, backoff: Backoff) -> None:
        """Handle the end of a session, whether it got as far as up or not."""
        if self._up:
            self._lost(exc)
            backoff.reset()
        else:
            logger.debug("shard %s: connect failed: %s", self.name, exc)

    async def _session(self) -> None:
        """Open both connections, resubscribe, and serve until one fails."""
        subscriber = self._connection_class(**self._connection_kwargs)
        publisher = self._connection_class(**self._connection_kwargs)
        tasks: list[asyncio.Task[None]] = []
        try:
            await subscriber.connect()
            await publisher.connect()
            tasks.append(asyncio.create_task(self._read(subscriber)))
            tasks.append(asyncio.create_task(self._check_health()))
            await self._await_first(tasks, self._resubscribe(subscriber))

            tasks.append(asyncio.create_task(self._flush(publisher)))
            self._back()
            done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
            for task in done:
                task.result()
            raise ConnectionError(f"lost {self.name}")
        finally:
            self._subscriber = None
            # Shielded, so that close() cancelling this task once more cannot
            # cut the teardown short and leave tasks or sockets behind; close()
            # awaits it instead.
            self._teardown = asyncio.ensure_future(
                self._tear_down(tasks, [subscriber, publisher])
            )
            await asyncio.shield(self._teardown)

    async def _tear_down(
        self, tasks: list[asyncio.Task[None]], connections: list[AbstractConnection]
    ) -> None:
        """End a session's tasks, forget its expected replies, close its sockets."""
        await cancel_and_wait(tasks)
        while self._expected:
            self._expected.popleft().resolve(None)
        for connection in connections:
            await connection.disconnect(nowait=True)

    async def _await_first(self, tasks: list[asyncio.Task[None]], step: Any) -> None:
        """Run ``step`` but give up as soon as one of ``tasks`` ends."""
        step_task = asyncio.ensure_future(step)
        try:
            await asyncio.wait([step_task, *tasks], return_when=asyncio.FIRST_COMPLETED)
        finally:
            await cancel_and_wait([step_task])
        for task in tasks:
            if task.done():
                task.result()
        step_task.result()

    def _back(self) -> None:
        """Mark the link up and report what may have been missed meanwhile."""
        self._up = True
        self._first_attempt.set()
        channels = self.channels | self._dropped_channels
        self._dropped_channels = set()
        if self._was_up:
            self.reconnects += 1
            logger.info("shard back: %s", self.name)
        else:
            logger.info("shard connected: %s", self.name)
        self._was_up = True
        if channels:
            self._events.link_back(self, channels)

    def _lost(self, exc: BaseException) -> None:
        """Mark the link down, drop its queue and report the channels at risk."""
        self._up = False
        self._subscriber = None
        unsent = self._in_flight + self._queue
        self.publish_errors += len(self._in_flight)
        self.dropped += len(self._queue)
        self._in_flight = []
        self._queue = []
        self._drained.set()

        channels = self.channels | self._dropped_channels
        channels.update(channel for channel, _ in unsent)
        self._dropped_channels = set()
        logger.warning("shard lost: %s (%s)", self.name, exc)
        self._events.link_lost(self, channels)


class ShardedBroker(Broker):
    """The broker parts that both Redis brokers share.

    Subclasses decide which link carries a channel; this class queues
    publishes on that link, keeps the links' subscriptions and turns their
    losses into resync calls.
    """

    is_distributed = True
    kind = "redis"

    def __init__(self, *, reconnect_min: float, reconnect_max: float) -> None:
        super().__init__()
        self._reconnect_min = reconnect_min
        self._reconnect_max = reconnect_max
        self._links: dict[str, ShardLink] = {}

    @abc.abstractmethod
    def _link_for(self, channel: str) -> ShardLink | None:
        """Return the link that carries ``channel``, or None if none does yet."""

    def _new_link(
        self, name: str, connection_kwargs: dict[str, Any], *, sharded: bool
    ) -> ShardLink:
        link = ShardLink(
            name,
            connection_kwargs,
            self,
            sharded=sharded,
            reconnect_min=self._reconnect_min,
            reconnect_max=self._reconnect_max,
        )
        self._links[name] = link
        return link

    async def _start_links(self) -> None:
        """Start every link; return once each has tried to connect once.

        A shard that is down keeps reconnecting in the background, so that a
        node starts, reports itself not ready, and heals, rather than hanging
        on one server.
        """
        await asyncio.gather(*(link.start() for link in self._links.values()))
        down = [name for name, link in self._links.items() if not link.is_up()]
        if down:
            logger.warning("started with shards down: %s", ", ".join(down))

    async def close(self) -> None:
        await asyncio.gather(*(link.close() for link in self._links.values()))

    def publish(self, channel: str, payload: bytes) -> None:
        link = self._link_for(channel)
        if link is not None:
            link.publish(channel, payload)

    async def subscribe(self, channel: str) -> None:
        link = self._link_for(channel)
        if link is not None:
            await link.subscribe(channel)

    async def unsubscribe(self, channel: str) -> None:
        link = self._link_for(channel)
        if link is not None:
            await link.unsubscribe(channel)

    def is_ready(self) -> bool:
        return bool(self._links) and all(link.is_up() for link in self._links.values())

    def stats(self) -> dict[str, object]:
        return {
            "kind": self.kind,
            "ready": self.is_ready(),
            "shards": {name: link.stats() for name, link in self._links.items()},
        }

    # ShardEvents, called by the links.

    def link_message(self, channel: str, payload: bytes) -> None:
        self._deliver(channel, payload)

    def link_lost(self, link: ShardLink, channels: set[str]) -> None:
        self._report(channels)

    def link_back(self, link: ShardLink, channels: set[str]) -> None:
        self._report(channels)

    def link_dropped(self, link: ShardLink, channels: set[str]) -> None:
        self._report(channels)

    def link_moved(self, link: ShardLink, channels: set[str]) -> None:
        logger.warning(
            "shard %s redirected %d channels; it is not a cluster master",
            link.name,
            len(channels),
        )

    def _report(self, channels: set[str]) -> None:
        """Tell the gateway that ``channels`` may have missed payloads."""
        if not channels:
            return
        try:
            self._resync(sorted(channels))
        except Exception:
            logger.exception("resync callback failed")
