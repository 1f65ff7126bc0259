"""How `bench --database-cores N` divides the cores (devkit.affinity)."""

from __future__ import annotations

import os

import pytest

from devkit.affinity import CoreSplit, SplitError, plan, split_cores


def test_postgresql_takes_the_first_cores_and_the_others_the_rest() -> None:
    assert plan(1, {0, 1}) == CoreSplit(frozenset({0}), frozenset({1}))
    # The cores this process may use, whatever their numbers, in order.
    assert plan(2, {7, 3, 5, 9}) == CoreSplit(frozenset({3, 5}), frozenset({7, 9}))
    assert plan(2, {7, 3, 5, 9}).report() == {"postgresql": [3, 5], "others": [7, 9]}


@pytest.mark.parametrize(("cores", "available"), [(1, {0}), (2, {0, 1}), (0, {0, 1}), (-1, {0, 1})])
def test_each_side_needs_a_core(cores: int, available: set[int]) -> None:
    with pytest.raises(SplitError, match=f"--database-cores {cores}: this process may use"):
        plan(cores, available)


def test_a_process_it_may_not_move_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    """Servers of another user, without CAP_SYS_NICE: the bench says which process, no trace."""

    def refuse(tid: int, cores: object) -> None:
        raise PermissionError(1, "Operation not permitted")

    monkeypatch.setattr(os, "sched_setaffinity", refuse)
    split = plan(1, {0, 1})
    with (
        pytest.raises(SplitError, match=rf"cannot move process {os.getpid()}: .*not permitted"),
        split_cores(split, postmaster=os.getpid(), kafka=[]),
    ):
        pytest.fail("the run must not start")
