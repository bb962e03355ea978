"""Senders of sign-in codes.

``DevOutboxSender`` is for development only: it writes each code to the log and
appends it to a JSON-lines outbox file that the ``nextstar`` CLI on the same
machine reads. Production needs a real gateway; ``WebhookSender`` posts each
code to an HTTP endpoint of the operator's SMS provider.
"""

from __future__ import annotations

import abc
import asyncio
import json
import logging
import time
import urllib.request
from pathlib import Path

__all__ = ["SmsSender", "DevOutboxSender", "MemorySender", "WebhookSender"]

logger = logging.getLogger(__name__)


class SmsSender(abc.ABC):
    """Deliver a sign-in code to a phone number."""

    #: Whether the sender may be used outside development mode.
    is_real = True

    @abc.abstractmethod
    async def send_code(self, phone: str, code: str) -> None:
        """Send ``code`` to ``phone`` (E.164); raise on failure."""


class DevOutboxSender(SmsSender):
    """Write codes to the log and to an outbox file. Development only."""

    is_real = False

    def __init__(self, outbox: Path) -> None:
        self.outbox = outbox

    async def send_code(self, phone: str, code: str) -> None:
        logger.warning("development sign-in code for %s: %s", phone, code)
        line = json.dumps({"phone": phone, "code": code, "at": time.time()})
        self.outbox.parent.mkdir(parents=True, exist_ok=True)
        with self.outbox.open("a") as outbox:
            outbox.write(line + "\n")


class MemorySender(SmsSender):
    """Keep codes in memory, for tests and embedding."""

    is_real = False

    def __init__(self) -> None:
        self.sent: list[tuple[str, str]] = []

    async def send_code(self, phone: str, code: str) -> None:
        self.sent.append((phone, code))

    def last_code(self, phone: str) -> str:
        for sent_phone, code in reversed(self.sent):
            if sent_phone == phone:
                return code
        raise LookupError(f"no code sent to {phone}")


class WebhookSender(SmsSender):
    """POST ``{"phone": ..., "code": ...}`` as JSON to the provider's URL."""

    def __init__(self, url: str, timeout: float = 10.0) -> None:
        self.url = url
        self.timeout = timeout

    async def send_code(self, phone: str, code: str) -> None:
        body = json.dumps({"phone": phone, "code": code}).encode()
        request = urllib.request.Request(
            self.url, body, {"Content-Type": "application/json"}, method="POST"
        )
        # urllib blocks; a thread keeps the event loop free while it waits.
        await asyncio.to_thread(urllib.request.urlopen, request, timeout=self.timeout)
