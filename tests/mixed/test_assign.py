"""assign_bits is exact: it matches brute force over every assignment, on random instances."""
import itertools

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import shiftquant as sq
from shiftquant.errors import ConfigError
from shiftquant.mixed import Sensitivity, assign_bits, weight_code_bits

RECIPE = sq.QuantRecipe.preset("shiftquant")
CANDIDATES = [0, 1, 2, 3]


@st.composite
def instances(draw):
    n = draw(st.integers(1, 5))
    params = [draw(st.integers(1, 5000)) for _ in range(n)]
    # Sensitivity falls with width, as measured ones do, but by random amounts (ties allowed).
    kl = [sorted((draw(st.floats(0, 10)) for _ in CANDIDATES), reverse=True) for _ in range(n)]
    budget = draw(st.floats(1.0, 4.5))
    return Sensitivity([f"l{i}" for i in range(n)], params, CANDIDATES, kl, RECIPE.to_dict()), budget


@settings(max_examples=200, deadline=None)
@given(instances())
def test_assignment_is_optimal_under_the_budget(case):
    sens, budget = case
    bits = [weight_code_bits(RECIPE, c) for c in CANDIDATES]
    total = sum(sens.params)
    feasible = [(sum(k for k in (row[j] for row, j in zip(sens.kl, choice))),
                 sum(n * bits[j] for n, j in zip(sens.params, choice)))
                for choice in itertools.product(range(len(CANDIDATES)), repeat=len(sens.layers))]
    feasible = [(kl, cost) for kl, cost in feasible if cost <= budget * total]
    if not feasible:
        with pytest.raises(ConfigError, match="bits per weight"):
            assign_bits(sens, bits_per_weight=budget)
        return
    got = assign_bits(sens, bits_per_weight=budget)
    assert got.weight_bits <= budget * total
    assert got.sensitivity == pytest.approx(min(kl for kl, _ in feasible), abs=1e-9)
    assert got.sensitivity == pytest.approx(sum(row[CANDIDATES.index(got.widths[n])]
                                                for n, row in zip(sens.layers, sens.kl)), abs=1e-9)


def test_budget_in_bytes_and_bits_agree_and_exactly_one_is_given():
    sens = Sensitivity(["a", "b"], [800, 80], CANDIDATES, [[4, 3, 2, 1], [9, 5, 1, 0]], RECIPE.to_dict())
    by_bits = assign_bits(sens, bits_per_weight=2.0)
    by_bytes = assign_bits(sens, budget_bytes=2.0 * 880 / 8)
    assert by_bits.widths == by_bytes.widths and by_bits.weight_bytes <= 220
    stored = sum(by_bits.code_bits[n] * p for n, p in zip(sens.layers, sens.params))
    assert stored == by_bits.weight_bits and "bits/weight" in by_bits.table()
    with pytest.raises(ConfigError, match="exactly one"):
        assign_bits(sens)
