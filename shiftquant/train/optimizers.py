"""The optimizer of a run: SGD or AdamW for the weights, optionally Adam for the learned scales alone.

A learned log2 scale ``l`` changes the deployed model only when ``round(l)`` does, so it has to
travel about 0.5 to matter. Its LSQ/TQT gradient is tiny (``1/sqrt(N Qmax)`` with ``N`` counting a
whole batch of inputs), so plain SGD at the weights' learning rate never gets it there (BENCHMARKS.md
measures 0 of 18 input exponents moved, even at 1000x). Adam's step is about its learning rate
whatever the gradient's magnitude (TQT trains its log2 thresholds with Adam), so
``optim.scale_optimizer=adam`` gives the scales their own Adam step while the weights keep SGD.

:class:`SplitOptimizer` is one ``torch.optim.Optimizer`` over two inner optimizers: Lightning, the
learning-rate scheduler (which scales every group alike) and checkpoints see one optimizer.
"""
from __future__ import annotations

import torch

from ..errors import CheckpointError

SCALE_OPTIMIZERS = (None, "adam")


class SplitOptimizer(torch.optim.Optimizer):
    """One optimizer over disjoint parameter groups stepped by different inner optimizers.

    ``param_groups`` is the inner optimizers' groups, the same dictionaries, so a scheduler that
    sets ``group["lr"]`` sets it for the inner optimizer that reads it.
    """

    def __init__(self, parts: dict[str, torch.optim.Optimizer]):
        self.parts = dict(parts)
        groups = [g for opt in self.parts.values() for g in opt.param_groups]
        super().__init__(groups, {})
        self.param_groups = groups  # the inner optimizers' own dictionaries, not copies

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for opt in self.parts.values():
            opt.step()
        return loss

    def zero_grad(self, set_to_none: bool = True) -> None:
        for opt in self.parts.values():
            opt.zero_grad(set_to_none=set_to_none)

    def state_dict(self) -> dict:
        return {name: opt.state_dict() for name, opt in self.parts.items()}

    def load_state_dict(self, state_dict: dict) -> None:
        if set(state_dict) != set(self.parts):
            raise CheckpointError(f"the checkpoint's optimizer state is for {sorted(state_dict)}, this run's optimizer "
                                  f"has {sorted(self.parts)} (optim.scale_optimizer differs from the run that saved it)")
        for name, opt in self.parts.items():
            opt.load_state_dict(state_dict[name])
        self.param_groups = [g for opt in self.parts.values() for g in opt.param_groups]


def weight_optimizer(name: str, groups: list[dict], lr: float, optim: dict) -> torch.optim.Optimizer:
    if name == "sgd":
        return torch.optim.SGD(groups, lr=lr, momentum=optim.get("momentum", 0.9), nesterov=optim.get("nesterov", False))
    return torch.optim.AdamW(groups, lr=lr)


def make_optimizer(groups: list[dict], lr: float, optim: dict) -> torch.optim.Optimizer:
    """The run's optimizer over :func:`module.parameter_groups`' groups (weights first, then the
    scales when there are any)."""
    name = optim.get("name", "sgd")
    if optim.get("scale_optimizer") != "adam" or len(groups) < 2:
        return weight_optimizer(name, groups, lr, optim)
    weights, scales = groups
    return SplitOptimizer({"weights": weight_optimizer(name, [weights], lr, optim),
                           "scales": torch.optim.Adam([scales], lr=scales["lr"])})
