"""Export refusals name the module, its type and the source op, and say what to do;
``sq.check_exportable`` answers before training with the same list."""
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import shiftquant as sq
from shiftquant.errors import ExportRefused


class FunctionalCNN(nn.Module):
    """A CNN in functional style, with an activation the exporter lacks and dropout left in training."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 8, 3, padding=1)
        self.act = nn.Mish()
        self.head = nn.Linear(8, 10)

    def forward(self, x):
        x = self.act(self.conv(x))
        return self.head(F.dropout(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1), 0.1))


def _deploy(model, x):
    sq.quantize_model(model, sq.QuantRecipe.preset("deploy", weight_shift_bits=2, act_shift_bits=2))
    sq.calibrate(model, [x])
    return model


def test_every_refused_node_is_named_with_module_type_source_and_a_way_around(tmp_path):
    x = torch.randn(4, 1, 8, 8)
    model = _deploy(FunctionalCNN(), x)
    with pytest.raises(ExportRefused) as info:
        sq.export(model, tmp_path / "m.sqb", x)
    by_node = {r.node: r for r in info.value.refusals}
    assert set(by_node) == {"act", "dropout"}  # both at once, not the first only
    act = by_node["act"]
    assert (act.module, act.module_type) == ("act", "torch.nn.modules.activation.Mish")
    assert act.source == "call_module act" and "Mish is not supported" in act.reason
    drop = by_node["dropout"]
    assert drop.module_type.endswith("FunctionalCNN") and "dropout" in drop.source and "training" in drop.reason
    assert "nn.Dropout" in drop.how and "instead of the functional" in drop.how
    message = str(info.value)
    assert "The exporter supports:" in message and "AdaptiveAvgPool2d" in message
    assert not (tmp_path / "m.sqb").exists()


def test_a_layer_without_shift_weights_points_to_deploy_or_keep_float(tmp_path):
    x = torch.randn(4, 1, 8, 8)
    model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 6 * 6, 10))
    sq.quantize_model(model, sq.QuantRecipe.preset("all", weight_shift_bits=2))  # weights only: float inputs
    report = sq.check_exportable(model, x)
    assert not report.exportable
    assert {r.module for r in report.refusals} == {"0", "3"}
    assert all("deploy" in r.how and "keep_float=['" in r.how for r in report.refusals)
    assert "refused" in str(report)


def test_check_exportable_says_integer_only_and_exact_or_lists_float_ops():
    x = torch.randn(4, 1, 8, 8)
    model = _deploy(nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 6 * 6, 10)), x)
    report = sq.check_exportable(model, x)
    assert report.exportable and report.exact and report.how.startswith("exact")
    # Exported without a PixelInput, the first layer quantizes float inputs: listed by node and module
    # (the AvgPool2d(2) after it sums integer windows).
    pooled = _deploy(nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.AvgPool2d(2), nn.Flatten(),
                                   nn.Linear(4 * 4 * 4, 10)), x)
    report = sq.check_exportable(pooled, x)
    assert report.exportable and not report.integer_only and "float op" in report.how
    assert report.float_ops == ["_0 (0, shift_conv2d)"]  # node, module, op


def test_a_recipe_that_selects_nothing_suggests_presets():
    model = nn.Sequential(nn.Conv2d(1, 4, 1), nn.ReLU(), nn.Flatten(), nn.Linear(4, 10))
    with pytest.raises(sq.ConfigError, match=r"presets that select layers of this model: .*quant=all \(2 layers\)"):
        sq.quantize_model(model, sq.QuantRecipe.preset("dbssq"))  # 3x3 block convs only


class _LeNet(nn.Module):
    """conv -> BatchNorm -> ReLU -> average pool -> conv -> ReLU -> Linear (with a max pool, or with
    the BatchNorm on a grid, it is integer-only: ``test_integer_pools.py``)."""

    def __init__(self):
        super().__init__()
        self.conv1, self.bn1, self.pool = nn.Conv2d(1, 6, 3, padding=1), nn.BatchNorm2d(6), nn.AvgPool2d(2)
        self.conv2, self.head = nn.Conv2d(6, 8, 3), nn.Linear(8 * 2 * 2, 10)

    def forward(self, x):
        x = self.pool(torch.relu(self.bn1(self.conv1(x))))
        return self.head(torch.flatten(torch.relu(self.conv2(x)), 1))


def test_every_float_node_says_why_and_what_would_make_it_integer(tmp_path):
    import shiftquant as sq
    from shiftquant.errors import CodegenError

    torch.manual_seed(0)
    model, x = _LeNet().eval(), torch.randn(4, 1, 8, 8)
    sq.quantize_model(model, sq.QuantRecipe.preset("deploy", act_shift_bits=2, residual_bits=None))
    sq.calibrate(model, [x])
    report = sq.check_exportable(model, x, sq.PixelInput((0.3,), (0.4,), 255))
    assert report.exportable and not report.integer_only
    assert len(report.float_reasons) == len(report.float_ops) > 0
    by_node = {r.node: r for r in report.float_reasons}
    # The average pool between conv1's BatchNorm-ReLU and conv2 breaks the requantization chain.
    assert "'pool' (avg_pool2d) breaks the requantization chain" in by_node["bn1"].reason
    assert "put the BatchNorm before 'pool' on a power-of-two grid (set the recipe's residual_bits)" in by_node["bn1"].how
    assert "quantizes float input from 'pool'" in by_node["conv2"].reason
    assert all(r.reason and r.how for r in report.float_reasons)
    text = str(report)
    assert all(f"float: {r.node} ({r.op}): " in text for r in report.float_reasons)
    rt = sq.export(model, tmp_path / "lenet.sqb", x, sq.PixelInput((0.3,), (0.4,), 255))
    with pytest.raises(CodegenError, match=r"'bn1' .*breaks the requantization chain; how: put the BatchNorm") as err:
        sq.load_bundle(rt.source, backend="c")
    assert "deploy preset" not in str(err.value)
