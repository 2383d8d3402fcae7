"""Runs killed with SIGKILL, also in the middle of a checkpoint write, resume and complete;
no checkpoint on disk is ever partial. A non-finite loss stops a run and keeps the last good one."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import torch

from shiftquant.checkpoint import read_checkpoint

ROOT = Path(__file__).resolve().parents[2]
SHORT = ["experiment=quickstart", "float_stage.epochs=2", "trainer.max_epochs=4", "data.train_subset=320",
         "calibrate_batches=1", "trainer.enable_progress_bar=false", "logger=csv"]
ENV = dict(os.environ, HF_HUB_OFFLINE="1", WANDB_MODE="offline", PYTHONPATH=str(ROOT))


def train_cli(overrides, out_dir, **kwargs):
    return subprocess.Popen([sys.executable, "train.py", *SHORT, f"hydra.run.dir={out_dir}", *overrides],
                            cwd=ROOT, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, **kwargs)


def assert_every_checkpoint_whole(ckpt_dir: Path):
    for path in ckpt_dir.glob("*.ckpt"):
        ckpt = read_checkpoint(path)  # raises on a partial file
        assert "state_dict" in ckpt and "optimizer_states" in ckpt


def resume_and_finish(out_dir: Path):
    last = out_dir / "checkpoints" / "last.ckpt"
    assert last.is_file()
    epoch_before = torch.load(last, map_location="cpu", weights_only=True)["epoch"]
    proc = train_cli([f"ckpt_path={last}"], out_dir / "resumed")
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err[-3000:]
    results = json.loads((out_dir / "resumed" / "results.json").read_text())
    assert "hard_test_acc" in results
    # The history saved in the checkpoint continues: each epoch once, none repeated or lost.
    assert [row["epoch"] for row in results["history"]] == [1, 2, 3, 4]
    assert epoch_before in (0, 1, 2)
    return results


def test_sigkill_during_checkpoint_write_leaves_only_whole_checkpoints(tmp_path):
    out = tmp_path / "run"
    # Epoch 1 writes two files (best, last); die halfway through the third write (epoch 2).
    proc = subprocess.run([sys.executable, "tests/crash_during_save.py", "3", str(out), *SHORT[:-2]],
                          cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=300)
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-3000:]
    assert_every_checkpoint_whole(out / "checkpoints")
    assert read_checkpoint(out / "checkpoints" / "last.ckpt")["epoch"] == 0  # epoch 1's, untouched
    resume_and_finish(out)


def test_sigkill_from_outside_then_resume(tmp_path):
    out = tmp_path / "run"
    proc = train_cli([], out)
    last = out / "checkpoints" / "last.ckpt"
    deadline = time.time() + 240
    while not last.exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.05)
    time.sleep(0.05)  # somewhere inside epoch 2 (an epoch of 320 images takes a few tenths of a second)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL
    assert_every_checkpoint_whole(out / "checkpoints")
    resume_and_finish(out)


def test_non_finite_loss_stops_with_message_and_keeps_last_good_checkpoint(tmp_path):
    out = tmp_path / "run"
    proc = train_cli(["schedule.lr.values=[0.01,1.0e30]", "schedule.lr.compress=true"], out)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 2
    assert "training loss is" in err and "last good" in err
    assert "Traceback" not in err
    assert_every_checkpoint_whole(out / "checkpoints")
    ckpt = read_checkpoint(out / "checkpoints" / "last.ckpt")
    assert all(torch.isfinite(v).all() for v in ckpt["state_dict"].values() if v.is_floating_point())


def test_a_best_checkpoint_that_is_gone_is_marked_missing_not_loaded(tmp_path):
    """A run killed between naming a new best checkpoint and writing it, then resumed, inherits the
    name of a file that does not exist: the run still finishes, and results.json says so."""
    from types import SimpleNamespace

    from lightning.pytorch.callbacks import ModelCheckpoint

    from shiftquant.train.run import _best_checkpoint

    cb = ModelCheckpoint(dirpath=tmp_path, monitor="val/acc", mode="max")
    cb.best_model_path = str(tmp_path / "best-epoch002.ckpt")
    best = _best_checkpoint(SimpleNamespace(callbacks=[cb]), None, None, tmp_path / "last.ckpt", True)
    assert best == {"path": str((tmp_path / "best-epoch002.ckpt").resolve()), "monitor": "val/acc", "missing": True}
    from shiftquant.train.run import report
    assert "best-epoch002.ckpt: gone" in report({"best_checkpoint": best})
