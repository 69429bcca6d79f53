"""``--workers``: every process, this one included, takes a share of the tasks."""
from __future__ import annotations

import os

import pytest

from data_prep.parallel import Workers


def _process_of(task: int) -> tuple[int, int]:
    return task, os.getpid()


@pytest.mark.parametrize("tasks", [2, 3, 9])
def test_this_process_works_too_even_with_as_many_tasks_as_processes(tasks):
    with Workers(2, "fork") as workers:
        done = dict(workers.run(_process_of, range(tasks)))
    assert sorted(done) == list(range(tasks))
    processes = [pid for _, pid in done.values()]
    assert len(set(processes)) == 2 and os.getpid() in processes
