"""Settings: layers, environment overrides, errors, and the example file."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest

from nextstar_rt.config import ConfigError, Settings, load_settings

ROOT = Path(__file__).resolve().parent.parent


def test_environment_overrides_the_file_and_flags_override_both(tmp_path):
    config = tmp_path / "nextstar.toml"
    config.write_text('[server]\nport = 9000\nhost = "0.0.0.0"\n')
    settings = load_settings(
        config,
        environ={
            "NEXTSTAR_SERVER__PORT": "9100",
            "NEXTSTAR_HOOKS__BLOCKED_WORDS": '["spam", "scam"]',
        },
        overrides={"server": {"port": 9200}},
    )
    assert settings.server.port == 9200
    assert settings.server.host == "0.0.0.0"
    assert settings.hooks.blocked_words == ["spam", "scam"]


def test_an_unknown_key_is_an_error_naming_it(tmp_path):
    config = tmp_path / "nextstar.toml"
    config.write_text("[server]\nprot = 1\n")
    with pytest.raises(ConfigError, match="server.prot"):
        load_settings(config, environ={})


def test_a_bad_value_is_an_error_naming_the_key():
    with pytest.raises(ConfigError, match="server.port"):
        load_settings(environ={"NEXTSTAR_SERVER__PORT": "eighty"})


def test_an_unreadable_file_is_an_error(tmp_path):
    with pytest.raises(ConfigError, match="cannot read"):
        load_settings(tmp_path / "missing.toml", environ={})


def test_the_default_store_is_sqlite_in_the_data_dir():
    settings = load_settings(environ={}, overrides={"server": {"data_dir": "/d"}})
    assert settings.store_url() == "sqlite+aiosqlite:////d/nextstar.db"
    assert settings.is_development


def test_the_example_file_lists_every_setting_with_its_default():
    example = tomllib.loads((ROOT / "config.example.toml").read_text())
    defaults = Settings().model_dump(mode="json")
    assert example == defaults
