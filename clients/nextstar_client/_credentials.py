"""Stored sign-in credentials, one file per profile.

A profile is one identity on this machine (``--profile alice``). Its file,
``credentials-<profile>.json``, holds the session token, which is as good as
the account itself, so the file is created readable by its owner only.
"""

from __future__ import annotations

import json
import logging
import os
import re
from dataclasses import asdict, dataclass
from pathlib import Path

import platformdirs

__all__ = [
    "Credentials",
    "CredentialsError",
    "config_dir",
    "credentials_path",
    "delete_credentials",
]

logger = logging.getLogger(__name__)

CONFIG_DIR_ENV = "NEXTSTAR_CONFIG_DIR"

# Profile names become part of a file name: no separators, no dot files.
_PROFILE_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,63}$")


class CredentialsError(Exception):
    """A profile name is unusable, or its file is unreadable."""


@dataclass(frozen=True, slots=True)
class Credentials:
    """What a signed-in profile needs to resume its session."""

    server: str
    token: str
    user_id: int
    phone: str

    @classmethod
    def load(cls, profile: str) -> Credentials | None:
        """Return the profile's credentials, or None when it is not signed in.

        Raises:
            CredentialsError: the file exists but cannot be read or parsed.
        """
        path = credentials_path(profile)
        try:
            raw = json.loads(path.read_text())
            return cls(
                str(raw["server"]),
                str(raw["token"]),
                int(raw["user_id"]),
                str(raw["phone"]),
            )
        except FileNotFoundError:
            return None
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise CredentialsError(f"cannot read {path}: {exc}") from exc

    def save(self, profile: str) -> Path:
        """Write the credentials with mode 0600 and return the file's path.

        The file is written beside its final name and renamed over it, so a
        crash never leaves half a token behind, and it is created 0600 rather
        than narrowed afterwards, so the token is never readable by others.
        """
        path = credentials_path(profile)
        directory = path.parent
        if not directory.exists():
            directory.mkdir(mode=0o700, parents=True)

        partial = path.with_name(f".{path.name}.{os.getpid()}")
        descriptor = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            # O_CREAT keeps the mode of a leftover file; make sure of it.
            os.fchmod(descriptor, 0o600)
            with os.fdopen(descriptor, "w") as file:
                json.dump(asdict(self), file, indent=2)
                file.write("\n")
            os.replace(partial, path)
        except BaseException:
            partial.unlink(missing_ok=True)
            raise
        logger.debug("credentials saved: profile=%s", profile)
        return path


def config_dir() -> Path:
    """Return the directory for credentials: ``$NEXTSTAR_CONFIG_DIR`` or the
    platform's per-user configuration directory."""
    override = os.environ.get(CONFIG_DIR_ENV)
    if override:
        return Path(override)
    return Path(platformdirs.user_config_dir("nextstar"))


def credentials_path(profile: str) -> Path:
    """Return the credentials file of ``profile``.

    Raises:
        CredentialsError: the name could escape the directory or is too long.
    """
    if not _PROFILE_NAME.match(profile):
        raise CredentialsError(
            f"bad profile name {profile!r}: use letters, digits, '_', '.' and '-'"
        )
    return config_dir() / f"credentials-{profile}.json"


def delete_credentials(profile: str) -> bool:
    """Delete the profile's file; return whether there was one."""
    path = credentials_path(profile)
    try:
        path.unlink()
    except FileNotFoundError:
        return False
    return True
