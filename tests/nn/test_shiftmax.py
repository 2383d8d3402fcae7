"""Shiftmax (:mod:`shiftquant.nn.shiftmax`) against an independent reading of its definition in
Python integers and fractions, and QuantAttention in training and conversion."""
from fractions import Fraction

import numpy as np
import pytest
import timm
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import shiftquant as sq
from shiftquant.errors import ConfigError
from shiftquant.nn.attention import QuantAttention
from shiftquant.nn.shiftmax import EXP_FRACTION_BITS as P
from shiftquant.nn.shiftmax import (
    MAX_SCORE,
    ShiftSoftmax,
    exponent_multiplier,
    shiftmax,
    shiftmax_codes,
)
from shiftquant.nn.shiftmax import ONE_BITS as M


def reference(scores: list[int], k: int, f: int, bits: int) -> list[int]:
    """The docstring's definition, one row, in Python integers and exact fractions."""
    top = (1 << bits) - 1
    big = max(scores)
    es = []
    for s in scores:
        e = Fraction((s - big) * k) / Fraction(2) ** (f - P)
        e = e.numerator // e.denominator  # floor
        p, r = e // 2**P, e % 2**P
        es.append(((2**P + r) * 2 ** (M - P)) // 2 ** min(-p, M + 1))  # beyond: 0 either way
    total = sum(es)
    out = []
    for e in es:
        prob = Fraction(e, total)
        if prob < Fraction(1, 2 ** (top + 1)):
            out.append(0)
            continue
        # the largest level 2^-i with prob >= 2^(-i - 1/2), i.e. prob^2 >= 2^(-2i - 1)
        i = next((i for i in range(top) if prob * prob >= Fraction(1, 2 ** (2 * i + 1))), top)
        out.append(2 ** (top - i))
    return out


@settings(max_examples=60, deadline=None)
@given(st.lists(st.integers(-(1 << 20), 1 << 20), min_size=1, max_size=40),
       st.floats(2.0**-20, 2.0**4), st.sampled_from([0.125, 0.1767767, 1.0]), st.integers(1, 4))
def test_codes_follow_the_definition(scores, unit, scale, bits):
    k, f = exponent_multiplier(scale, unit)
    got = shiftmax_codes(torch.tensor([scores], dtype=torch.int64), k, f, bits)[0].tolist()
    assert got == reference(scores, k, f, bits)


@settings(max_examples=80, deadline=None)
@given(st.lists(st.integers(-MAX_SCORE, MAX_SCORE), min_size=1, max_size=12), st.integers(-12, 200),
       st.integers(1 << 14, 1 << 15), st.integers(1, 4), st.integers(0, 46))
def test_codes_follow_the_definition_over_every_logit_step_and_score(scores, f, k, bits, spread):
    """Every multiplier ``exponent_multiplier`` can return (``f`` from -12 to 200) and scores up to
    ``MAX_SCORE`` units: no int64 overflow, still the definition (differences whose exponential is
    already 0 are clamped)."""
    scores = [s >> (46 - spread) for s in scores]  # small and large spreads alike
    got = shiftmax_codes(torch.tensor([scores], dtype=torch.int64), k, f, bits)[0].tolist()
    assert got == reference(scores, k, f, bits)


def test_scores_beyond_the_int64_range_saturate_instead_of_wrapping():
    unit, scale = 1.0, 2.0**-50  # a tiny logit step: differences of 2^50 units still matter
    scores = torch.tensor([[2.0**60, 2.0**60 - 2.0**52, -(2.0**70)]], dtype=torch.float64)
    got = shiftmax(scores, unit, scale, 2)
    k, f = exponent_multiplier(scale, unit)
    assert got.tolist() == [[v / 2**3 for v in reference([MAX_SCORE, MAX_SCORE, -MAX_SCORE], k, f, 2)]]


def test_it_approximates_the_softmax():
    """Probabilities are zero or powers of two within a factor of 2^(1/2) of the exact softmax
    of the same logits, give or take the linear 2^x (below 6 %), and the largest gets the top level of its row."""
    rng = np.random.default_rng(0)
    unit, scale = 2.0**-6, 0.125
    s = torch.from_numpy(rng.integers(-3000, 3000, (64, 33)))
    k, f = exponent_multiplier(scale, unit)
    got = shiftmax_codes(s, k, f, 3).double() / 2**7
    exact = torch.softmax(s.double() * unit * scale, -1)
    big = exact > 2.0**-6
    ratio = got[big] / exact[big]
    assert float(ratio.min()) >= 2**-0.5 / 1.07 and float(ratio.max()) <= 2**0.5 * 1.07
    assert torch.equal(got.gather(-1, exact.argmax(-1, keepdim=True))[:, 0], got.amax(-1))
    assert set(torch.unique(got * 2**7).tolist()) <= {0.0} | {2.0**j for j in range(8)}


def test_training_sees_the_hard_value_and_the_softmax_gradient():
    unit = 2.0**-4
    m = ShiftSoftmax(0.125, 3, lambda: unit, lambda: 0.0)
    scores = (torch.randint(-200, 200, (2, 4, 9)).double() * unit).float().requires_grad_()
    out = m(scores)
    k, f = exponent_multiplier(0.125, unit)
    assert torch.equal(out.detach(), shiftmax_codes((scores.detach() / unit).round().long(), k, f, 3).float() / 2**7)
    w = torch.randn_like(out)
    (out * w).sum().backward()
    ref = scores.detach().clone().requires_grad_()
    (torch.softmax(ref * 0.125, -1) * w).sum().backward()
    assert torch.allclose(scores.grad, ref.grad)


def test_a_logit_step_out_of_range_is_refused():
    with pytest.raises(ValueError, match="positive"):
        exponent_multiplier(0.125, 0.0)
    with pytest.raises(ValueError, match="outside"):
        exponent_multiplier(1.0, 2.0**40)


def test_quantize_model_puts_timm_attention_on_integers_and_refuses_qk_norm_first():
    vit = timm.create_model("vit_tiny_patch16_224", num_classes=10, img_size=32, patch_size=8, depth=1)
    sq.quantize_model(vit, sq.QuantRecipe.preset("deploy", weight_shift_bits=3, act_shift_bits=3))
    assert isinstance(vit.blocks[0].attn, QuantAttention)
    assert {"blocks.0.attn.qkv_quantizer.log2_scale"} <= set(vit.state_dict())
    normed = timm.create_model("vit_tiny_patch16_224", num_classes=10, img_size=32, patch_size=8, depth=1,
                               qk_norm=True)
    with pytest.raises(ConfigError, match="qk_norm"):
        sq.quantize_model(normed, sq.QuantRecipe.preset("deploy", weight_shift_bits=3, act_shift_bits=3))
    assert not any(isinstance(m, sq.nn.layers.QuantMixin) for m in normed.modules()), "nothing changed"
    with pytest.raises(ConfigError, match="gate_shift_bits"):
        sq.quantize_model(timm.create_model("deit_tiny_patch16_224", num_classes=10, img_size=32, patch_size=8,
                                            depth=1), sq.QuantRecipe.preset("deploy", gate_shift_bits=5))
