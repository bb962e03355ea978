"""Results: the machine, phase figures, which side was saturated, the JSON
file, its schema check, and the PNG charts."""

from __future__ import annotations

import importlib.metadata
import json
import os
import platform
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import psutil

from . import SCHEMA
from .hist import merge, percentile_curve, summary

__all__ = [
    "SchemaError",
    "bucket_rate",
    "check_result",
    "latency_chart",
    "machine_info",
    "saturation",
    "sum_buckets",
    "throughput_chart",
    "write_result",
]

_LIBRARIES = (
    "websockets",
    "uvloop",
    "msgpack",
    "sqlalchemy",
    "aiosqlite",
    "asyncpg",
    "redis",
    "pydantic",
    "hdrhistogram",
    "psutil",
    "matplotlib",
    "nextstar-rt",
)
BUCKETS_PER_SECOND = 10

#: A process using this share of one core or more counts as saturated: the
#: server and each load process run one event loop, so one core is their cap.
SATURATED = 0.85


class SchemaError(ValueError):
    """A result lacks a required key or has one of the wrong type."""


def machine_info(repo: Path | None = None) -> dict[str, Any]:
    """Describe the machine and software a result was measured on."""
    memory = psutil.virtual_memory().total
    versions = {}
    for name in _LIBRARIES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = None
    return {
        "cores": os.cpu_count() or 0,
        "memory_bytes": memory,
        "cpu_model": _cpu_model(),
        "platform": platform.platform(),
        "python": sys.version.split()[0],
        "python_implementation": platform.python_implementation(),
        "libraries": versions,
        "load_average_at_start": [round(x, 2) for x in os.getloadavg()],
        "git_revision": _git(repo, "rev-parse", "HEAD"),
        "git_dirty": bool(_git(repo, "status", "--porcelain", "--untracked-files=no")),
    }


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as file:
            for line in file:
                if line.startswith("model name"):
                    return line.partition(":")[2].strip()
    except OSError:
        pass
    return platform.processor()


def _git(repo: Path | None, *args: str) -> str:
    where = repo or Path(__file__).resolve().parent.parent
    try:
        done = subprocess.run(
            ["git", "-C", str(where), *args],
            capture_output=True,
            text=True,
            timeout=10,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired):
        return ""
    return done.stdout.strip() if done.returncode == 0 else ""


def saturation(
    server_cores: float | None,
    load_cores: Sequence[float],
    cores: int,
    busy: float | None = None,
) -> str:
    """Say which side limited a phase.

    Args:
        server_cores: Cores used by the server process (all its threads:
            they share one GIL, so about one core is their limit).
        load_cores: Cores used by each load process.
        cores: Cores of the machine.
        busy: Cores the whole machine was busy, when measured; else the sum.

    Returns:
        ``server`` or ``load`` when that side was at its one-core limit,
        ``machine`` when every core was busy without either being at its
        limit, ``neither`` when something else set the pace (the window of
        sends in flight, the store's commit, a timer).
    """
    if server_cores is not None and server_cores >= SATURATED:
        return "server"
    if load_cores and max(load_cores) >= SATURATED:
        return "load"
    if busy is None:
        busy = (server_cores or 0.0) + sum(load_cores)
    if busy >= SATURATED * cores:
        return "machine"
    return "neither"


def sum_buckets(lists: Sequence[Sequence[int]]) -> list[int]:
    """Add per-process count buckets that share one start time."""
    total: list[int] = []
    for counts in lists:
        if len(counts) > len(total):
            total.extend([0] * (len(counts) - len(total)))
        for index, count in enumerate(counts):
            total[index] += count
    return total


def bucket_rate(buckets: Sequence[int], begin: float, end: float) -> float:
    """Return events per second between ``begin`` and ``end`` seconds."""
    first = round(begin * BUCKETS_PER_SECOND)
    last = round(end * BUCKETS_PER_SECOND)
    if last <= first:
        return 0.0
    return sum(buckets[first:last]) / ((last - first) / BUCKETS_PER_SECOND)


def phase_figures(
    collected: Sequence[dict[str, Any]],
    *,
    kind: str,
    duration: float,
    warmup: float,
    recipients: int,
    server_cpu: float | None,
    wall: float,
    cores: int,
    extra: dict[str, Any] | None = None,
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Add up one phase's answers from every load process.

    Returns:
        The figures for the JSON result, and the chart data (buckets and
        the merged histograms) that stays out of it.
    """
    latency = merge(c["latency"] for c in collected)
    ack_latency = merge(c["ack_latency"] for c in collected)
    acks = sum_buckets([c["ack_buckets"] for c in collected])
    deliveries = sum_buckets([c["recv_buckets"] for c in collected])
    acked = sum(c["acked"] for c in collected)
    fresh = acked - sum(c["duplicate_acks"] for c in collected)
    received = sum(c["received"] for c in collected)
    load = [c["cpu"] / wall for c in collected] if wall > 0 else []
    server = server_cpu / wall if server_cpu is not None and wall > 0 else None
    codes: dict[str, int] = {}
    for c in collected:
        for code, count in c["error_codes"].items():
            codes[code] = codes.get(code, 0) + count
    figures = {
        "kind": kind,
        "duration_s": duration,
        "wall_s": round(wall, 3),
        "sent": sum(c["sent"] for c in collected),
        "acked": acked,
        "errors": sum(c["errors"] for c in collected),
        "error_codes": codes,
        "skipped": sum(c["skipped"] for c in collected),
        "deliveries": received,
        "expected_deliveries": fresh * recipients,
        "duplicates": sum(c["duplicates"] for c in collected),
        "reordered": sum(c["reordered"] for c in collected),
        "acks_per_s": round(bucket_rate(acks, warmup, duration), 1),
        "deliveries_per_s": round(bucket_rate(deliveries, warmup, duration), 1),
        "latency_us": summary(latency),
        "ack_latency_us": summary(ack_latency),
        "schedule_lag_ms": round(
            max((c["schedule_lag"] for c in collected), default=0.0) * 1000, 3
        ),
        "server_cpu_s": None if server_cpu is None else round(server_cpu, 3),
        "server_cores": None if server is None else round(server, 3),
        "load_cpu_s": round(sum(c["cpu"] for c in collected), 3),
        "load_cores": [round(x, 3) for x in load],
        "server_us_per_ack": _per(server_cpu, fresh),
        "server_us_per_delivery": _per(server_cpu, received),
        "saturated": saturation(server, load, cores),
        **(extra or {}),
    }
    chart = {
        "latency": latency,
        "ack_latency": ack_latency,
        "acks": acks,
        "deliveries": deliveries,
    }
    return figures, chart


def _per(cpu: float | None, count: int) -> float | None:
    if cpu is None or count <= 0:
        return None
    return round(cpu * 1_000_000 / count, 2)


def ratio(ours: float | None, theirs: float | None) -> float | None:
    """Return ``ours / theirs`` rounded, or None when either is missing."""
    if ours is None or theirs is None or theirs == 0:
        return None
    return round(ours / theirs, 3)


# -- the JSON result --------------------------------------------------------

_REQUIRED: dict[str, type | tuple[type, ...]] = {
    "schema": str,
    "scenario": str,
    "command": str,
    "started_at": str,
    "elapsed_s": (int, float),
    "machine": dict,
    "params": dict,
    "targets": dict,
    "figures": dict,
    "ratios": dict,
    "checks": dict,
    "charts": list,
}
_MACHINE: dict[str, type | tuple[type, ...]] = {
    "cores": int,
    "memory_bytes": int,
    "python": str,
    "libraries": dict,
    "git_revision": str,
}
_CHECKS: dict[str, type | tuple[type, ...]] = {"ok": bool, "problems": list}


def check_result(result: Any) -> None:
    """Check that ``result`` has every required key with the right type.

    Raises:
        SchemaError: naming the first missing or mistyped key.
    """
    if not isinstance(result, dict):
        raise SchemaError("result must be a JSON object")
    _check_keys(result, _REQUIRED, "")
    if result["schema"] != SCHEMA:
        raise SchemaError(f"schema: expected {SCHEMA!r}, got {result['schema']!r}")
    _check_keys(result["machine"], _MACHINE, "machine.")
    _check_keys(result["checks"], _CHECKS, "checks.")
    for name, target in result["targets"].items():
        if not isinstance(target, dict) or not isinstance(target.get("phases"), dict):
            raise SchemaError(f"targets.{name}.phases: expected an object")


def _check_keys(obj: dict[str, Any], required: dict[str, Any], prefix: str) -> None:
    for key, kind in required.items():
        if key not in obj:
            raise SchemaError(f"{prefix}{key}: missing")
        value = obj[key]
        if isinstance(value, bool) and kind is not bool:
            raise SchemaError(f"{prefix}{key}: expected {kind}, got a boolean")
        if not isinstance(value, kind):
            raise SchemaError(
                f"{prefix}{key}: expected {kind}, got {type(value).__name__}"
            )


def write_result(result: dict[str, Any], path: Path) -> None:
    """Check and write the result as indented JSON."""
    check_result(result)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=2, sort_keys=False) + "\n")


# -- charts -----------------------------------------------------------------


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def latency_chart(curves: dict[str, Any], path: Path, title: str) -> Path | None:
    """Plot latency by percentile, one line per (label, histogram)."""
    import math

    plt = _pyplot()
    figure, axes = plt.subplots(figsize=(8, 4.5))
    drawn = False
    for label, histogram in curves.items():
        points, values = percentile_curve(histogram)
        if not points:
            continue
        nines = [-math.log10(max(1e-6, 1 - p / 100.0)) for p in points]
        axes.plot(nines, values, label=label)
        drawn = True
    if not drawn:
        plt.close(figure)
        return None
    ticks = [0, 1, 2, 3, 4, 5]
    axes.set_xticks(ticks)
    axes.set_xticklabels(["0%", "90%", "99%", "99.9%", "99.99%", "99.999%"])
    axes.set_xlim(0, 5)
    axes.set_yscale("log")
    axes.set_xlabel("percentile")
    axes.set_ylabel("latency (ms)")
    axes.set_title(title)
    axes.grid(True, which="both", alpha=0.3)
    axes.legend(fontsize="small")
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return path


def throughput_chart(
    panels: dict[str, dict[str, tuple[Sequence[int], Sequence[int]]]],
    path: Path,
    title: str,
) -> Path | None:
    """Plot deliveries (solid) and acks (dashed) per second over each phase,
    one panel per target."""
    plt = _pyplot()
    panels = {name: phases for name, phases in panels.items() if phases}
    if not panels:
        return None
    figure, axes_list = plt.subplots(
        len(panels), 1, figsize=(8, 3.2 * len(panels)), squeeze=False
    )
    for axes, (target, phases) in zip(axes_list[:, 0], panels.items()):
        for label, (acks, deliveries) in phases.items():
            line = None
            # A series without acks (users caught up) is named by its label.
            first = "deliveries" if acks else ""
            for values, style, what in ((deliveries, "-", first), (acks, "--", "acks")):
                if not values:
                    continue
                xs, ys = _binned(values)
                color = line.get_color() if line is not None else None
                (line,) = axes.plot(
                    xs,
                    ys,
                    style,
                    color=color,
                    linewidth=1,
                    label=f"{label} {what}/s".replace(" /s", "/s"),
                )
        axes.set_title(f"{title}: {target}")
        axes.set_ylabel("per second")
        axes.grid(True, alpha=0.3)
        axes.legend(fontsize="small")
    axes_list[-1, 0].set_xlabel("seconds since phase start")
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return path


def _binned(values: Sequence[int]) -> tuple[list[float], list[float]]:
    """Return (time, rate) points, merging buckets so that about 100 remain."""
    step = max(1, len(values) // 100)
    seconds = step / BUCKETS_PER_SECOND
    xs, ys = [], []
    for start in range(0, len(values) - step + 1, step):
        xs.append(start / BUCKETS_PER_SECOND)
        ys.append(sum(values[start : start + step]) / seconds)
    return xs, ys
