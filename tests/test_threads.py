"""Thread settings on a busy machine: fewer torch threads instead of spinning ones."""
import os

import pytest
import torch

from tailfill import training


@pytest.fixture
def keep_threads():
    n = torch.get_num_threads()
    yield
    torch.set_num_threads(n)


def test_busy_cores_is_a_share_of_the_machine():
    busy = training.busy_cores(0.05)
    assert 0.0 <= busy <= (os.cpu_count() or 1) + 1e-6


def test_threads_follow_the_free_cores(monkeypatch, keep_threads):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)
    monkeypatch.setattr(training.os, "sched_getaffinity", lambda pid: {0, 1, 2, 3}, raising=False)
    lines = []
    monkeypatch.setattr(training, "busy_cores", lambda seconds=0.5: 2.9)  # three of four cores taken
    assert training.configure_threads(lines.append) == 1 and torch.get_num_threads() == 1
    assert "3 of 4 cores are busy" in lines[0]
    monkeypatch.setattr(training, "busy_cores", lambda seconds=0.5: 0.2)  # an idle machine: every core
    assert training.configure_threads(lines.append) == 4 and torch.get_num_threads() == 4
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")  # two processes of one launch share the cores
    assert training.configure_threads() == 2


def test_omp_num_threads_wins(monkeypatch, keep_threads):
    torch.set_num_threads(1)
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    monkeypatch.setattr(training, "busy_cores", lambda seconds=0.5: 0.0)
    assert training.configure_threads() == 1 and torch.get_num_threads() == 1
