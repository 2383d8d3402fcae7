"""Activations on the grid: small-domain functions become tables, the squeeze-excite gate a shift.

With the recipe's ``residual_bits`` (the deploy preset sets 8), every SiLU, sigmoid, GELU,
Hardswish and Hardsigmoid module becomes a :class:`~.layers.QuantActivation`,
``output_quantizer(act(input_quantizer(x)))``. Its input then takes at most ``2^residual_bits``
values, so the exporter replaces the activation and its output quantizer by a lookup table from
input integers to output integers, exact by construction; the input quantizer folds into the
thresholds of the layer before, as a residual BatchNorm's does.

A sigmoid or Hardsigmoid whose output only multiplies (the squeeze-excite gate, ``x * gate``)
quantizes to powers of two and zero instead (``gate_shift_bits``), so that the product is a
shift of ``x``'s integers. Hardsigmoid is monotone: it folds into the thresholds of the layer
before it and needs no input quantizer.

The recipe decides, the hard model is what is deployed: training sees the same quantizers.
"""
from __future__ import annotations

import operator

import torch
from torch import fx, nn

from .residual import Tracer, is_norm_act

TABLE_ACTIVATIONS = (nn.SiLU, nn.Sigmoid, nn.GELU, nn.Hardswish, nn.Hardsigmoid)  # these classes exactly
_MONOTONE = (nn.Hardsigmoid,)  # folds into the thresholds before it: no input quantizer
_GATES = (nn.Sigmoid, nn.Hardsigmoid)
_MULS = (operator.mul, operator.imul, torch.mul)


def needs_input_quantizer(act: nn.Module) -> bool:
    return not isinstance(act, _MONOTONE)


def grid_activations(model: nn.Module) -> dict[str, str]:
    """The activation modules to put on the grid, by name: ``"gate"`` for a sigmoid or Hardsigmoid
    whose every reader multiplies, ``"table"`` for the others (timm's ``BatchNormAct2d``
    activations included). An untraceable model has none."""
    try:
        graph = Tracer().trace(model)
    except Exception:  # noqa: BLE001 - an untraceable model keeps its activations float
        return {}
    found: dict[str, str] = {}
    for node in graph.nodes:
        if node.op != "call_module":
            continue
        m = model.get_submodule(node.target)
        if is_norm_act(m) and type(m.act) in TABLE_ACTIVATIONS:
            found[f"{node.target}.act"] = "table"
        elif type(m) in TABLE_ACTIVATIONS:
            gate = isinstance(m, _GATES) and node.users and all(_multiplies(u) for u in node.users)
            found[node.target] = "gate" if gate else "table"
    return found


def _multiplies(node: fx.Node) -> bool:
    return node.op == "call_function" and node.target in _MULS \
        or node.op == "call_method" and node.target in ("mul", "mul_")
