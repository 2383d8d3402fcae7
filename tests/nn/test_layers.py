"""Quantized layers keep the float layer's behaviour and swap in the quantized weight."""
import copy
import io
import pickle

import pytest
import timm
import torch
from timm.layers import Conv2dSame
from torch import nn

import shiftquant as sq
from shiftquant.nn.layers import QuantConv2d

IDENTITY_AT_EPS1 = dict(weight_scale="pretrained_std", weight_keep_mean=True,
                        act_shift_bits=2, act_scale="learned_pot", act_signed=False, act_zero=True)


@pytest.mark.parametrize("kwargs", [
    dict(groups=4, dilation=2, padding=2, bias=True),
    dict(padding=1, padding_mode="reflect", bias=False),
    dict(padding=1, padding_mode="circular", stride=2),
])
def test_conv_keeps_every_argument(kwargs):
    conv = nn.Conv2d(8, 16, 3, **kwargs)
    q = QuantConv2d.from_float(conv, None, None)
    x = torch.randn(2, 8, 11, 11)
    assert torch.equal(q(x), conv(x))
    for attr in ("groups", "dilation", "padding", "padding_mode", "stride"):
        assert getattr(q, attr) == getattr(conv, attr)
    assert q.weight is conv.weight  # parameters are shared, not copied


def test_hard_weight_is_used_in_forward():
    conv = nn.Conv2d(4, 6, 3, padding=1)
    model = nn.Sequential(conv)
    sq.quantize_model(model, sq.QuantRecipe.preset("all", weight_shift_bits=1))
    sq.set_slope(model, 0.0)
    q = model[0]
    w_hard = q.quantized_weight()
    x = torch.randn(1, 4, 5, 5)
    torch.testing.assert_close(q(x), nn.functional.conv2d(x, w_hard, q.bias, padding=1))
    # Each channel's weights are scale * {±1, ±1/2, ±1/4, ±1/8}.
    z = w_hard / q.weight_quantizer.decompose(q.weight)[1]
    assert torch.isin(z.double(), torch.tensor([-1, -.5, -.25, -.125, .125, .25, .5, 1.], dtype=torch.double)).all()


class SameNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = Conv2dSame(3, 8, 3, stride=2)
        self.relu = nn.ReLU()
        self.head = nn.Linear(8, 5)

    def forward(self, x):
        return self.head(self.relu(self.conv(x)).mean((2, 3)))


def test_timm_conv2d_same_keeps_its_forward():
    model = SameNet().eval()
    x = torch.randn(2, 3, 15, 17)
    ref = model(x)
    sq.quantize_model(model, sq.QuantRecipe.preset("all", **IDENTITY_AT_EPS1))
    sq.calibrate(model, [x])
    assert model.conv.float_class is Conv2dSame
    torch.testing.assert_close(model(x), ref, atol=1e-5, rtol=1e-5)
    sq.set_slope(model, 0.0)
    # At eps = 0 the output is Conv2dSame's dynamic 'same' padding with the hard weight.
    q = model.conv
    expected = Conv2dSame(3, 8, 3, stride=2)
    with torch.no_grad():
        expected.weight.copy_(q.quantized_weight())
        expected.bias.copy_(q.bias)
    xq = q.input_quantizer(x)
    torch.testing.assert_close(q(x), expected(xq))


def test_timm_resnet18_identity_at_eps_one():
    model = timm.create_model("resnet18", pretrained=False, num_classes=10).eval()
    x = torch.randn(2, 3, 32, 32)
    ref = model(x)
    sq.quantize_model(model, sq.QuantRecipe.preset("dbssq", **IDENTITY_AT_EPS1))
    sq.calibrate(model, [x])
    assert len(list(sq.quantized_layers(model))) == 16
    torch.testing.assert_close(model(x), ref, atol=1e-4, rtol=1e-4)


def test_seed_policies_are_not_identity_at_eps_one():
    """Documented: the seed drops the channel mean and standardizes inputs."""
    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Conv2d(8, 8, 3)).eval()
    with torch.no_grad():
        model[2].weight.add_(0.5)  # a clear per-channel mean
    x = torch.randn(2, 3, 9, 9)
    ref = model(x)
    sq.quantize_model(model, sq.QuantRecipe.preset("all", act_shift_bits=2))
    assert not torch.allclose(model(x), ref, atol=1e-3)


def test_pickle_and_deepcopy_roundtrip():
    model = SameNet().eval()
    sq.quantize_model(model, sq.QuantRecipe.preset("all", act_shift_bits=2))
    sq.set_slope(model, 0.0)
    x = torch.randn(1, 3, 8, 8)
    for clone in (copy.deepcopy(model), pickle.loads(pickle.dumps(model))):
        assert torch.equal(clone(x), model(x))
    buf = io.BytesIO()
    torch.save(model, buf)
    buf.seek(0)
    assert torch.equal(torch.load(buf, weights_only=False)(x), model(x))
