"""Logging set-up for the server process."""

from __future__ import annotations

import logging

__all__ = ["configure_logging"]


def configure_logging(level: str = "INFO") -> None:
    logging.basicConfig(
        level=level,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    # websockets logs every handshake failure at INFO; that is traffic, not state.
    quiet = max(logging.WARNING, logging.getLevelName(level))
    logging.getLogger("websockets").setLevel(quiet)
    # Alembic narrates every plugin it loads; keep its warnings only.
    logging.getLogger("alembic").setLevel(quiet)
