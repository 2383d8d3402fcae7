"""The LightningModule: image classification with a slope schedule, optional distillation.

The module never converts its model: it receives a float or an already quantized model. During
training it sets the slope of every quantizer through :func:`shiftquant.set_slope` before each batch.
Validation logs the accuracy at the current slope (``val/acc``) and of the deployed model
(``val/hard_acc``: eps = 0 for a quantized model, the model itself for a float one).
"""
from __future__ import annotations

import copy

import lightning as L
import torch
import torch.nn.functional as F
from torch import nn

from ..convert import bound_scales, get_slope, quantizers, set_slope
from ..errors import ShiftQuantError
from .optimizers import make_optimizer
from .schedules import Schedule

OPTIMIZERS = ("sgd", "adamw")


class NonFiniteLossError(ShiftQuantError):
    """The training loss became NaN or infinite."""


class ClassifierModule(L.LightningModule):
    def __init__(self, model: nn.Module, lr: Schedule, eps: Schedule | None = None,
                 optim: dict | None = None, teacher: nn.Module | None = None,
                 distill_temperature: float = 4.0, distill_alpha: float = 0.5, meta: dict | None = None):
        super().__init__()
        self.model = model
        self.lr_schedule, self.eps_schedule = lr, eps
        self.optim = dict(optim or {"name": "sgd", "momentum": 0.9})
        self.teacher = teacher
        if teacher is not None:
            teacher.eval().requires_grad_(False)
        self.distill_temperature, self.distill_alpha = distill_temperature, distill_alpha
        # Plain data only: checkpoints are read back with weights_only=True.
        self.save_hyperparameters({"shiftquant": meta or {}})
        self.quantized = any(True for _ in quantizers(model))

    # ----------------------------------------------------------------- helpers
    def forward(self, x):
        return self.model(x)

    def train(self, mode: bool = True):
        super().train(mode)
        if self.teacher is not None:
            self.teacher.eval()  # the teacher's BatchNorm statistics stay fixed
        return self

    def _progress(self, batch_idx: int) -> float:
        batches = max(int(self.trainer.num_training_batches), 1)
        return self.current_epoch + batch_idx / batches

    def _total_epochs(self) -> int:
        return max(int(self.trainer.max_epochs or 1), 1)

    def eps_at(self, t: float) -> float:
        return self.eps_schedule(t, self._total_epochs())

    # ----------------------------------------------------------------- training
    def on_train_batch_start(self, batch, batch_idx):
        if self.quantized and self.eps_schedule is not None:
            set_slope(self.model, self.eps_at(self._progress(batch_idx)))

    def on_train_batch_end(self, outputs, batch, batch_idx):
        if self.quantized:  # learned log2 scales stay in their documented range
            bound_scales(self.model)

    def training_step(self, batch, batch_idx):
        x, y = batch
        logits = self.model(x)
        loss = F.cross_entropy(logits, y)
        if self.teacher is not None and self.distill_alpha > 0:
            with torch.no_grad():
                teacher_logits = self.teacher(x)
            t = self.distill_temperature
            kd = F.kl_div(F.log_softmax(logits / t, 1), F.log_softmax(teacher_logits / t, 1),
                          reduction="batchmean", log_target=True) * t * t
            loss = (1 - self.distill_alpha) * loss + self.distill_alpha * kd
            self.log("train/kd", kd.detach())
        if not torch.isfinite(loss):
            raise NonFiniteLossError(
                f"training loss is {loss.item()} at epoch {self.current_epoch}, batch {batch_idx}; "
                "the last checkpoint on disk is the last good one (lower the learning rate?)")
        self.log("train/loss", loss.detach(), prog_bar=True)
        self.log("train/acc", (logits.argmax(1) == y).float().mean())
        if self.quantized:
            self.log("train/eps", float(get_slope(self.model)))
        return loss

    # ----------------------------------------------------------------- evaluation
    def _accuracy(self, x, y):
        logits = self.model(x)
        return F.cross_entropy(logits, y), (logits.argmax(1) == y).float().mean()

    def _hard_accuracy(self, x, y, relaxed_acc):
        if not self.quantized:
            return relaxed_acc
        eps = get_slope(self.model)
        if eps == 0.0:
            return relaxed_acc
        set_slope(self.model, 0.0)
        try:
            return self._accuracy(x, y)[1]
        finally:
            set_slope(self.model, eps)

    def validation_step(self, batch, batch_idx):
        x, y = batch
        loss, acc = self._accuracy(x, y)
        self.log("val/loss", loss, sync_dist=True)
        self.log("val/acc", acc, prog_bar=True, sync_dist=True)
        self.log("val/hard_acc", self._hard_accuracy(x, y, acc), prog_bar=True, sync_dist=True)
        if self.quantized:
            self.log("val/eps", float(get_slope(self.model)), sync_dist=True)

    def test_step(self, batch, batch_idx):
        x, y = batch
        loss, acc = self._accuracy(x, y)
        self.log("test/loss", loss, sync_dist=True)
        self.log("test/acc", acc, sync_dist=True)

    # ----------------------------------------------------------------- optimizer
    def configure_optimizers(self):
        total = self._total_epochs()
        base = self.lr_schedule(0.0, total)
        name = self.optim.get("name", "sgd")
        decay = self.optim.get("weight_decay", 0.0 if name == "sgd" else 0.01)
        groups = parameter_groups(self.model, base, decay, self.optim.get("scale_lr_mult", 1.0))
        opt = make_optimizer(groups, base, self.optim)
        steps = max(int(self.trainer.estimated_stepping_batches) // total, 1)
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda step: self.lr_schedule(step / steps, total) / base)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}


def parameter_groups(model: nn.Module, lr: float, weight_decay: float, scale_lr_mult: float) -> list[dict]:
    """The trainable parameters in two optimizer groups: the learned log2 scales of the quantizers
    (``*.log2_scale``) at ``lr * scale_lr_mult`` without weight decay (decay would pull every scale
    towards 2^0), and everything else at ``lr`` with ``weight_decay``.

    A log2 scale's LSQ/TQT gradient is ``s ln 2`` times the gradient of the scale itself, so at the
    weights' learning rate a power-of-two exponent hardly moves under SGD (BENCHMARKS.md measures
    it); ``scale_lr_mult`` and ``optim.scale_optimizer=adam`` (:mod:`.optimizers`) let it learn. A
    learning-rate schedule scales both groups alike.
    """
    scales, rest = [], []
    for name, p in model.named_parameters():
        if p.requires_grad:
            (scales if name.endswith("log2_scale") else rest).append(p)
    groups = [{"params": rest, "lr": lr, "weight_decay": weight_decay}]
    if scales:
        groups.append({"params": scales, "lr": lr * scale_lr_mult, "weight_decay": 0.0})
    return groups


def frozen_copy(model: nn.Module) -> nn.Module:
    """A frozen copy of a float model, to serve as the distillation teacher."""
    return copy.deepcopy(model).eval().requires_grad_(False)
