"""The README's main job alone and next to a second CPU job: wall times and their ratios.

    python benchmarks/load_timing.py            # 3 runs alone, then 2 with threads=auto and 1 with
                                                # threads=<all cores> next to a job using every core

Run it with nothing else on the machine. The competitor is a PyTorch matmul loop on every core, a
stand-in for another training job. Ratios are against the median alone, measured in the same run.
"""
from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
COMPETITOR = ("import torch, os; torch.set_num_threads(os.cpu_count()); a = torch.randn(384, 384)\n"
              "while True: a = (a @ a).clamp(-1, 1)")


def job(out: Path, *overrides: str) -> float:
    env = dict(os.environ, HF_HUB_OFFLINE="1", WANDB_MODE="offline")
    started = time.perf_counter()
    subprocess.run([sys.executable, "train.py", "experiment=quickstart", f"hydra.run.dir={out}", *overrides],
                   cwd=ROOT, env=env, check=True, capture_output=True)
    return time.perf_counter() - started


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--alone", type=int, default=3)
    p.add_argument("--loaded", type=int, default=2)
    args = p.parse_args()
    cores = os.cpu_count() or 1
    with tempfile.TemporaryDirectory() as tmp:
        alone = [job(Path(tmp) / f"alone{i}") for i in range(args.alone)]
        base = statistics.median(alone)
        print(f"alone: median {base:.1f} s, {min(alone):.1f} to {max(alone):.1f} s over {len(alone)} runs")
        competitor = subprocess.Popen([sys.executable, "-c", COMPETITOR])
        try:
            time.sleep(2)
            auto = [job(Path(tmp) / f"auto{i}") for i in range(args.loaded)]
            forced = job(Path(tmp) / "forced", f"threads={cores}")
        finally:
            competitor.kill()
            competitor.wait()
    print(f"next to a {cores}-thread job, threads=auto: " + ", ".join(f"{t:.1f} s ({t / base:.2f}x)" for t in auto))
    print(f"next to a {cores}-thread job, threads={cores}: {forced:.1f} s ({forced / base:.2f}x)")


if __name__ == "__main__":
    main()
