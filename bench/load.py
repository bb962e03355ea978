"""A load process: holds its share of the sessions and runs the phases it is
told to, then reports counts, histograms and its own CPU time.

The coordinator (:mod:`bench.scenarios`) talks to each load process over a
pipe, one command at a time, each answered once. Progress counters go the
other way through shared memory, so that the coordinator can show a live line
and wait for deliveries without a round trip.
"""

from __future__ import annotations

import asyncio
import collections
import functools
import logging
import threading
import time
from collections.abc import Sequence
from multiprocessing.connection import Connection
from typing import Any

import psutil

from .hist import Recorder
from .wsclient import ClientError, WsClient, open_client

__all__ = ["FIELDS", "message_text", "sent_at", "worker_main"]

logger = logging.getLogger(__name__)

#: Per-process progress counters, in this order, in the shared array.
FIELDS = ("connected", "sent", "acked", "errors", "received", "duplicates", "caught_up")
_PUBLISH_EVERY = 0.2
_BUCKETS_PER_SECOND = 10
_DRAIN_TIMEOUT = 30.0
_MARK = "b:"


def message_text(sent: float, size: int) -> str:
    """Return a message body that carries its send time, ``size`` long."""
    head = f"{_MARK}{sent:.6f}:"
    return head + "." * max(0, size - len(head))


def sent_at(text: str) -> float | None:
    """Return the send time carried by ``text``, or None if it is not ours."""
    if not text.startswith(_MARK):
        return None
    end = text.find(":", 2)
    try:
        return float(text[2:end])
    except ValueError:
        return None


class SeqTrack:
    """What one session has seen of one conversation's ``seq``.

    A session is not sent its own messages, so their seqs (learnt from the
    acks) fill those gaps. A pushed seq is new, a gap filled late (it came
    after a higher one: the push order differs from the seq order), or a
    duplicate.
    """

    __slots__ = ("high", "high_pushed", "missing")

    def __init__(self) -> None:
        self.high = 0
        self.high_pushed = 0
        self.missing: set[int] = set()

    def _see(self, seq: int) -> bool:
        if seq > self.high:
            if seq > self.high + 1:
                self.missing.update(range(self.high + 1, seq))
            self.high = seq
            return True
        if seq in self.missing:
            self.missing.discard(seq)
            return True
        return False

    def pushed(self, seq: int) -> str:
        """Take a pushed seq; return ``new``, ``reordered`` or ``duplicate``."""
        if not self._see(seq):
            return "duplicate"
        late = seq < self.high_pushed
        self.high_pushed = max(self.high_pushed, seq)
        return "reordered" if late else "new"

    def own(self, seq: int) -> None:
        """Take the seq of one of the session's own messages (from its ack)."""
        self._see(seq)


class _Sender:
    """One user sending into one conversation."""

    __slots__ = ("client", "conversation_id", "count", "in_flight", "quota", "tag")

    def __init__(self, client: WsClient, conversation_id: int, tag: str) -> None:
        self.client = client
        self.conversation_id = conversation_id
        self.tag = tag
        self.count = 0
        self.in_flight = 0
        self.quota = -1  # no limit


class _Phase:
    """What one phase counted; reset by ``collect``."""

    def __init__(self, start: float) -> None:
        self.start = start
        self.sent = 0
        self.acked = 0
        self.duplicate_acks = 0
        self.errors = 0
        self.error_codes: collections.Counter[str] = collections.Counter()
        self.skipped = 0
        self.received = 0
        self.duplicates = 0
        self.reordered = 0
        self.other_events: collections.Counter[str] = collections.Counter()
        self.latency = Recorder()
        self.ack_latency = Recorder()
        self.ack_buckets: list[int] = []
        self.recv_buckets: list[int] = []
        self.schedule_lag = 0.0
        self.cpu = _cpu_seconds()


def _count(buckets: list[int], start: float, now: float) -> None:
    index = int((now - start) * _BUCKETS_PER_SECOND)
    index = max(index, 0)
    if index >= len(buckets):
        buckets.extend([0] * (index - len(buckets) + 1))
    buckets[index] += 1


_process = psutil.Process()


def _cpu_seconds() -> float:
    times = _process.cpu_times()
    return times.user + times.system


class Worker:
    """The state of one load process.

    Args:
        index: This process's number, 0-based.
        pipe: Commands in, answers out.
        counters: The shared progress array (``FIELDS`` per process).
    """

    def __init__(self, index: int, pipe: Connection, counters: Any) -> None:
        self.index = index
        self.pipe = pipe
        self.counters = counters
        self.clients: dict[int, WsClient] = {}
        self.senders: dict[tuple[int, int], _Sender] = {}
        self.phase = _Phase(time.time())
        self.running = False
        self.phase_end = 0.0
        self.in_flight = 0
        self.drained = asyncio.Event()
        self.caught_up = 0
        self.lost = 0
        self._commands: asyncio.Queue[Any] = asyncio.Queue()

    # -- command loop -----------------------------------------------------

    async def run(self) -> None:
        """Serve commands until ``close``."""
        loop = asyncio.get_running_loop()
        # A thread reads the pipe with blocking calls. Watching the pipe from
        # the event loop instead would make its descriptor non-blocking, and
        # a command larger than the socket buffer (a user list) would then
        # fail half-read.
        reader = threading.Thread(
            target=self._read_commands,
            args=(loop,),
            name="nextstar-bench-commands",
            daemon=True,
        )
        reader.start()
        publisher = loop.create_task(self._publish())
        try:
            while True:
                name, args = await self._commands.get()
                try:
                    result = await getattr(self, "cmd_" + name)(**args)
                except Exception as exc:  # reported to the coordinator
                    logger.exception("command %s failed", name)
                    self._answer(("error", f"{name}: {exc!r}"))
                else:
                    self._answer(("ok", result))
                if name == "close":
                    return
        finally:
            publisher.cancel()

    def _read_commands(self, loop: asyncio.AbstractEventLoop) -> None:
        while True:
            try:
                command = self.pipe.recv()
            except (EOFError, OSError):
                # The coordinator is gone: stop rather than run on unbounded.
                command = ("close", {})
            loop.call_soon_threadsafe(self._commands.put_nowait, command)
            if command[0] == "close":
                return

    def _answer(self, message: tuple[str, Any]) -> None:
        try:
            self.pipe.send(message)
        except OSError:
            pass  # the coordinator is gone; the reader thread says close

    async def _publish(self) -> None:
        base = self.index * len(FIELDS)
        while True:
            phase = self.phase
            values = (
                len([c for c in self.clients.values() if c.is_open]),
                phase.sent,
                phase.acked,
                phase.errors,
                phase.received,
                phase.duplicates,
                self.caught_up,
            )
            for offset, value in enumerate(values):
                self.counters[base + offset] = value
            await asyncio.sleep(_PUBLISH_EVERY)

    # -- sessions ---------------------------------------------------------

    async def cmd_connect(
        self,
        users: Sequence[tuple[int, str, str]],
        concurrency: int,
        timeout: float = 60.0,
    ) -> dict[str, Any]:
        """Open and sign in one session per ``(user_id, token, url)``."""
        cpu = _cpu_seconds()
        limit = asyncio.Semaphore(concurrency)
        latency = Recorder()
        failures: list[str] = []
        started = time.time()

        async def one(user_id: int, token: str, url: str) -> None:
            async with limit:
                begun = time.time()
                try:
                    client = await self._open(user_id, token, url, timeout)
                except (ClientError, TimeoutError) as exc:
                    failures.append(str(exc))
                    return
                latency.record_seconds(time.time() - begun)
                self.clients[user_id] = client

        await asyncio.gather(*(one(*user) for user in users))
        return {
            "connected": len(users) - len(failures),
            "failed": len(failures),
            "failures": failures[:5],
            "started": started,
            "finished": time.time(),
            "latency": latency.encode(),
            "cpu": _cpu_seconds() - cpu,
        }

    async def _open(
        self, user_id: int, token: str, url: str, timeout: float
    ) -> WsClient:
        client = await open_client(url, self._on_event, timeout)
        client.user_id = user_id
        try:
            async with asyncio.timeout(timeout):
                await client.call("auth.resume", token=token)
        except BaseException:
            client.close()
            raise
        return client

    async def cmd_open_count(self) -> dict[str, Any]:
        """Tell how many sessions are still open, and how many closed."""
        is_open = sum(1 for c in self.clients.values() if c.is_open)
        codes = collections.Counter(
            str(c.close_code) for c in self.clients.values() if not c.is_open
        )
        return {
            "open": is_open,
            "closed": len(self.clients) - is_open,
            "close_codes": dict(codes),
        }

    async def cmd_close(self) -> dict[str, Any]:
        """Close every session; the process then exits."""
        return await self.cmd_disconnect()

    async def cmd_disconnect(self) -> dict[str, Any]:
        """Close every session and forget them, ready for another target."""
        for client in self.clients.values():
            client.close()
        waiting = [c.closed for c in self.clients.values()]
        if waiting:
            await asyncio.wait(waiting, timeout=5.0)
        for client in self.clients.values():
            if client.transport is not None and not client.transport.is_closing():
                client.transport.abort()
        closed = len(self.clients)
        self.clients = {}
        self.senders = {}
        self.in_flight = 0
        return {"closed": closed}

    # -- set-up -----------------------------------------------------------

    async def cmd_direct(
        self, pairs: Sequence[tuple[int, int]], concurrency: int = 16
    ) -> list[tuple[int, int, int]]:
        """Open the direct conversation of each local pair; return its id."""
        limit = asyncio.Semaphore(concurrency)

        async def one(a: int, b: int) -> tuple[int, int, int]:
            async with limit:
                view = await self.clients[a].call("conv.direct", user_id=b)
                return a, b, view["conversation_id"]

        return list(await asyncio.gather(*(one(a, b) for a, b in pairs)))

    async def cmd_group(self, owner: int, members: list[int], title: str) -> int:
        view = await self.clients[owner].call(
            "group.create", title=title, member_ids=members
        )
        return view["conversation_id"]

    async def cmd_await_seen(
        self, conversation_id: int, timeout: float
    ) -> dict[str, int]:
        """Wait until every local session has seen an event of the conversation
        (``group.created`` tells that the member's node has joined it)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            missing = [
                c for c in self.clients.values() if conversation_id not in c.tracks
            ]
            if not missing:
                break
            await asyncio.sleep(0.05)
        missing_count = sum(
            1 for c in self.clients.values() if conversation_id not in c.tracks
        )
        return {"seen": len(self.clients) - missing_count, "missing": missing_count}

    # -- traffic ----------------------------------------------------------

    def _senders(self, specs: Sequence[tuple[int, int]]) -> list[_Sender]:
        senders = []
        for user_id, conversation_id in specs:
            key = (user_id, conversation_id)
            sender = self.senders.get(key)
            if sender is None:
                tag = f"w{self.index}u{user_id}c{conversation_id}-"
                sender = _Sender(self.clients[user_id], conversation_id, tag)
                self.senders[key] = sender
            senders.append(sender)
        return senders

    def _send(self, sender: _Sender, stamp: float, size: int) -> None:
        sender.count += 1
        sender.in_flight += 1
        self.in_flight += 1
        self.phase.sent += 1
        params = {
            "conversation_id": sender.conversation_id,
            "client_msg_id": sender.tag + str(sender.count),
            "text": message_text(stamp, size),
        }
        sender.client.request(
            "message.send", params, functools.partial(self._acked, sender, stamp, size)
        )

    def _acked(
        self,
        sender: _Sender,
        stamp: float,
        size: int,
        result: Any,
        error: dict[str, Any] | None,
    ) -> None:
        now = time.time()
        phase = self.phase
        sender.in_flight -= 1
        self.in_flight -= 1
        if error is not None:
            phase.errors += 1
            phase.error_codes[str(error.get("code"))] += 1
        else:
            phase.acked += 1
            if result.get("duplicate"):
                phase.duplicate_acks += 1
            track = sender.client.tracks.get(sender.conversation_id)
            if track is None:
                track = sender.client.tracks[sender.conversation_id] = SeqTrack()
            track.own(result["seq"])
            phase.ack_latency.record_seconds(now - stamp)
            _count(phase.ack_buckets, phase.start, now)
        if self.running and sender.quota != 0 and now < self.phase_end:
            if sender.quota > 0:
                sender.quota -= 1
            self._send(sender, now, size)
        if self.in_flight == 0:
            self.drained.set()

    def _on_event(self, client: WsClient, frame: dict[str, Any]) -> None:
        phase = self.phase
        if frame.get("event") != "message.new":
            phase.other_events[str(frame.get("event"))] += 1
            return
        data = frame["data"]
        conversation_id = data["conversation_id"]
        track = client.tracks.get(conversation_id)
        if track is None:
            track = client.tracks[conversation_id] = SeqTrack()
        seen = track.pushed(data["seq"])
        if seen == "duplicate":
            phase.duplicates += 1
            return
        if seen == "reordered":
            phase.reordered += 1
        stamp = sent_at(data.get("text") or "")
        if stamp is None:
            return  # a system message (group.created) or someone else's
        now = time.time()
        phase.received += 1
        phase.latency.record_seconds(now - stamp)
        _count(phase.recv_buckets, phase.start, now)

    async def _begin(self, start_at: float) -> None:
        """Wait for the phase to start, then count from ``start_at``.

        The count itself was reset by the last ``collect``, not here: another
        process may start sending a moment before this one wakes, and what it
        delivers here belongs to the new phase.
        """
        delay = start_at - time.time()
        if delay > 0:
            await asyncio.sleep(delay)
        self.phase.start = start_at
        self.phase.cpu = _cpu_seconds()

    async def _drain(self) -> bool:
        """Wait for every send in flight to be answered; False on time-out."""
        if self.in_flight == 0:
            return True
        self.drained.clear()
        try:
            await asyncio.wait_for(self.drained.wait(), _DRAIN_TIMEOUT)
        except TimeoutError:
            return False
        return True

    async def cmd_closed(
        self,
        senders: Sequence[tuple[int, int]],
        window: int,
        duration: float,
        start_at: float,
        size: int,
        quota: int = -1,
    ) -> dict[str, Any]:
        """Closed loop: each sender keeps ``window`` sends in flight.

        With ``quota`` >= 0, each sender stops after that many messages.
        """
        await self._begin(start_at)
        chosen = self._senders(senders)
        self.phase_end = start_at + duration
        self.running = True
        now = time.time()
        for sender in chosen:
            sender.quota = quota
            first = window if quota < 0 else min(window, quota)
            for _ in range(first):
                if sender.quota > 0:
                    sender.quota -= 1
                self._send(sender, now, size)
        while time.time() < self.phase_end:
            if quota >= 0 and self.in_flight == 0:
                break  # every quota used up
            await asyncio.sleep(0.05)
        self.running = False
        sending_ended = time.time()
        drained = await self._drain()
        return self._sent_summary(sending_ended, drained)

    async def cmd_open(
        self,
        senders: Sequence[tuple[int, int]],
        rate: float,
        duration: float,
        start_at: float,
        size: int,
        cap: int,
    ) -> dict[str, Any]:
        """Open loop: send at ``rate`` per second whatever the answers do.

        The timestamp in each message is its scheduled time, so that a late
        send (the load process falling behind) counts as latency rather
        than hiding it.
        """
        await self._begin(start_at)
        chosen = self._senders(senders)
        phase = self.phase
        end = start_at + duration
        if not chosen or rate <= 0:
            await asyncio.sleep(max(0.0, end - time.time()))
            return self._sent_summary(time.time(), True)
        scheduled = 0
        turn = 0
        while True:
            now = time.time()
            if now >= end:
                break
            # Message k is due at start_at + k / rate, the first one at once.
            due = int((now - start_at) * rate) + 1
            while scheduled < due:
                stamp = start_at + scheduled / rate
                scheduled += 1
                sender = chosen[turn % len(chosen)]
                turn += 1
                if sender.in_flight >= cap:
                    phase.skipped += 1
                    continue
                phase.schedule_lag = max(phase.schedule_lag, now - stamp)
                self._send(sender, stamp, size)
            # Sleep until the next message is due, but a millisecond at least:
            # the event loop's timers round to whole milliseconds anyway, and
            # waking more often would cost the load process more than the
            # sends. schedule_lag shows what this adds to the latency.
            next_due = start_at + scheduled / rate
            await asyncio.sleep(max(0.001, min(next_due, end) - time.time()))
        sending_ended = time.time()
        drained = await self._drain()
        return self._sent_summary(sending_ended, drained)

    def _sent_summary(self, sending_ended: float, drained: bool) -> dict[str, Any]:
        phase = self.phase
        return {
            "sent": phase.sent,
            "acked": phase.acked,
            "errors": phase.errors,
            "sending_ended": sending_ended,
            "drained": drained,
            "in_flight": self.in_flight,
        }

    async def cmd_collect(self) -> dict[str, Any]:
        """Return what the current phase counted, and start a fresh count."""
        phase = self.phase
        result = {
            "start": phase.start,
            "sent": phase.sent,
            "acked": phase.acked,
            "duplicate_acks": phase.duplicate_acks,
            "errors": phase.errors,
            "error_codes": dict(phase.error_codes),
            "skipped": phase.skipped,
            "received": phase.received,
            "duplicates": phase.duplicates,
            "reordered": phase.reordered,
            "other_events": dict(phase.other_events),
            "latency": phase.latency.encode(),
            "ack_latency": phase.ack_latency.encode(),
            "ack_buckets": phase.ack_buckets,
            "recv_buckets": phase.recv_buckets,
            "schedule_lag": phase.schedule_lag,
            "cpu": _cpu_seconds() - phase.cpu,
        }
        self.phase = _Phase(time.time())
        return result

    # -- sync -------------------------------------------------------------

    async def cmd_catch_up(
        self,
        users: Sequence[tuple[int, str, str]],
        expect: int,
        page: int,
        start_at: float,
        concurrency: int,
        deadline: float,
    ) -> dict[str, Any]:
        """Reconnect ``users`` at once; each syncs until it holds ``expect``
        of the harness's messages. Report when each was caught up."""
        await self._begin(start_at)
        phase = self.phase
        self.caught_up = 0
        limit = asyncio.Semaphore(concurrency)
        failures: list[str] = []
        short: list[int] = []
        counts = {"messages": 0, "calls": 0}
        finished = 0.0

        async def one(user_id: int, token: str, url: str) -> None:
            nonlocal finished
            async with limit:
                try:
                    client = await self._open(user_id, token, url, deadline)
                    got = await self._sync(client, page, counts)
                except (ClientError, TimeoutError) as exc:
                    failures.append(str(exc))
                    return
            done = time.time()
            finished = max(finished, done)
            phase.latency.record_seconds(done - start_at)
            _count(phase.recv_buckets, start_at, done)
            if got == expect:
                self.caught_up += 1
            else:
                short.append(user_id)

        try:
            async with asyncio.timeout(deadline):
                await asyncio.gather(*(one(*user) for user in users))
        except TimeoutError:
            failures.append(f"not caught up within {deadline:g} s")
        return {
            "users": len(users),
            "caught_up": self.caught_up,
            "failed": len(failures),
            "failures": failures[:5],
            "short": short[:5],
            "short_count": len(short),
            "messages": counts["messages"],
            "calls": counts["calls"],
            "duplicates": phase.duplicates,
            "finished": finished,
            "latency": phase.latency.encode(),
            "recv_buckets": phase.recv_buckets,
            "cpu": _cpu_seconds() - phase.cpu,
        }

    async def _sync(self, client: WsClient, page: int, counts: dict[str, int]) -> int:
        """Page through ``sync`` until nothing is left; return our messages."""
        cursors: dict[int, int] = {}
        got = 0
        while True:
            answer = await client.call(
                "sync",
                limit=page,
                cursors=[{"conversation_id": k, "seq": v} for k, v in cursors.items()],
            )
            counts["calls"] += 1
            more = False
            for conversation in answer["conversations"]:
                conversation_id = conversation["conversation_id"]
                for message in conversation["messages"]:
                    seq = message["seq"]
                    if seq <= cursors.get(conversation_id, 0):
                        self.phase.duplicates += 1
                        continue
                    cursors[conversation_id] = seq
                    if sent_at(message.get("text") or "") is not None:
                        got += 1
                more = more or conversation["has_more"]
                # A conversation with nothing new still gets a cursor, so
                # that the next page leaves it out.
                cursors.setdefault(conversation_id, conversation["last_seq"])
            if not more:
                counts["messages"] += got
                return got


def worker_main(index: int, pipe: Connection, counters: Any) -> None:
    """Entry point of a load process (``multiprocessing`` target)."""
    logging.basicConfig(
        level=logging.WARNING,
        format=f"load[{index}] %(levelname)s %(name)s: %(message)s",
    )
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is absent on Windows only
        runner = asyncio.run
    else:
        runner = uvloop.run
    runner(Worker(index, pipe, counters).run())
