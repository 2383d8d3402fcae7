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


def test_our_preset_spends_every_activation_code_and_the_seed_keeps_its_layout():
    ours = sq.QuantRecipe.preset("shiftquant", act_shift_bits=2)
    assert ours.act_full_codes and len(ours.act_quantizer_core("x").levels()) == 8
    assert len(sq.QuantRecipe.preset("shiftquant", act_shift_bits=1).act_quantizer_core("x").levels()) == 4
    uniform = sq.QuantRecipe.preset("shiftquant", act_uniform_bits=3)
    assert (uniform.act_quantizer_core("x").levels() * 8).tolist() == list(range(8))
    old = sq.QuantRecipe.preset("shiftquant", act_shift_bits=2, act_full_codes=False)
    assert len(old.act_quantizer_core("x").levels()) == 5
    seed = sq.QuantRecipe.preset("dbssq", act_shift_bits=2)
    assert not seed.act_full_codes and seed.act_quantizer_core("x").levels().tolist() == \
        [-1, -.5, -.25, -.125, .125, .25, .5, 1]


@pytest.mark.parametrize("overrides,field", [
    (dict(act_shift_bits=2, act_signed=True), "act_full_codes"),
    (dict(act_shift_bits=2, act_zero=False), "act_full_codes"),
    (dict(act_shift_bits=6), "act_shift_bits"),
    (dict(act_full_codes="yes"), "act_full_codes"),
    (dict(weight_scale="pretrained_std", weight_scale_frozen=True), "weight_scale_frozen"),
    (dict(act_shift_bits=None, act_standardize_float=True), "act_standardize_float"),
])
def test_new_recipe_fields_refuse_bad_values(overrides, field):
    with pytest.raises(sq.ConfigError, match=field):
        sq.QuantRecipe.preset("shiftquant", **overrides)


def test_seed_weight_only_run_can_insert_the_standardizing_batchnorm():
    """METHOD.md §3: the seed standardizes the quantized layers' inputs in weight-only runs too."""
    import torch
    import torchvision
    model = torchvision.models.resnet18(weights=None).eval()
    x = torch.randn(2, 3, 32, 32)
    sq.quantize_model(model, sq.QuantRecipe.preset("dbssq", act_shift_bits=None, act_standardize_float=True))
    layers = dict(sq.quantized_layers(model))
    assert len(layers) == 16 and not list(n for n, q in sq.quantizers(model) if "input_quantizer" in n)
    aq = layers["layer1.0.conv1"].input_quantizer
    assert aq.policy == "standardize" and aq.quantizer is None
    assert sq.calibrate(model, [x]) == 16
    out = model(x)
    assert torch.isfinite(out).all()
    assert sq.summary(model).to_dict()["layers"]
