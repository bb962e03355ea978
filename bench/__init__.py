"""The NextStar RT load harness, ``nextstar-bench``.

It starts what it measures (one node on the embedded defaults, two nodes on
Redis shards and PostgreSQL, or the bare relay of :mod:`bench.relay`) or
targets a running server, drives it from several load processes, and writes
a JSON result and PNG charts. ``bench/README.md`` tells how to run each
scenario.
"""

__all__ = ["SCHEMA"]

#: Version tag of the JSON result; bumped when a required key changes.
SCHEMA = "nextstar-bench/1"
