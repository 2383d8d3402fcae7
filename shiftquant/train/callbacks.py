"""Callbacks and plugins of a training run: metric history, rank agreement, the final checkpoint,
atomic checkpoint writes, the release of a spawned worker's process group."""
from __future__ import annotations

import hashlib
import json
import multiprocessing
import os
from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.plugins.io import TorchCheckpointIO
from lightning.pytorch.trainer.states import TrainerFn

from ..errors import ShiftQuantError


class MetricHistory(L.Callback):
    """Keeps the validation metrics of every epoch (``val/acc``, ``val/hard_acc``, ``val/eps``)."""

    def __init__(self):
        self.epochs: list[dict] = []

    def on_validation_epoch_end(self, trainer, pl_module):
        if trainer.sanity_checking or trainer.state.fn != TrainerFn.FITTING:
            return
        row = {"epoch": trainer.current_epoch + 1}
        for key in ("val/acc", "val/hard_acc", "val/eps", "val/loss"):
            if key in trainer.callback_metrics:
                row[key.split("/", 1)[1]] = float(trainer.callback_metrics[key])
        self.epochs.append(row)

    def state_dict(self):
        return {"epochs": self.epochs}

    def load_state_dict(self, state_dict):
        self.epochs = list(state_dict.get("epochs", []))


def state_checksum(state: dict[str, torch.Tensor]) -> str:
    """A digest of a state_dict's names and tensor bytes."""
    h = hashlib.sha256()
    for name, tensor in sorted(state.items()):
        h.update(name.encode())
        h.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


class RankAgreement(L.Callback):
    """At the end of training, checks that every process holds the same weights.

    Writes ``rank_agreement.json`` (one checksum per rank) into ``out_dir`` and raises when the
    ranks disagree: a desynchronized data-parallel run is caught, not silently exported.
    """

    def __init__(self, out_dir: str):
        self.out_dir = out_dir

    def on_train_end(self, trainer, pl_module):
        digest = state_checksum(pl_module.model.state_dict())
        as_int = torch.tensor([int(digest[i:i + 8], 16) for i in range(0, 64, 8)], dtype=torch.int64)
        gathered = pl_module.all_gather(as_int).reshape(-1, 8)
        checksums = ["".join(f"{int(v):08x}" for v in row) for row in gathered]
        if trainer.is_global_zero:
            Path(self.out_dir).mkdir(parents=True, exist_ok=True)
            with open(Path(self.out_dir) / "rank_agreement.json", "w") as f:
                json.dump({"world_size": trainer.world_size, "checksums": checksums}, f)
        if len(set(checksums)) != 1:
            raise ShiftQuantError(f"data-parallel ranks ended with different weights: {checksums}")


class ReleaseProcessGroup(L.Callback):
    """In a worker that ``ddp_spawn`` started, destroys the process group when the trainer's work
    (one fit, validate or test: each runs in fresh workers) ends.

    Lightning destroys only NCCL groups at exit. A gloo group left to the interpreter's shutdown
    keeps its worker threads running, and one of them can free the last tensor of a finished
    collective while Python finalizes: the worker aborts (SIGABRT, "terminate called without an
    active exception"; seen in about one run in four of the two-process CPU test)."""

    def teardown(self, trainer, pl_module, stage):
        if multiprocessing.parent_process() is not None and torch.distributed.is_available() \
                and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()


class LastCheckpoint(L.Callback):
    """Saves the model as it is at the end of every training epoch (and when training stops
    between epochs) to ``path``, replacing the previous one.

    Lightning's ``save_last`` refreshes ``last.ckpt`` only when its top-k checkpoint is saved too
    (2.6), so with ``save_top_k=1`` it can hold an earlier epoch. This callback does not depend on
    that: at the end of a run ``path`` holds the final model, the one the run tests and reports,
    and a resumed run continues from the last finished epoch.
    """

    def __init__(self, path: str):
        self.path = str(path)
        self._saved_step = -1

    def _save(self, trainer) -> None:
        if trainer.sanity_checking or trainer.global_step == self._saved_step:
            return
        trainer.save_checkpoint(self.path, weights_only=False)  # all of it: a run resumes from it
        self._saved_step = trainer.global_step

    def on_train_epoch_end(self, trainer, pl_module):
        self._save(trainer)

    def on_train_end(self, trainer, pl_module):
        self._save(trainer)


class AtomicCheckpointIO(TorchCheckpointIO):
    """Writes each checkpoint to a temporary file, flushes it, then renames it into place:
    a crash (even SIGKILL) leaves either the previous checkpoint or the new one, never half of one."""

    def save_checkpoint(self, checkpoint, path, storage_options=None):
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
        try:
            with open(tmp, "wb") as f:
                torch.save(checkpoint, f)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        finally:
            if tmp.exists():
                tmp.unlink()


class BestCheckpoint(ModelCheckpoint):
    """Lightning's ``ModelCheckpoint`` whose file names count epochs from 1, as the history, the
    final table and ``results.json`` do (``best-epoch012.ckpt`` is the 12th epoch)."""

    def format_checkpoint_name(self, metrics, filename=None, ver=None, prefix=None):
        if "epoch" in metrics:
            metrics = {**metrics, "epoch": metrics["epoch"] + 1}
        return super().format_checkpoint_name(metrics, filename, ver, prefix)
