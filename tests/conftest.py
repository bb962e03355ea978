"""Shared fixtures: a real server on an ephemeral port, on SQLite or PostgreSQL."""

from __future__ import annotations

import pytest

from .support import ServerFactory

pytest_plugins = ["tests.services"]


@pytest.fixture(params=["sqlite", "postgres"])
def store_url(request: pytest.FixtureRequest) -> str:
    """The store under test: "" for SQLite in the data dir, or a fresh
    PostgreSQL database started by the services fixtures."""
    if request.param == "sqlite":
        return ""
    return request.getfixturevalue("postgres_url")


@pytest.fixture
async def servers(tmp_path):  # type: ignore[no-untyped-def]
    """Start servers on demand; every one is stopped at teardown."""
    factory = ServerFactory(tmp_path)
    yield factory
    await factory.stop_all()


@pytest.fixture
async def server(servers, store_url):  # type: ignore[no-untyped-def]
    """One server on the store under test (both SQLite and PostgreSQL)."""
    return await servers.start(store_url=store_url)


@pytest.fixture
async def sqlite_server(servers):  # type: ignore[no-untyped-def]
    """One server on SQLite, for tests that are not about the store."""
    return await servers.start()
