"""The coordinator's side of the load processes: start them, send each a
command, wait for every answer while showing progress, stop them."""

from __future__ import annotations

import logging
import multiprocessing
import sys
import time
from collections.abc import Callable, Sequence
from multiprocessing.connection import Connection, wait
from typing import Any, TextIO

from .load import FIELDS, worker_main
from .targets import HarnessError

__all__ = ["Fleet", "Progress"]

logger = logging.getLogger(__name__)


class Progress:
    """One status line on stderr, rewritten in place on a terminal.

    Where stderr is not a terminal (a log file, CI), a line is printed every
    few seconds instead, so that the log does not fill with carriage returns.
    """

    def __init__(self, enabled: bool = True, stream: TextIO | None = None) -> None:
        self.stream = stream or sys.stderr
        self.enabled = enabled
        self.is_tty = self.stream.isatty()
        self._last = 0.0
        self._width = 0

    def show(self, text: str) -> None:
        if not self.enabled:
            return
        now = time.monotonic()
        if self.is_tty:
            padded = text.ljust(self._width)
            self._width = len(text)
            self.stream.write("\r" + padded)
            self.stream.flush()
        elif now - self._last >= 5.0:
            self._last = now
            self.stream.write(text + "\n")
            self.stream.flush()

    def note(self, text: str) -> None:
        """Print a line that stays (a phase began or ended)."""
        if not self.enabled:
            return
        if self.is_tty and self._width:
            self.stream.write("\r" + " " * self._width + "\r")
            self._width = 0
        self.stream.write(text + "\n")
        self.stream.flush()


class Fleet:
    """Load processes, each a :class:`bench.load.Worker` behind a pipe.

    Args:
        count: How many processes to start.
        progress: Where the status line goes.
    """

    def __init__(self, count: int, progress: Progress) -> None:
        context = multiprocessing.get_context("spawn")
        self.count = count
        self.progress = progress
        self.counters = context.RawArray("q", count * len(FIELDS))
        self.pipes: list[Connection] = []
        self._asked: list[int] = []
        self.processes: list[Any] = []
        for index in range(count):
            here, there = context.Pipe()
            process = context.Process(
                target=worker_main,
                args=(index, there, self.counters),
                name=f"nextstar-bench-load-{index}",
                daemon=True,
            )
            process.start()
            there.close()
            self.pipes.append(here)
            self.processes.append(process)

    @property
    def pids(self) -> list[int]:
        return [p.pid for p in self.processes]

    def totals(self) -> dict[str, int]:
        """Sum the progress counters of every process."""
        width = len(FIELDS)
        return {
            field: sum(self.counters[i * width + offset] for i in range(self.count))
            for offset, field in enumerate(FIELDS)
        }

    def command(
        self,
        name: str,
        args: dict[str, Any] | Sequence[dict[str, Any]],
        timeout: float,
        status: Callable[[], str] | None = None,
    ) -> list[Any]:
        """Send ``name`` to every process (one ``args`` each, or the same to
        all) and return their answers in process order.

        Raises:
            HarnessError: when a process fails the command, dies, or does not
                answer within ``timeout`` seconds.
        """
        self.send(name, args)
        return self.gather(name, timeout, status)

    def send(
        self,
        name: str,
        args: dict[str, Any] | Sequence[dict[str, Any]],
        only: int | None = None,
    ) -> None:
        """Send a command without waiting; :meth:`gather` collects answers."""
        per_process = [args] * self.count if isinstance(args, dict) else list(args)
        if len(per_process) != self.count:
            raise ValueError("one argument map per load process")
        self._asked = []
        for index, (pipe, arguments) in enumerate(
            zip(self.pipes, per_process, strict=True)
        ):
            if only is None or index == only:
                pipe.send((name, arguments))
                self._asked.append(index)

    def gather(
        self, name: str, timeout: float, status: Callable[[], str] | None = None
    ) -> list[Any]:
        """Wait for the answers to the last :meth:`send`, in process order."""
        answers: dict[int, Any] = {}
        deadline = time.monotonic() + timeout
        waiting = {self.pipes[index]: index for index in self._asked}
        while waiting:
            left = deadline - time.monotonic()
            if left <= 0:
                raise HarnessError(
                    f"load processes {sorted(waiting.values())} did not answer "
                    f"{name!r} within {timeout:g} s"
                )
            for pipe in wait(list(waiting), timeout=min(0.25, left)):
                index = waiting.pop(pipe)  # type: ignore[call-overload]
                try:
                    outcome, value = pipe.recv()  # type: ignore[union-attr]
                except EOFError:
                    raise HarnessError(f"load process {index} died during {name!r}")
                if outcome != "ok":
                    raise HarnessError(f"load process {index}: {value}")
                answers[index] = value
            if status is not None:
                self.progress.show(status())
        return [answers[index] for index in sorted(answers)]

    def command_one(
        self, index: int, name: str, args: dict[str, Any], timeout: float
    ) -> Any:
        """Send ``name`` to one process and return its answer."""
        self.send(name, args, only=index)
        return self.gather(name, timeout)[0]

    def wait_for(
        self,
        done: Callable[[dict[str, int]], bool],
        timeout: float,
        status: Callable[[], str] | None = None,
    ) -> bool:
        """Poll the counters until ``done(totals)``; False after ``timeout``."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if done(self.totals()):
                return True
            if status is not None:
                self.progress.show(status())
            time.sleep(0.1)
        # The counters are published every 0.2 s: look once more.
        time.sleep(0.3)
        return done(self.totals())

    def close(self) -> None:
        """Close every session and stop every process (bounded)."""
        try:
            self.command("close", {}, timeout=30)
        except HarnessError as exc:
            logger.warning("closing load processes: %s", exc)
        for process in self.processes:
            process.join(5)
            if process.is_alive():
                process.terminate()
                process.join(5)
        for pipe in self.pipes:
            pipe.close()
