"""Per-layer report: bits, parameters, memory, MACs, and how each MAC runs: as a shift-add (shift
weights), an integer multiply (uniform integer weights), or in float (layers kept float, and the
matrix products between activations, e.g. attention's ``q @ k^T`` and ``attn @ v``)."""
from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.overrides import TorchFunctionMode

from .nn.attention import QuantAttention
from .nn.layers import QuantMixin
from .quant.scales import ActivationQuantizer, WeightQuantizer

FLOAT_BITS = 32


@dataclass
class LayerRow:
    name: str
    kind: str
    weight_bits: int          # bits of one stored weight code (32 for float)
    act_bits: int | None      # bits of the layer's input codes; None: float input
    params: int
    bytes: float              # weights at their code width + per-channel scales + bias
    float_bytes: int
    macs: int | None          # per example; None when no example input was given
    shift_add: bool           # True when every MAC is a shift (or sign flip) and an add
    mac_kind: str = "float"   # how its MACs run: "shift-add", "integer" or "float"


@dataclass
class Summary:
    rows: list[LayerRow]

    @property
    def total_bytes(self) -> float:
        return sum(r.bytes for r in self.rows)

    @property
    def float_bytes(self) -> int:
        return sum(r.float_bytes for r in self.rows)

    @property
    def compression(self) -> float:
        return self.float_bytes / self.total_bytes if self.total_bytes else 1.0

    def to_dict(self) -> dict:
        macs = [r.macs for r in self.rows if r.macs is not None]
        return {
            "layers": [asdict(r) for r in self.rows],
            "total_params": sum(r.params for r in self.rows),
            "total_bytes": self.total_bytes,
            "float_bytes": self.float_bytes,
            "compression": self.compression,
            "total_macs": sum(macs) if macs else None,
            "shift_add_macs": self._macs("shift-add") if macs else None,
            "integer_macs": self._macs("integer") if macs else None,
            "float_macs": self._macs("float") if macs else None,
        }

    def _macs(self, kind: str) -> int:
        return sum(r.macs for r in self.rows if r.macs and r.mac_kind == kind)

    def __str__(self) -> str:
        # Columns as wide as their longest entry: names and types are never cut.
        nw = max([len("layer"), *(len(r.name) for r in self.rows)])
        tw = max([len("type"), *(len(r.kind) for r in self.rows)])
        head = (f"{'layer':<{nw}} {'type':<{tw}} {'W bits':>6} {'A bits':>6} {'params':>10} {'bytes':>12} "
                f"{'MACs':>12}  shift-add")
        lines = [head, "-" * len(head)]
        for r in self.rows:
            lines.append(
                f"{r.name:<{nw}} {r.kind:<{tw}} {r.weight_bits:>6} "
                f"{'fp' if r.act_bits is None else r.act_bits:>6} {r.params:>10,} {r.bytes:>12,.0f} "
                f"{'-' if r.macs is None else format(r.macs, ','):>12}  {'yes' if r.shift_add else 'no'}")
        d = self.to_dict()
        lines.append("-" * len(head))
        lines.append(f"total params {d['total_params']:,}; {self.total_bytes:,.0f} bytes quantized vs "
                     f"{self.float_bytes:,} float32 bytes: compression {self.compression:.2f}x")
        if d["total_macs"]:
            lines.append(mac_line(d["total_macs"], d["shift_add_macs"], d["integer_macs"], d["float_macs"]))
        return "\n".join(lines)


def mac_line(total: int, shift_add: int, integer: int, float_: int) -> str:
    share = lambda n: f"{n:,} ({100 * n / total:.1f}%)"
    return f"MACs {total:,}: shift-adds {share(shift_add)}, integer {share(integer)}, float {share(float_)}"


class _MatmulMACs(TorchFunctionMode):
    """Counts the MACs of products between tensors that no layer owns (attention's matmuls,
    ``F.scaled_dot_product_attention``): in float, or on integers inside a
    :class:`~.nn.attention.QuantAttention` (``inside`` counts the ones running)."""

    MATMULS = {torch.matmul, torch.bmm, torch.Tensor.matmul, torch.Tensor.__matmul__, torch.Tensor.bmm}

    def __init__(self):
        super().__init__()
        self.macs = 0
        self.integer_macs = 0
        self.inside = 0

    def count(self, macs: int) -> None:
        if self.inside:
            self.integer_macs += macs
        else:
            self.macs += macs

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        if func in self.MATMULS and isinstance(out, torch.Tensor):
            self.count(out.numel() * args[0].shape[-1])
        elif func is F.scaled_dot_product_attention:
            q, k, v = args[:3]
            self.count(q.numel() // q.shape[-1] * k.shape[-2] * (q.shape[-1] + v.shape[-1]))
        return out


def _code_bits(quantizer) -> int | None:
    if quantizer is None:
        return None
    core = quantizer.quantizer
    return None if core is None else core.code_bits  # None: a standardized float input


def summary(model: nn.Module, example_input: torch.Tensor | None = None) -> Summary:
    """Report every parameterized layer (Conv/Linear/BatchNorm/...) of ``model``.

    With ``example_input`` the layers' MACs for one example are measured with forward hooks.
    """
    macs: dict[str, int] = {}
    if example_input is not None:
        hooks = []
        counter = _MatmulMACs()
        for m in model.modules():
            if isinstance(m, QuantAttention):
                hooks.append(m.register_forward_pre_hook(lambda mod, inp: setattr(counter, "inside", counter.inside + 1)))
                hooks.append(m.register_forward_hook(lambda mod, inp, out: setattr(counter, "inside", counter.inside - 1)))
        for name, m in model.named_modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                hooks.append(m.register_forward_hook(
                    lambda mod, inp, out, name=name: macs.__setitem__(
                        name, out[0].numel() * mod.weight[0].numel())))
        was_training = model.training
        model.eval()
        with torch.no_grad(), counter:
            model(example_input[:1])
        model.train(was_training)
        for h in hooks:
            h.remove()
    rows = []
    for name, m in model.named_modules():
        own = list(m.parameters(recurse=False))
        # Quantizer internals (learned scales) are counted in their layer's row.
        if not own or isinstance(m, (WeightQuantizer, ActivationQuantizer)):
            continue
        params = sum(p.numel() for p in own)
        wq = getattr(m, "weight_quantizer", None) if isinstance(m, QuantMixin) else None
        aq = getattr(m, "input_quantizer", None) if isinstance(m, QuantMixin) else None
        wbits = _code_bits(wq) or FLOAT_BITS
        weight = getattr(m, "weight", None)
        if isinstance(wq, WeightQuantizer) and weight is not None:
            n_w = weight.numel()
            stored = n_w * wbits / 8 + weight.shape[0] * 4 + (params - n_w) * 4
        else:
            stored = params * 4
        rows.append(LayerRow(
            name=name, kind=(m.float_class if isinstance(m, QuantMixin) else type(m)).__name__,
            weight_bits=wbits, act_bits=_code_bits(aq), params=params, bytes=float(stored),
            float_bytes=params * 4, macs=macs.get(name),
            shift_add=isinstance(m, QuantMixin) and wq is not None
            and getattr(wq.quantizer, "shift_bits", None) is not None))
        rows[-1].mac_kind = "shift-add" if rows[-1].shift_add else "integer" if wq is not None and aq is not None \
            else "float"
    if example_input is not None and counter.macs:
        rows.append(LayerRow(name="(matmuls between activations)", kind="matmul", weight_bits=FLOAT_BITS,
                             act_bits=None, params=0, bytes=0.0, float_bytes=0, macs=counter.macs, shift_add=False))
    if example_input is not None and counter.integer_macs:
        rows.append(LayerRow(name="(matmuls between activations, on integers)", kind="matmul", weight_bits=FLOAT_BITS,
                             act_bits=None, params=0, bytes=0.0, float_bytes=0, macs=counter.integer_macs,
                             shift_add=False, mac_kind="integer"))
    return Summary(rows)
