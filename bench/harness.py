"""``nextstar-bench``: run one scenario, write its JSON result and charts.

    nextstar-bench direct --pairs 100 --duration 10 --output bench/results

Exit status: 0 when the counts add up, 1 when they do not (a message lost,
delivered twice, or answered with an error), 2 for a bad parameter, 3 when
something the run needs could not be started.
"""

from __future__ import annotations

import argparse
import datetime
import logging
import shlex
import signal
import sys
import time
from pathlib import Path
from typing import Any

from . import SCHEMA
from .fleet import Progress
from .params import COMMON, SCENARIOS, Option, ParamError, make_params
from .report import latency_chart, machine_info, throughput_chart, write_result
from .scenarios import SCENARIO_FUNCTIONS, Run
from .targets import HarnessError

__all__ = ["main", "run_scenario"]

logger = logging.getLogger(__name__)

_DESCRIPTIONS = {
    "idle": "N authenticated idle connections: connect rate, memory each, idle CPU",
    "direct": "P pairs messaging one-to-one: closed loop for the maximum rate, "
    "then an open loop at half of it for latency",
    "group": "one group of M members with S senders: deliveries per second, latency",
    "sync": "U users reconnecting at once, each with a backlog: time until all "
    "are caught up",
    "cluster": "direct and group traffic across nodes through Redis shards, on "
    "PostgreSQL",
    "baseline": "direct and group traffic through the bare relay only",
}


def run_scenario(
    scenario: str,
    values: dict[str, Any] | None = None,
    *,
    output: Path,
    name: str | None = None,
    charts: bool = True,
    progress: bool = True,
    command: str = "",
    keep_work: bool = False,
    delivery_grace: float | None = None,
) -> dict[str, Any]:
    """Run ``scenario`` with option ``values``; write and return the result.

    Raises:
        ParamError: for a bad parameter, before anything starts.
        HarnessError: when a server or a load process cannot be started or
            stops answering.
    """
    params = make_params(scenario, values)
    name = name or scenario
    output = Path(output)
    output.mkdir(parents=True, exist_ok=True)
    started_at = datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")
    began = time.monotonic()
    machine = machine_info()
    run = Run(params, output, name, Progress(progress), keep_work=keep_work)
    if delivery_grace is not None:
        run.delivery_grace = delivery_grace
    try:
        parts = SCENARIO_FUNCTIONS[scenario](run)
    finally:
        run.close()
    result: dict[str, Any] = {
        "schema": SCHEMA,
        "scenario": scenario,
        "command": command or _command_line(scenario, values or {}, output, name),
        "started_at": started_at,
        "elapsed_s": round(time.monotonic() - began, 3),
        "machine": machine,
        "params": params.as_dict(),
        "targets": parts["targets"],
        "figures": parts["figures"],
        "ratios": parts["ratios"],
        "checks": _checks(parts["targets"], run.problems),
        "profiles": run.profiles,
        "charts": _charts(run, output, name) if charts else [],
    }
    write_result(result, output / f"{name}.json")
    return result


def _checks(targets: dict[str, Any], problems: list[str]) -> dict[str, Any]:
    """Add up every phase: sent, acked, delivered, expected, duplicates."""
    totals = {
        "sent": 0,
        "acked": 0,
        "errors": 0,
        "deliveries": 0,
        "expected_deliveries": 0,
        "duplicates": 0,
    }
    for target in targets.values():
        for phase in target["phases"].values():
            for key in totals:
                totals[key] += phase.get(key, 0) or 0
    return {"ok": not problems, "problems": list(problems), **totals}


def _charts(run: Run, output: Path, name: str) -> list[str]:
    """Render the PNG charts of the run; return their file names."""
    written = []
    latency = {
        label: chart["latency"]
        for label, chart in run.charts.items()
        if isinstance(chart, dict) and "latency" in chart
    }
    if latency:
        title = f"{name}: send-to-delivery latency by percentile"
        if run.params.scenario == "sync":
            title = f"{name}: time from reconnect to caught up, by percentile"
        path = latency_chart(latency, output / f"{name}-latency.png", title)
        if path:
            written.append(path.name)
    panels: dict[str, dict[str, Any]] = {}
    for label, chart in run.charts.items():
        target, _, phase = label.partition(" ")
        if isinstance(chart, dict) and "deliveries" in chart:
            panels.setdefault(target, {})[phase] = (chart["acks"], chart["deliveries"])
        elif isinstance(chart, dict) and "caught_up" in chart:
            # Users per second is another scale than messages: a panel of its own.
            panels[f"{target} catch-up"] = {"users caught up": ([], chart["caught_up"])}
    if panels:
        path = throughput_chart(
            panels, output / f"{name}-throughput.png", f"{name} throughput"
        )
        if path:
            written.append(path.name)
    idle = {
        label: samples
        for label, samples in run.charts.items()
        if isinstance(samples, list)
    }
    if idle:
        path = _idle_chart(idle, output / f"{name}-connections.png", name)
        written.append(path.name)
    return written


def _idle_chart(idle: dict[str, list[Any]], path: Path, name: str) -> Path:
    from .report import _pyplot

    plt = _pyplot()
    figure, (top, bottom) = plt.subplots(2, 1, figsize=(8, 6), sharex=True)
    for label, samples in idle.items():
        xs = [s[0] for s in samples]
        top.plot(xs, [s[1] for s in samples], label=label)
        bottom.plot(xs, [(s[2] or 0) / 2**20 for s in samples], label=label)
    top.set_ylabel("open sessions")
    bottom.set_ylabel("server RSS (MiB)")
    bottom.set_xlabel("seconds since the first connect")
    top.set_title(f"{name}: connections and server memory")
    for axes in (top, bottom):
        axes.grid(True, alpha=0.3)
        axes.legend(fontsize="small")
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return path


def _command_line(
    scenario: str, values: dict[str, Any], output: Path, name: str
) -> str:
    words = ["nextstar-bench", scenario]
    for key, value in values.items():
        if value is None:
            continue
        if key == "baseline":
            if not value:
                words.append("--no-baseline")
            continue
        if key == "server_env":
            for pair in value:
                words += ["--server-env", pair]
            continue
        words += ["--" + key.replace("_", "-"), str(value)]
    words += ["--output", str(output), "--name", name]
    return shlex.join(words)


# -- command line -------------------------------------------------------------


def _add_option(parser: argparse.ArgumentParser, option: Option) -> None:
    kind = str if option.choices else option.kind
    default_text = option.default
    parser.add_argument(
        option.flag,
        dest=option.name,
        type=kind,
        default=argparse.SUPPRESS,
        choices=option.choices or None,
        help=f"{option.help} (default {default_text})",
    )


def _parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    group = common.add_argument_group("every scenario")
    for option in COMMON:
        _add_option(group, option)  # type: ignore[arg-type]
    group.add_argument(
        "--url",
        default=argparse.SUPPRESS,
        help="target a running NextStar RT at ws://host:port/path",
    )
    group.add_argument(
        "--users-file",
        default=argparse.SUPPRESS,
        help="with --url: the JSON lines of 'nextstar-rt dev provision'",
    )
    group.add_argument(
        "--server-pid",
        type=int,
        default=argparse.SUPPRESS,
        help="with --url: the server's pid, to meter its CPU",
    )
    group.add_argument(
        "--server-env",
        action="append",
        default=argparse.SUPPRESS,
        metavar="NEXTSTAR_SECTION__KEY=VALUE",
        help="a setting for every NextStar RT node started "
        "(repeatable), e.g. NEXTSTAR_STORE__BATCH_MAX=1024",
    )
    group.add_argument(
        "--no-baseline",
        dest="baseline",
        action="store_false",
        default=argparse.SUPPRESS,
        help="skip the baseline relay run",
    )
    group.add_argument(
        "--output",
        type=Path,
        default=Path("bench-results"),
        help="directory for the JSON result and charts (default ./bench-results)",
    )
    group.add_argument("--name", help="file name stem (default: the scenario)")
    group.add_argument("--no-charts", action="store_true", help="skip the PNGs")
    group.add_argument("--quiet", action="store_true", help="no progress display")
    group.add_argument(
        "--keep-work",
        action="store_true",
        help="keep the work directory (server logs, data) to look at",
    )

    parser = argparse.ArgumentParser(
        prog="nextstar-bench",
        description="Run one NextStar RT load scenario; write its result and charts.",
        epilog="See bench/README.md for each scenario.",
    )
    scenarios = parser.add_subparsers(
        dest="scenario", required=True, metavar="SCENARIO"
    )
    for scenario, options in SCENARIOS.items():
        sub = scenarios.add_parser(
            scenario,
            parents=[common],
            help=_DESCRIPTIONS[scenario],
            description=_DESCRIPTIONS[scenario],
        )
        own = sub.add_argument_group(f"{scenario} options")
        for option in options:
            _add_option(own, option)  # type: ignore[arg-type]
    return parser


def _terminated(signum: int, frame: Any) -> None:
    raise SystemExit(128 + signum)


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``nextstar-bench``."""
    arguments = sys.argv[1:] if argv is None else argv
    args = _parser().parse_args(arguments)
    # SIGTERM (a time-out, a kill) unwinds like an error, so that every
    # server and load process started so far is stopped on the way out.
    signal.signal(signal.SIGTERM, _terminated)
    logging.basicConfig(
        level=logging.WARNING,
        format="nextstar-bench %(levelname)s %(name)s: %(message)s",
    )
    values = {
        k: v
        for k, v in vars(args).items()
        if k not in ("scenario", "output", "name", "no_charts", "quiet", "keep_work")
    }
    command = shlex.join(["nextstar-bench", *arguments])
    try:
        result = run_scenario(
            args.scenario,
            values,
            output=args.output,
            name=args.name,
            charts=not args.no_charts,
            progress=not args.quiet,
            command=command,
            keep_work=args.keep_work,
        )
    except ParamError as exc:
        print(f"nextstar-bench: {exc}", file=sys.stderr)
        return 2
    except HarnessError as exc:
        print(f"nextstar-bench: {exc}", file=sys.stderr)
        return 3
    name = args.name or args.scenario
    print(f"result: {args.output / (name + '.json')}", file=sys.stderr)
    for problem in result["checks"]["problems"]:
        print(f"check failed: {problem}", file=sys.stderr)
    return 0 if result["checks"]["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
