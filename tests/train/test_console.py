"""What a newcomer sees: the README's first job prints each line once, leaves a train.log with the
final table, names its best checkpoint as the table counts epochs, and keeps its float-stage model."""
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def quickstart(tmp_path_factory):
    out = tmp_path_factory.mktemp("qs") / "run"
    env = dict(os.environ, HF_HUB_OFFLINE="1", WANDB_MODE="offline")
    proc = subprocess.run([sys.executable, "train.py", "experiment=quickstart", f"hydra.run.dir={out}",
                           "float_stage.epochs=3", "trainer.max_epochs=3"], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out, proc


def test_each_line_once_and_the_final_table_in_train_log(quickstart):
    out, proc = quickstart
    # Lightning's own console handler is gone: its lines come once, through Hydra's (stdout + train.log).
    assert not [line for line in proc.stderr.splitlines() if line.startswith("INFO:")], proc.stderr[-2000:]
    assert "weights_only" not in proc.stdout + proc.stderr and "Tip" not in proc.stdout
    logged = [line for line in proc.stdout.splitlines() if line.startswith("[20")]
    assert logged and len(logged) == len(set(logged))
    table = proc.stdout[re.search(r"^model +test acc", proc.stdout, re.M).start():].strip()
    assert "hard (eps = 0, deployed)" in table
    assert table in (out / "train.log").read_text()


def test_best_checkpoint_is_named_as_the_table_counts_and_the_float_model_is_kept(quickstart, tmp_path):
    from shiftquant import cli

    out, proc = quickstart
    results = json.loads((out / "results.json").read_text())
    best = results["best_checkpoint"]
    assert re.search(r"best-epoch(\d+)\.ckpt$", best["path"]).group(1) == f"{best['epoch']:03d}"
    assert Path(results["float_checkpoint"]) == (out / "float_stage" / "checkpoints" / "float.ckpt").resolve()
    assert cli.main(["sensitivity", results["float_checkpoint"], "--data", "digits", "--candidates", "0", "2",
                     "--batches", "1", "--out", str(tmp_path / "sens")]) == 0


def test_a_refused_config_leaves_no_run_folder(tmp_path):
    env = dict(os.environ, HF_HUB_OFFLINE="1", WANDB_MODE="offline")
    run = tmp_path / "refused"
    proc = subprocess.run([sys.executable, "train.py", "experiment=quickstart", f"hydra.run.dir={run}",
                           "data=fashion_mnist", "data.root=/nope"], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 2 and "data.root" in proc.stderr
    assert not run.exists()
