"""The consistent hash ring that places channels on standalone Redis shards."""

from __future__ import annotations

import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

from nextstar_rt.broker.hashring import HashRing

SHARDS = ["redis://shard-a:6379", "redis://shard-b:6379", "redis://shard-c:6379"]
CHANNELS = [f"c:{n}" for n in range(10_000)]
ROOT = Path(__file__).resolve().parent.parent


def test_same_channel_maps_to_same_shard_on_two_rings() -> None:
    first, second = HashRing(SHARDS), HashRing(list(reversed(SHARDS)))

    assert [first.shard_for(c) for c in CHANNELS] == [
        second.shard_for(c) for c in CHANNELS
    ]


def test_mapping_is_fixed_across_processes_and_releases() -> None:
    # Nodes started at different times must agree, so these values may never
    # change: a change would move live subscriptions between shards.
    ring = HashRing(SHARDS)
    names = ["u:1", "u:2", "u:3", "c:42", "n:node-a"]

    assert {c: ring.shard_for(c) for c in names} == {
        "u:1": "redis://shard-c:6379",
        "u:2": "redis://shard-a:6379",
        "u:3": "redis://shard-b:6379",
        "c:42": "redis://shard-b:6379",
        "n:node-a": "redis://shard-a:6379",
    }


def test_mapping_does_not_depend_on_python_hash_seed() -> None:
    code = (
        "from nextstar_rt.broker.hashring import HashRing;"
        f"r = HashRing({SHARDS!r});"
        "print(','.join(r.shard_for(f'u:{n}') for n in range(200)))"
    )
    outputs = {
        subprocess.run(
            [sys.executable, "-c", code],
            env={"PYTHONHASHSEED": seed, "PYTHONPATH": str(ROOT)},
            capture_output=True,
            check=True,
            text=True,
        ).stdout
        for seed in ("1", "2")
    }

    assert len(outputs) == 1


def test_channels_spread_evenly_over_shards() -> None:
    ring = HashRing(SHARDS)

    shares = Counter(ring.shard_for(c) for c in CHANNELS)

    assert set(shares) == set(SHARDS)
    for count in shares.values():
        assert 0.27 < count / len(CHANNELS) < 0.40


def test_adding_a_fourth_shard_moves_about_a_quarter_and_only_to_it() -> None:
    before = HashRing(SHARDS)
    after = HashRing([*SHARDS, "redis://shard-d:6379"])

    moved = {
        c: after.shard_for(c)
        for c in CHANNELS
        if before.shard_for(c) != after.shard_for(c)
    }

    assert 0.15 < len(moved) / len(CHANNELS) < 0.35
    assert set(moved.values()) == {"redis://shard-d:6379"}


@pytest.mark.parametrize("shards", [[], ["redis://a", "redis://a"]])
def test_ring_rejects_empty_or_repeated_shards(shards: list[str]) -> None:
    with pytest.raises(ValueError):
        HashRing(shards)
