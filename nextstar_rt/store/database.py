"""Engine set-up, migrations and transaction scopes for SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from alembic import command
from alembic.config import Config as AlembicConfig
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine

__all__ = ["Database", "now_ms", "sqlite_pragmas"]

logger = logging.getLogger(__name__)

MIGRATIONS = Path(__file__).parent / "migrations"
MIGRATION_LOCK = 0x6E5352  # any constant that every node agrees on


def now_ms() -> int:
    return time.time_ns() // 1_000_000


class Database:
    """One engine and the rules for using it.

    SQLite allows one writer at a time; inside one process, write transactions
    queue on an asyncio lock instead of failing with "database is locked".
    Several server processes must share PostgreSQL, not one SQLite file.
    """

    def __init__(
        self,
        url: str,
        *,
        pool_size: int = 10,
        max_overflow: int = 10,
        statement_timeout_ms: int = 5000,
        sqlite_synchronous: str = "full",
    ) -> None:
        self.url = sa.make_url(url)
        self.sqlite_synchronous = sqlite_synchronous.upper()
        self.is_sqlite = self.url.get_backend_name() == "sqlite"
        self.engine = self._create_engine(pool_size, max_overflow, statement_timeout_ms)
        self._write_lock = asyncio.Lock() if self.is_sqlite else None

    def _create_engine(
        self, pool_size: int, max_overflow: int, statement_timeout_ms: int
    ) -> AsyncEngine:
        if self.is_sqlite:
            database = self.url.database
            if database and database != ":memory:":
                Path(database).parent.mkdir(parents=True, exist_ok=True)
            engine = create_async_engine(self.url, connect_args={"timeout": 30})
            sa.event.listen(
                engine.sync_engine,
                "connect",
                lambda connection, _record: sqlite_pragmas(
                    connection, self.sqlite_synchronous
                ),
            )
            return engine
        connect_args = {}
        if statement_timeout_ms:
            connect_args["server_settings"] = {
                "statement_timeout": str(statement_timeout_ms)
            }
        return create_async_engine(
            self.url,
            pool_size=pool_size,
            max_overflow=max_overflow,
            pool_pre_ping=True,
            connect_args=connect_args,
        )

    @property
    def display_url(self) -> str:
        return self.url.render_as_string(hide_password=True)

    async def migrate(self) -> None:
        """Bring the schema to the newest Alembic revision."""
        async with self.write() as connection:
            if not self.is_sqlite:
                # Nodes starting together would otherwise race to create the
                # same tables; the lock lasts until this transaction ends.
                await connection.exec_driver_sql(
                    f"SELECT pg_advisory_xact_lock({MIGRATION_LOCK})"
                )
            await connection.run_sync(_upgrade)
        logger.info("store migrated: %s", self.display_url)

    @contextlib.asynccontextmanager
    async def read(self) -> AsyncIterator[AsyncConnection]:
        async with self.engine.connect() as connection:
            yield connection

    @contextlib.asynccontextmanager
    async def write_lock(self) -> AsyncIterator[None]:
        """Hold this process's SQLite write lock (nothing on PostgreSQL)."""
        if self._write_lock is None:
            yield
            return
        async with self._write_lock:
            yield

    @contextlib.asynccontextmanager
    async def write(self) -> AsyncIterator[AsyncConnection]:
        """Open a write transaction; commit on success, roll back on error."""
        if self._write_lock is None:
            async with self.engine.begin() as connection:
                yield connection
            return
        async with self._write_lock, self.engine.begin() as connection:
            yield connection

    async def ping(self) -> bool:
        try:
            async with self.read() as connection:
                await connection.execute(sa.text("SELECT 1"))
        except Exception:  # noqa: BLE001 - any failure means not ready
            return False
        return True

    async def close(self) -> None:
        await self.engine.dispose()


def sqlite_pragmas(dbapi_connection: Any, synchronous: str = "FULL") -> None:
    """Set the pragmas every SQLite connection of the server uses."""
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    # FULL syncs the WAL on every commit: an ack survives power loss, not only
    # a crash. Group commit amortises the fsync over a batch of messages.
    if synchronous not in ("FULL", "NORMAL"):
        raise ValueError(f"unsupported synchronous mode: {synchronous}")
    cursor.execute(f"PRAGMA synchronous={synchronous}")
    # The default page cache is 2 MiB: past that, every insert into the
    # message indexes reads pages back through system calls. 64 MiB and a
    # memory map keep the indexes' working set in memory.
    cursor.execute("PRAGMA cache_size=-65536")
    cursor.execute("PRAGMA mmap_size=268435456")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA busy_timeout=30000")
    cursor.close()


def _upgrade(connection: sa.Connection) -> None:
    config = AlembicConfig()
    config.set_main_option("script_location", str(MIGRATIONS))
    config.attributes["connection"] = connection
    command.upgrade(config, "head")
