"""threads=auto: a run computes on the cores that are free when it starts."""
import subprocess
import sys

import pytest

from shiftquant.errors import ConfigError
from shiftquant.train.threads import choose_threads, free_cores, usable_cores


def test_a_busy_core_is_left_to_its_owner(monkeypatch):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    cores = usable_cores()
    if cores < 2:
        pytest.skip("one core: nothing to leave")
    busy = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(cores - 1)]
    try:
        free = free_cores(0.5)
        threads, why = choose_threads("auto")
    finally:
        for p in busy:
            p.kill()
            p.wait()
    assert free is not None and free < cores - 0.5
    assert 1 <= threads < cores and "free" in why


def test_a_count_or_omp_num_threads_decides(monkeypatch):
    assert choose_threads(3) == (3, "threads=3 (config)")
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    assert choose_threads("auto")[0] == 1
    for bad in (0, -1, "many", True, 1.5):
        with pytest.raises(ConfigError, match="threads"):
            choose_threads(bad)
