"""Slope (eps) and learning-rate schedules as pure functions of training progress.

Progress ``t`` is in epochs, fractional within an epoch (``t = epoch + batch / batches``), over a
run of ``total`` epochs. Kinds:

* ``table``: one value per epoch (the seed's table, METHOD.md §2). With ``compress=true`` a table of
  ``L`` entries is stretched or compressed onto a run of ``T`` epochs keeping its endpoints: epoch
  ``e`` takes entry ``round(e * (L - 1) / (T - 1))`` (the first epoch the first entry, the last
  epoch the last entry; one epoch takes the last entry). The seed's 15-entry tables on 3 epochs are
  eps ``(1, 1/8, 1/128)`` and lr ``(1e-3, 1e-3, 1e-3)``; on 5 epochs eps ``(1, 1/4, 1/8, 1/16,
  1/128)`` with lr ``1e-2`` in the second. With ``per_step=true`` the table is read per step
  instead: the run's steps are split into ``L`` equal stretches, one per entry, so a 15-entry
  table on 3 epochs keeps every entry (the seed's lr ``1e-2`` over entries 2-7, 40 % of the run).
  Otherwise its length must be the number of epochs.
* ``exponential``: ``start * (end / start) ** (t / total)``, per step (``end > 0``).
* ``cosine``: from ``start`` to ``end`` along half a cosine, per step.
* ``constant``: ``value``.

Any kind takes ``zero_tail`` (a fraction in [0, 1), default 0): the kind's curve is squeezed into
the first ``1 - zero_tail`` of the run and the rest is 0. For the slope that means a last stretch of
hard-quantized (eps = 0, straight-through) training, so the weights settle for the deployed model.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

from ..errors import ConfigError

KINDS = ("table", "exponential", "cosine", "constant")

# The seed's per-epoch tables (15 epochs).
SEED_EPS = [1.0, 0.5, 0.5, 0.5, 0.25, 0.25, 0.25, 0.125, 0.125, 0.125, 1 / 16, 1 / 16, 1 / 32, 1 / 64, 1 / 128]
SEED_LR = [1e-3, 1e-2, 1e-2, 1e-2, 1e-2, 1e-2, 1e-2, 1e-3, 1e-3, 1e-3, 1e-3, 1e-3, 1e-3, 1e-3, 1e-3]


@dataclass
class Schedule:
    kind: str = "constant"
    values: list[float] = field(default_factory=list)
    compress: bool = True
    start: float = 1.0
    end: float = 0.0
    value: float = 1.0
    zero_tail: float = 0.0
    per_step: bool = False

    def __call__(self, t: float, total: int) -> float:
        if self.zero_tail:
            if t >= total * (1.0 - self.zero_tail):
                return 0.0
            t = t / (1.0 - self.zero_tail)
        if self.kind == "table" and self.compress and self.per_step:
            position = min(max(t / total, 0.0), 1.0)
            # (a step at an entry's boundary takes that entry despite float rounding of t)
            return float(self.values[min(int(position * len(self.values) + 1e-9), len(self.values) - 1)])
        if self.kind == "table":
            epoch = min(int(t), total - 1)
            if self.compress:
                return float(self.values[table_index(epoch, total, len(self.values))])
            return float(self.values[min(epoch, len(self.values) - 1)])
        frac = min(max(t / total, 0.0), 1.0)
        if self.kind == "exponential":
            return self.start * (self.end / self.start) ** frac
        if self.kind == "cosine":
            return self.end + (self.start - self.end) * (1 + math.cos(math.pi * frac)) / 2
        return float(self.value)

    def sample(self, total: int, steps_per_epoch: int = 1) -> list[float]:
        """The value at every step of a run (for checks and plots)."""
        return [self(e + s / steps_per_epoch, total) for e in range(total) for s in range(steps_per_epoch)]


def table_index(epoch: int, total: int, length: int) -> int:
    """The entry of a ``length``-entry table that epoch ``epoch`` of ``total`` takes when the table
    is compressed or stretched: evenly spaced positions that keep both endpoints."""
    if total <= 1:
        return length - 1
    return min(max(int(math.floor(epoch * (length - 1) / (total - 1) + 0.5)), 0), length - 1)


def _number(name: str, value) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or math.isnan(value):
        raise ConfigError(name, value, "a number")
    return float(value)


def build_schedule(cfg: dict, name: str, total: int, *, unit_interval: bool, non_increasing: bool) -> Schedule:
    """A validated schedule. ``name`` (``schedule.eps``, ...) prefixes the fields in errors."""
    cfg = dict(cfg)
    kind = cfg.get("kind")
    if kind not in KINDS:
        raise ConfigError(f"{name}.kind", kind, "one of " + ", ".join(KINDS))
    known = {"kind", "values", "compress", "per_step", "start", "end", "value", "zero_tail"}
    for key in cfg:
        if key not in known:
            raise ConfigError(f"{name}.{key}", cfg[key], "one of the fields " + ", ".join(sorted(known)))
    sched = Schedule(kind=kind, values=list(cfg.get("values") or []), compress=bool(cfg.get("compress", True)),
                     start=_number(f"{name}.start", cfg.get("start", 1.0)),
                     end=_number(f"{name}.end", cfg.get("end", 0.0)),
                     value=_number(f"{name}.value", cfg.get("value", 1.0)),
                     zero_tail=_number(f"{name}.zero_tail", cfg.get("zero_tail", 0.0)),
                     per_step=cfg.get("per_step", False))
    if not isinstance(sched.per_step, bool):
        raise ConfigError(f"{name}.per_step", sched.per_step, "true or false")
    if sched.per_step and not (kind == "table" and sched.compress):
        raise ConfigError(f"{name}.per_step", True, f"false unless {name}.kind=table with compress=true")
    if not 0.0 <= sched.zero_tail < 1.0:
        raise ConfigError(f"{name}.zero_tail", sched.zero_tail, "a fraction in [0, 1)")
    if kind == "table":
        if not sched.values:
            raise ConfigError(f"{name}.values", sched.values, "a non-empty list of numbers")
        sched.values = [_number(f"{name}.values", v) for v in sched.values]
        if not sched.compress and len(sched.values) != total:
            raise ConfigError(f"{name}.values", f"{len(sched.values)} entries",
                              f"{total} entries (trainer.max_epochs), or {name}.compress=true")
    if kind == "exponential" and not (sched.start > 0 and sched.end > 0):
        raise ConfigError(f"{name}.end", sched.end, "a number > 0 for an exponential schedule (and start > 0)")
    values = sched.sample(total, 8)
    for v in values:
        if unit_interval and not 0.0 <= v <= 1.0:
            raise ConfigError(name, v, "values in [0, 1]")
        if not unit_interval and not v > 0:
            raise ConfigError(name, v, "values > 0")
    if non_increasing and any(b > a + 1e-12 for a, b in zip(values, values[1:])):
        raise ConfigError(name, sched.values or (sched.start, sched.end), "a non-increasing schedule")
    return sched
