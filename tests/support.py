"""Helpers for end-to-end tests: servers, signed-in clients, timeouts."""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import re
import sys
from pathlib import Path
from typing import Any

from nextstar_client import Client
from nextstar_rt.accounts import MemorySender
from nextstar_rt.app import App
from nextstar_rt.config import load_settings

# Every wait in the tests is a multiple of this, so a slow machine can scale
# them all at once instead of flaking.
SCALE = float(os.environ.get("NEXTSTAR_TEST_TIMEOUT_SCALE", "1"))
TIMEOUT = 10.0 * SCALE

_phones = itertools.count(1)


def new_phone() -> str:
    """Return a fresh valid US number (555-01xx are fictional, so use 415)."""
    return f"+1415555{next(_phones):04d}"


class RunningServer:
    """A running App plus what tests need to reach it."""

    def __init__(
        self, app: App, sender: MemorySender, overrides: dict[str, Any]
    ) -> None:
        self.app = app
        self.sender = sender
        self.overrides = overrides
        self.clients: list[Client] = []

    @property
    def url(self) -> str:
        return self.app.url

    async def connect(self, encoding: str = "msgpack") -> Client:
        client = await Client.connect(self.url, encoding)
        self.clients.append(client)
        return client

    async def sign_in(
        self, phone: str | None = None, encoding: str = "msgpack", device: str = "test"
    ) -> Client:
        """Connect and sign in through the SMS-code flow."""
        phone = phone or new_phone()
        client = await self.connect(encoding)
        result = await client.call("auth.request_code", phone=phone)
        await client.sign_in(phone, self.sender.last_code(result["phone"]), device)
        client.phone = result["phone"]  # type: ignore[attr-defined]
        return client

    async def resume(self, token: str, encoding: str = "msgpack") -> Client:
        client = await self.connect(encoding)
        await client.resume(token)
        return client

    async def close_clients(self) -> None:
        await asyncio.gather(*(c.close() for c in self.clients), return_exceptions=True)
        self.clients.clear()


class ServerFactory:
    """Start App instances on ephemeral ports in the test's event loop."""

    def __init__(self, tmp_path: Path) -> None:
        self.tmp_path = tmp_path
        self.running: list[RunningServer] = []

    async def start(
        self,
        store_url: str = "",
        data_dir: Path | None = None,
        sender: MemorySender | None = None,
        **sections: dict[str, Any],
    ) -> RunningServer:
        overrides: dict[str, dict[str, Any]] = {
            key: dict(value) for key, value in sections.items()
        }
        server = overrides.setdefault("server", {})
        server.setdefault("port", 0)
        server.setdefault("data_dir", str(data_dir or self.tmp_path / "data"))
        if store_url:
            overrides.setdefault("store", {})["url"] = store_url
        accounts = overrides.setdefault("accounts", {})
        # Tests sign many users in from one address within seconds.
        accounts.setdefault("per_address_hourly", 100000)
        accounts.setdefault("resend_cooldown", 0)
        settings = load_settings(environ={}, overrides=overrides)
        sender = sender or MemorySender()
        app = App(settings, sender=sender)
        await app.start()
        running = RunningServer(app, sender, overrides)
        self.running.append(running)
        return running

    async def restart(self, server: RunningServer) -> RunningServer:
        """Stop ``server`` and start a new one on the same store."""
        await self.stop(server)
        sections = {k: dict(v) for k, v in server.overrides.items()}
        return await self.start(sender=server.sender, **sections)

    async def stop(self, server: RunningServer) -> None:
        if server in self.running:
            self.running.remove(server)
            await server.close_clients()
            await server.app.stop()

    async def stop_all(self) -> None:
        for server in list(self.running):
            await self.stop(server)


async def collect(
    client: Client,
    count: int,
    name: str = "message.new",
    conversation_id: int | None = None,
) -> list[dict[str, Any]]:
    """Wait for ``count`` events named ``name`` (in one conversation if given)."""
    events: list[dict[str, Any]] = []
    async with asyncio.timeout(TIMEOUT):
        while len(events) < count:
            frame = await client.next_event(name, timeout=TIMEOUT)
            data = frame["data"]
            if (
                conversation_id is None
                or data.get("conversation_id") == conversation_id
            ):
                events.append(data)
    return events


# Load tests and these tests send faster than a person would.
UNLIMITED_RATE = {
    "NEXTSTAR_GATEWAY__RATE_PER_SECOND": "100000",
    "NEXTSTAR_GATEWAY__RATE_BURST": "100000",
}


async def spawn_server(
    env: dict[str, str], *args: str
) -> tuple[asyncio.subprocess.Process, str]:
    """Run ``nextstar-rt serve`` as a real process; return it and its URL.

    ``env`` adds to this process's environment (``NEXTSTAR_*`` settings).
    """
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "nextstar_rt.cli",
        "serve",
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
        env={**os.environ, **UNLIMITED_RATE, **env},
    )
    async with asyncio.timeout(TIMEOUT * 3):
        while True:
            line = (await process.stdout.readline()).decode()
            if not line:
                raise RuntimeError("server exited during start-up")
            match = re.search(r"listening on (ws://\S+)", line)
            if match:
                return process, match.group(1)


async def provision(count: int, env: dict[str, str]) -> list[dict[str, Any]]:
    """Create users with tokens through ``nextstar-rt dev provision``."""
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "nextstar_rt.cli",
        "dev",
        "provision",
        "--users",
        str(count),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.DEVNULL,
        env={**os.environ, **env},
    )
    out, _ = await process.communicate()
    assert process.returncode == 0
    return [json.loads(line) for line in out.decode().splitlines()]
