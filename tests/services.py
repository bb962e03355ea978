"""Real services for the tests: redis-server shards, a Redis Cluster, PostgreSQL.

Load it with ``pytest_plugins = ["tests.services"]`` in ``tests/conftest.py``.
Every server runs on a free port of 127.0.0.1 in a temporary folder and is
stopped at teardown, whether the test passed or not; an ``atexit`` hook and a
parent-death signal catch what a crashed run would leave behind.

A missing binary skips the test with the reason, or fails it when
``NEXTSTAR_REQUIRE_SERVICES=1`` (as CI sets it). ``NEXTSTAR_TEST_TIMEOUT_SCALE``
stretches every wait for slow machines. With ``NEXTSTAR_TEST_POSTGRES_URL`` set,
throwaway databases are created on that server instead of a private one.
"""

from __future__ import annotations

import asyncio
import atexit
import concurrent.futures
import contextlib
import ctypes
import glob
import os
import pwd
import random
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, Protocol, TypeVar
from urllib.parse import urlsplit, urlunsplit

import pytest
import redis

__all__ = [
    "TIMEOUT",
    "TIMEOUT_SCALE",
    "PostgresServer",
    "RedisClusterProcesses",
    "RedisProcess",
    "ServiceError",
    "free_port",
    "free_server_port",
    "require_binary",
    "running",
    "wait_until",
]

#: One factor for every wait in the tests.
TIMEOUT_SCALE = float(os.environ.get("NEXTSTAR_TEST_TIMEOUT_SCALE", "1"))

#: Seconds a test waits for one expected event.
TIMEOUT = 5 * TIMEOUT_SCALE

#: Seconds a fixture waits for a server to come up.
STARTUP_TIMEOUT = 30 * TIMEOUT_SCALE

_T = TypeVar("_T")
_T_co = TypeVar("_T_co", covariant=True)

_RUNNING: set[_ServerProcess] = set()


class _Service(Protocol[_T_co]):
    def start(self) -> _T_co: ...

    def stop(self) -> None: ...


class ServiceError(RuntimeError):
    """A test service did not start or answer; the message carries its log."""


def require_binary(name: str, *, search: Sequence[str] = ()) -> str:
    """Return the path of program ``name``, or skip the test without it.

    Args:
        name: The program, looked up on ``PATH`` and then in ``search``.
        search: Further folders to look in, first match wins.

    Raises:
        pytest.skip.Exception: If it is missing.
        pytest.fail.Exception: If it is missing and
            ``NEXTSTAR_REQUIRE_SERVICES=1``.
    """
    path = shutil.which(name)
    for folder in search:
        if path is not None:
            break
        path = shutil.which(name, path=folder)
    if path is not None:
        return path

    reason = f"{name} is not installed"
    if os.environ.get("NEXTSTAR_REQUIRE_SERVICES") == "1":
        pytest.fail(f"{reason} and NEXTSTAR_REQUIRE_SERVICES=1", pytrace=False)
    pytest.skip(reason)


def free_port() -> int:
    """Return a TCP port of 127.0.0.1 that was free a moment ago."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _is_free(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def free_server_port() -> int:
    """Return a free port for a server that may be restarted on it.

    The port and the one 10000 higher (a Redis Cluster node's bus port) are
    drawn from below the kernel's ephemeral range, so that no client socket
    takes either while the server is down, and checked to be free now.
    """
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range") as ranges:
            ephemeral_low = int(ranges.read().split()[0])
    except (OSError, ValueError, IndexError):
        ephemeral_low = 32768
    highest = max(ephemeral_low - 10001, 10100)
    for _ in range(1000):
        port = random.randint(10000, highest)
        if _is_free(port) and _is_free(port + 10000):
            return port
    raise ServiceError("no free port for a server")


async def wait_until(
    predicate: Callable[[], bool], timeout: float = TIMEOUT, interval: float = 0.01
) -> None:
    """Poll ``predicate`` until it holds.

    Raises:
        TimeoutError: If it still does not hold after ``timeout`` seconds.
    """
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not predicate():
        if loop.time() > deadline:
            raise TimeoutError(f"condition not met within {timeout:.1f}s")
        await asyncio.sleep(interval)


def _die_with_parent() -> None:
    """Ask Linux to SIGKILL this child when the test process dies."""
    if sys.platform.startswith("linux"):
        pr_set_pdeathsig = 1
        ctypes.CDLL(None).prctl(pr_set_pdeathsig, signal.SIGKILL)


class _ServerProcess:
    """A server started as a child process, with its log in its own folder."""

    #: The signal that asks the server for a quick clean shutdown.
    stop_signal = signal.SIGTERM

    def __init__(self, name: str, directory: Path) -> None:
        self.name = name
        self.directory = directory
        self.log_path = directory / f"{name}.log"
        self._process: subprocess.Popen[bytes] | None = None

    def _spawn(self, args: list[str], **kwargs: Any) -> None:
        with open(self.log_path, "ab") as log:
            self._process = subprocess.Popen(
                args,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=self.directory,
                preexec_fn=_die_with_parent,
                **kwargs,
            )
        _RUNNING.add(self)

    def _wait_ready(self, is_ready: Callable[[], bool]) -> None:
        """Poll ``is_ready`` until it holds; raise with the log if it never does."""
        deadline = time.monotonic() + STARTUP_TIMEOUT
        while not is_ready():
            if self._process is None or self._process.poll() is not None:
                raise ServiceError(f"{self.name} exited:\n{self.log_tail()}")
            if time.monotonic() > deadline:
                raise ServiceError(f"{self.name} did not start:\n{self.log_tail()}")
            time.sleep(0.02)

    def log_tail(self, lines: int = 40) -> str:
        """Return the end of the server's log."""
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return "(no log)"
        return "\n".join(text.splitlines()[-lines:])

    @property
    def pid(self) -> int | None:
        """The process id while the server runs."""
        return self._process.pid if self._process is not None else None

    def is_running(self) -> bool:
        """Tell whether the server process is alive."""
        return self._process is not None and self._process.poll() is None

    def kill(self) -> None:
        """Kill the server with SIGKILL, as a crash would."""
        self._end(signal.SIGKILL)

    def _end(self, signum: int, grace: float = 10.0) -> None:
        process, self._process = self._process, None
        _RUNNING.discard(self)
        if process is None or process.poll() is not None:
            return
        process.send_signal(signum)
        try:
            process.wait(grace * TIMEOUT_SCALE)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()

    def stop(self) -> None:
        """Stop the server cleanly (SIGKILL after a grace) and remove its folder."""
        self._end(self.stop_signal)
        shutil.rmtree(self.directory, ignore_errors=True)


class RedisProcess(_ServerProcess):
    """One ``redis-server`` on 127.0.0.1, without persistence.

    Args:
        port: The port; by default one from :func:`free_server_port`.
        extra_args: More ``redis-server`` arguments, such as cluster mode.
    """

    def __init__(self, port: int | None = None, extra_args: Sequence[str] = ()):
        self.binary = require_binary("redis-server")
        self.port = port or free_server_port()
        directory = Path(tempfile.mkdtemp(prefix=f"nextstar-redis-{self.port}-"))
        super().__init__(f"redis-{self.port}", directory)
        self.extra_args = list(extra_args)
        self._may_move = port is None

    @property
    def url(self) -> str:
        """The server's ``redis://`` URL."""
        return f"redis://127.0.0.1:{self.port}"

    def start(self) -> RedisProcess:
        """Start the server and return once it answers PING.

        Before the first start only, a drawn port that another program took
        meanwhile is replaced by a new one; a restart keeps its port.
        """
        for attempt in range(3):
            self._spawn(
                [
                    self.binary,
                    "--port", str(self.port),
                    "--bind", "127.0.0.1",
                    "--save", "",
                    "--appendonly", "no",
                    "--dir", str(self.directory),
                    *self.extra_args,
                ]
            )  # fmt: skip
            try:
                self._wait_ready(self.ping)
                break
            except ServiceError:
                taken = "Address already in use" in self.log_tail(3)
                if not (self._may_move and taken) or attempt == 2:
                    raise
                self._end(signal.SIGKILL)
                self.port = free_server_port()
        self._may_move = False
        return self

    def restart(self) -> RedisProcess:
        """Start the server again on the same port (after :meth:`kill`)."""
        self._end(self.stop_signal)
        return self.start()

    def client(self) -> redis.Redis:
        """Return a synchronous client for set-up and checks."""
        return redis.Redis(host="127.0.0.1", port=self.port, socket_timeout=2)

    def ping(self) -> bool:
        """Tell whether the server answers PING now."""
        try:
            with self.client() as client:
                return bool(client.ping())
        except redis.RedisError:
            return False


class RedisClusterProcesses:
    """A Redis Cluster of masters without replicas, on 127.0.0.1.

    Args:
        masters: How many masters; Redis requires at least three.
    """

    def __init__(self, masters: int = 3) -> None:
        require_binary("redis-cli")
        self.nodes = [
            RedisProcess(
                extra_args=[
                    "--cluster-enabled",
                    "yes",
                    "--cluster-config-file",
                    "nodes.conf",
                    "--cluster-node-timeout",
                    "2000",
                ]
            )  # fmt: skip
            for _ in range(masters)
        ]

    @property
    def urls(self) -> list[str]:
        """The nodes' ``redis://`` URLs."""
        return [node.url for node in self.nodes]

    def start(self) -> RedisClusterProcesses:
        """Start the nodes, join them, and return once every node says ok."""
        for node in self.nodes:
            node.start()
        addresses = [f"127.0.0.1:{node.port}" for node in self.nodes]
        created = subprocess.run(
            [
                require_binary("redis-cli"), "--cluster", "create", *addresses,
                "--cluster-replicas", "0", "--cluster-yes",
            ],
            stdin=subprocess.DEVNULL,
            capture_output=True,
            timeout=STARTUP_TIMEOUT,
        )  # fmt: skip
        if created.returncode != 0:
            output = (created.stdout + created.stderr).decode(errors="replace")
            raise ServiceError(f"redis-cli --cluster create failed:\n{output}")

        deadline = time.monotonic() + STARTUP_TIMEOUT
        while not all(self._is_settled(node) for node in self.nodes):
            if time.monotonic() > deadline:
                raise ServiceError("the cluster did not reach cluster_state:ok")
            time.sleep(0.05)
        return self

    def _is_settled(self, node: RedisProcess) -> bool:
        """Tell whether ``node`` sees every slot covered and every node."""
        try:
            with node.client() as client:
                info = client.cluster("INFO")
        except redis.RedisError:
            return False
        if isinstance(info, bytes):
            info = dict(
                line.split(":", 1) for line in info.decode().splitlines() if ":" in line
            )
        return info.get("cluster_state") == "ok" and int(
            info.get("cluster_known_nodes", 0)
        ) == len(self.nodes)

    def flush(self) -> None:
        """Delete every key on every master."""
        for node in self.nodes:
            with node.client() as client:
                client.flushall()

    def stop(self) -> None:
        """Stop every node."""
        for node in self.nodes:
            node.stop()


def _postgres_search_path() -> list[str]:
    """Return the folders of the installed PostgreSQL versions, newest first."""
    folders = glob.glob("/usr/lib/postgresql/*/bin")
    return sorted(folders, key=lambda f: int(Path(f).parent.name), reverse=True)


def _run_async(coroutine: Awaitable[_T]) -> _T:
    """Run ``coroutine`` to completion on a private loop in another thread.

    A synchronous fixture must not touch the event loop that pytest-asyncio
    keeps for the test itself.
    """

    async def main() -> _T:
        return await coroutine

    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, main()).result()


class PostgresServer:
    """A PostgreSQL server that tests may create throwaway databases on.

    Args:
        admin_url: A ``postgresql://`` URL of a database that may run
            CREATE DATABASE and DROP DATABASE.
    """

    def __init__(self, admin_url: str) -> None:
        parts = urlsplit(admin_url)
        scheme = parts.scheme.split("+", 1)[0]
        if scheme not in ("postgresql", "postgres"):
            raise ValueError(f"not a PostgreSQL URL: {scheme}://")
        path = parts.path if parts.path not in ("", "/") else "/postgres"
        self.admin_url = urlunsplit(("postgresql", parts.netloc, path, parts.query, ""))
        self._netloc = parts.netloc
        self._query = parts.query

    def url(self, database: str) -> str:
        """Return the SQLAlchemy (asyncpg) URL of ``database``."""
        parts = ("postgresql+asyncpg", self._netloc, f"/{database}", self._query, "")
        return urlunsplit(parts)

    async def execute(self, statement: str) -> None:
        """Run one statement on the admin database."""
        import asyncpg

        connection = await asyncpg.connect(self.admin_url, timeout=TIMEOUT)
        try:
            await connection.execute(statement)
        finally:
            await connection.close()

    async def _drop(self, database: str) -> None:
        import asyncpg

        try:
            await self.execute(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')
        except asyncpg.PostgresSyntaxError:
            # Servers before PostgreSQL 13 know no FORCE.
            await self.execute(f'DROP DATABASE IF EXISTS "{database}"')

    def create_database(self) -> str:
        """Create a database with a random name and return the name."""
        database = f"nextstar_test_{secrets.token_hex(6)}"
        _run_async(self.execute(f'CREATE DATABASE "{database}"'))
        return database

    def drop_database(self, database: str) -> None:
        """Drop ``database``, disconnecting whoever is still on it."""
        _run_async(self._drop(database))

    def is_answering(self) -> bool:
        """Tell whether the server accepts a connection now."""
        try:
            _run_async(self.execute("SELECT 1"))
        except Exception:
            # Refused, or "the database system is starting up": both mean not
            # yet, and the caller gives up when the server exits or time runs
            # out.
            return False
        return True


class PostgresProcess(_ServerProcess):
    """A private PostgreSQL cluster, trusting local connections, on 127.0.0.1.

    PostgreSQL refuses to run as root, so under root both ``initdb`` and the
    server run as the ``postgres`` user.
    """

    stop_signal = signal.SIGINT  # PostgreSQL's "fast" shutdown

    def __init__(self) -> None:
        search = _postgres_search_path()
        self.initdb = require_binary("initdb", search=search)
        self.postgres = require_binary("postgres", search=search)
        self.port = free_port()
        directory = Path(tempfile.mkdtemp(prefix="nextstar-pg-"))
        super().__init__(f"postgres-{self.port}", directory)
        self._as_user: dict[str, Any] = {}
        if os.geteuid() == 0:
            try:
                account = pwd.getpwnam("postgres")
            except KeyError:
                pytest.skip("running as root and there is no postgres user")
            os.chown(directory, account.pw_uid, account.pw_gid)
            self._as_user = {
                "user": account.pw_uid,
                "group": account.pw_gid,
                "extra_groups": [],
            }

    def start(self) -> PostgresServer:
        """Create the cluster, start the server and return once it answers."""
        data = self.directory / "data"
        initdb = subprocess.run(
            [
                self.initdb, "-D", str(data), "-U", "postgres", "-A", "trust",
                "-E", "UTF8", "--locale=C", "--no-sync", "--no-instructions",
            ],
            stdin=subprocess.DEVNULL,
            capture_output=True,
            cwd=self.directory,
            timeout=STARTUP_TIMEOUT * 2,
            **self._as_user,
        )  # fmt: skip
        if initdb.returncode != 0:
            output = (initdb.stdout + initdb.stderr).decode(errors="replace")
            raise ServiceError(f"initdb failed:\n{output}")

        self._spawn(
            [
                self.postgres, "-D", str(data), "-p", str(self.port),
                "-c", "listen_addresses=127.0.0.1",
                "-c", f"unix_socket_directories={self.directory}",
                "-c", "fsync=off",
                "-c", "synchronous_commit=off",
                "-c", "full_page_writes=off",
            ],
            **self._as_user,
        )  # fmt: skip
        server = PostgresServer(f"postgresql://postgres@127.0.0.1:{self.port}/postgres")
        self._wait_ready(server.is_answering)
        return server


@atexit.register
def _stop_leftovers() -> None:
    for process in list(_RUNNING):
        process.kill()


@contextlib.contextmanager
def running(service: _Service[_T]) -> Iterator[_T]:
    """Start ``service`` and stop it on leaving, however the block ends."""
    try:
        yield service.start()
    finally:
        service.stop()


@pytest.fixture
def redis_server() -> Iterator[RedisProcess]:
    """Yield one fresh standalone ``redis-server``."""
    with running(RedisProcess()) as process:
        yield process


@pytest.fixture
def redis_shards() -> Iterator[list[RedisProcess]]:
    """Yield three fresh standalone servers; a test may kill and restart them."""
    with contextlib.ExitStack() as stack:
        yield [stack.enter_context(running(RedisProcess())) for _ in range(3)]


@pytest.fixture(scope="session")
def redis_cluster() -> Iterator[RedisClusterProcesses]:
    """Yield a three-master Redis Cluster shared by the whole session.

    Tests must leave its nodes running; one that needs to kill a node or move
    slots takes ``fresh_redis_cluster``. Call ``flush()`` to delete keys.
    """
    with running(RedisClusterProcesses()) as cluster:
        yield cluster


@pytest.fixture
def fresh_redis_cluster() -> Iterator[RedisClusterProcesses]:
    """Yield a private three-master cluster that a test may break."""
    with running(RedisClusterProcesses()) as cluster:
        yield cluster


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    """Yield the PostgreSQL server for the session's throwaway databases.

    It is ``NEXTSTAR_TEST_POSTGRES_URL``'s server when that is set, otherwise
    a private cluster started here and removed at the end of the session.
    """
    pytest.importorskip("asyncpg")
    external = os.environ.get("NEXTSTAR_TEST_POSTGRES_URL")
    if external:
        yield PostgresServer(external)
        return

    with running(PostgresProcess()) as server:
        yield server


@pytest.fixture
def postgres_url(postgres_server: PostgresServer) -> Iterator[str]:
    """Yield the SQLAlchemy URL of a fresh, empty database, dropped afterwards."""
    database = postgres_server.create_database()
    try:
        yield postgres_server.url(database)
    finally:
        postgres_server.drop_database(database)
