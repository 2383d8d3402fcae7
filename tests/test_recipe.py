import pytest

import shiftquant as sq


def test_presets_build_and_roundtrip():
    for name in sq.PRESETS:
        recipe = sq.QuantRecipe.preset(name)
        assert sq.QuantRecipe.from_dict(recipe.to_dict()) == recipe


def test_from_dict_with_preset_and_overrides():
    r = sq.QuantRecipe.from_dict({"preset": "dbssq", "act_shift_bits": 2, "weight_shift_bits": 3})
    assert (r.weight_shift_bits, r.act_shift_bits, r.kernel_sizes) == (3, 2, [3])


@pytest.mark.parametrize("overrides,field", [
    ({"weight_shift_bits": 9}, "weight_shift_bits"),
    ({"weight_shift_bits": -1}, "weight_shift_bits"),
    ({"weight_shift_bits": 2.5}, "weight_shift_bits"),
    ({"weight_uniform_bits": 4}, "weight_uniform_bits"),
    ({"weight_shift_bits": None}, "weight_shift_bits"),
    ({"act_uniform_bits": 0, "act_shift_bits": None}, "act_uniform_bits"),
    ({"weight_rounding": "floor"}, "weight_rounding"),
    ({"act_rounding": "up"}, "act_rounding"),
    ({"weight_scale": "minmax"}, "weight_scale"),
    ({"act_scale": "minmax"}, "act_scale"),
    ({"grad": "ste"}, "grad"),
    ({"clip_sigma": 0}, "clip_sigma"),
    ({"layer_types": ["conv3d"]}, "layer_types"),
    ({"layers": []}, "layers"),
    ({"layers": ["re:(unclosed"]}, "layers"),
    ({"weight_keep_mean": True, "weight_scale": "learned_pot"}, "weight_keep_mean"),
    ({"act_shift_bits": 2, "act_signed": False}, "act_signed"),
    ({"weight_zero": "yes"}, "weight_zero"),
    ({"bits": 3}, "bits"),
])
def test_invalid_values_name_the_field_and_allowed(overrides, field):
    with pytest.raises(sq.ConfigError, match=field) as info:
        sq.QuantRecipe.preset("dbssq", **overrides)
    assert "allowed" in str(info.value)


def test_unknown_preset():
    with pytest.raises(sq.ConfigError, match="preset.*dbssq"):
        sq.QuantRecipe.preset("nope")


def test_selection_patterns():
    from torch import nn
    r = sq.QuantRecipe.preset("dbssq")
    conv3, conv1 = nn.Conv2d(2, 2, 3), nn.Conv2d(2, 2, 1)
    assert r.selects("layer1.0.conv1", conv3)
    assert r.selects("backbone.layer3.1.conv2", conv3)
    assert not r.selects("layer1.0.conv1", conv1)        # not 3x3
    assert not r.selects("conv1", conv3)                 # stem
    assert not r.selects("layer2.0.downsample.0", conv3)
    assert not r.selects("layer1.0.conv1", nn.Linear(2, 2))
