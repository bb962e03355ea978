"""Typed settings: defaults, then a TOML file, then the environment, then flags.

The environment overrides one key with ``NEXTSTAR_<SECTION>__<KEY>``, for
example ``NEXTSTAR_SERVER__PORT=9000``; lists and tables are given as JSON.
Every setting is listed, with its default, in ``config.example.toml``.
"""

from __future__ import annotations

import json
import os
import tomllib
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

__all__ = ["Settings", "ConfigError", "load_settings"]

ENV_PREFIX = "NEXTSTAR_"


class ConfigError(Exception):
    """The configuration is invalid; the message says which key and why."""


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ServerSettings(_Section):
    mode: Literal["development", "production"] = "development"
    host: str = "127.0.0.1"
    port: int = Field(8080, ge=0, le=65535)
    data_dir: Path = Path("nextstar-data")
    workers: int = Field(1, ge=1, le=64)
    node_id: str = ""  # empty: a random id at start-up
    shutdown_grace: float = Field(10.0, gt=0)
    secret: str = ""  # pepper for code hashes; empty: kept in data_dir


class GatewaySettings(_Section):
    path: str = "/ws"
    max_frame_bytes: int = Field(65536, ge=1024)
    sign_in_deadline: float = Field(10.0, gt=0)
    ping_interval: float = Field(20.0, gt=0)
    ping_timeout: float = Field(20.0, gt=0)
    idle_timeout: float = Field(600.0, ge=0)  # 0 disables
    send_buffer_bytes: int = Field(1 << 20, ge=4096)
    slow_consumer_grace: float = Field(5.0, gt=0)
    rate_per_second: float = Field(200.0, gt=0)
    rate_burst: int = Field(400, ge=1)
    max_bad_frames: int = Field(20, ge=1)


class StoreSettings(_Section):
    url: str = ""  # empty: SQLite in data_dir
    pool_size: int = Field(10, ge=1)
    max_overflow: int = Field(10, ge=0)
    statement_timeout_ms: int = Field(5000, ge=0)
    batch_max: int = Field(256, ge=1)
    # Wait this long for more appends before committing a small batch. A
    # synced commit costs ~85 us of CPU however few messages it holds, so at
    # moderate rates a short wait halves the cost per message.
    commit_delay_ms: float = Field(1.0, ge=0, le=50)
    # "full": an acked message survives power loss (the WAL is synced at
    # every commit); "normal": it survives a crash of the server process,
    # but the last commits may be lost if the machine loses power.
    sqlite_synchronous: Literal["full", "normal"] = "full"
    # "inline": SQLite batches commit on the event loop (cheaper: no GIL
    # hand-over); "thread": in a thread of their own (the loop never blocks).
    sqlite_writer: Literal["inline", "thread"] = "inline"
    migrate_on_start: bool = True


class BrokerSettings(_Section):
    kind: Literal["local", "redis", "redis_cluster"] = "local"
    urls: list[str] = []
    reconnect_min: float = Field(0.1, gt=0)
    reconnect_max: float = Field(5.0, gt=0)
    node_ttl: float = Field(15.0, gt=0)


class AccountsSettings(_Section):
    sms_sender: Literal["dev_outbox", "webhook", "memory"] = "dev_outbox"
    sms_webhook_url: str = ""
    default_region: str = "US"
    code_ttl: float = Field(300.0, gt=0)
    code_max_attempts: int = Field(5, ge=1)
    resend_cooldown: float = Field(60.0, ge=0)
    per_phone_hourly: int = Field(5, ge=1)
    per_address_hourly: int = Field(20, ge=1)


class ChatSettings(_Section):
    recall_window: float = Field(120.0, ge=0)
    max_data_bytes: int = Field(16384, ge=64)
    group_max_members: int = Field(500, ge=2)


class HooksSettings(_Section):
    blocked_words: list[str] = []


class LoggingSettings(_Section):
    level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"


class Settings(_Section):
    server: ServerSettings = ServerSettings()
    gateway: GatewaySettings = GatewaySettings()
    store: StoreSettings = StoreSettings()
    broker: BrokerSettings = BrokerSettings()
    accounts: AccountsSettings = AccountsSettings()
    chat: ChatSettings = ChatSettings()
    hooks: HooksSettings = HooksSettings()
    logging: LoggingSettings = LoggingSettings()

    @property
    def is_development(self) -> bool:
        return self.server.mode == "development"

    def store_url(self) -> str:
        if self.store.url:
            return self.store.url
        return f"sqlite+aiosqlite:///{self.server.data_dir / 'nextstar.db'}"


def load_settings(
    path: Path | None = None,
    environ: dict[str, str] | None = None,
    overrides: dict[str, dict[str, Any]] | None = None,
) -> Settings:
    """Merge the layers into one :class:`Settings`.

    Raises:
        ConfigError: for an unreadable file, an unknown key or a bad value.
    """
    merged: dict[str, dict[str, Any]] = {}
    if path is not None:
        try:
            merged = tomllib.loads(path.read_text())
        except (OSError, tomllib.TOMLDecodeError) as exc:
            raise ConfigError(f"cannot read {path}: {exc}") from exc
    _merge(merged, _from_environ(os.environ if environ is None else environ))
    _merge(merged, overrides or {})
    try:
        return Settings.model_validate(merged)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors()
        )
        raise ConfigError(f"invalid configuration: {problems}") from None


def _from_environ(environ: dict[str, str] | os._Environ[str]) -> dict[str, Any]:
    layer: dict[str, dict[str, Any]] = {}
    for name, raw in environ.items():
        if not name.startswith(ENV_PREFIX) or "__" not in name:
            continue
        section, _, key = name[len(ENV_PREFIX) :].lower().partition("__")
        value: Any = raw
        if raw[:1] in "[{":
            try:
                value = json.loads(raw)
            except ValueError:
                pass
        layer.setdefault(section, {})[key] = value
    return layer


def _merge(into: dict[str, Any], layer: dict[str, Any]) -> None:
    for section, values in layer.items():
        if isinstance(values, dict) and isinstance(into.get(section), dict):
            into[section].update(values)
        else:
            into[section] = values
