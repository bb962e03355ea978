"""Scenario parameters: one table drives the command line and the checks.

Every scenario's options are declared once, as :class:`Option` rows with a
type, a default and bounds. :func:`make_params` checks a mapping of values
against the table (the command line and the tests both go through it) and
raises :class:`ParamError` naming the option, the allowed range and the value
given.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

__all__ = [
    "COMMON",
    "SCENARIOS",
    "Option",
    "ParamError",
    "Params",
    "connections_needed",
    "make_params",
]

#: Connections one load process holds at most. Each process may open 20,000
#: files here; 9,000 sockets leave room for the interpreter, its libraries and
#: a second run's sockets still closing.
MAX_PER_PROCESS = 9000


class ParamError(ValueError):
    """A scenario parameter is missing, out of range or inconsistent."""


@dataclass(frozen=True)
class Option:
    """One scenario option: ``--name`` on the command line."""

    name: str
    kind: type
    default: Any
    low: float | None = None
    high: float | None = None
    help: str = ""
    choices: tuple[str, ...] = ()

    @property
    def flag(self) -> str:
        return "--" + self.name.replace("_", "-")


def _traffic(duration: float = 10.0) -> list[Option]:
    """Options shared by the scenarios that send messages in two phases."""
    return [
        Option(
            "window",
            int,
            4,
            1,
            1000,
            "closed loop: messages each sender keeps in flight",
        ),
        Option(
            "duration", float, duration, 0.2, 300, "closed-loop phase length in seconds"
        ),
        Option(
            "open_duration",
            float,
            duration,
            0,
            300,
            "open-loop phase length in seconds; 0 skips the phase",
        ),
        Option(
            "open_rate",
            float,
            0.0,
            0,
            1_000_000,
            "open-loop messages per second; 0 means half the closed-loop acked rate",
        ),
        Option(
            "message_bytes",
            int,
            64,
            32,
            8000,
            "text length of each message (holds the send timestamp)",
        ),
        Option(
            "warmup",
            float,
            1.0,
            0,
            60,
            "seconds at the start of each phase left out of the rates",
        ),
    ]


_PAIRS = Option("pairs", int, 100, 1, 9000, "pairs of users messaging one-to-one")
_MEMBERS = Option(
    "members",
    int,
    500,
    2,
    500,
    "group members, the owner included (the server allows 500)",
)
_SENDERS = Option("senders", int, 4, 1, 500, "members that send")

SCENARIOS: dict[str, list[Option]] = {
    "idle": [
        Option(
            "connections",
            int,
            1000,
            1,
            38000,
            "authenticated connections to open and hold",
        ),
        Option(
            "hold",
            float,
            30.0,
            0.2,
            300,
            "seconds to hold them open (heartbeats run every 20 s)",
        ),
        Option(
            "connect_concurrency",
            int,
            100,
            1,
            2000,
            "handshakes in progress at once, per load process",
        ),
    ],
    "direct": [_PAIRS, *_traffic()],
    "group": [_MEMBERS, _SENDERS, *_traffic()],
    "sync": [
        Option("users", int, 2000, 1, 20000, "users reconnecting at once"),
        Option("backlog", int, 100, 1, 1000, "messages each user missed"),
        Option("page", int, 200, 1, 500, "sync limit per conversation and call"),
        Option(
            "window",
            int,
            32,
            1,
            1000,
            "messages in flight per conversation while building the backlog",
        ),
        Option(
            "deadline", float, 120.0, 1, 600, "seconds allowed for everyone to catch up"
        ),
        Option(
            "connect_concurrency",
            int,
            500,
            1,
            2000,
            "handshakes in progress at once, per load process",
        ),
        Option("message_bytes", int, 64, 32, 8000, "text length of each message"),
    ],
    "cluster": [
        Option("nodes", int, 2, 2, 4, "server nodes, each its own process and port"),
        Option("shards", int, 2, 1, 8, "standalone redis-server shards"),
        _PAIRS,
        _MEMBERS,
        _SENDERS,
        *_traffic(),
    ],
    "baseline": [_PAIRS, _MEMBERS, _SENDERS, *_traffic()],
}

COMMON: list[Option] = [
    Option(
        "processes",
        int,
        2,
        1,
        16,
        "load processes (raised to hold at most --max-per-process each)",
    ),
    Option(
        "max_per_process",
        int,
        MAX_PER_PROCESS,
        1,
        9500,
        "connections per load process at most",
    ),
    Option(
        "timeout", float, 900.0, 10, 3600, "upper bound on the whole run in seconds"
    ),
    Option(
        "profile",
        str,
        "none",
        help="profile the server process",
        choices=("none", "pyinstrument", "py-spy"),
    ),
]


class Params:
    """Checked parameters of one run; options read as attributes."""

    def __init__(self, scenario: str, values: dict[str, Any]) -> None:
        self.scenario = scenario
        self._values = values

    def __getattr__(self, name: str) -> Any:
        try:
            return self._values[name]
        except KeyError:
            raise AttributeError(name) from None

    def as_dict(self) -> dict[str, Any]:
        return {"scenario": self.scenario, **self._values}


def make_params(scenario: str, values: dict[str, Any] | None = None) -> Params:
    """Check ``values`` (option name to value) for ``scenario``.

    Options left out take their defaults; ``url``, ``users_file`` and
    ``server_pid`` name a running server instead of one the harness starts.

    Raises:
        ParamError: for an unknown scenario or option, a value of the wrong
            type or out of range, or options that contradict each other.
    """
    if scenario not in SCENARIOS:
        raise ParamError(
            f"unknown scenario {scenario!r}; choose one of {', '.join(SCENARIOS)}"
        )
    given = dict(values or {})
    options = SCENARIOS[scenario] + COMMON
    checked: dict[str, Any] = {}
    for option in options:
        checked[option.name] = _check(option, given.pop(option.name, option.default))
    for name in ("url", "users_file", "server_pid"):
        checked[name] = given.pop(name, None)
    checked["server_env"] = _server_env(given.pop("server_env", None) or [])
    checked["baseline"] = bool(given.pop("baseline", True))
    unknown = sorted(k for k, v in given.items() if v is not None)
    if unknown:
        flags = ", ".join("--" + k.replace("_", "-") for k in unknown)
        raise ParamError(f"{scenario}: unknown option {flags}")
    _check_together(scenario, checked)
    checked["processes"] = max(
        checked["processes"],
        math.ceil(connections_needed(scenario, checked) / checked["max_per_process"]),
    )
    return Params(scenario, checked)


def _server_env(pairs: list[str] | dict[str, str]) -> dict[str, str]:
    """Check ``NEXTSTAR_SECTION__KEY=value`` settings for the started servers."""
    if isinstance(pairs, dict):
        pairs = [f"{k}={v}" for k, v in pairs.items()]
    env = {}
    for pair in pairs:
        name, sep, value = pair.partition("=")
        if not sep or not name.startswith("NEXTSTAR_") or "__" not in name:
            raise ParamError(
                f"--server-env: expected NEXTSTAR_SECTION__KEY=value, got {pair!r}"
            )
        env[name] = value
    return env


def _check(option: Option, value: Any) -> Any:
    flag = option.flag
    if option.choices:
        if value not in option.choices:
            raise ParamError(
                f"{flag}: choose one of {', '.join(option.choices)}; got {value!r}"
            )
        return value
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise ParamError(f"{flag}: expected a number, got {value!r}")
    try:
        number = option.kind(value)
    except ValueError:
        raise ParamError(f"{flag}: expected a number, got {value!r}") from None
    if option.kind is int and isinstance(value, float) and not value.is_integer():
        raise ParamError(f"{flag}: expected a whole number, got {value!r}")
    if isinstance(number, float) and not math.isfinite(number):
        raise ParamError(f"{flag}: expected a finite number, got {value!r}")
    if (
        option.low is not None
        and number < option.low
        or (option.high is not None and number > option.high)
    ):
        raise ParamError(
            f"{flag}: must be from {_fmt(option.low)} to {_fmt(option.high)}, "
            f"got {_fmt(number)}"
        )
    return number


def _fmt(number: float | None) -> str:
    if number is None:
        return "-"
    return f"{number:,.0f}" if float(number).is_integer() else f"{number:g}"


def _check_together(scenario: str, values: dict[str, Any]) -> None:
    if "senders" in values and values["senders"] > values["members"]:
        raise ParamError(
            f"--senders: at most --members ({values['members']}), "
            f"got {values['senders']}"
        )
    warmup = values.get("warmup", 0)
    for name in ("duration", "open_duration"):
        if values.get(name) and warmup >= values[name]:
            flag = "--" + name.replace("_", "-")
            raise ParamError(
                f"--warmup: must be shorter than {flag} ({values[name]:g} s), "
                f"got {warmup:g}"
            )
    phases = values.get("duration", 0) + values.get("open_duration", 0)
    if scenario in ("direct", "group", "cluster", "baseline"):
        # Both phases run on NextStar RT and on the baseline relay.
        phases *= 2
    phases += values.get("hold", 0) + values.get("deadline", 0)
    if phases > values["timeout"]:
        raise ParamError(
            f"--timeout: the phases need {phases:g} s, more than the "
            f"{values['timeout']:g} s allowed; shorten them or raise --timeout"
        )
    if values["url"] is not None:
        if scenario in ("cluster", "baseline"):
            raise ParamError(f"--url: the {scenario} scenario starts its own servers")
        if not str(values["url"]).startswith("ws://"):
            raise ParamError(
                f"--url: expected ws://host:port/path, got {values['url']}"
            )
        if not values["users_file"]:
            raise ParamError(
                "--url needs --users-file: the JSON lines that "
                "'nextstar-rt dev provision' wrote for that server"
            )
        if values["profile"] != "none":
            raise ParamError("--profile: only a server the harness starts is profiled")
        if values["server_env"]:
            raise ParamError("--server-env: only for servers the harness starts")
    elif values["users_file"] or values["server_pid"]:
        raise ParamError("--users-file and --server-pid go with --url")
    per_process = values["max_per_process"] * 16
    if connections_needed(scenario, values) > per_process:
        raise ParamError(
            f"{scenario}: {connections_needed(scenario, values):,} connections do "
            f"not fit in 16 processes of {values['max_per_process']:,}"
        )


def connections_needed(scenario: str, values: dict[str, Any]) -> int:
    """Return how many connections the load processes hold at once."""
    if scenario == "idle":
        return int(values["connections"])
    if scenario == "direct":
        return 2 * int(values["pairs"])
    if scenario == "group":
        return int(values["members"])
    if scenario == "sync":
        return int(values["users"]) + sync_feeders(int(values["users"]))
    return max(2 * int(values["pairs"]), int(values["members"]))


def sync_feeders(users: int) -> int:
    """Return how many senders build the sync backlog: one per 500 users."""
    return max(1, math.ceil(users / 500))
