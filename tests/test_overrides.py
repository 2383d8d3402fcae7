"""Per-layer overrides of a recipe: matched by name pattern, later patterns win, validated."""
import pytest
import torchvision

import shiftquant as sq


def test_overrides_set_per_layer_widths_and_later_patterns_win():
    recipe = sq.QuantRecipe.preset("shiftquant", overrides={"layer3.*": {"weight_shift_bits": 1},
                                                             "layer3.1.*": {"weight_shift_bits": 3}})
    model = torchvision.models.resnet18(num_classes=10)
    sq.quantize_model(model, recipe)
    widths = {n: m.weight_quantizer.quantizer.shift_bits for n, m in sq.quantized_layers(model)}
    assert widths["layer3.0.conv1"] == 1 and widths["layer3.1.conv2"] == 3 and widths["layer1.0.conv1"] == 2
    assert sq.QuantRecipe.from_dict(recipe.to_dict()) == recipe  # saved with the recipe, read back
    rows = {r.name: r.weight_bits for r in sq.summary(model).rows}
    assert rows["layer3.0.conv1"] == 2 and rows["layer3.1.conv1"] == 4  # code bits, shown by summary


@pytest.mark.parametrize("overrides,field", [({"x": {"layers": ["a"]}}, "overrides.x.layers"),
                                             ({"x": {"weight_shift_bits": 9}}, "overrides.x.weight_shift_bits"),
                                             ({"x": 3}, "overrides"), ([1], "overrides")])
def test_bad_overrides_name_the_field(overrides, field):
    with pytest.raises(sq.ConfigError, match=field):
        sq.QuantRecipe.preset("shiftquant", overrides=overrides)
