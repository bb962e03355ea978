"""The store: migrations match the models, the writer batches and dedupes."""

from __future__ import annotations

import asyncio

import pytest
import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext

from nextstar_rt.store.database import Database, now_ms
from nextstar_rt.store.schema import conversations, members, metadata, users
from nextstar_rt.store.writer import Append, BatchWriter
from nextstar_rt.wire.errors import ErrorCode, NextstarError


@pytest.fixture
async def database(tmp_path, store_url):
    database = Database(store_url or f"sqlite+aiosqlite:///{tmp_path}/store.db")
    await database.migrate()
    yield database
    await database.close()


async def test_the_migrated_schema_matches_the_models(database):
    def differences(connection):
        context = MigrationContext.configure(connection)
        return compare_metadata(context, metadata)

    async with database.read() as connection:
        diff = await connection.run_sync(differences)
    assert diff == []


async def test_migrating_twice_changes_nothing(database):
    await database.migrate()
    async with database.read() as connection:
        version = (
            await connection.execute(sa.text("SELECT version_num FROM alembic_version"))
        ).scalar_one()
    assert version == "0001"


async def _conversation_with(database, user_ids):
    now = now_ms()
    async with database.write() as connection:
        for user_id in user_ids:
            await connection.execute(users.insert().values(id=user_id, created_at=now))
        cid = (
            await connection.execute(
                conversations.insert()
                .values(kind="group", created_at=now, updated_at=now)
                .returning(conversations.c.id)
            )
        ).scalar_one()
        await connection.execute(
            members.insert(),
            [
                {"conversation_id": cid, "user_id": u, "joined_at": now}
                for u in user_ids
            ],
        )
    return cid


@pytest.mark.parametrize("inline", [True, False])
async def test_concurrent_appends_share_one_commit_and_get_gap_free_seqs(
    database, inline
):
    cid = await _conversation_with(database, [1, 2])
    writer = BatchWriter(database, batch_max=500, sqlite_inline=inline)
    writer.start()
    futures = [
        writer.submit(Append(cid, 1 + i % 2, "text", f"m{i}", None, f"c{i}"))
        for i in range(300)
    ]
    stored = await asyncio.gather(*futures)
    await writer.close()

    assert [s.seq for s in stored] == list(range(1, 301))
    assert writer.batches == 1  # all 300 queued before the writer ran
    async with database.read() as connection:
        last_seq = (
            await connection.execute(sa.select(conversations.c.last_seq))
        ).scalar_one()
    assert last_seq == 300


async def test_a_retry_in_the_same_batch_or_later_returns_the_first_seq(database):
    cid = await _conversation_with(database, [1, 2])
    writer = BatchWriter(database)
    writer.start()
    first, same_batch = await asyncio.gather(
        writer.submit(Append(cid, 1, "text", "hi", None, "dup")),
        writer.submit(Append(cid, 1, "text", "hi", None, "dup")),
    )
    later = await writer.submit(Append(cid, 1, "text", "hi", None, "dup"))
    other_sender = await writer.submit(Append(cid, 2, "text", "hi", None, "dup"))
    await writer.close()

    assert (first.seq, first.duplicate) == (1, False)
    assert (same_batch.seq, same_batch.duplicate) == (1, True)
    assert (later.seq, later.duplicate) == (1, True)
    assert (other_sender.seq, other_sender.duplicate) == (2, False)


async def test_one_bad_append_fails_alone(database):
    cid = await _conversation_with(database, [1, 2])
    writer = BatchWriter(database)
    writer.start()
    results = await asyncio.gather(
        writer.submit(Append(cid, 1, "text", "fine", None, "a")),
        writer.submit(Append(cid, 3, "text", "not a member", None, "b")),
        writer.submit(Append(cid + 100, 1, "text", "no conversation", None, "c")),
        writer.submit(Append(cid, 2, "text", "fine too", None, "d")),
        return_exceptions=True,
    )
    await writer.close()

    assert [r.seq for r in (results[0], results[3])] == [1, 2]
    assert isinstance(results[1], NextstarError)
    assert results[1].code is ErrorCode.NOT_MEMBER
    assert results[2].code is ErrorCode.NOT_FOUND


async def test_a_closed_writer_refuses_new_appends(database):
    writer = BatchWriter(database)
    writer.start()
    await writer.close()
    with pytest.raises(NextstarError) as error:
        await writer.submit(Append(1, 1, "text", "late"))
    assert error.value.code is ErrorCode.UNAVAILABLE


async def test_nodes_migrating_at_once_do_not_collide(postgres_url):
    databases = [Database(postgres_url) for _ in range(3)]
    try:
        await asyncio.gather(*(database.migrate() for database in databases))
        async with databases[0].read() as connection:
            version = (
                await connection.execute(
                    sa.text("SELECT version_num FROM alembic_version")
                )
            ).scalar_one()
        assert version == "0001"
    finally:
        for database in databases:
            await database.close()


async def test_a_commit_delay_gathers_sends_that_arrive_apart(database):
    cid = await _conversation_with(database, [1, 2])
    writer = BatchWriter(database, batch_max=256, commit_delay=0.05)
    writer.start()
    futures = []
    for i in range(5):  # five sends spread over 10 ms
        futures.append(writer.submit(Append(cid, 1, "text", f"m{i}", None, f"s{i}")))
        await asyncio.sleep(0.002)
    stored = await asyncio.gather(*futures)
    await writer.close()
    assert [s.seq for s in stored] == [1, 2, 3, 4, 5]
    assert writer.batches == 1


async def test_normal_synchronous_mode_is_applied(tmp_path):
    database = Database(
        f"sqlite+aiosqlite:///{tmp_path}/n.db", sqlite_synchronous="normal"
    )
    try:
        async with database.read() as connection:
            mode = (await connection.exec_driver_sql("PRAGMA synchronous")).scalar()
        assert mode == 1  # NORMAL; FULL is 2
    finally:
        await database.close()
