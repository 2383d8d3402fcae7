"""Learned power-of-two scales (issue 12): the LSQ/TQT gradient, the bounded range, stability, and
the full-code layout of unsigned activation quantizers."""
import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

import shiftquant as sq
from shiftquant.quant import functional as F
from shiftquant.quant.scales import ActivationQuantizer, WeightQuantizer


# ----------------------------------------------------------------------------- full codes
@pytest.mark.parametrize("s,levels", [
    (2, [0, 2**-6, 2**-5, 2**-4, 2**-3, 2**-2, 2**-1, 1]),   # A3: zero plus seven powers of two
    (1, [0, 0.25, 0.5, 1]),                                  # A2: four levels
    (0, [0, 1]),
])
def test_full_code_shift_layout_spends_every_code(s, levels):
    q = sq.ShiftQuantizer(s, "nearest", zero=True, signed=False, full_codes=True)
    assert q.levels().tolist() == levels
    assert len(levels) == 2**q.code_bits and q.code_bits == s + 1
    assert q.resolution == min(v for v in levels if v > 0)
    # The old layout keeps 2^s + 1 of the 2^(s+1) codes (5 of 8 at s = 2).
    assert len(sq.ShiftQuantizer(s, "nearest", zero=True, signed=False).levels()) == 2**s + 1


@pytest.mark.parametrize("b", [1, 2, 3, 4])
def test_full_code_uniform_layout_is_unsigned_fixed_point(b):
    q = sq.UniformQuantizer(b, "nearest", zero=True, signed=False, full_codes=True)
    assert (q.levels() * 2**b).tolist() == list(range(2**b))   # zero plus 2^b - 1 steps
    assert q.code_bits == b and q.resolution == 2.0**-b
    assert len(sq.UniformQuantizer(b, "nearest", zero=True, signed=False).levels()) == 2 ** (b - 1) + 1


@settings(max_examples=150, deadline=None)
@given(st.integers(0, 5), st.sampled_from(["ceil", "nearest"]), st.booleans(),
       st.lists(st.floats(-4, 4, allow_nan=False, width=32), min_size=1, max_size=64))
def test_full_code_outputs_are_levels_and_idempotent(s, rounding, uniform, values):
    q = (sq.UniformQuantizer(s + 1, rounding, True, False, full_codes=True) if uniform
         else sq.ShiftQuantizer(s, rounding, True, False, full_codes=True))
    x = torch.tensor(values)
    out = q.hard(x)
    assert torch.isin(out.double(), q.levels()).all()
    assert torch.equal(q.hard(out), out)
    assert (out[x <= 0] == 0).all()


def test_full_code_nearest_rounding_in_the_log_domain():
    q = sq.ShiftQuantizer(1, "nearest", zero=True, signed=False, full_codes=True)
    x = torch.tensor([-1.0, 0.1, 0.13, 0.2, 0.3, 0.4, 0.8, 5.0])
    # Zero below half the smallest level (1/8); 2^round(log2 x) otherwise, clipped to [1/4, 1].
    assert q.hard(x).tolist() == [0, 0, 0.25, 0.25, 0.25, 0.5, 1, 1]


@pytest.mark.parametrize("kwargs", [dict(zero=False, signed=False), dict(zero=True, signed=True),
                                    dict(zero=False, signed=True)])
def test_full_codes_refused_where_no_code_is_unused(kwargs):
    with pytest.raises(sq.ConfigError, match="full_codes"):
        sq.ShiftQuantizer(2, full_codes=True, **kwargs)
    with pytest.raises(sq.ConfigError, match="full_codes"):
        F.uniform_levels(3, full_codes=True, **kwargs)


# ----------------------------------------------------------------------------- the scale gradient
def _reference_pot(quantizer, x, log2_scale, eps, numel):
    """LSQ in the log domain, written the plain way: ``eps*x + (1-eps) * s * Q_ste(x/s)`` with the
    straight-through estimator inside the clip range only, ``s = 2^l`` (l an integer here), the
    gradient of ``l`` scaled by ``1/sqrt(N * Qmax)``."""
    l = log2_scale.detach().clone().requires_grad_()
    g = F.lsq_grad_scale(numel, quantizer.levels())
    l_scaled = l * g + (l * (1 - g)).detach()           # value l, gradient g
    s = torch.exp2(l_scaled)
    z = x / s
    lo, hi = quantizer.clip_range
    zc = z.clamp(lo, hi)
    q_ste = zc + (quantizer.hard(z.detach()) - zc).detach()
    return eps * x + (1 - eps) * s * q_ste, l


@pytest.mark.parametrize("eps", [0.0, 0.3, 1.0])
@pytest.mark.parametrize("full", [False, True])
def test_activation_scale_gradient_is_lsq(eps, full):
    torch.manual_seed(0)
    core = sq.ShiftQuantizer(2, "nearest", zero=True, signed=False, full_codes=full)
    aq = ActivationQuantizer(core, 4, "learned_pot")
    aq.log2_scale.data.fill_(-1.0)
    core.eps = eps
    x = torch.randn(3, 4, 5, 5) * 2
    w = torch.randn_like(x)
    (aq(x) * w).sum().backward()
    ref, l = _reference_pot(core, x, aq.log2_scale, eps, x.numel())
    (ref * w).sum().backward()
    torch.testing.assert_close(aq.log2_scale.grad, l.grad.reshape(()), rtol=1e-5, atol=1e-7)
    if eps == 1.0:
        assert aq.log2_scale.grad.item() == 0.0  # the identity does not depend on the scale


@pytest.mark.parametrize("eps", [0.0, 0.5])
def test_weight_scale_gradient_is_lsq_per_channel(eps):
    torch.manual_seed(1)
    w = torch.randn(6, 3, 3, 3) * 0.2
    core = sq.ShiftQuantizer(1, "nearest")
    wq = WeightQuantizer(core, w, "learned_pot")
    core.eps = eps
    upstream = torch.randn_like(w)
    (wq(w) * upstream).sum().backward()
    ref, l = _reference_pot(core, w, wq.log2_scale, eps, w[0].numel())
    (ref * upstream).sum().backward()
    torch.testing.assert_close(wq.log2_scale.grad, l.grad, rtol=1e-5, atol=1e-7)


def test_clipped_values_do_not_pass_the_straight_through_term():
    """One value far above the top level: its gradient is the level it is clipped to, not
    ``Q(z) - z`` (which the identity gradient gave, and which grows with the outlier)."""
    core = sq.ShiftQuantizer(2, "nearest", zero=True, signed=False, full_codes=True)
    core.eps = 0.0
    aq = ActivationQuantizer(core, 1, "learned_pot")
    for outlier in (10.0, 1e6):
        aq.log2_scale.grad = None
        aq(torch.tensor([[outlier]])).sum().backward()
        expected = math.log(2) * 1.0 / math.sqrt(1 * 7)   # Q(z) = 1, N = 1, Qmax = 7
        assert aq.log2_scale.grad.item() == pytest.approx(expected)


def test_quantizer_input_is_a_multiplication_by_an_exact_power_of_two():
    aq = ActivationQuantizer(sq.ShiftQuantizer(2, "nearest", True, False, full_codes=True), 2, "learned_pot")
    aq.log2_scale.data.fill_(2.6)   # rounds to 3
    x = torch.randn(4, 2, 3, 3)
    z, s = aq.decompose(x)
    assert s.item() == 8.0 and torch.equal(z, x * 0.125)


def test_log2_scales_are_bounded():
    w = torch.randn(4, 2, 3, 3)
    wq = WeightQuantizer(sq.ShiftQuantizer(2), w, "learned_pot")
    with torch.no_grad():
        wq.log2_scale.copy_(torch.tensor([-1e4, -40.0, 0.0, 1e4]).reshape(4, 1, 1, 1))
    assert torch.isfinite(wq(w)).all()
    assert wq.decompose(w)[1].flatten().tolist() == [2.0**-32, 2.0**-32, 1.0, 2.0**32]
    model = nn.Sequential()
    model.add_module("wq", wq)
    assert sq.bound_scales(model) == 3
    assert wq.log2_scale.flatten().tolist() == [-32.0, -32.0, 0.0, 32.0]


def test_frozen_weight_scale_gets_no_gradient():
    model = nn.Sequential(nn.Conv2d(2, 4, 3), nn.BatchNorm2d(4))
    sq.quantize_model(model, sq.QuantRecipe.preset("shiftquant", layers=["*"], kernel_sizes=None,
                                                    weight_scale_frozen=True))
    assert not model[0].weight_quantizer.log2_scale.requires_grad
    model(torch.randn(2, 2, 6, 6)).sum().backward()
    assert model[0].weight_quantizer.log2_scale.grad is None and model[0].weight.grad is not None


# ----------------------------------------------------------------------------- stability
class Block(nn.Module):
    """A quantized conv with a BatchNorm after it (the loss hardly sees the scales) and a head."""

    def __init__(self, s, uniform, channels):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)
        self.bn = nn.BatchNorm2d(channels)
        self.head = nn.Linear(channels, 3)
        recipe = sq.QuantRecipe.preset(
            "shiftquant", layers=["conv"], kernel_sizes=None,
            weight_shift_bits=None if uniform else max(s, 0), weight_uniform_bits=s + 1 if uniform else None,
            act_shift_bits=None if uniform else s, act_uniform_bits=s + 1 if uniform else None)
        sq.quantize_model(self, recipe)

    def forward(self, x):
        return self.head(torch.relu(self.bn(self.conv(x))).mean((2, 3)))


@settings(max_examples=25, deadline=None)
@given(st.integers(0, 3), st.booleans(), st.floats(0, 1), st.floats(1.0, 1e4), st.integers(0, 2**16),
       st.floats(0.1, 1e3))
def test_random_layers_keep_finite_scales_and_gradients(s, uniform, eps, scale_lr, seed, input_scale):
    """Large learning rates on the scales, any slope: every scale stays finite and in range,
    every gradient finite (the identity gradient through the quantizer drove log2 scales by
    thousands and overflowed float32)."""
    torch.manual_seed(seed)
    model = Block(s, uniform, 4)
    x = torch.relu(torch.randn(8, 4, 6, 6)) * input_scale
    y = torch.randint(0, 3, (8,))
    sq.calibrate(model, [x])
    sq.set_slope(model, eps)
    scales = [p for n, p in model.named_parameters() if "log2_scale" in n]
    others = [p for n, p in model.named_parameters() if "log2_scale" not in n]
    opt = torch.optim.SGD([{"params": scales, "lr": scale_lr}, {"params": others, "lr": 0.1}], momentum=0.9)
    for _ in range(8):
        opt.zero_grad()
        loss = nn.functional.cross_entropy(model(x), y)
        assert torch.isfinite(loss)
        loss.backward()
        for p in model.parameters():
            assert p.grad is None or torch.isfinite(p.grad).all()
        opt.step()
        sq.bound_scales(model)
        for p in scales:
            assert torch.isfinite(p).all()
            assert ((p >= F.LOG2_SCALE_MIN) & (p <= F.LOG2_SCALE_MAX)).all()


def test_scale_learning_rate_and_no_decay_apply_to_the_log2_scales_only():
    """``optim.scale_lr_mult`` multiplies the log2 scales' step and nothing else; weight decay, which
    would pull every scale towards 2^0, skips them."""
    from shiftquant.train.module import parameter_groups

    x = torch.relu(torch.randn(8, 4, 6, 6)) * 3
    y = torch.randint(0, 3, (8,))
    steps, grads = {}, {}
    for mult in (1.0, 100.0):
        torch.manual_seed(0)
        model = Block(2, False, 4)
        sq.calibrate(model, [x])
        sq.set_slope(model, 0.0)
        before = {n: p.detach().clone() for n, p in model.named_parameters()}
        opt = torch.optim.SGD(parameter_groups(model, 0.01, 0.5, mult), lr=0.01)
        nn.functional.cross_entropy(model(x), y).backward()
        grads[mult] = {n: p.grad.clone() for n, p in model.named_parameters()}
        opt.step()
        steps[mult] = {n: p.detach() - before[n] for n, p in model.named_parameters()}
    scales = [n for n in steps[1.0] if n.endswith("log2_scale")]
    assert sorted(scales) == ["conv.input_quantizer.log2_scale", "conv.weight_quantizer.log2_scale"]
    assert any(steps[1.0][n].abs().sum() > 0 for n in scales)
    for n in steps[1.0]:
        torch.testing.assert_close(grads[100.0][n], grads[1.0][n])
        if n in scales:  # the plain gradient step, scaled, no decay
            torch.testing.assert_close(steps[100.0][n], -0.01 * 100.0 * grads[1.0][n])
            torch.testing.assert_close(steps[1.0][n], -0.01 * grads[1.0][n])
        else:
            torch.testing.assert_close(steps[100.0][n], steps[1.0][n])
    # The weights do decay: their step is not the plain gradient step.
    assert not torch.allclose(steps[1.0]["conv.weight"], -0.01 * grads[1.0]["conv.weight"])


def test_exponents_moved_counts_changed_powers_of_two_by_kind():
    from shiftquant.convert import exponents_moved, scale_exponents

    model = Block(2, False, 4)
    sq.calibrate(model, [torch.relu(torch.randn(8, 4, 6, 6))])
    start = scale_exponents(model)
    assert exponents_moved(start, scale_exponents(model)) == {"weight": [0, 4], "input": [0, 1]}
    with torch.no_grad():
        model.conv.weight_quantizer.log2_scale[1] += 0.4   # the same power of two
        model.conv.weight_quantizer.log2_scale[2] += 1.0   # the next one
        model.conv.input_quantizer.log2_scale -= 0.7
    assert exponents_moved(start, scale_exponents(model)) == {"weight": [1, 4], "input": [1, 1]}
