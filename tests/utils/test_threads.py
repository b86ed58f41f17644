"""Thread settings on a busy machine: fewer torch threads instead of spinning ones."""
import os

import pytest
import torch

from tailfill.utils import training


@pytest.fixture
def keep_threads():
    n = torch.get_num_threads()
    yield
    torch.set_num_threads(n)


def test_busy_cores_sees_a_core_kept_busy():
    import subprocess
    import sys

    if not hasattr(os, "sched_setaffinity") or not os.path.exists("/proc/stat"):
        pytest.skip("needs Linux's /proc/stat and CPU affinity")
    spin = subprocess.Popen([sys.executable, "-c", "import os; os.sched_setaffinity(0, {0})\nwhile True: pass"])
    try:
        import time

        time.sleep(0.3)
        assert training.busy_cores(0.5, cpus={0}) > 0.8  # a program spinning on core 0 keeps it busy
        assert 0.0 <= training.busy_cores(0.05) <= (os.cpu_count() or 1) + 1e-6
    finally:
        spin.kill()
        spin.wait()
    assert training.busy_cores(0.05, cpus=set()) == 0.0


def test_threads_follow_the_free_cores(monkeypatch, keep_threads):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)
    monkeypatch.setattr(training.os, "sched_getaffinity", lambda pid: {0, 1, 2, 3}, raising=False)
    lines = []
    monkeypatch.setattr(training, "cpu_quota", lambda: None)
    monkeypatch.setattr(training, "busy_cores", lambda seconds=0.5, cpus=None: 2.9)  # three of four cores taken
    assert training.configure_threads(lines.append) == 1 and torch.get_num_threads() == 1
    assert "3 of 4 cores busy" in lines[0]
    monkeypatch.setattr(training, "busy_cores", lambda seconds=0.5, cpus=None: 0.2)  # idle: every core
    assert training.configure_threads(lines.append) == 4 and torch.get_num_threads() == 4
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")  # two processes of one launch share the cores
    assert training.configure_threads() == 2


def test_omp_num_threads_wins(monkeypatch, keep_threads):
    torch.set_num_threads(1)
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    monkeypatch.setattr(training, "busy_cores", lambda seconds=0.5, cpus=None: 0.0)
    assert training.configure_threads() == 1 and torch.get_num_threads() == 1


@pytest.mark.parametrize("v2, v1, cores", [("150000 100000", None, 1.5), ("max 100000", None, None),
                                           (None, ("200000", "100000"), 2.0), (None, ("-1", "100000"), None),
                                           (None, None, None), ("garbage", None, None)])
def test_cpu_quota_of_a_container(tmp_path, monkeypatch, v2, v1, cores):
    v2_file, v1_quota = tmp_path / "cpu.max", tmp_path / "cpu.cfs_quota_us"
    if v2 is not None:
        v2_file.write_text(v2 + "\n")
    if v1 is not None:
        v1_quota.write_text(v1[0])
        (tmp_path / "cpu.cfs_period_us").write_text(v1[1])
    monkeypatch.setattr(training, "CGROUP_CPU_MAX", str(v2_file))
    monkeypatch.setattr(training, "CGROUP_V1_QUOTA", str(v1_quota))
    assert training.cpu_quota() == cores


def test_threads_follow_a_container_cpu_quota(monkeypatch, keep_threads):
    """docker --cpus=1.5 on a 16-core host: 2 threads, not 16 spinning on 1.5 CPUs' worth of time."""
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)
    monkeypatch.setattr(training.os, "sched_getaffinity", lambda pid: set(range(16)), raising=False)
    monkeypatch.setattr(training, "busy_cores", lambda seconds=0.5, cpus=None: 0.0)
    monkeypatch.setattr(training, "cpu_quota", lambda: 1.5)
    torch.set_num_threads(1)
    lines = []
    assert training.configure_threads(lines.append) == 2 and torch.get_num_threads() == 2
    assert "CPU quota of 1.5" in lines[0]
    monkeypatch.setattr(training, "busy_cores", lambda seconds=0.5, cpus=None: 15.2)  # and a busy host: 1
    assert training.configure_threads() == 1
