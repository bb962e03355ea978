"""What a run measures: server processes the harness starts, stops and meters.

A NextStar RT node runs as ``python -m nextstar_rt.cli serve`` with its
settings in the environment (``NEXTSTAR_<SECTION>__<KEY>``); the baseline
relay as ``python -m bench.relay``; the cluster's shards as ``redis-server``
processes; its store as a throwaway PostgreSQL database. Every process is
started here, remembered by pid and ended by pid.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path
from typing import Any

import psutil

__all__ = [
    "HarnessError",
    "Postgres",
    "ServerProcess",
    "free_port",
    "load_users",
    "provision",
    "start_nextstar",
    "start_redis",
    "start_relay",
]

logger = logging.getLogger(__name__)

#: Settings for every node the harness starts. The per-session rate limit is
#: lifted because a load session sends far more than a person does, and the
#: sign-in deadline is long enough for 19,000 handshakes queued at once.
LOAD_SETTINGS = {
    "NEXTSTAR_GATEWAY__RATE_PER_SECOND": "10000000",
    "NEXTSTAR_GATEWAY__RATE_BURST": "10000000",
    "NEXTSTAR_GATEWAY__SIGN_IN_DEADLINE": "120",
    "NEXTSTAR_LOGGING__LEVEL": "WARNING",
    "NEXTSTAR_ACCOUNTS__SMS_SENDER": "memory",
}


class HarnessError(RuntimeError):
    """Something the run depends on could not be started or reached."""


def free_port() -> int:
    """Return a TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class ServerProcess:
    """A process the harness started, with its CPU time and memory.

    CPU time and memory include the process's children, so that a node run
    with ``--workers`` (a supervisor and its workers) counts as one server.
    """

    def __init__(
        self,
        name: str,
        popen: subprocess.Popen[bytes] | None,
        log: Path | None,
        pid: int | None = None,
    ) -> None:
        self.name = name
        self.popen = popen
        self.log = log
        self.pid = popen.pid if popen is not None else pid
        self.url = ""
        self.profiler: subprocess.Popen[bytes] | None = None
        self.profile_path: Path | None = None
        self._process = psutil.Process(self.pid) if self.pid else None

    @classmethod
    def attach(cls, name: str, pid: int) -> ServerProcess:
        """Meter a process the harness did not start (``--server-pid``)."""
        try:
            return cls(name, None, None, pid)
        except psutil.Error as exc:
            raise HarnessError(f"--server-pid {pid}: {exc}") from exc

    def _tree(self) -> list[psutil.Process]:
        if self._process is None:
            return []
        try:
            return [self._process, *self._process.children(recursive=True)]
        except psutil.Error:
            return []

    def cpu_seconds(self) -> float | None:
        """Return user + system CPU seconds used so far (None if unmetered)."""
        if self._process is None:
            return None
        total = 0.0
        for process in self._tree():
            try:
                times = process.cpu_times()
            except psutil.Error:
                continue
            total += times.user + times.system
        return total

    def profiler_cpu(self) -> float:
        """Return the CPU seconds used by this server's profiler (py-spy)."""
        if self.profiler is None or self.profiler.poll() is not None:
            return 0.0
        try:
            times = psutil.Process(self.profiler.pid).cpu_times()
        except psutil.Error:
            return 0.0
        return times.user + times.system

    def thread_cpu(self) -> dict[str, float]:
        """Return CPU seconds per thread of the main process: ``main`` (the
        event loop) and ``other`` (SQLite's worker, the executor, profilers)."""
        if self._process is None:
            return {}
        try:
            threads = self._process.threads()
        except psutil.Error:
            return {}
        split = {"main": 0.0, "other": 0.0}
        for thread in threads:
            key = "main" if thread.id == self.pid else "other"
            split[key] += thread.user_time + thread.system_time
        return split

    def rss(self) -> int | None:
        """Return resident memory in bytes (None if unmetered)."""
        if self._process is None:
            return None
        total = 0
        for process in self._tree():
            try:
                total += process.memory_info().rss
            except psutil.Error:
                continue
        return total

    def is_running(self) -> bool:
        return self.popen is None or self.popen.poll() is None

    def log_tail(self, lines: int = 20) -> str:
        if self.log is None or not self.log.exists():
            return ""
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])

    def stop(self, timeout: float = 15.0) -> None:
        """Stop the profiler, then the process: SIGINT, then SIGKILL."""
        if self.profiler is not None and self.profiler.poll() is None:
            self.profiler.send_signal(signal.SIGINT)
            try:
                self.profiler.wait(timeout)
            except subprocess.TimeoutExpired:
                self.profiler.kill()
        if self.popen is None or self.popen.poll() is not None:
            return
        # SIGINT lets a profiler wrapped around the server write its report.
        self.popen.send_signal(signal.SIGINT)
        try:
            self.popen.wait(timeout)
        except subprocess.TimeoutExpired:
            logger.warning("%s did not stop in %.0f s; killing it", self.name, timeout)
            self.popen.kill()
            self.popen.wait(5)


def _spawn(
    name: str, command: list[str], log: Path, env: dict[str, str] | None = None
) -> ServerProcess:
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "wb") as out:
        popen = subprocess.Popen(
            command,
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env={**os.environ, **(env or {})},
        )
    return ServerProcess(name, popen, log)


def _wait_listening(
    server: ServerProcess, port: int, timeout: float, http_path: str | None = None
) -> None:
    """Wait until ``port`` accepts (and ``http_path`` answers 200)."""
    deadline = time.monotonic() + timeout
    last = ""
    while time.monotonic() < deadline:
        if not server.is_running():
            code = server.popen.returncode if server.popen else "?"
            raise HarnessError(
                f"{server.name} exited with {code}:\n{server.log_tail()}"
            )
        try:
            if http_path is None:
                with socket.create_connection(("127.0.0.1", port), timeout=1):
                    return
            else:
                url = f"http://127.0.0.1:{port}{http_path}"
                with urllib.request.urlopen(url, timeout=2) as answer:
                    if answer.status == 200:
                        return
        except (OSError, urllib.error.URLError) as exc:
            last = str(exc)
        time.sleep(0.1)
    server.stop()
    raise HarnessError(
        f"{server.name} not ready on port {port} after {timeout:g} s: "
        f"{last}\n{server.log_tail()}"
    )


def node_env(data_dir: Path, extra: dict[str, str] | None = None) -> dict[str, str]:
    """Return the environment of a node: load settings, data dir, extras."""
    return {
        **LOAD_SETTINGS,
        "NEXTSTAR_SERVER__DATA_DIR": str(data_dir),
        **(extra or {}),
    }


def provision(
    data_dir: Path,
    count: int,
    extra: dict[str, str] | None = None,
    timeout: float = 300.0,
) -> list[dict[str, Any]]:
    """Create ``count`` users with a session token each, through the operator
    command ``nextstar-rt dev provision``; return them in user id order.

    Raises:
        HarnessError: when the command fails or takes longer than ``timeout``.
    """
    output = data_dir / f"users-{uuid.uuid4().hex[:8]}.jsonl"
    data_dir.mkdir(parents=True, exist_ok=True)
    command = [
        sys.executable,
        "-m",
        "nextstar_rt.cli",
        "dev",
        "provision",
        "--users",
        str(count),
        "--output",
        str(output),
    ]
    try:
        done = subprocess.run(
            command,
            env={**os.environ, **node_env(data_dir, extra)},
            capture_output=True,
            timeout=timeout,
            check=False,
        )
    except subprocess.TimeoutExpired as exc:
        raise HarnessError(
            f"provisioning {count} users took over {timeout:g} s"
        ) from exc
    if done.returncode != 0:
        raise HarnessError(
            "nextstar-rt dev provision failed:\n"
            + done.stderr.decode(errors="replace")[-2000:]
        )
    users = load_users(output)
    if len(users) != count:
        raise HarnessError(f"provisioned {len(users)} users, asked for {count}")
    return users


def load_users(path: Path) -> list[dict[str, Any]]:
    """Read the JSON lines ``{user_id, phone, token}`` of a provisioning run.

    Raises:
        HarnessError: when the file is unreadable or a line lacks a field.
    """
    users = []
    try:
        with open(path) as file:
            for number, line in enumerate(file, 1):
                if not line.strip():
                    continue
                entry = json.loads(line)
                if not isinstance(entry.get("user_id"), int) or not entry.get("token"):
                    raise HarnessError(f"{path}:{number}: needs user_id and token")
                users.append(entry)
    except (OSError, ValueError) as exc:
        raise HarnessError(f"cannot read users from {path}: {exc}") from exc
    users.sort(key=lambda entry: entry["user_id"])
    return users


def start_nextstar(
    data_dir: Path,
    port: int,
    log: Path,
    *,
    extra: dict[str, str] | None = None,
    profile: str = "none",
    profile_path: Path | None = None,
    name: str = "nextstar",
    timeout: float = 60.0,
) -> ServerProcess:
    """Start one NextStar RT node and wait until ``/readyz`` answers 200."""
    serve = ["-m", "nextstar_rt.cli", "serve", "--port", str(port)]
    command = [sys.executable, *serve]
    if profile == "pyinstrument":
        assert profile_path is not None
        command = [
            sys.executable,
            "-m",
            "pyinstrument",
            "-r",
            "speedscope",
            "-o",
            str(profile_path),
            *serve,
        ]
    server = _spawn(name, command, log, node_env(data_dir, extra))
    _wait_listening(server, port, timeout, "/readyz")
    server.url = f"ws://127.0.0.1:{port}/ws"
    if profile == "py-spy":
        assert profile_path is not None
        server.profiler = _start_py_spy(server, profile_path)
    server.profile_path = profile_path if profile != "none" else None
    return server


def _start_py_spy(server: ServerProcess, path: Path) -> subprocess.Popen[bytes]:
    py_spy = shutil.which("py-spy")
    if py_spy is None:
        server.stop()
        raise HarnessError(
            "--profile py-spy: py-spy is not installed (pip install py-spy)"
        )
    # The raw format is collapsed stacks ("a;b;c count"), which speedscope and
    # flamegraph.pl both read and which the harness sums into a top list.
    # --gil samples only the thread holding the GIL: a thread waiting for it
    # (the event loop while SQLite's worker runs Python) would otherwise count
    # as busy at whatever line it waits on.
    command = [
        py_spy,
        "record",
        "--pid",
        str(server.pid),
        "--format",
        "raw",
        "--gil",
        "--rate",
        "200",
        "--output",
        str(path),
    ]
    profiler = subprocess.Popen(
        command,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
    )
    time.sleep(1.0)  # py-spy attaches before the load starts
    if profiler.poll() is not None:
        error = ""
        if profiler.stderr is not None:
            error = profiler.stderr.read().decode(errors="replace")
        server.stop()
        raise HarnessError(f"py-spy could not attach: {error[-500:]}")
    return profiler


def start_relay(port: int, log: Path, timeout: float = 30.0) -> ServerProcess:
    """Start the baseline relay of :mod:`bench.relay`."""
    server = _spawn(
        "baseline", [sys.executable, "-m", "bench.relay", "--port", str(port)], log
    )
    _wait_listening(server, port, timeout)
    server.url = f"ws://127.0.0.1:{port}/ws"
    return server


def start_redis(port: int, work: Path, timeout: float = 15.0) -> ServerProcess:
    """Start a throwaway ``redis-server`` on ``port`` with persistence off.

    Raises:
        HarnessError: when redis-server is not installed or does not start.
    """
    binary = shutil.which("redis-server")
    if binary is None:
        raise HarnessError("the cluster scenario needs redis-server on PATH")
    command = [
        binary,
        "--port",
        str(port),
        "--bind",
        "127.0.0.1",
        "--save",
        "",
        "--appendonly",
        "no",
        "--dir",
        str(work),
        "--maxclients",
        "10000",
    ]
    server = _spawn(f"redis:{port}", command, work / f"redis-{port}.log")
    _wait_listening(server, port, timeout)
    server.url = f"redis://127.0.0.1:{port}"
    return server


class Postgres:
    """A throwaway database on a PostgreSQL server, created and dropped here.

    Args:
        base_url: ``postgresql+asyncpg://user@host:port/`` of a server that
            lets the user create databases.
    """

    def __init__(self, base_url: str) -> None:
        from sqlalchemy.engine import make_url

        self.base = make_url(base_url)
        self.name = f"nextstar_bench_{uuid.uuid4().hex[:10]}"
        self.url = self.base.set(database=self.name).render_as_string(
            hide_password=False
        )

    def _admin(self, statement: str) -> None:
        import asyncio

        import asyncpg

        async def run() -> None:
            url = self.base.set(drivername="postgresql", database="postgres")
            connection = await asyncpg.connect(
                url.render_as_string(hide_password=False), timeout=10
            )
            try:
                await connection.execute(statement)
            finally:
                await connection.close()

        try:
            asyncio.run(run())
        except (OSError, Exception) as exc:  # asyncpg raises its own tree
            raise HarnessError(
                f"PostgreSQL at {self.base.render_as_string()}: {exc}"
            ) from exc

    def create(self) -> None:
        self._admin(f'CREATE DATABASE "{self.name}"')

    def drop(self) -> None:
        self._admin(f'DROP DATABASE IF EXISTS "{self.name}" WITH (FORCE)')
