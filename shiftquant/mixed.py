"""Per-layer mixed precision by sensitivity, under a weight-memory budget.

1. :func:`sensitivity` measures, for every layer a recipe selects and every candidate width (shift
   bits, or ``None`` for float), how far the model's output distribution moves when only that
   layer is quantized at that width: the KL divergence ``KL(p_float || p_quantized)`` on
   calibration batches, hard (eps = 0), averaged over the images.
2. :func:`assign_bits` picks one width per layer minimizing the summed sensitivity under a budget
   on the weights' memory (bytes, or average bits per weight), exactly: a dynamic programme over
   the layers that keeps, after each layer, only the assignments no other one beats in both
   memory and sensitivity (the Pareto frontier), so no budget is discretized.
3. :meth:`Assignment.recipe` turns the choice into a recipe with per-layer ``overrides``.
"""
from __future__ import annotations

import copy
import hashlib
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from .convert import calibrate, quantize_model, select_layers, set_slope
from .errors import ConfigError
from .recipe import QuantRecipe

FLOAT_BITS = 32


def weight_code_bits(recipe: QuantRecipe, width: int | None) -> int:
    """Bits of one stored weight at ``width`` shift bits (``None``: a float32 weight)."""
    if width is None:
        return FLOAT_BITS
    return QuantRecipe.from_dict({**recipe.to_dict(), "weight_shift_bits": width, "weight_uniform_bits": None,
                                  "overrides": {}}).weight_quantizer_core().code_bits


def _layer_recipe(recipe: QuantRecipe, name: str, width: int) -> QuantRecipe:
    """``recipe`` restricted to the one layer ``name`` at ``width`` shift bits (no residual grid)."""
    return QuantRecipe.from_dict({**recipe.to_dict(), "layers": [name], "keep_float": [], "overrides": {},
                                  "weight_shift_bits": width, "weight_uniform_bits": None, "residual_bits": None})


def _kl(reference_logits: torch.Tensor, logits: torch.Tensor) -> float:
    """Mean over the rows of ``KL(softmax(reference) || softmax(logits))``."""
    return float(F.kl_div(F.log_softmax(logits.double(), 1), F.log_softmax(reference_logits.double(), 1),
                          reduction="batchmean", log_target=True))


@dataclass
class Sensitivity:
    """``kl[i][j]``: layer ``layers[i]`` alone at ``candidates[j]`` shift bits (``None``: float)."""

    layers: list[str]
    params: list[int]
    candidates: list[int | None]
    kl: list[list[float]]
    recipe: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> Sensitivity:
        return cls(**d)

    def __str__(self) -> str:
        heads = ["float" if c is None else f"s={c}" for c in self.candidates]
        lines = [f"{'layer':<32} {'weights':>9} " + " ".join(f"{h:>10}" for h in heads)]
        for name, n, row in zip(self.layers, self.params, self.kl):
            lines.append(f"{name[:32]:<32} {n:>9,} " + " ".join(f"{v:>10.2e}" for v in row))
        return "\n".join(lines)

    def plot(self, path: str | Path) -> Path:
        """A heat map, layers x widths, of log10 KL."""
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        import numpy as np

        values = np.log10(np.maximum(np.asarray(self.kl, dtype=float), 1e-12))
        fig, ax = plt.subplots(figsize=(2 + 0.9 * len(self.candidates), 1 + 0.28 * len(self.layers)))
        im = ax.imshow(values, aspect="auto", cmap="viridis")
        ax.set_xticks(range(len(self.candidates)), ["float" if c is None else f"s={c}" for c in self.candidates])
        ax.set_yticks(range(len(self.layers)), self.layers, fontsize=7)
        ax.set_xlabel("weight width (shift bits)")
        fig.colorbar(im, ax=ax, label="log10 KL")
        ax.set_title("Sensitivity per layer (hard, eps = 0)")
        fig.tight_layout()
        fig.savefig(path, dpi=120)
        plt.close(fig)
        return Path(path)


def _digest(model: nn.Module, recipe: QuantRecipe, candidates, batches: list[torch.Tensor]) -> str:
    h = hashlib.sha256(json.dumps([recipe.to_dict(), list(candidates)], sort_keys=True, default=str).encode())
    for name, t in sorted(model.state_dict().items()):
        h.update(name.encode())
        h.update(t.detach().cpu().contiguous().numpy().tobytes())
    for b in batches:
        h.update(b.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


def sensitivity(model: nn.Module, recipe: QuantRecipe, batches, candidates=(0, 1, 2, 3),
                cache: str | Path | None = None, progress: bool = True) -> Sensitivity:
    """Sensitivity of the float ``model`` (left unchanged) to each layer ``recipe`` selects, at each
    candidate width. ``batches`` yields inputs (or ``(input, target)`` pairs); ``cache`` is a JSON
    file: measurements of the same model, recipe and data are read back instead of recomputed."""
    candidates = list(candidates)
    for c in candidates:
        if c is not None and (isinstance(c, bool) or not isinstance(c, int) or not 0 <= c <= 6):
            raise ConfigError("candidates", c, "shift bits 0..6, or None for float")
    xs = [b[0] if isinstance(b, (tuple, list)) else b for b in batches]
    if not xs:
        raise ConfigError("batches", "[]", "at least one calibration batch")
    layers = [(name, m) for name, m in select_layers(model, recipe)]
    store: dict = {}
    key = _digest(model, recipe, candidates, xs)
    if cache is not None and Path(cache).is_file():
        store = json.loads(Path(cache).read_text()).get(key, {})
    base = copy.deepcopy(model).eval()
    with torch.no_grad():
        reference = [base(x) for x in xs]
    todo = [(name, c) for name, _ in layers for c in candidates if c is not None and f"{name}|{c}" not in store]
    steps = todo
    if progress and todo:
        from rich.progress import track
        steps = track(todo, description="sensitivity")
    for name, c in steps:
        quantized = quantize_model(copy.deepcopy(model).eval(), _layer_recipe(recipe, name, c))
        calibrate(quantized, xs)
        set_slope(quantized, 0.0)
        with torch.no_grad():
            store[f"{name}|{c}"] = sum(_kl(r, quantized(x)) * len(x) for r, x in zip(reference, xs)) / \
                sum(len(x) for x in xs)
        if cache is not None:
            _write_cache(Path(cache), key, store)
    kl = [[0.0 if c is None else store[f"{name}|{c}"] for c in candidates] for name, _ in layers]
    return Sensitivity([n for n, _ in layers], [m.weight.numel() for _, m in layers], candidates, kl,
                       recipe.to_dict())


def _write_cache(path: Path, key: str, store: dict) -> None:
    data = json.loads(path.read_text()) if path.is_file() else {}
    data[key] = store
    tmp = path.with_name(path.name + ".tmp")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp.write_text(json.dumps(data, indent=1))
    tmp.replace(path)


@dataclass
class Assignment:
    """One width per layer, the weight bits it takes and the summed sensitivity."""

    widths: dict[str, int | None]  # shift bits s per layer (None: kept float)
    weight_bits: int
    total_params: int
    sensitivity: float
    code_bits: dict[str, int] = field(default_factory=dict)  # bits each stored weight takes (sign, zero included)

    def table(self) -> str:
        """One row per layer: its width in shift bits and in bits per stored weight (the budget's unit)."""
        nw = max([len("layer"), *map(len, self.widths)])
        lines = [f"{'layer':<{nw}} {'shift bits':>10} {'bits/weight':>11}"]
        for name, w in self.widths.items():
            lines.append(f"{name:<{nw}} {'float' if w is None else w:>10} {self.code_bits.get(name, '-'):>11}")
        lines.append(f"{'average':<{nw}} {'':>10} {self.bits_per_weight:>11.3f}")
        return "\n".join(lines)

    @property
    def bits_per_weight(self) -> float:
        return self.weight_bits / self.total_params

    @property
    def weight_bytes(self) -> float:
        return self.weight_bits / 8

    def recipe(self, recipe: QuantRecipe) -> QuantRecipe:
        """``recipe`` with a per-layer override of ``weight_shift_bits`` for every layer (layers
        assigned float are kept float)."""
        d = recipe.to_dict()
        overrides = dict(d.get("overrides") or {})
        for name, w in self.widths.items():
            if w is not None:
                overrides[name] = {**overrides.get(name, {}), "weight_shift_bits": w, "weight_uniform_bits": None}
        keep = [n for n, w in self.widths.items() if w is None]
        return QuantRecipe.from_dict({**d, "overrides": overrides, "keep_float": list(d["keep_float"]) + keep})


def assign_bits(sens: Sensitivity, budget_bytes: float | None = None, bits_per_weight: float | None = None,
                recipe: QuantRecipe | None = None) -> Assignment:
    """The width per layer minimizing the summed sensitivity with the weights' memory within the
    budget (``budget_bytes``, or ``bits_per_weight`` on average); exact."""
    if (budget_bytes is None) == (bits_per_weight is None):
        raise ConfigError("budget", (budget_bytes, bits_per_weight), "exactly one of budget_bytes, bits_per_weight")
    recipe = recipe or QuantRecipe.from_dict(sens.recipe)
    total = sum(sens.params)
    limit = budget_bytes * 8 if budget_bytes is not None else bits_per_weight * total
    bits = [weight_code_bits(recipe, c) for c in sens.candidates]
    # frontier: (weight bits, summed KL, choice per layer), cost ascending, KL strictly descending.
    frontier: list[tuple[int, float, tuple]] = [(0, 0.0, ())]
    for n, row in zip(sens.params, sens.kl):
        merged = sorted((cost + n * b, kl + v, choice + (j,)) for cost, kl, choice in frontier
                        for j, (b, v) in enumerate(zip(bits, row)) if cost + n * b <= limit)
        frontier = []
        for item in merged:
            if not frontier or item[1] < frontier[-1][1]:
                frontier.append(item)
        if not frontier:
            smallest = sum(p * min(bits) for p in sens.params) / total
            raise ConfigError("budget", f"{limit / total:.3g} bits per weight",
                              f"at least {smallest:.3g} bits per weight (every layer at the narrowest candidate)")
    cost, kl, choice = frontier[-1]  # within the budget, the lowest sensitivity
    widths = {name: sens.candidates[j] for name, j in zip(sens.layers, choice)}
    code_bits = {name: bits[j] for name, j in zip(sens.layers, choice)}
    return Assignment(widths, int(cost), total, float(kl), code_bits)
