"""Integer LayerNorm (:mod:`shiftquant.nn.integer_norm`): its integers against an independent
reading of the definition in Python integers, its independence of the grid's unit, how close it
is to PyTorch's LayerNorm, its training behaviour, and its export on integers (a model no other
test builds: tokens from a Linear, a LayerNorm with negative gains, the first token's row picked)."""
import math

import numpy as np
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

import shiftquant as sq
from shiftquant.nn.integer_norm import FRACTION_BITS, QuantLayerNorm, integer_layer_norm, normalized_ints


def reference(row: list[int]) -> list[int]:
    n = len(row)
    common = min(((abs(x) & -abs(x)).bit_length() - 1 for x in row if x), default=62)
    cap = max(abs(x) for x in row).bit_length() - (30 - n.bit_length())
    v = min(max(common, cap, 0), 62)
    x = [a >> v for a in row]
    s = sum(x)
    var = n * sum(a * a for a in x) - s * s
    t = (62 - var.bit_length()) // 2
    r = max(math.isqrt(var << 2 * t), 1)
    return [((n * a - s) << (FRACTION_BITS + t)) // r for a in x]


ROWS = st.lists(st.integers(-(1 << 23), 1 << 23), min_size=1, max_size=50)


@settings(max_examples=80, deadline=None)
@given(ROWS)
def test_integers_follow_the_definition(row):
    assert normalized_ints(torch.tensor([row], dtype=torch.int64))[0].tolist() == reference(row)


@settings(max_examples=40, deadline=None)
@given(st.lists(st.integers(-(1 << 12), 1 << 12), min_size=2, max_size=40), st.integers(0, 10))
def test_the_unit_of_the_grid_does_not_matter(row, k):
    x = torch.tensor([row], dtype=torch.int64)
    assert torch.equal(normalized_ints(x << k), normalized_ints(x))


def test_it_is_pytorchs_layer_norm_to_its_fraction_bits():
    torch.manual_seed(0)
    x = torch.randint(-300, 300, (64, 192)).float() * 2.0**-5
    ours = integer_layer_norm(x, (192,), None, None)
    ref = nn.functional.layer_norm(x, (192,), eps=0.0)
    assert float((ours - ref).abs().max()) <= 2.0 ** -FRACTION_BITS * 1.01


def test_training_sees_the_hard_value_and_the_float_gradient():
    torch.manual_seed(0)
    ln = nn.LayerNorm(16)
    nn.init.normal_(ln.weight)
    q = QuantLayerNorm.from_float(ln)
    assert set(q.state_dict()) == set(ln.state_dict())
    x = (torch.randint(-50, 50, (3, 5, 16)).float() * 0.25).requires_grad_()
    out = q(x)
    assert torch.equal(out.detach(), integer_layer_norm(x.detach(), (16,), ln.weight.detach(), ln.bias.detach()))
    w = torch.randn_like(out)
    (out * w).sum().backward()
    ref = x.detach().clone().requires_grad_()
    (nn.functional.layer_norm(ref, (16,), ln.weight, ln.bias, ln.eps) * w).sum().backward()
    assert torch.allclose(x.grad, ref.grad)


class Tokens(nn.Module):
    def __init__(self):
        super().__init__()
        self.embed = nn.Linear(64, 24)
        self.norm = nn.LayerNorm(8)
        self.head = nn.Linear(8, 10)

    def forward(self, x):
        t = self.embed(torch.flatten(x, 1)).view(x.shape[0], 3, 8)
        return self.head(self.norm(t)[:, 0])


def test_a_layer_norm_between_linear_layers_exports_integer_only_and_exact(tmp_path):
    torch.manual_seed(0)
    model = Tokens().eval()
    with torch.no_grad():
        model.norm.weight.copy_(torch.tensor([1.5, -0.7, 0.9, -1.2, 0.3, 1.1, -0.4, 0.8]))
        model.norm.bias.uniform_(-0.5, 0.5)
    px = sq.PixelInput((0.5,), (0.25,))
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (64, 1, 8, 8)).astype(np.uint8)
    sq.quantize_model(model, sq.QuantRecipe.preset("deploy", weight_shift_bits=3, act_shift_bits=3))
    assert isinstance(model.norm, QuantLayerNorm)
    sq.calibrate(model, [px.to_float(images)])
    sq.set_slope(model, 0.0)
    rt = sq.export(model, tmp_path / "m.sqb", px.to_float(images[:1]), px)
    with torch.no_grad():
        ref = model(px.to_float(images)).numpy()
    assert float(np.std(ref)) > 1e-3
    assert np.array_equal(rt.run(images), ref)
    norm = next(n for n in rt.nodes if n["op"] == "integer_layer_norm")
    assert norm["dtype"] != "float32" and rt.tensors[norm["signs"]].tolist() == [1, -1, 1, -1, 1, 1, -1, 1]
    assert rt.manifest["integer_only"] and not rt.float_ops
