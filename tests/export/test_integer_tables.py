"""Small-domain activations as tables and the squeeze-excite gate as a shift.

With the deploy preset's ``residual_bits``, SiLU, sigmoid, GELU and Hardswish modules read a
quantized input and quantize their output: the exporter turns each into a lookup table over the
input's integers, built from PyTorch's kernel and checked on its vector and scalar paths. A
sigmoid or Hardsigmoid gate that only multiplies quantizes to zero and powers of two, and the
product is a shift. The networks built from them (MobileNetV3, EfficientNet-B0) are exercised in
``test_integer_mobile.py``; here, a small network with both gate kinds, the tables against the
PyTorch modules, the guard on kernel paths, and hostile bundles.
"""
import dataclasses
import shutil

import numpy as np
import pytest
import torch
from torch import nn

import shiftquant as sq
from shiftquant.errors import BundleError, ConfigError
from shiftquant.export import ops
from shiftquant.export.format.bundle import read_bundle, write_bundle
from shiftquant.export.ops.quantizers import input_unit
from shiftquant.nn.grid_activation import grid_activations
from shiftquant.nn.layers import QuantActivation
from tests.export.models import deploy_exported

PIXELS = sq.PixelInput((0.3,), (0.4,), 255)


class SqueezeExcite(nn.Module):
    def __init__(self, channels: int, gate: nn.Module):
        super().__init__()
        self.reduce, self.act = nn.Conv2d(channels, 4, 1), nn.SiLU()
        self.expand, self.gate = nn.Conv2d(4, channels, 1), gate

    def forward(self, x):
        return x * self.gate(self.expand(self.act(self.reduce(x.mean((2, 3), keepdim=True)))))


def se_net() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.BatchNorm2d(8), nn.SiLU(), SqueezeExcite(8, nn.Sigmoid()),
                         nn.Conv2d(8, 16, 3, stride=2), nn.BatchNorm2d(16), nn.GELU(),
                         SqueezeExcite(16, nn.Hardsigmoid()), nn.Conv2d(16, 16, 1), nn.BatchNorm2d(16), nn.Hardswish(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 10)).eval()


class Residual(nn.Module):
    """MobileNetV3-Large's first block: ``x + BN(conv(x))``, ``x`` a Hardswish's output."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv, self.bn = nn.Conv2d(channels, channels, 3, padding=1, groups=channels), nn.BatchNorm2d(channels)

    def forward(self, x):
        return x + self.bn(self.conv(x))


def residual_net() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.BatchNorm2d(8), nn.Hardswish(), Residual(8),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 10)).eval()


def _exported(tmp_path, make=None, **export):
    model = (make or se_net)()
    rt, pixels, _ = deploy_exported(model, (6, 1, 12, 12), PIXELS, tmp_path / "m.sqb", **export)
    return model, rt, pixels


def test_the_recipe_puts_activations_and_gates_on_the_grid():
    roles = grid_activations(se_net())
    assert roles == {"2": "table", "3.act": "table", "3.gate": "gate", "6": "table", "7.act": "table",
                     "7.gate": "gate", "10": "table"}
    model = se_net()
    sq.quantize_model(model, sq.QuantRecipe.preset("deploy", weight_shift_bits=3, act_shift_bits=3))
    gates = {name: m for name, m in model.named_modules() if isinstance(m, QuantActivation) and name.endswith("gate")}
    assert gates["3.gate"].input_quantizer is not None  # a sigmoid: a table to powers of two
    assert gates["7.gate"].input_quantizer is None  # a Hardsigmoid folds into the thresholds before it
    for m in gates.values():
        levels = m.output_quantizer.quantizer.levels()
        assert all(v == 0 or float(torch.log2(v)).is_integer() for v in levels) and levels.min() == 0


def test_gate_shift_bits_is_checked():
    with pytest.raises(ConfigError, match="gate_shift_bits"):
        sq.QuantRecipe.preset("deploy", gate_shift_bits=-1)


def test_tables_and_gate_shifts_make_the_network_integer_only_and_exact(tmp_path):
    model, rt, pixels = _exported(tmp_path)
    assert rt.manifest["integer_only"], rt.float_ops
    by_op = {}
    for n in rt.nodes:
        by_op.setdefault(n["op"], []).append(n)
    assert {op: len(by_op[op]) for op in ("silu", "gelu", "sigmoid", "hardswish")} == \
        {"silu": 3, "gelu": 1, "sigmoid": 1, "hardswish": 1}
    assert all(n.get("table") for op in ("silu", "gelu", "sigmoid", "hardswish") for n in by_op[op])
    assert "hardsigmoid" not in by_op  # folded into the expand layer's thresholds
    assert [n["gate"] for n in by_op["mul"]] == [1, 1] and all(n["integer"] for n in by_op["mean"])
    with torch.no_grad():
        assert np.array_equal(rt.run(pixels), model(PIXELS.to_float(pixels)).numpy())


def test_a_residual_add_reads_an_activation_on_the_grid(tmp_path):
    """The add's other input is a BatchNorm: it goes on the grid, and the add is an integer add."""
    model, rt, pixels = _exported(tmp_path, residual_net)
    assert rt.manifest["integer_only"], rt.float_ops
    assert next(n for n in rt.nodes if n["op"] == "add").get("shifts") is not None
    with torch.no_grad():
        assert np.array_equal(rt.run(pixels), model(PIXELS.to_float(pixels)).numpy())


def test_each_table_is_the_pytorch_module_on_every_input_integer(tmp_path):
    """The table against the model's own QuantActivation (its activation and output quantizer),
    evaluated on every input integer at once and one by one."""
    model, rt, _ = _exported(tmp_path)
    modules = {name: m for name, m in model.named_modules() if isinstance(m, QuantActivation)}
    checked = 0
    for node in rt.nodes:
        if not node.get("table"):
            continue
        m = modules[node["module"]]
        fact = rt.facts[node["inputs"][0]]
        grid = torch.arange(fact.lo, fact.hi + 1, dtype=torch.float64) * fact.unit
        table = rt.tensor(node["table"]).astype(np.int64)[fact.lo - node["table_start"]:fact.hi - node["table_start"] + 1]
        with torch.no_grad():
            for values in (m.output_quantizer(m.act(grid.float())), torch.cat([m.output_quantizer(m.act(v))
                                                                              for v in grid.float().split(1)])):
                assert np.array_equal(values.double().numpy() / input_unit(node["output_quantizer"]), table)
        checked += 1
    assert checked == 6


def test_a_kernel_whose_paths_disagree_stays_float(tmp_path, monkeypatch):
    """A SiLU whose result depends on where a value sits in the tensor (as a vector and a scalar
    path can differ in the last bit) gets no table: it runs in float, listed in float_ops."""
    silu = ops.get("silu")

    def by_position(node, args, tensor, batch):
        x = args[0]
        wobble = (torch.arange(x.numel(), device=x.device) % 3 == 1).reshape(x.shape) * 0.02
        return silu.float(node, args, tensor, batch) + wobble

    monkeypatch.setitem(ops.schema.REGISTRY, "silu", dataclasses.replace(silu, float=by_position))
    _, rt, _ = _exported(tmp_path, allow_approximate=True)
    silus = [n for n in rt.nodes if n["op"] == "silu"]
    assert silus and not any(n.get("table") for n in silus)
    assert {n["name"] for n in silus} <= set(rt.float_ops)


@pytest.mark.skipif(shutil.which("cc") is None, reason="no C compiler")
def test_the_c_backend_looks_up_and_shifts_the_same_integers(tmp_path, monkeypatch):
    monkeypatch.setenv("SHIFTQUANT_CACHE_DIR", str(tmp_path))
    model, rt, pixels = _exported(tmp_path)
    native = sq.load_bundle(rt.source, backend="c")
    with torch.no_grad():
        assert np.array_equal(native.run(pixels), model(PIXELS.to_float(pixels)).numpy())


def _resealed(tmp_path, edit):
    model, rt, pixels = _exported(tmp_path)
    manifest, tensors = read_bundle(rt.source)
    edit(manifest, tensors)
    path = tmp_path / "edited.sqb"
    write_bundle(path, manifest, tensors)
    return path, pixels


def _node(manifest, op):
    return next(n for n in manifest["nodes"] if n["op"] == op)


def _off_the_levels(m, t):
    key = _node(m, "silu")["table"]
    t[key] = np.full(t[key].shape, 1000, np.int16)


@pytest.mark.parametrize("edit, message", [
    (_off_the_levels, "not levels of its output quantizer"),
    (lambda m, t: _node(m, "gelu").__setitem__("table_start", _node(m, "gelu")["table_start"] + 1),
     "reach beyond its table"),
    (lambda m, t: _node(m, "sigmoid").pop("output_quantizer"), "needs the output_quantizer"),
    (lambda m, t: _node(m, "hardswish").__setitem__("table_start", 0.5), "table_start must be an integer"),
    (lambda m, t: _node(m, "mul").__setitem__("gate", 0), "a gate is one integer per channel"),
])
def test_hostile_tables_and_gates_are_refused_at_load(tmp_path, edit, message):
    path, _ = _resealed(tmp_path, edit)
    with pytest.raises(BundleError, match=message):
        sq.load_bundle(path)
