"""Compose the server's parts; start-up, readiness and graceful shutdown."""

from __future__ import annotations

import asyncio
import logging
import os
import secrets
import signal
import uuid
from pathlib import Path
from typing import Any

from .accounts import AccountService, DevOutboxSender, MemorySender, SmsSender
from .accounts.sms import WebhookSender
from .admin.hooks import BlockedWordsHook, HookPipeline
from .broker.base import Broker
from .broker.local import LocalBroker
from .broker.registry import LocalRegistry, NodeRegistry, RedisRegistry
from .chat.fanout import Fanout
from .chat.send import SendPath
from .chat.service import ChatService
from .config import ConfigError, Settings
from .gateway.dispatch import Dispatcher
from .gateway.hub import Hub
from .gateway.server import Gateway
from .observability.metrics import BrokerCollector, Metrics
from .store.database import Database
from .store.writer import BatchWriter
from .wire.errors import CloseCode

__all__ = ["App", "build_broker", "build_sender"]

logger = logging.getLogger(__name__)


def build_broker(settings: Settings) -> Broker:
    """Return the broker the settings name."""
    broker = settings.broker
    if broker.kind == "local":
        return LocalBroker()
    if not broker.urls:
        raise ConfigError(f"broker.kind = {broker.kind!r} needs broker.urls")
    options = {
        "reconnect_min": broker.reconnect_min,
        "reconnect_max": broker.reconnect_max,
    }
    if broker.kind == "redis":
        from .broker.redis import RedisBroker

        return RedisBroker(list(broker.urls), **options)
    from .broker.redis_cluster import RedisClusterBroker

    return RedisClusterBroker(list(broker.urls), **options)


def build_registry(settings: Settings, node_id: str) -> NodeRegistry:
    """Return the node registry: in-process alone, in Redis with others."""
    broker = settings.broker
    if broker.kind == "local":
        return LocalRegistry(node_id)
    return RedisRegistry(
        node_id,
        broker.urls[0],
        ttl=broker.node_ttl,
        cluster=broker.kind == "redis_cluster",
    )


def build_sender(settings: Settings) -> SmsSender:
    """Return the SMS sender; refuse a development sender in production."""
    accounts = settings.accounts
    if accounts.sms_sender == "webhook":
        if not accounts.sms_webhook_url:
            raise ConfigError("accounts.sms_sender = 'webhook' needs sms_webhook_url")
        return WebhookSender(accounts.sms_webhook_url)
    if not settings.is_development:
        raise ConfigError(
            "production mode needs a real SMS sender: set accounts.sms_sender = "
            "'webhook' and accounts.sms_webhook_url"
        )
    if accounts.sms_sender == "memory":
        return MemorySender()
    return DevOutboxSender(settings.server.data_dir / "sms-outbox.jsonl")


def _load_secret(settings: Settings) -> bytes:
    if settings.server.secret:
        return settings.server.secret.encode()
    path = settings.server.data_dir / "secret"
    if path.exists():
        return path.read_bytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    secret = secrets.token_bytes(32)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as file:
        file.write(secret)
    return secret


class App:
    """One NextStar RT node.

    Args:
        settings: The configuration.
        sender: The SMS sender; built from the settings when omitted.
        broker: The broker; built from the settings when omitted.
    """

    def __init__(
        self,
        settings: Settings,
        *,
        sender: SmsSender | None = None,
        broker: Broker | None = None,
    ) -> None:
        self.settings = settings
        self.node_id = settings.server.node_id or uuid.uuid4().hex[:12]
        self.sender = sender or build_sender(settings)
        self.broker = broker or build_broker(settings)
        self.registry = build_registry(settings, self.node_id)
        self.metrics = Metrics()
        self.metrics.registry.register(BrokerCollector(self.broker.stats))
        self.database = Database(
            settings.store_url(),
            pool_size=settings.store.pool_size,
            max_overflow=settings.store.max_overflow,
            statement_timeout_ms=settings.store.statement_timeout_ms,
            sqlite_synchronous=settings.store.sqlite_synchronous,
        )
        self.writer = BatchWriter(
            self.database,
            settings.store.batch_max,
            commit_delay=settings.store.commit_delay_ms / 1000,
            sqlite_inline=settings.store.sqlite_writer == "inline",
        )
        self.fanout = Fanout(self.broker)
        self.hooks = HookPipeline(
            pre_send=[BlockedWordsHook(settings.hooks.blocked_words)]
        )
        self.accounts = AccountService(
            self.database, self.sender, settings.accounts, b""
        )
        self.chat = ChatService(self.database, self.fanout, settings.chat)
        self.hub = Hub(self.broker, self.registry, self.metrics)
        self.send_path = SendPath(
            self.writer,
            self.fanout,
            self.hooks,
            settings.chat,
            self.metrics,
            on_error=self._send_failed,
        )
        self.dispatcher = Dispatcher(
            self.accounts,
            self.chat,
            self.send_path,
            self.fanout,
            self.hub,
            self.metrics,
            self.node_id,
        )
        self.gateway = Gateway(
            settings.gateway, self.dispatcher, self.hub, self.metrics, self.readiness
        )
        self.addresses: list[Any] = []
        self._stopped = asyncio.Event()

    def _send_failed(self, session: Any, request_id: int, error: Any) -> None:
        self.dispatcher.send_failed(session, request_id, error)

    @property
    def port(self) -> int:
        return self.addresses[0][1]

    @property
    def url(self) -> str:
        host = self.addresses[0][0]
        host = f"[{host}]" if ":" in host else host
        return f"ws://{host}:{self.port}{self.settings.gateway.path}"

    async def start(self, **server_options: Any) -> None:
        """Migrate, connect, listen."""
        settings = self.settings
        settings.server.data_dir.mkdir(parents=True, exist_ok=True)
        self.accounts._secret = _load_secret(settings)
        if settings.store.migrate_on_start:
            await self.database.migrate()
        self.writer.start()
        await self.broker.start()
        await self.registry.start()
        self.addresses = await self.gateway.start(
            settings.server.host, settings.server.port, **server_options
        )
        logger.info("node %s listening on %s", self.node_id, self.url)

    async def readiness(self) -> tuple[bool, dict[str, Any]]:
        store_ok = await self.database.ping()
        broker_ok = self.broker.is_ready()
        return store_ok and broker_ok, {
            "store": "ok" if store_ok else "unreachable",
            "broker": "ok" if broker_ok else "shard unreachable",
        }

    async def stop(self) -> None:
        """Stop accepting, commit and ack what is queued, close with 1001."""
        logger.info("node %s stopping", self.node_id)
        self.gateway.stop_accepting()
        await self.writer.close()
        # Let the acks written by the final commit reach the transports
        # before the close frames follow them.
        await asyncio.sleep(0)
        await self.gateway.close_sessions(
            CloseCode.GOING_AWAY,
            "server shutting down",
            self.settings.server.shutdown_grace,
        )
        await self.registry.close()
        await self.broker.close()
        await self.database.close()
        self._stopped.set()
        logger.info("node %s stopped", self.node_id)

    async def run_until_signalled(self) -> None:
        """Serve until SIGTERM or SIGINT, then shut down gracefully."""
        loop = asyncio.get_running_loop()
        stop = asyncio.Event()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, stop.set)
        await stop.wait()
        await self.stop()


def describe_start(app: App) -> list[str]:
    """Lines printed at start-up: where it listens, where data lives."""
    settings = app.settings
    lines = [
        f"NextStar RT listening on {app.url}",
        f"  health: http://{settings.server.host}:{app.port}/healthz (also /readyz, "
        "/metrics)",
        f"  store:  {app.database.display_url}",
        f"  data:   {Path(settings.server.data_dir).resolve()}",
        f"  broker: {settings.broker.kind}",
    ]
    if settings.is_development:
        lines.append(
            "  development mode: sign-in codes appear in the log and in "
            f"{(settings.server.data_dir / 'sms-outbox.jsonl').resolve()}"
        )
    return lines
