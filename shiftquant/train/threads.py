"""How many threads a run computes with: the cores that are free when it starts.

PyTorch uses every core by default. On a shared machine that oversubscribes: each small op waits
at its parallel region's barrier for a thread the scheduler has given to the other process: the
README's job takes 14.4 s alone, 99.9 s on 2 threads next to a 2-thread job on a 2-core machine, and
17.1 s there on the 1 core left free (``benchmarks/load_timing.py``). ``threads: auto`` (the default) counts the cores left idle over a short sample of
``/proc/stat`` and uses that many (at least one); an integer fixes the count, and so does
``OMP_NUM_THREADS`` when it is set.
"""
from __future__ import annotations

import os
import time

from ..errors import ConfigError


def usable_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def _cpu_times() -> tuple[int, int] | None:
    """``(idle, total)`` jiffies of all cores, or None where /proc/stat is not there."""
    try:
        with open("/proc/stat") as f:
            fields = [int(v) for v in f.readline().split()[1:]]
    except (OSError, ValueError):
        return None
    return fields[3] + (fields[4] if len(fields) > 4 else 0), sum(fields)


def free_cores(sample_s: float = 0.3) -> float | None:
    """The cores idle over ``sample_s`` seconds (fractional), or None where it cannot be read."""
    first = _cpu_times()
    time.sleep(sample_s)
    second = _cpu_times()
    if first is None or second is None or second[1] <= first[1]:
        return None
    share = (second[0] - first[0]) / (second[1] - first[1])
    return share * (os.cpu_count() or 1)


def check_threads(setting) -> None:
    """The config key ``threads``: "auto" (or null) or a count >= 1."""
    if setting not in (None, "auto") and (isinstance(setting, bool) or not isinstance(setting, int) or setting < 1):
        raise ConfigError("threads", setting, "'auto' (the cores free when the run starts) or a count >= 1")


def choose_threads(setting) -> tuple[int, str]:
    """``(threads, why)`` for the config key ``threads``."""
    check_threads(setting)
    cores = usable_cores()
    if isinstance(setting, int):
        return setting, f"threads={setting} (config)"
    if os.environ.get("OMP_NUM_THREADS", "").isdigit() and int(os.environ["OMP_NUM_THREADS"]) > 0:
        return int(os.environ["OMP_NUM_THREADS"]), "OMP_NUM_THREADS"
    free = free_cores()
    if free is None:
        return cores, f"all {cores} cores (no /proc/stat to see what is free)"
    threads = max(1, min(cores, int(free + 0.5)))
    return threads, f"{free:.1f} of {cores} cores free when the run started (threads=auto)"
