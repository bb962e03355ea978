"""The load harness: its pieces, and one tiny run of each scenario.

The tiny runs start real servers and load processes, send a few messages and
check that the counts add up: every message sent is acked and received,
none twice. No test here asserts a speed; ``bench/RESULTS.md`` holds those.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from bench import SCHEMA
from bench.harness import main, run_scenario
from bench.hist import Recorder, merge, summary
from bench.load import SeqTrack, message_text, sent_at
from bench.params import ParamError, make_params
from bench.profile import top_functions
from bench.report import (
    SchemaError,
    bucket_rate,
    check_result,
    saturation,
    sum_buckets,
)

from .services import TIMEOUT_SCALE, require_binary

# -- histograms ---------------------------------------------------------------


def test_merged_histograms_add_counts_from_every_process() -> None:
    first, second = Recorder(), Recorder()
    for _ in range(900):
        first.record_seconds(0.001)
    for _ in range(100):
        second.record_seconds(0.050)

    merged = merge([first.encode(), second.encode()])

    figures = summary(merged)
    assert figures["count"] == 1000
    assert figures["p50"] == pytest.approx(1000, rel=0.01)
    assert figures["p99"] == pytest.approx(50000, rel=0.01)
    assert figures["max"] == pytest.approx(50000, rel=0.01)


def test_merge_accepts_decoded_histograms_too() -> None:
    recorder = Recorder()
    recorder.record_seconds(0.002)

    merged = merge([recorder.histogram(), recorder.encode()])

    assert merged.get_total_count() == 2


def test_merge_rejects_a_damaged_encoding() -> None:
    with pytest.raises(ValueError, match="cannot decode histogram"):
        merge([b"not a histogram"])


def test_recorder_clamps_values_outside_the_histogram_range() -> None:
    recorder = Recorder()
    recorder.record_seconds(-1.0)  # clocks of two processes may disagree a little
    recorder.record_seconds(10_000.0)

    figures = summary(recorder.histogram())

    assert figures["count"] == 2
    assert figures["p50"] >= 1


def test_summary_of_an_empty_histogram_reports_no_latency() -> None:
    figures = summary(Recorder().histogram())

    assert figures == {
        "count": 0,
        "p50": None,
        "p90": None,
        "p99": None,
        "p99_9": None,
        "mean": None,
        "max": None,
    }


def test_message_text_carries_its_send_time_at_the_asked_length() -> None:
    text = message_text(1796339918.123456, 64)

    assert len(text) == 64
    assert sent_at(text) == pytest.approx(1796339918.123456)
    assert sent_at("hello") is None


def test_seq_track_tells_new_late_and_duplicate_pushes_apart() -> None:
    track = SeqTrack()
    track.own(2)  # the session's own message: never pushed to it

    seen = [track.pushed(seq) for seq in (1, 4, 3, 4, 2)]

    assert seen == ["new", "new", "reordered", "duplicate", "duplicate"]
    assert track.missing == set()


def test_buckets_from_processes_add_up_and_give_rates() -> None:
    total = sum_buckets([[1, 2, 3], [10, 10]])

    assert total == [11, 12, 3]
    assert bucket_rate([5] * 20, 0.5, 1.5) == pytest.approx(50.0)
    assert bucket_rate([5] * 20, 1.0, 1.0) == 0.0


def test_saturation_names_the_side_at_its_limit() -> None:
    assert saturation(0.95, [0.3, 0.3], 2) == "server"
    assert saturation(0.5, [0.9, 0.2], 2) == "load"
    assert saturation(0.7, [0.5, 0.5], 2) == "machine"
    assert saturation(0.2, [0.1], 2) == "neither"
    assert saturation(None, [0.1], 2) == "neither"


def test_profile_summary_counts_self_and_total_time() -> None:
    lines = [
        'process 1:"python";main (app.py:1);send (chat/send.py:10);encode (c.py:3) 6',
        "main (app.py:1);send (chat/send.py:12) 4",
    ]

    top = top_functions(lines)

    assert top["samples"] == 10
    assert top["self"][0] == {
        "function": "encode (c.py)",
        "samples": 6,
        "percent": 60.0,
    }
    total = {row["function"]: row["samples"] for row in top["total"]}
    assert total["send (chat/send.py)"] == 10


# -- result schema --------------------------------------------------------------


def _result() -> dict[str, Any]:
    return {
        "schema": SCHEMA,
        "scenario": "direct",
        "command": "nextstar-bench direct",
        "started_at": "2026-01-01T00:00:00+00:00",
        "elapsed_s": 1.5,
        "machine": {
            "cores": 2,
            "memory_bytes": 1 << 30,
            "python": "3.11.7",
            "libraries": {},
            "git_revision": "abc",
        },
        "params": {},
        "targets": {"nextstar": {"phases": {}}},
        "figures": {},
        "ratios": {},
        "checks": {"ok": True, "problems": []},
        "charts": [],
    }


def test_a_complete_result_passes_the_schema_check() -> None:
    check_result(_result())


@pytest.mark.parametrize("key", ["machine", "checks", "figures", "elapsed_s"])
def test_a_result_without_a_required_key_fails_the_check(key: str) -> None:
    result = _result()
    del result[key]

    with pytest.raises(SchemaError, match=f"^{key}: missing"):
        check_result(result)


def test_a_result_with_a_mistyped_key_fails_the_check() -> None:
    result = _result()
    result["machine"]["cores"] = "two"

    with pytest.raises(SchemaError, match="machine.cores: expected"):
        check_result(result)


def test_a_result_of_another_schema_version_fails_the_check() -> None:
    result = _result()
    result["schema"] = "nextstar-bench/0"

    with pytest.raises(SchemaError, match="schema"):
        check_result(result)


# -- parameters ---------------------------------------------------------------------


def test_defaults_make_valid_parameters() -> None:
    params = make_params("group")

    assert params.members == 500
    assert params.senders == 4
    assert params.url is None


@pytest.mark.parametrize(
    ("scenario", "values", "message"),
    [
        ("nope", {}, "unknown scenario 'nope'"),
        ("group", {"members": 501}, "--members: must be from 2 to 500, got 501"),
        ("group", {"members": 10, "senders": 11}, "--senders: at most --members"),
        ("direct", {"pairs": 0}, "--pairs: must be from 1 to 9,000, got 0"),
        ("direct", {"window": "many"}, "--window: expected a number"),
        ("direct", {"window": 2.5}, "--window: expected a whole number"),
        ("direct", {"duration": float("nan")}, "--duration: expected a finite number"),
        ("direct", {"colour": "blue"}, "unknown option --colour"),
        (
            "direct",
            {"duration": 300, "open_duration": 300, "timeout": 100},
            "--timeout: the phases need 1200 s",
        ),
        ("direct", {"url": "ws://127.0.0.1:1/ws"}, "--url needs --users-file"),
        ("direct", {"url": "http://x"}, "--url: expected ws://"),
        ("direct", {"users_file": "u.jsonl"}, "go with --url"),
        (
            "cluster",
            {"url": "ws://127.0.0.1:1/ws", "users_file": "u"},
            "starts its own servers",
        ),
        ("idle", {"profile": "gprof"}, "--profile: choose one of"),
        ("sync", {"page": 501}, "--page: must be from 1 to 500"),
        ("direct", {"duration": 1}, "--warmup: must be shorter than --duration"),
    ],
)
def test_bad_parameters_are_refused_with_a_clear_message(
    scenario: str, values: dict[str, Any], message: str
) -> None:
    with pytest.raises(ParamError, match=message.replace("(", r"\(")):
        make_params(scenario, values)


def test_load_processes_are_added_to_hold_every_connection() -> None:
    params = make_params("idle", {"connections": 19000, "processes": 1})

    assert params.processes == 3  # 9,000 connections each at most


def test_the_command_line_exits_2_on_a_bad_parameter(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = main(["group", "--members", "1", "--output", str(tmp_path)])

    assert code == 2
    assert "--members: must be from 2 to 500, got 1" in capsys.readouterr().err


# -- tiny runs --------------------------------------------------------------------

_TINY = {
    "processes": 1,
    "duration": 0.5,
    "open_duration": 0.5,
    "warmup": 0,
    "window": 2,
    "timeout": 120,
}
#: Seconds a tiny run waits for its last deliveries; a lost one fails soon.
_GRACE = 3 * TIMEOUT_SCALE


def _assert_counts_add_up(result: dict[str, Any]) -> None:
    assert result["checks"]["problems"] == []
    assert result["checks"]["ok"] is True
    for target in result["targets"].values():
        for name, phase in target["phases"].items():
            if "acked" not in phase:
                continue
            assert phase["sent"] > 0, name
            assert phase["acked"] == phase["sent"], name
            assert phase["errors"] == 0, name
            assert phase["deliveries"] == phase["expected_deliveries"], name
            assert phase["duplicates"] == 0, name


def _written(output: Path, name: str) -> dict[str, Any]:
    result = json.loads((output / f"{name}.json").read_text())
    check_result(result)
    return result


def test_a_tiny_direct_run_delivers_each_message_once_and_compares_to_baseline(
    tmp_path: Path,
) -> None:
    result = run_scenario(
        "direct",
        {**_TINY, "pairs": 3},
        output=tmp_path,
        progress=False,
        delivery_grace=_GRACE,
    )

    _assert_counts_add_up(result)
    phase = result["targets"]["nextstar"]["phases"]["direct.closed"]
    assert phase["expected_deliveries"] == phase["acked"]  # one peer each
    assert phase["server_us_per_ack"] > 0
    assert phase["saturated"] in ("server", "load", "machine", "neither")
    assert set(result["targets"]) == {"nextstar", "baseline"}
    assert result["ratios"]["direct"]["max_acks_per_s"] > 0
    assert _written(tmp_path, "direct")["scenario"] == "direct"
    for chart in result["charts"]:
        assert (tmp_path / chart).read_bytes()[:4] == b"\x89PNG"
    assert "direct-latency.png" in result["charts"]


def test_a_tiny_group_run_delivers_to_every_other_member(tmp_path: Path) -> None:
    values = {**_TINY, "members": 5, "senders": 2, "baseline": False}

    result = run_scenario(
        "group",
        values,
        output=tmp_path,
        charts=False,
        progress=False,
        delivery_grace=_GRACE,
    )

    _assert_counts_add_up(result)
    phase = result["targets"]["nextstar"]["phases"]["group.closed"]
    assert phase["expected_deliveries"] == phase["acked"] * 4


def test_a_tiny_sync_run_catches_every_user_up(tmp_path: Path) -> None:
    values = {
        "processes": 1,
        "users": 6,
        "backlog": 7,
        "page": 3,
        "timeout": 120,
        "deadline": 30,
    }

    result = run_scenario(
        "sync",
        values,
        output=tmp_path,
        charts=False,
        progress=False,
        delivery_grace=_GRACE,
    )

    _assert_counts_add_up(result)
    catch_up = result["targets"]["nextstar"]["phases"]["sync.catch_up"]
    assert catch_up["caught_up"] == 6
    assert catch_up["messages"] == catch_up["expected_messages"] == 42
    assert catch_up["duplicates"] == 0
    assert catch_up["sync_calls"] >= 6 * 3  # pages of 3 for a backlog of 7


def test_a_tiny_idle_run_holds_every_connection(tmp_path: Path) -> None:
    values = {"processes": 2, "connections": 12, "hold": 0.5, "timeout": 120}

    result = run_scenario(
        "idle",
        values,
        output=tmp_path,
        charts=False,
        progress=False,
        delivery_grace=_GRACE,
    )

    _assert_counts_add_up(result)
    for target in ("nextstar", "baseline"):
        hold = result["targets"][target]["phases"]["idle.hold"]
        assert hold["open_at_end"] == 12
    assert result["figures"]["idle"]["nextstar"]["rss_per_connection_bytes"] is not None


def test_a_tiny_baseline_run_relays_direct_and_group_traffic(tmp_path: Path) -> None:
    values = {**_TINY, "pairs": 2, "members": 4, "senders": 2, "open_duration": 0}

    result = run_scenario(
        "baseline",
        values,
        output=tmp_path,
        charts=False,
        progress=False,
        delivery_grace=_GRACE,
    )

    _assert_counts_add_up(result)
    phases = result["targets"]["baseline"]["phases"]
    assert set(phases) == {"direct.closed", "group.closed"}


def test_a_tiny_cluster_run_delivers_across_nodes(
    tmp_path: Path, postgres_server: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    require_binary("redis-server")
    monkeypatch.setenv("NEXTSTAR_BENCH_POSTGRES_URL", postgres_server.url("postgres"))
    values = {
        **_TINY,
        "pairs": 2,
        "members": 4,
        "senders": 2,
        "open_duration": 0,
        "baseline": False,
    }

    result = run_scenario(
        "cluster",
        values,
        output=tmp_path,
        charts=False,
        progress=False,
        delivery_grace=_GRACE,
    )

    _assert_counts_add_up(result)
    assert result["targets"]["nextstar"]["nodes"] == 2
