"""The scenarios: what each starts, which phases it drives, what it reports.

Each scenario function takes a :class:`Run` and returns the parts of the
result that are its own (targets, figures, ratios, problems); the harness
adds the machine, the parameters and the charts. Every phase is bounded by
its own duration and the whole run by ``--timeout``.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil

from .fleet import Fleet, Progress
from .hist import merge, summary
from .params import Params, sync_feeders
from .report import phase_figures, ratio, saturation, sum_buckets
from .targets import (
    HarnessError,
    Postgres,
    ServerProcess,
    free_port,
    load_users,
    provision,
    start_nextstar,
    start_redis,
    start_relay,
)

__all__ = ["SCENARIO_FUNCTIONS", "Run", "Target"]

logger = logging.getLogger(__name__)

#: Seconds allowed, after the senders stop, for the last deliveries to land.
DELIVERY_GRACE = 20.0
_START_DELAY = 0.5
DEFAULT_POSTGRES = "postgresql+asyncpg://postgres@127.0.0.1:5432/"


@dataclass
class Target:
    """One server under test: its processes, its URLs, its users."""

    name: str
    servers: list[ServerProcess]
    urls: list[str]
    users: list[dict[str, Any]]
    #: Processes the servers depend on (Redis shards), metered apart.
    support: list[ServerProcess] = field(default_factory=list)
    #: Whether the PostgreSQL server's processes count as support.
    postgres: bool = False

    def support_cpu(self) -> dict[str, float]:
        """Return CPU seconds of the Redis shards and of PostgreSQL.

        PostgreSQL is metered as every ``postgres`` process on the machine,
        since its backends are not the harness's children.
        """
        cpu: dict[str, float] = {}
        if self.support:
            cpu["redis"] = sum(s.cpu_seconds() or 0.0 for s in self.support)
        if self.postgres:
            total = 0.0
            for process in psutil.process_iter(["name", "cpu_times"]):
                if process.info["name"] == "postgres" and process.info["cpu_times"]:
                    times = process.info["cpu_times"]
                    total += times.user + times.system
            cpu["postgres"] = total
        return cpu

    def cpu(self) -> float | None:
        values = [s.cpu_seconds() for s in self.servers]
        if not values or any(v is None for v in values):
            return None
        return float(sum(v for v in values if v is not None))

    def profiler_cpu(self) -> float:
        """Return the CPU seconds of the profilers watching the servers."""
        return sum(s.profiler_cpu() for s in self.servers)

    def thread_cpu(self) -> dict[str, float]:
        """Add up the servers' CPU seconds by thread role (main, other)."""
        total: dict[str, float] = {}
        for server in self.servers:
            for key, value in server.thread_cpu().items():
                total[key] = total.get(key, 0.0) + value
        return total

    def rss(self) -> int | None:
        values = [s.rss() for s in self.servers]
        if not values or any(v is None for v in values):
            return None
        return int(sum(v for v in values if v is not None))

    def url_for(self, index: int) -> str:
        """Return the node the ``index``-th user connects to (round robin)."""
        return self.urls[index % len(self.urls)]


@dataclass
class Run:
    """The state of one harness run."""

    params: Params
    output: Path
    name: str
    progress: Progress
    cores: int = field(default_factory=lambda: os.cpu_count() or 1)
    charts: dict[str, Any] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)
    profiles: dict[str, Any] = field(default_factory=dict)
    keep_work: bool = False
    #: Seconds allowed, after the senders stop, for the last deliveries.
    delivery_grace: float = DELIVERY_GRACE

    def __post_init__(self) -> None:
        self.work = Path(tempfile.mkdtemp(prefix="nextstar-bench-"))
        self.started = time.monotonic()
        self.fleet: Fleet | None = None
        self._label = ""
        self._target: Target | None = None
        self._last: tuple[float, int, float | None] = (time.monotonic(), 0, None)
        self._cleanups: list[Callable[[], None]] = []

    def left(self) -> float:
        """Return the seconds left of ``--timeout``.

        Raises:
            HarnessError: when none are left.
        """
        left = self.params.timeout - (time.monotonic() - self.started)
        if left <= 0:
            raise HarnessError(f"run exceeded --timeout {self.params.timeout:g} s")
        return left

    def on_exit(self, cleanup: Callable[[], None]) -> None:
        self._cleanups.append(cleanup)

    def start_fleet(self) -> Fleet:
        self.fleet = Fleet(self.params.processes, self.progress)
        self.on_exit(self.fleet.close)
        return self.fleet

    def close(self) -> None:
        """Stop everything that was started, last first."""
        for cleanup in reversed(self._cleanups):
            try:
                cleanup()
            except Exception:  # one failed clean-up must not skip the others
                logger.exception("clean-up failed")
        self._cleanups.clear()
        if self.keep_work:
            self.progress.note(f"{self.name}: work directory kept: {self.work}")
        else:
            shutil.rmtree(self.work, ignore_errors=True)

    # -- progress ----------------------------------------------------------

    def watch(self, label: str, target: Target | None) -> None:
        self._label = label
        self._target = target
        self.progress.note(f"{self.name}: {label}")

    def status(self) -> str:
        """Return the progress line: counters, rates, CPU of both sides."""
        assert self.fleet is not None
        totals = self.fleet.totals()
        now = time.monotonic()
        cpu = self._target.cpu() if self._target is not None else None
        then, received, cpu_then = self._last
        span = max(1e-3, now - then)
        rate = (totals["received"] - received) / span
        server = ""
        if cpu is not None and cpu_then is not None:
            server = f" | server {100 * (cpu - cpu_then) / span:3.0f}% cpu"
        self._last = (now, totals["received"], cpu)
        return (
            f"[{self._label} {now - self.started:5.0f}s] conn {totals['connected']:,}"
            f" sent {totals['sent']:,} acked {totals['acked']:,}"
            f" recv {totals['received']:,} ({rate:,.0f}/s) err {totals['errors']:,}"
            f" caught up {totals['caught_up']:,}{server}"
        )


# -- targets --------------------------------------------------------------


def _users_for_url(run: Run, count: int) -> list[dict[str, Any]]:
    users = load_users(Path(run.params.users_file))
    if len(users) < count:
        raise HarnessError(
            f"--users-file holds {len(users)} users; this run needs {count}"
        )
    return users[:count]


def nextstar_target(run: Run, users: int) -> Target:
    """Start one node on the embedded defaults (or use ``--url``) with
    ``users`` provisioned users."""
    params = run.params
    if params.url:
        servers = []
        if params.server_pid:
            servers = [ServerProcess.attach("nextstar", int(params.server_pid))]
        return Target("nextstar", servers, [params.url], _users_for_url(run, users))
    data = run.work / "nextstar"
    run.progress.note(f"{run.name}: provisioning {users:,} users")
    provisioned = provision(data, users, params.server_env)
    port = free_port()
    profile_path = None
    if params.profile != "none":
        suffix = "speedscope.json" if params.profile == "pyinstrument" else "pyspy.txt"
        profile_path = run.output / f"{run.name}.{suffix}"
        run.output.mkdir(parents=True, exist_ok=True)
    server = start_nextstar(
        data,
        port,
        run.work / "nextstar.log",
        extra=params.server_env,
        profile=params.profile,
        profile_path=profile_path,
    )
    run.on_exit(lambda: _stop_and_summarise(run, server))
    return Target("nextstar", [server], [server.url], provisioned)


def _stop_and_summarise(run: Run, server: ServerProcess) -> None:
    server.stop()
    if server.profile_path is None:
        return
    from .profile import summarise

    run.profiles[server.name] = summarise(server.profile_path, run.params.profile)


def baseline_target(run: Run, users: int) -> Target:
    """Start the bare relay; its users are ids 1..n with the id as token."""
    port = free_port()
    relay = start_relay(port, run.work / "baseline.log")
    run.on_exit(relay.stop)
    synthetic = [{"user_id": i, "token": str(i)} for i in range(1, users + 1)]
    return Target("baseline", [relay], [relay.url], synthetic)


def cluster_target(run: Run, users: int) -> Target:
    """Start Redis shards, a throwaway PostgreSQL database and N nodes."""
    params = run.params
    _check_redis_broker()
    shards = []
    for _ in range(params.shards):
        shard = start_redis(free_port(), run.work)
        run.on_exit(shard.stop)
        shards.append(shard)
    database = Postgres(os.environ.get("NEXTSTAR_BENCH_POSTGRES_URL", DEFAULT_POSTGRES))
    database.create()
    run.on_exit(database.drop)
    import json

    extra = {
        **params.server_env,
        "NEXTSTAR_STORE__URL": database.url,
        "NEXTSTAR_BROKER__KIND": "redis",
        "NEXTSTAR_BROKER__URLS": json.dumps([s.url for s in shards]),
    }
    data = run.work / "cluster"
    run.progress.note(f"{run.name}: provisioning {users:,} users in {database.name}")
    provisioned = provision(data, users, extra)
    nodes = []
    for index in range(params.nodes):
        node_extra = {**extra, "NEXTSTAR_SERVER__NODE_ID": f"bench-{index}"}
        node = start_nextstar(
            data / f"node{index}",
            free_port(),
            run.work / f"node{index}.log",
            extra=node_extra,
            name=f"node{index}",
        )
        run.on_exit(node.stop)
        nodes.append(node)
    return Target(
        "nextstar",
        nodes,
        [n.url for n in nodes],
        provisioned,
        support=shards,
        postgres=True,
    )


def _check_redis_broker() -> None:
    """Fail early, and clearly, when the Redis broker cannot be built."""
    try:
        from nextstar_rt.broker.redis import RedisBroker

        RedisBroker(["redis://127.0.0.1:1"])
    except Exception as exc:  # any failure means the scenario cannot run
        raise HarnessError(
            "the cluster scenario needs nextstar_rt.broker.redis.RedisBroker, "
            f"which cannot be built: {exc!r}"
        ) from exc


# -- traffic ----------------------------------------------------------------


def _connect(
    run: Run,
    target: Target,
    shares: list[list[int]],
    concurrency: int = 64,
    status: Callable[[], str] | None = None,
) -> list[dict[str, Any]]:
    """Connect the users at ``shares[p]`` (indexes into target.users) from
    load process p; fail the run if any session could not sign in."""
    assert run.fleet is not None
    args = [
        {
            "users": [
                (
                    target.users[i]["user_id"],
                    target.users[i]["token"],
                    target.url_for(i),
                )
                for i in share
            ],
            "concurrency": concurrency,
        }
        for share in shares
    ]
    answers = run.fleet.command("connect", args, run.left(), status or run.status)
    failed = sum(a["failed"] for a in answers)
    if failed:
        reasons = [f for a in answers for f in a["failures"]][:3]
        raise HarnessError(
            f"{target.name}: {failed} sessions failed to connect: " + "; ".join(reasons)
        )
    return answers


def _spread(count: int, processes: int) -> list[list[int]]:
    """Deal ``count`` indexes round robin to ``processes`` shares."""
    return [list(range(p, count, processes)) for p in range(processes)]


def _direct_setup(run: Run, target: Target) -> tuple[list[list[tuple[int, int]]], int]:
    """Connect the pairs, open their conversations; return each process's
    senders and the recipients per message."""
    assert run.fleet is not None
    pairs = run.params.pairs
    processes = run.fleet.count
    shares: list[list[int]] = [[] for _ in range(processes)]
    pair_shares: list[list[tuple[int, int]]] = [[] for _ in range(processes)]
    for k in range(pairs):
        p = k % processes
        shares[p] += [2 * k, 2 * k + 1]
        pair_shares[p].append(
            (target.users[2 * k]["user_id"], target.users[2 * k + 1]["user_id"])
        )
    _connect(run, target, shares)
    opened = run.fleet.command(
        "direct", [{"pairs": s} for s in pair_shares], run.left(), run.status
    )
    senders = [
        [(a, cid) for a, b, cid in share] + [(b, cid) for a, b, cid in share]
        for share in opened
    ]
    return senders, 1


def _group_setup(run: Run, target: Target) -> tuple[list[list[tuple[int, int]]], int]:
    """Connect the members, create the group, wait until every member's node
    has joined it; return each process's senders and the recipients."""
    assert run.fleet is not None
    fleet = run.fleet
    members = run.params.members
    shares = _spread(members, fleet.count)
    _connect(run, target, shares)
    ids = [target.users[i]["user_id"] for i in range(members)]
    conversation = fleet.command_one(
        0,
        "group",
        {"owner": ids[0], "members": ids[1:], "title": "bench"},
        run.left(),
    )
    seen = fleet.command(
        "await_seen", {"conversation_id": conversation, "timeout": 30.0}, 60, run.status
    )
    missing = sum(s["missing"] for s in seen)
    if missing:
        raise HarnessError(
            f"{target.name}: {missing} members never heard of the group within 30 s"
        )
    # Across nodes a member hears of the group before its node's subscription
    # to the group's channel completes; let the subscriptions settle.
    time.sleep(0.5 if len(target.urls) > 1 else 0.05)
    senders: list[list[tuple[int, int]]] = [[] for _ in range(fleet.count)]
    for index in range(run.params.senders):
        senders[index % fleet.count].append((ids[index], conversation))
    return senders, members - 1


def _phase(
    run: Run,
    target: Target,
    label: str,
    command: str,
    args: list[dict[str, Any]],
    duration: float,
    recipients: int,
) -> dict[str, Any]:
    """Run one traffic phase on every load process and add up its figures."""
    assert run.fleet is not None
    fleet = run.fleet
    run.watch(label, target)
    start_at = time.time() + _START_DELAY
    for arguments in args:
        arguments["start_at"] = start_at
    fleet.send(command, args)
    time.sleep(max(0.0, start_at - time.time()))
    cpu_before, busy_before, began = target.cpu(), machine_busy(), time.time()
    threads_before, profiler_before = target.thread_cpu(), target.profiler_cpu()
    support_before = target.support_cpu()

    answers = fleet.gather(command, min(run.left(), duration + 90), run.status)
    expected = sum(a["acked"] for a in answers) * recipients
    delivered = fleet.wait_for(
        lambda t: t["received"] >= expected,
        min(run.left(), run.delivery_grace),
        run.status,
    )
    cpu_after, busy_after, ended = target.cpu(), machine_busy(), time.time()
    threads_after, profiler_after = target.thread_cpu(), target.profiler_cpu()
    support_after = target.support_cpu()
    collected = fleet.command("collect", {}, 60)
    # A phase with a quota per sender may end early; rates use its real span.
    sending = max(a["sending_ended"] for a in answers) - start_at
    duration = min(duration, max(sending, 0.1))

    server_cpu = (
        None if cpu_before is None or cpu_after is None else (cpu_after - cpu_before)
    )
    figures, chart = phase_figures(
        collected,
        kind=command,
        duration=duration,
        warmup=getattr(run.params, "warmup", 0.0),
        recipients=recipients,
        server_cpu=server_cpu,
        wall=ended - began,
        cores=run.cores,
    )
    figures["drained"] = all(a["drained"] for a in answers)
    wall = ended - began
    profiler = profiler_after - profiler_before
    support = {key: support_after[key] - value for key, value in support_before.items()}
    figures.update(
        _others(
            busy_after - busy_before - profiler - sum(support.values()), figures, wall
        )
    )
    figures["profiler_cores"] = round(profiler / wall, 3)
    if support:
        figures["support_cores"] = {k: round(v / wall, 3) for k, v in support.items()}
        figures["support_us_per_delivery"] = {
            k: round(v * 1e6 / figures["deliveries"], 2)
            if figures["deliveries"]
            else None
            for k, v in support.items()
        }
    # Where the server's CPU went: its event loop ("main") or other threads
    # (the store's writer thread, executors).
    figures["server_thread_cores"] = {
        key: round((threads_after.get(key, 0.0) - value) / (ended - began), 3)
        for key, value in threads_before.items()
    }
    # The whole server process, not its event loop thread alone, decides:
    # its threads share one GIL, so together they cannot pass about one core
    # of Python work.
    figures["saturated"] = saturation(
        figures["server_cores"],
        figures["load_cores"],
        run.cores,
        figures["machine_busy_cores"],
    )
    _check_phase(run, f"{target.name} {label}", figures, delivered)
    run.charts[f"{target.name} {label}"] = chart
    run.progress.note(_phase_line(target.name, label, figures))
    return figures


def machine_busy() -> float:
    """Return the CPU seconds every core of the machine spent busy so far."""
    times = psutil.cpu_times()
    return (
        times.user
        + times.nice
        + times.system
        + getattr(times, "irq", 0.0)
        + (getattr(times, "softirq", 0.0) + getattr(times, "steal", 0.0))
    )


def _others(busy: float, figures: dict[str, Any], wall: float) -> dict[str, Any]:
    """Tell how much of the machine went to processes outside the run, so a
    figure measured beside someone else's load can be recognised."""
    ours = (figures["server_cpu_s"] or 0.0) + figures["load_cpu_s"]
    other = max(0.0, busy - ours)
    return {
        "machine_busy_cores": round(busy / wall, 3) if wall > 0 else None,
        "other_cores": round(other / wall, 3) if wall > 0 else None,
    }


def _check_phase(
    run: Run, where: str, figures: dict[str, Any], delivered: bool
) -> None:
    if figures["errors"]:
        run.problems.append(
            f"{where}: {figures['errors']} error answers {figures['error_codes']}"
        )
    if not figures["drained"]:
        run.problems.append(f"{where}: sends still unanswered after the phase")
    if figures["deliveries"] != figures["expected_deliveries"] or not delivered:
        run.problems.append(
            f"{where}: {figures['deliveries']:,} deliveries, expected "
            f"{figures['expected_deliveries']:,}"
        )
    if figures["duplicates"]:
        run.problems.append(f"{where}: {figures['duplicates']:,} duplicate deliveries")
    if figures["reordered"]:
        # Not a loss: a client reorders by seq. Reported because the push
        # order is then not the conversation's order.
        run.progress.note(
            f"  {where}: {figures['reordered']:,} deliveries came "
            "after a higher seq of the same conversation"
        )


def _phase_line(name: str, label: str, figures: dict[str, Any]) -> str:
    latency = figures["latency_us"]
    p99 = "-" if latency["p99"] is None else f"{latency['p99'] / 1000:.2f} ms"
    per = figures["server_us_per_delivery"]
    per_text = "-" if per is None else f"{per:.1f} us"
    return (
        f"  {name} {label}: {figures['acks_per_s']:,.0f} acks/s, "
        f"{figures['deliveries_per_s']:,.0f} deliveries/s, p99 {p99}, "
        f"server {per_text}/delivery, saturated: {figures['saturated']} "
        f"(server threads {figures.get('server_thread_cores')}), "
        f"other processes {figures['other_cores']} cores"
    )


def traffic(run: Run, target: Target, kind: str) -> dict[str, dict[str, Any]]:
    """Drive ``direct`` or ``group`` traffic at ``target``: a closed loop for
    the maximum rate, then an open loop (at half of it unless --open-rate)
    for latency. Return the phases' figures by name."""
    assert run.fleet is not None
    params = run.params
    run.watch(f"{kind} set-up", target)
    setup = _direct_setup if kind == "direct" else _group_setup
    senders, recipients = setup(run, target)
    phases: dict[str, dict[str, Any]] = {}
    closed_args = [
        {
            "senders": s,
            "window": params.window,
            "duration": params.duration,
            "size": params.message_bytes,
        }
        for s in senders
    ]
    closed = _phase(
        run,
        target,
        f"{kind}.closed",
        "closed",
        closed_args,
        params.duration,
        recipients,
    )
    phases[f"{kind}.closed"] = closed

    if params.open_duration > 0:
        rate = params.open_rate or closed["acks_per_s"] / 2
        total = sum(len(s) for s in senders)
        open_args = [
            {
                "senders": s,
                "rate": rate * len(s) / total,
                "duration": params.open_duration,
                "size": params.message_bytes,
                "cap": max(64, 16 * params.window),
            }
            for s in senders
        ]
        opened = _phase(
            run,
            target,
            f"{kind}.open",
            "open",
            open_args,
            params.open_duration,
            recipients,
        )
        opened["rate"] = round(rate, 1)
        phases[f"{kind}.open"] = opened
    run.fleet.command("disconnect", {}, 60)
    return phases


def _traffic_summary(phases: dict[str, dict[str, Any]], kind: str) -> dict[str, Any]:
    closed = phases[f"{kind}.closed"]
    opened = phases.get(f"{kind}.open")
    return {
        "max_acks_per_s": closed["acks_per_s"],
        "max_deliveries_per_s": closed["deliveries_per_s"],
        "server_us_per_ack": closed["server_us_per_ack"],
        "server_us_per_delivery": closed["server_us_per_delivery"],
        "saturated": closed["saturated"],
        "open_rate": opened["rate"] if opened else None,
        "open_latency_us": opened["latency_us"] if opened else None,
        "open_server_us_per_ack": opened["server_us_per_ack"] if opened else None,
        "open_saturated": opened["saturated"] if opened else None,
    }


def _traffic_ratios(ours: dict[str, Any], base: dict[str, Any]) -> dict[str, Any]:
    """NextStar RT over the baseline: above 1 is more for rates, and more
    CPU or latency for the per-message costs."""

    def p99(figures: dict[str, Any]) -> float | None:
        latency = figures.get("open_latency_us")
        return latency["p99"] if latency else None

    return {
        "max_acks_per_s": ratio(ours["max_acks_per_s"], base["max_acks_per_s"]),
        "max_deliveries_per_s": ratio(
            ours["max_deliveries_per_s"], base["max_deliveries_per_s"]
        ),
        "server_us_per_ack": ratio(
            ours["server_us_per_ack"], base["server_us_per_ack"]
        ),
        "server_us_per_delivery": ratio(
            ours["server_us_per_delivery"], base["server_us_per_delivery"]
        ),
        "open_p99": ratio(p99(ours), p99(base)),
    }


def _traffic_scenario(
    run: Run,
    kinds: Sequence[str],
    make_target: Callable[[Run, int], Target] | None,
) -> dict[str, Any]:
    params = run.params
    users = max(
        2 * params.pairs if "direct" in kinds else 0,
        params.members if "group" in kinds else 0,
    )
    run.start_fleet()
    targets: dict[str, Any] = {}
    figures: dict[str, Any] = {kind: {} for kind in kinds}
    makers: list[Callable[[Run, int], Target]] = []
    if make_target is not None:
        makers.append(make_target)
    if params.baseline or make_target is None:
        makers.append(baseline_target)
    for maker in makers:
        target = maker(run, users)
        phases: dict[str, Any] = {}
        for kind in kinds:
            phases.update(traffic(run, target, kind))
            figures[kind][target.name] = _traffic_summary(phases, kind)
        targets[target.name] = {"phases": phases, "nodes": len(target.urls)}
        for server in target.servers:
            server.stop()
    ratios = {}
    for kind in kinds:
        if "nextstar" in figures[kind] and "baseline" in figures[kind]:
            ratios[kind] = _traffic_ratios(
                figures[kind]["nextstar"], figures[kind]["baseline"]
            )
    return {"targets": targets, "figures": figures, "ratios": ratios}


def direct(run: Run) -> dict[str, Any]:
    return _traffic_scenario(run, ["direct"], lambda r, n: nextstar_target(r, n))


def group(run: Run) -> dict[str, Any]:
    return _traffic_scenario(run, ["group"], lambda r, n: nextstar_target(r, n))


def cluster(run: Run) -> dict[str, Any]:
    return _traffic_scenario(run, ["direct", "group"], cluster_target)


def baseline(run: Run) -> dict[str, Any]:
    return _traffic_scenario(run, ["direct", "group"], None)


# -- idle ---------------------------------------------------------------------


def _idle_target(run: Run, target: Target) -> dict[str, Any]:
    """Open ``--connections`` sessions, hold them, measure memory and CPU."""
    assert run.fleet is not None
    fleet = run.fleet
    params = run.params
    count = params.connections
    time.sleep(0.2)  # let the server settle after start-up
    rss_before, cpu_before = target.rss(), target.cpu()

    run.watch("idle.connect", target)
    began = time.time()
    samples: list[tuple[float, int, int | None]] = []

    def sample() -> str:
        samples.append((time.time() - began, fleet.totals()["connected"], target.rss()))
        return run.status()

    answers = _connect(
        run, target, _spread(count, fleet.count), params.connect_concurrency, sample
    )
    ramp = max(a["finished"] for a in answers) - min(a["started"] for a in answers)
    cpu_connected = target.cpu()
    time.sleep(0.5)  # the last sessions' replies are still being written
    rss_after = target.rss()
    connect_latency = merge(a["latency"] for a in answers)
    load_cpu = [a["cpu"] for a in answers]
    connect = {
        "connections": count,
        "seconds": round(ramp, 3),
        "per_second": round(count / ramp, 1) if ramp > 0 else None,
        "latency_us": summary(connect_latency),
        "server_cpu_s": _diff(cpu_connected, cpu_before),
        "server_us_per_connection": _per_item(_diff(cpu_connected, cpu_before), count),
        "load_cpu_s": round(sum(load_cpu), 3),
        "rss_before_bytes": rss_before,
        "rss_after_bytes": rss_after,
        "rss_per_connection_bytes": None
        if rss_before is None or rss_after is None
        else round((rss_after - rss_before) / count, 1),
    }

    run.watch("idle.hold", target)
    cpu_hold, hold_began = target.cpu(), time.monotonic()
    load_hold = fleet.command("collect", {}, 30)  # restarts the load CPU count
    while time.monotonic() - hold_began < params.hold:
        run.progress.show(sample())
        time.sleep(min(0.5, max(0.0, params.hold - (time.monotonic() - hold_began))))
    held = time.monotonic() - hold_began
    cpu_held = target.cpu()
    load_hold = fleet.command("collect", {}, 30)
    still = fleet.command("open_count", {}, 30)
    open_now = sum(s["open"] for s in still)
    idle_cpu = _diff(cpu_held, cpu_hold)
    server_cores = None if idle_cpu is None else idle_cpu / held
    load_cores = [c["cpu"] / held for c in load_hold]
    hold = {
        "seconds": round(held, 3),
        "open_at_end": open_now,
        "close_codes": _merge_counts([s["close_codes"] for s in still]),
        "server_cpu_s": idle_cpu,
        "server_cpu_percent": None
        if server_cores is None
        else round(100 * server_cores, 2),
        "server_us_per_connection_second": None
        if idle_cpu is None
        else round(idle_cpu * 1e6 / (count * held), 3),
        "load_cpu_s": round(sum(c["cpu"] for c in load_hold), 3),
        "rss_end_bytes": target.rss(),
        "saturated": saturation(server_cores, load_cores, run.cores),
    }
    if open_now != count:
        run.problems.append(
            f"{target.name}: {count - open_now} of {count} sessions "
            f"closed while idle {hold['close_codes']}"
        )
    run.charts[f"{target.name} idle"] = samples
    run.progress.note(
        f"  {target.name}: {count:,} connections in {ramp:.1f} s, "
        f"{connect['rss_per_connection_bytes']} B each, idle CPU "
        f"{hold['server_cpu_percent']}%"
    )
    fleet.command("disconnect", {}, 60)
    return {"idle.connect": connect, "idle.hold": hold}


def _diff(after: float | None, before: float | None) -> float | None:
    if after is None or before is None:
        return None
    return round(after - before, 3)


def _per_item(cpu: float | None, count: int) -> float | None:
    if cpu is None or count <= 0:
        return None
    return round(cpu * 1e6 / count, 2)


def _merge_counts(maps: Sequence[dict[str, int]]) -> dict[str, int]:
    total: dict[str, int] = {}
    for counts in maps:
        for key, value in counts.items():
            total[key] = total.get(key, 0) + value
    return total


def idle(run: Run) -> dict[str, Any]:
    params = run.params
    run.start_fleet()
    targets: dict[str, Any] = {}
    figures: dict[str, Any] = {"idle": {}}
    makers = [nextstar_target] + ([baseline_target] if params.baseline else [])
    for maker in makers:
        target = maker(run, params.connections)
        phases = _idle_target(run, target)
        targets[target.name] = {"phases": phases, "nodes": len(target.urls)}
        figures["idle"][target.name] = {
            "connections": params.connections,
            "connect_per_s": phases["idle.connect"]["per_second"],
            "rss_per_connection_bytes": phases["idle.connect"][
                "rss_per_connection_bytes"
            ],
            "idle_cpu_percent": phases["idle.hold"]["server_cpu_percent"],
            "open_at_end": phases["idle.hold"]["open_at_end"],
        }
        for server in target.servers:
            server.stop()
    ratios = {}
    if "baseline" in figures["idle"]:
        ours, base = figures["idle"]["nextstar"], figures["idle"]["baseline"]
        ratios["idle"] = {
            key: ratio(ours[key], base[key])
            for key in ("connect_per_s", "rss_per_connection_bytes", "idle_cpu_percent")
        }
    return {"targets": targets, "figures": figures, "ratios": ratios}


# -- sync ---------------------------------------------------------------------


def sync(run: Run) -> dict[str, Any]:
    """Build a backlog for U offline users, reconnect them all at once, and
    time how long until each has caught up by ``sync``."""
    params = run.params
    fleet = run.start_fleet()
    feeders = sync_feeders(params.users)
    target = nextstar_target(run, params.users + feeders)
    # Users 0..feeders-1 send; the rest are the ones who reconnect.
    feeder_shares: list[list[int]] = [[] for _ in range(fleet.count)]
    for f in range(feeders):
        feeder_shares[f % fleet.count].append(f)
    run.watch("sync set-up", target)
    _connect(run, target, feeder_shares)
    pairs: list[list[tuple[int, int]]] = [[] for _ in range(fleet.count)]
    for r in range(params.users):
        f = r % feeders
        pairs[f % fleet.count].append(
            (target.users[f]["user_id"], target.users[feeders + r]["user_id"])
        )
    opened = fleet.command(
        "direct", [{"pairs": s} for s in pairs], run.left(), run.status
    )
    senders = [[(a, cid) for a, _, cid in share] for share in opened]

    backlog_args = [
        {
            "senders": s,
            "window": params.window,
            "duration": params.deadline,
            "size": params.message_bytes,
            "quota": params.backlog,
        }
        for s in senders
    ]
    backlog = _phase(
        run, target, "sync.backlog", "closed", backlog_args, params.deadline, 0
    )
    wanted = params.users * params.backlog
    if backlog["acked"] != wanted:
        raise HarnessError(
            f"backlog: {backlog['acked']:,} messages stored, wanted {wanted:,}"
        )

    run.watch("sync.catch_up", target)
    recipient_shares = _spread(params.users, fleet.count)
    start_at = time.time() + 1.0
    args = [
        {
            "users": [
                (
                    target.users[feeders + r]["user_id"],
                    target.users[feeders + r]["token"],
                    target.url_for(feeders + r),
                )
                for r in share
            ],
            "expect": params.backlog,
            "page": params.page,
            "start_at": start_at,
            "concurrency": params.connect_concurrency,
            "deadline": params.deadline,
        }
        for share in recipient_shares
    ]
    fleet.send("catch_up", args)
    time.sleep(max(0.0, start_at - time.time()))
    cpu_before, busy_before, began = target.cpu(), machine_busy(), time.time()
    answers = fleet.gather(
        "catch_up", min(run.left(), params.deadline + 60), run.status
    )
    cpu_after, busy_after, ended = target.cpu(), machine_busy(), time.time()
    finished = max((a["finished"] for a in answers), default=start_at)
    seconds = max(0.0, finished - start_at)
    caught_up = sum(a["caught_up"] for a in answers)
    messages = sum(a["messages"] for a in answers)
    server_cpu = _diff(cpu_after, cpu_before)
    load = [a["cpu"] / seconds for a in answers] if seconds > 0 else []
    server_cores = None if server_cpu is None or seconds <= 0 else server_cpu / seconds
    catch_up = {
        "users": params.users,
        "backlog": params.backlog,
        "caught_up": caught_up,
        "seconds": round(seconds, 3),
        "messages": messages,
        "expected_messages": params.users * params.backlog,
        "messages_per_s": round(messages / seconds, 1) if seconds > 0 else None,
        "sync_calls": sum(a["calls"] for a in answers),
        "duplicates": sum(a["duplicates"] for a in answers),
        "failed": sum(a["failed"] for a in answers),
        "user_latency_us": summary(merge(a["latency"] for a in answers)),
        "server_cpu_s": server_cpu,
        "server_cores": None if server_cores is None else round(server_cores, 3),
        "server_us_per_message": _per_item(server_cpu, messages),
        "load_cpu_s": round(sum(a["cpu"] for a in answers), 3),
        "load_cores": [round(x, 3) for x in load],
        "saturated": saturation(server_cores, load, run.cores),
    }
    catch_up.update(_others(busy_after - busy_before, catch_up, ended - began))
    if caught_up != params.users or catch_up["duplicates"] or catch_up["failed"]:
        reasons = [f for a in answers for f in a["failures"]][:3]
        run.problems.append(
            f"sync: {caught_up:,} of {params.users:,} caught up, "
            f"{catch_up['duplicates']} duplicates, {catch_up['failed']} failed "
            + "; ".join(reasons)
        )
    run.charts["nextstar sync"] = {
        "caught_up": sum_buckets([a["recv_buckets"] for a in answers]),
        "latency": merge(a["latency"] for a in answers),
    }
    run.progress.note(
        f"  nextstar sync: {caught_up:,}/{params.users:,} users caught up in "
        f"{seconds:.2f} s, {catch_up['messages_per_s']} messages/s"
    )
    for server in target.servers:
        server.stop()
    phases = {"sync.backlog": backlog, "sync.catch_up": catch_up}
    figures = {
        "sync": {
            "nextstar": {
                "users": params.users,
                "backlog": params.backlog,
                "seconds_until_all_caught_up": catch_up["seconds"],
                "caught_up": caught_up,
                "messages_per_s": catch_up["messages_per_s"],
                "server_us_per_message": catch_up["server_us_per_message"],
                "user_latency_us": catch_up["user_latency_us"],
                "backlog_acks_per_s": backlog["acks_per_s"],
            }
        }
    }
    return {
        "targets": {"nextstar": {"phases": phases, "nodes": len(target.urls)}},
        "figures": figures,
        "ratios": {"sync": {"note": "no baseline: the relay stores no backlog"}},
    }


SCENARIO_FUNCTIONS: dict[str, Callable[[Run], dict[str, Any]]] = {
    "idle": idle,
    "direct": direct,
    "group": group,
    "sync": sync,
    "cluster": cluster,
    "baseline": baseline,
}
