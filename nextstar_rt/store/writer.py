"""The batching writer: every message append goes through one group commit.

Concurrent sends queue here; one task drains the queue and stores the whole
batch in one transaction, so a burst costs one commit (and one fsync) instead
of one per message. Inside the transaction each conversation row is locked
(``SELECT ... FOR UPDATE`` on PostgreSQL, the write lock on SQLite), which is
what keeps ``seq`` gap-free and unique when several nodes append to the same
conversation at once.
"""

from __future__ import annotations

import asyncio
import functools
import json
import logging
from collections import deque
from dataclasses import dataclass, field
from typing import Any

import sqlalchemy as sa

from ..wire.errors import ErrorCode, NextstarError, NotFound
from .database import Database, now_ms
from .schema import conversations, direct_pair, members, messages

__all__ = ["Append", "Stored", "BatchWriter"]

logger = logging.getLogger(__name__)


@dataclass(slots=True)
class Append:
    """One message to store."""

    conversation_id: int
    sender_id: int
    kind: str
    text: str | None = None
    data: dict[str, Any] | None = None
    client_msg_id: str | None = None
    future: asyncio.Future[Stored] = field(default=None)  # type: ignore[assignment]


@dataclass(slots=True)
class Stored:
    """The outcome of an append, once committed."""

    conversation_id: int
    seq: int
    created_at: int
    duplicate: bool
    conversation_kind: str
    # For a direct conversation, the two members; empty for a group.
    direct_members: tuple[int, ...]


# The conversations of a batch with each one's senders who are members: one
# round trip that also takes the row locks (on PostgreSQL) seq depends on.
_ids = sa.bindparam("ids", expanding=True)
_senders = sa.bindparam("senders", expanding=True)
_lock_conversations = (
    sa.select(
        conversations.c.id,
        conversations.c.kind,
        conversations.c.last_seq,
        conversations.c.direct_key,
        members.c.user_id,
    )
    .select_from(conversations)
    .outerjoin(
        members,
        sa.and_(
            members.c.conversation_id == conversations.c.id,
            members.c.user_id.in_(_senders),
        ),
    )
    .where(conversations.c.id.in_(_ids))
    .order_by(conversations.c.id)
)
_lock_conversations_for_update = _lock_conversations.with_for_update(
    of=conversations
)


@functools.cache
def _earlier_copies_sql(count: int, dollar: bool) -> str:
    """SQL finding committed messages by (conversation, sender, client id).

    The keys arrive as a VALUES list joined to the unique index: SQLite scans
    the whole table for ``(a, b, c) IN ((...), ...)``, but probes the index
    once per key for a join. Written as driver SQL because the statement's
    shape changes with the number of keys, which SQLAlchemy would compile
    afresh for every batch.
    """
    if dollar:  # asyncpg: numbered placeholders, typed so the join compares ints
        rows = ", ".join(
            f"(${3 * i + 1}::bigint, ${3 * i + 2}::bigint, ${3 * i + 3}::text)"
            for i in range(count)
        )
    else:
        rows = ", ".join("(?, ?, ?)" for _ in range(count))
    return (
        f"WITH k(c, s, m) AS (VALUES {rows}) "
        "SELECT messages.conversation_id, messages.sender_id, "
        "messages.client_msg_id, messages.seq, messages.created_at "
        "FROM k JOIN messages ON messages.conversation_id = k.c "
        "AND messages.sender_id = k.s AND messages.client_msg_id = k.m"
    )



class _WriteSql:
    """The batch's writes as driver SQL, executed many times with tuples.

    SQLAlchemy spends several microseconds per row turning parameter maps into
    driver parameters; for the rows of every message that is most of the
    writer's time, so these three statements go to the driver directly.
    """

    def __init__(self, dollar: bool) -> None:
        def marks(count: int) -> str:
            if dollar:  # asyncpg numbers its placeholders
                return ", ".join(f"${i}" for i in range(1, count + 1))
            return ", ".join("?" * count)

        self.insert = (
            "INSERT INTO messages (conversation_id, seq, sender_id, kind, text, "
            f"data, client_msg_id, created_at) VALUES ({marks(8)})"
        )
        one, two, three, four = marks(4).split(", ")
        self.last_seq = (
            f"UPDATE conversations SET last_seq = {one}, updated_at = {two} "
            f"WHERE id = {three}"
        )
        self.read_seq = (
            f"UPDATE members SET read_seq = {one} WHERE conversation_id = {two} "
            f"AND user_id = {three} AND read_seq < {four}"
        )



class BatchWriter:
    """Group-commit message appends.

    Args:
        database: The store.
        batch_max: Most appends in one transaction.
    """

    def __init__(self, database: Database, batch_max: int = 256) -> None:
        self._database = database
        self._batch_max = batch_max
        self._pending: deque[Append] = deque()
        self._sql = _WriteSql(dollar=not database.is_sqlite)
        self._wakeup = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._closing = False
        self.batches = 0
        self.stored = 0

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(
            self._run(), name="nextstar-batch-writer"
        )

    def submit(self, append: Append) -> asyncio.Future[Stored]:
        """Queue ``append``; the future resolves once it is committed.

        The future fails with ``not_found`` for an unknown conversation,
        ``not_member`` when the sender is not a member, and ``unavailable``
        when the store cannot commit or the writer is shutting down.
        """
        future: asyncio.Future[Stored] = asyncio.get_running_loop().create_future()
        if self._closing:
            future.set_exception(_unavailable("server is shutting down"))
            return future
        append.future = future
        self._pending.append(append)
        self._wakeup.set()
        return future

    async def close(self) -> None:
        """Commit everything queued, then stop."""
        self._closing = True
        self._wakeup.set()
        if self._task is not None:
            await self._task

    async def _run(self) -> None:
        while True:
            await self._wakeup.wait()
            self._wakeup.clear()
            while self._pending:
                batch = [
                    self._pending.popleft()
                    for _ in range(min(self._batch_max, len(self._pending)))
                ]
                await self._commit(batch)
            if self._closing:
                return

    async def _commit(self, batch: list[Append]) -> None:
        try:
            async with self._database.write() as connection:
                outcomes = await self._store(connection, batch)
        except Exception:
            if len(batch) == 1:
                logger.exception("append failed")
                _fail(batch[0], _unavailable("message could not be stored"))
                return
            # One bad append must not sink its neighbours: retry one by one.
            logger.warning("batch of %d failed; retrying singly", len(batch))
            for append in batch:
                await self._commit([append])
            return

        self.batches += 1
        for append, outcome in zip(batch, outcomes, strict=True):
            if append.future.done():
                continue
            if isinstance(outcome, NextstarError):
                append.future.set_exception(outcome)
            else:
                self.stored += not outcome.duplicate
                append.future.set_result(outcome)

    async def _store(
        self, connection: Any, batch: list[Append]
    ) -> list[Stored | NextstarError]:
        created_at = now_ms()

        # Lock the conversations, in id order so two nodes never deadlock, and
        # learn which senders are members.
        ids = sorted({append.conversation_id for append in batch})
        senders = list({append.sender_id for append in batch})
        lock = (_lock_conversations if self._database.is_sqlite
                else _lock_conversations_for_update)
        rows = (await connection.execute(lock, {"ids": ids, "senders": senders})).all()
        conversation = {row.id: row for row in rows}
        last_seq = {row.id: row.last_seq for row in rows}
        membership = {(row.id, row.user_id) for row in rows if row.user_id is not None}

        # Earlier copies of retried sends, committed before this batch.
        keys = [
            (a.conversation_id, a.sender_id, a.client_msg_id)
            for a in batch
            if a.client_msg_id is not None
        ]
        earlier: dict[tuple[int, int, str], tuple[int, int]] = {}
        if keys:
            sql = _earlier_copies_sql(len(keys), not self._database.is_sqlite)
            found = await connection.exec_driver_sql(
                sql, tuple(value for key in keys for value in key)
            )
            earlier = {(r[0], r[1], r[2]): (r[3], r[4]) for r in found}

        outcomes: list[Stored | NextstarError] = []
        inserts: list[tuple[Any, ...]] = []
        for append in batch:
            row = conversation.get(append.conversation_id)
            if row is None:
                outcomes.append(NotFound("no such conversation"))
                continue
            direct = direct_pair(row.direct_key)
            if (append.conversation_id, append.sender_id) not in membership:
                outcomes.append(
                    NextstarError.with_code(
                        ErrorCode.NOT_MEMBER, "not a member of this conversation"
                    )
                )
                continue
            key = (append.conversation_id, append.sender_id, append.client_msg_id)
            if append.client_msg_id is not None and key in earlier:
                seq, at = earlier[key]
                outcomes.append(Stored(key[0], seq, at, True, row.kind, direct))
                continue
            seq = last_seq[append.conversation_id] + 1
            last_seq[append.conversation_id] = seq
            if append.client_msg_id is not None:
                earlier[key] = (seq, created_at)  # a retry inside this batch
            data = None if append.data is None else _json(append.data)
            inserts.append((
                append.conversation_id, seq, append.sender_id, append.kind,
                append.text, data, append.client_msg_id, created_at,
            ))
            outcomes.append(
                Stored(append.conversation_id, seq, created_at, False, row.kind, direct)
            )

        if inserts:
            sql = self._sql
            await connection.exec_driver_sql(sql.insert, inserts)
            await connection.exec_driver_sql(sql.last_seq, [
                (seq, created_at, cid)
                for cid, seq in last_seq.items()
                if seq != conversation[cid].last_seq
            ])
            # A sender has read everything up to their own newest message.
            newest = {(row[0], row[2]): row[1] for row in inserts}
            await connection.exec_driver_sql(sql.read_seq, [
                (seq, cid, user, seq) for (cid, user), seq in newest.items()
            ])
        return outcomes


_json = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False).encode


def _unavailable(message: str) -> NextstarError:
    return NextstarError.with_code(ErrorCode.UNAVAILABLE, message)


def _fail(append: Append, error: NextstarError) -> None:
    if not append.future.done():
        append.future.set_exception(error)
