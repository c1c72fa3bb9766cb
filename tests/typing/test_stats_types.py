"""Static checks for the statistics and the bound: mypy --strict and pyright accept these."""

from __future__ import annotations

from typing import assert_type

import offload


def test_stats_are_typed_plain_data() -> None:
    registry = offload.Registry()
    registry.register("db", offload.ThreadPool(1), max_pending=10, when_full="fail")
    stats = assert_type(registry.stats(), dict[str, offload.ExecutorStats])
    db = stats["db"]
    assert_type(db["submitted"], int)
    assert_type(db["max_pending"], int | None)
    wait = assert_type(db["wait"], offload.Timings)
    assert_type(wait["p99"], float | None)
    assert_type(offload.stats(), dict[str, offload.ExecutorStats])
    assert db["max_pending"] == 10
    assert wait["samples"] == 0
    registry.shutdown()


def test_overloaded_error_carries_the_bound() -> None:
    err = offload.OverloadedError("db", 10)
    assert_type(err.max_pending, int)
    assert (err.name, err.max_pending) == ("db", 10)
