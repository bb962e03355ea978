"""Read sign-in codes from a development server's SMS outbox.

A server in development mode appends each code it "sends" to a JSON-lines
file, ``<data_dir>/sms-outbox.jsonl``, one ``{"phone", "code", "at"}`` object
a line. When the server runs on this machine, ``nextstar login`` reads the
code from there instead of asking for it.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from pathlib import Path

__all__ = ["Outbox"]

logger = logging.getLogger(__name__)

POLL_INTERVAL = 0.05


class Outbox:
    """One outbox file, read from where it ended when :meth:`mark` was called.

    Args:
        path: The outbox file; it need not exist yet.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self._offset = 0
        self._since = 0.0

    def exists(self) -> bool:
        return self.path.is_file()

    def mark(self) -> None:
        """Remember the present end and time; older codes are ignored."""
        self._since = time.time()
        try:
            self._offset = self.path.stat().st_size
        except OSError:
            self._offset = 0

    def find_code(self, phone: str) -> str | None:
        """Return the newest code for ``phone`` written since :meth:`mark`."""
        try:
            with self.path.open("rb") as file:
                file.seek(0, 2)
                if file.tell() < self._offset:
                    self._offset = 0  # truncated or replaced since the mark
                file.seek(self._offset)
                data = file.read()
        except OSError:
            return None

        found = None
        # The server appends whole lines, but a reader can catch one half
        # written; only lines with their newline count.
        for line in data.split(b"\n")[:-1]:
            try:
                entry = json.loads(line)
                if entry["phone"] == phone and float(entry["at"]) >= self._since:
                    found = str(entry["code"])
            except (ValueError, KeyError, TypeError):
                logger.debug("outbox: skipped a malformed line in %s", self.path)
        return found

    async def wait_code(self, phone: str, timeout: float) -> str | None:
        """Poll for a code for ``phone`` for up to ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        while True:
            code = self.find_code(phone)
            if code is not None or time.monotonic() >= deadline:
                return code
            await asyncio.sleep(POLL_INTERVAL)
