"""Per-layer report: bits, parameters, memory, MACs (and which of them become shift-adds)."""
from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch import nn

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
            "shift_add_macs": sum(r.macs for r in self.rows if r.macs and r.shift_add) if macs else None,
        }

    def __str__(self) -> str:
        head = f"{'layer':<32} {'type':<12} {'W bits':>6} {'A bits':>6} {'params':>10} {'bytes':>12} {'MACs':>12}  shift-add"
        lines = [head, "-" * len(head)]
        for r in self.rows:
            lines.append(
                f"{r.name[:32]:<32} {r.kind[:12]:<12} {r.weight_bits:>6} "
                f"{'fp' if r.act_bits is None else r.act_bits:>6} {r.params:>10,} {r.bytes:>12,.0f} "
                f"{'-' if r.macs is None else format(r.macs, ','):>12}  {'yes' if r.shift_add else 'no'}")
        d = self.to_dict()
        lines.append("-" * len(head))
        lines.append(f"total params {d['total_params']:,}; {self.total_bytes:,.0f} bytes quantized vs "
                     f"{self.float_bytes:,} float32 bytes: compression {self.compression:.2f}x")
        if d["total_macs"]:
            lines.append(f"MACs {d['total_macs']:,}, of which shift-adds {d['shift_add_macs']:,} "
                         f"({100 * d['shift_add_macs'] / d['total_macs']:.1f}%)")
        return "\n".join(lines)


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
        for name, m in model.named_modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                hooks.append(m.register_forward_hook(
                    lambda mod, inp, out, name=name: macs.__setitem__(
                        name, out[0].numel() * mod.weight[0].numel())))
        was_training = model.training
        model.eval()
        with torch.no_grad():
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
    return Summary(rows)
