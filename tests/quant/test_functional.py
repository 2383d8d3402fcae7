"""Property tests of the quantizer math (METHOD.md §1-2)."""
import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import shiftquant as sq
from shiftquant.quant import functional as F

floats = st.floats(min_value=-8, max_value=8, allow_nan=False, width=32)
configs = st.tuples(st.integers(0, 6), st.sampled_from(["ceil", "nearest"]), st.booleans(), st.booleans())


def _tensor(values):
    return torch.tensor(values, dtype=torch.float32)


def _is_level(out, levels):
    return torch.isin(out.double(), levels)


@settings(max_examples=200, deadline=None)
@given(configs, st.lists(floats, min_size=1, max_size=64))
def test_hard_outputs_are_levels_and_idempotent(cfg, values):
    s, rounding, zero, signed = cfg
    x = _tensor(values)
    q = F.shift_quantize(x, s, rounding, zero, signed)
    assert _is_level(q, F.shift_levels(s, zero, signed)).all()
    assert torch.equal(F.shift_quantize(q, s, rounding, zero, signed), q)


@settings(max_examples=200, deadline=None)
@given(configs, st.lists(floats, min_size=1, max_size=64), st.floats(0, 1))
def test_relaxed_blend_and_gradient(cfg, values, eps):
    s, rounding, zero, signed = cfg
    for grad in ("scaled", "raw"):
        quant = sq.ShiftQuantizer(s, rounding, zero, signed, grad)
        quant.eps = eps
        eps = quant.eps  # as stored (float32)
        x = _tensor(values).requires_grad_()
        y = quant(x)
        hard = quant.hard(x.detach())
        torch.testing.assert_close(y.detach() - hard, eps * (x.detach() - hard), atol=1e-5, rtol=0)
        y.sum().backward()
        expected = 1.0 if grad == "scaled" or eps == 0 else eps
        torch.testing.assert_close(x.grad, torch.full_like(x, expected))


@settings(max_examples=100, deadline=None)
@given(configs, st.lists(floats, min_size=1, max_size=32))
def test_eps_zero_is_exactly_hard_and_eps_one_identity(cfg, values):
    s, rounding, zero, signed = cfg
    quant = sq.ShiftQuantizer(s, rounding, zero, signed)
    x = _tensor(values)
    quant.eps = 0
    assert torch.equal(quant(x), quant.hard(x))
    quant.eps = 1
    assert torch.equal(quant(x), x)


@settings(max_examples=200, deadline=None)
@given(st.integers(0, 6), st.floats(min_value=2**-20, max_value=4, width=32))
def test_ceil_and_nearest_match_log2_definition(s, value):
    """Closed form against the definition: 2^ceil(log2|x|) and 2^round(log2|x|), clipped."""
    emin = -(2**s - 1)
    x = _tensor([value])
    log = math.log2(value)   # float64 log of the float32 value
    ceil_e = min(max(math.ceil(log), emin), 0)
    near_e = min(max(math.floor(log + 0.5), emin), 0)
    assert F.shift_quantize(x, s, "ceil").item() == 2.0**ceil_e
    assert F.shift_quantize(x, s, "nearest").item() == 2.0**near_e
    assert F.shift_quantize(-x, s, "ceil").item() == -(2.0**ceil_e)


def test_seed_examples():
    x = _tensor([0.3, 0.5, 0.5000001, 1.0, 3.0, 1e-9, 0.0, -0.0, -0.3])
    # s = 2: levels ±{1, 1/2, 1/4, 1/8}; (1/4, 1/2] -> 1/2; tiny -> 1/8; zero -> negative side.
    assert F.shift_quantize(x, 2).tolist() == [0.5, 0.5, 1.0, 1.0, 1.0, 0.125, -0.125, -0.125, -0.5]
    # s = 0 is the sign function with sgn(0) = -1.
    assert F.shift_quantize(x, 0).tolist() == [1, 1, 1, 1, 1, 1, -1, -1, -1]


def test_zero_level_and_unsigned():
    x = _tensor([-1.0, -0.01, 0.0, 0.05, 0.07, 0.3])
    # s = 2 with zero: smallest level 1/8, zero below 1/16.
    assert F.shift_quantize(x, 2, "ceil", zero=True).tolist() == [-1, 0, 0, 0, 0.125, 0.5]
    assert F.shift_quantize(x, 2, "nearest", zero=True, signed=False).tolist() == [0, 0, 0, 0, 0.0625 * 2, 0.25]
    # Unsigned without zero: negatives go to the smallest level.
    assert F.shift_quantize(x, 1, "ceil", zero=False, signed=False).tolist() == [0.5, 0.5, 0.5, 0.5, 0.5, 0.5]


def test_exact_near_powers_of_two():
    """Bit-pattern exponents are exact where a float log2 would round."""
    above = torch.nextafter(torch.tensor(0.5), torch.tensor(1.0))
    below = torch.nextafter(torch.tensor(0.5), torch.tensor(0.0))
    assert F.shift_quantize(above[None], 3).item() == 1.0
    assert F.shift_quantize(below[None], 3).item() == 0.5


@pytest.mark.parametrize("s,count", [(0, 1), (1, 2), (2, 4), (3, 8)])
def test_level_table(s, count):
    assert len(F.shift_levels(s)) == 2 * count
    assert sq.ShiftQuantizer(s).code_bits == s + 1


def test_uniform_levels_of_the_seed():
    assert F.uniform_levels(1).tolist() == [-1.0, 1.0]
    assert F.uniform_levels(4).tolist()[-8:] == [k / 8 for k in range(1, 9)]
    x = _tensor([0.01, 0.13, 0.5, 2.0, 0.0])
    assert F.uniform_quantize(x, 4).tolist() == [0.125, 0.25, 0.5, 1.0, -0.125]
    assert sq.UniformQuantizer(4).code_bits == 4


@settings(max_examples=100, deadline=None)
@given(st.integers(1, 6), st.sampled_from(["ceil", "nearest"]), st.booleans(), st.booleans(),
       st.lists(floats, min_size=1, max_size=32))
def test_uniform_outputs_are_levels(b, rounding, zero, signed, values):
    x = _tensor(values)
    q = F.uniform_quantize(x, b, rounding, zero, signed)
    assert _is_level(q, F.uniform_levels(b, zero, signed)).all()
    assert torch.equal(F.uniform_quantize(q, b, rounding, zero, signed), q)


@pytest.mark.parametrize("field,value", [("shift_bits", -1), ("shift_bits", 7), ("rounding", "floor"),
                                          ("grad", "none")])
def test_bad_quantizer_arguments_name_the_field(field, value):
    kwargs = {"shift_bits": 2, field: value}
    with pytest.raises(sq.ConfigError, match=field):
        sq.ShiftQuantizer(**kwargs)


def test_eps_outside_unit_interval_refused():
    q = sq.ShiftQuantizer(2)
    with pytest.raises(sq.ConfigError, match="eps"):
        q.eps = 1.5
    assert q.eps == 1.0


def test_round_ste_gives_exact_integers_and_identity_gradient():
    x = torch.tensor([0.3, 1.7, -2.4, 12345.6], requires_grad=True)
    y = F.round_ste(x)
    assert y.tolist() == [0.0, 2.0, -2.0, 12346.0]
    y.sum().backward()
    assert x.grad.tolist() == [1.0] * 4


@pytest.mark.parametrize("bits", [2, 4, 8])
def test_signed_uniform_grid_with_zero_fits_its_bits(bits):
    """Two's complement: an 8-bit residual grid is -128..127 (256 levels, 8-bit codes)."""
    n = 2 ** (bits - 1)
    levels = F.uniform_levels(bits, zero=True, signed=True)
    assert (levels * n).round().long().tolist() == list(range(-n, n))
    assert sq.UniformQuantizer(bits, "nearest", zero=True, signed=True).code_bits == bits
    x = _tensor([-1e9, -1.0, 1.0, 1e9])
    assert F.uniform_quantize(x, bits, "nearest", True, True).tolist() == [-1.0, -1.0, (n - 1) / n, (n - 1) / n]
