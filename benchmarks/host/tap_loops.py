"""Nanoseconds per channel-tap (64 positions) of four forms of the shift layers' inner loop on this
host (AVX-512), and each one's speed against the form the generated C uses, measured in the same
run on one core. What the forms are: ``tap_loops.c``. Why it matters: ``BENCHMARKS.md``, against
int8 on the host.

    python benchmarks/host/tap_loops.py
"""
from __future__ import annotations

import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent


def main() -> None:
    flags = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    if "avx512bw" not in flags:
        sys.exit("this benchmark needs an x86 CPU with AVX-512 (avx512bw)")
    with tempfile.TemporaryDirectory() as tmp:
        exe = Path(tmp) / "tap_loops"
        subprocess.run(["gcc", "-O3", "-march=native", str(HERE / "tap_loops.c"), "-o", str(exe)], check=True)
        out = subprocess.run([str(exe)], check=False, capture_output=True, text=True).stdout
    times = {name: float(v) for name, v in (line.split() for line in out.splitlines())}
    base = times["current"]
    print(f"{'form':<10} {'ns / channel-tap':>17} {'speed vs current':>17}")
    for name, ns in times.items():
        print(f"{name:<10} {ns:>17.3f} {base / ns:>16.2f}x")


if __name__ == "__main__":
    main()
