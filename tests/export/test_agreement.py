"""No silent disagreement: every export runs the bundle beside the PyTorch hard model, records
top-1 agreement and the largest logit difference, and refuses a bundle that disagrees (naming the
first node that diverges) unless the user accepts an approximate one."""
import dataclasses
import json

import numpy as np
import pytest
import torch
from torch import nn

import shiftquant as sq
from shiftquant.cli import bundle_summary
from shiftquant.errors import BundleError, ExportError
from shiftquant.export import ops
from shiftquant.export.format.bundle import read_bundle, write_bundle
from shiftquant.export.trace import agreement

PIXELS = sq.PixelInput((0.3,), (0.4,), 255)


class _FunctionalGelu(nn.Module):
    """``F.gelu`` as a function call: no activation module for the recipe to put on the grid, so it
    stays float."""

    def forward(self, x):
        return nn.functional.gelu(x)


def _cnn(preset: str = "deploy") -> nn.Module:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.MaxPool2d(2),
                          nn.Conv2d(8, 16, 3), nn.BatchNorm2d(16), _FunctionalGelu(), nn.AdaptiveAvgPool2d(1),
                          nn.Flatten(), nn.Linear(16, 10)).eval()
    sq.quantize_model(model, sq.QuantRecipe.preset(preset, weight_shift_bits=3, act_shift_bits=3))
    sq.calibrate(model, [torch.randn(16, 1, 12, 12)])
    sq.set_slope(model, 0.0)
    return model


def test_every_export_records_its_agreement(tmp_path):
    rt = sq.export(_cnn(), tmp_path / "m.sqb", torch.zeros(1, 1, 12, 12), PIXELS)
    a = rt.manifest["agreement"]
    assert a == {"images": 1 + agreement.EXTRA_INPUTS, "top1": 1.0, "max_abs_diff": 0.0, "tolerance": 0.0}
    assert rt.manifest["float_ops"]  # the GELU stays float: exact parity is checked through a float op too
    assert bundle_summary(str(rt.source))["agreement"] == a
    held_out = PIXELS.to_float(np.random.default_rng(1).integers(0, 256, (7, 1, 12, 12)))
    rt = sq.export(_cnn(), tmp_path / "m.sqb", torch.zeros(1, 1, 12, 12), PIXELS, check_input=held_out)
    assert rt.manifest["agreement"]["images"] == 7


def test_a_bundle_that_computes_something_else_is_refused_naming_the_node(tmp_path, monkeypatch):
    """A GELU kernel that rounds differently from PyTorch's: the exact bundle's logits move, and the
    export names the GELU as the first node that diverges, and writes nothing."""
    gelu = ops.get("gelu")
    off = dataclasses.replace(gelu, float=lambda node, args, tensor, batch: gelu.float(node, args, tensor, batch) * 1.01)
    monkeypatch.setitem(ops.schema.REGISTRY, "gelu", off)
    path = tmp_path / "m.sqb"
    with pytest.raises(ExportError, match=r"top-1 agreement .* the first node beyond the tolerance is 'gelu' \(gelu") as err:
        sq.export(_cnn(), path, torch.zeros(1, 1, 12, 12), PIXELS)
    assert "allow_approximate=True" in str(err.value) and not path.exists()
    rt = sq.export(_cnn(), path, torch.zeros(1, 1, 12, 12), PIXELS, allow_approximate=True)
    a = rt.manifest["agreement"]
    assert a["max_abs_diff"] > a["tolerance"] == 0.0


def test_a_bundle_without_exact_parity_meets_the_documented_tolerance(tmp_path):
    """The ``all`` preset (standardizing input quantizers, no exact parity): float dequantization
    rounds differently, within ``TOLERANCE`` of the largest logit."""
    rt = sq.export(_cnn("all"), tmp_path / "m.sqb", torch.zeros(1, 1, 12, 12))
    a = rt.manifest["agreement"]
    assert not rt.manifest["exact"] and a["top1"] == 1.0
    assert 0 < a["tolerance"] and a["max_abs_diff"] <= a["tolerance"]


@pytest.mark.parametrize("bad", [{"images": 0, "top1": 1.0, "max_abs_diff": 0.0, "tolerance": 0.0},
                                 {"images": 4, "top1": 1.5, "max_abs_diff": 0.0, "tolerance": 0.0},
                                 {"images": 4, "top1": 1.0, "max_abs_diff": -1.0, "tolerance": 0.0},
                                 {"images": 4, "top1": 1.0, "max_abs_diff": 0.0},
                                 {"images": 4, "top1": "1", "max_abs_diff": 0.0, "tolerance": 0.0}, [1, 2]])
def test_a_hostile_agreement_record_is_refused_at_load(tmp_path, bad):
    rt = sq.export(_cnn(), tmp_path / "m.sqb", torch.zeros(1, 1, 12, 12), PIXELS)
    manifest, tensors = read_bundle(rt.source)
    manifest["agreement"] = json.loads(json.dumps(bad))
    write_bundle(tmp_path / "bad.sqb", manifest, tensors)
    with pytest.raises(BundleError, match="agreement must hold"):
        sq.load_bundle(tmp_path / "bad.sqb")
