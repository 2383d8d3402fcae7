"""The residual stream on a power-of-two grid (recipe field residual_bits)."""
import pickle

import pytest
import torch
from torch import nn

import shiftquant as sq
from shiftquant.models import resnet20
from shiftquant.nn.residual import QuantBatchNorm2d, residual_batchnorms
from shiftquant.quant.scales import pot_scale


def test_the_batchnorms_feeding_residual_adds_are_found():
    names = residual_batchnorms(resnet20(num_classes=10, in_chans=1))
    stem = ["bn1"]  # reaches the first add through the stem's ReLU
    branches = [f"layer{s}.{b}.bn2" for s in (1, 2, 3) for b in range(3)]
    shortcuts = ["layer2.0.downsample.1", "layer3.0.downsample.1"]
    assert sorted(names) == sorted(stem + branches + shortcuts)


def test_an_add_fed_by_something_else_stays_float():
    class Odd(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv, self.bn = nn.Conv2d(1, 2, 3, padding=1), nn.BatchNorm2d(2)

        def forward(self, x):
            return self.bn(self.conv(x)) + self.conv(x)  # one input is a conv output

    assert residual_batchnorms(Odd()) == []


def test_residual_grid_quantizes_bn_outputs_and_keeps_float_keys():
    model = resnet20(num_classes=10, in_chans=1)
    float_keys = set(model.state_dict())
    sq.quantize_model(model, sq.QuantRecipe.preset("deploy", weight_shift_bits=2, act_shift_bits=2))
    bns = [n for n, m in model.named_modules() if isinstance(m, QuantBatchNorm2d)]
    assert len(bns) == 12
    keys = set(model.state_dict())
    assert float_keys <= keys and all(k.split(".output_quantizer.")[0] in bns for k in keys - float_keys
                                      if ".output_quantizer." in k)
    x = torch.randn(4, 1, 16, 16)
    assert sq.calibrate(model, [x]) == 22 + 12  # every input quantizer and every residual grid
    sq.set_slope(model, 0.0)
    model.eval()
    outs = {}
    hooks = [model.get_submodule(n).register_forward_hook(lambda m, i, o, n=n: outs.__setitem__(n, o.detach().clone())) for n in bns]
    model(x)
    for h in hooks:
        h.remove()
    for name, out in outs.items():
        q = model.get_submodule(name).output_quantizer
        units = out / (pot_scale(q.log2_scale).detach() * q.quantizer.resolution)
        assert torch.equal(units, units.round()) and units.abs().max() <= 128, name  # on the 8-bit grid
    clone = pickle.loads(pickle.dumps(model))
    assert torch.equal(clone(x), model(x))


def test_residual_bits_is_validated():
    with pytest.raises(sq.ConfigError, match="residual_bits"):
        sq.QuantRecipe.preset("deploy", residual_bits=1)
    assert sq.QuantRecipe.preset("deploy").residual_bits == 8
    assert sq.QuantRecipe.preset("shiftquant").residual_bits is None


def test_the_batchnorms_feeding_average_pools_are_found():
    """A BatchNorm that reaches an average pool through ReLU goes on the grid (the pool then sums
    integers); one that reaches a max pool only, or a conv, does not."""
    model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.AvgPool2d(2),
                          nn.Conv2d(4, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.MaxPool2d(2),
                          nn.Conv2d(4, 4, 1), nn.BatchNorm2d(4), nn.ReLU6(), nn.AdaptiveAvgPool2d(1))
    assert residual_batchnorms(model) == ["1", "9"]
