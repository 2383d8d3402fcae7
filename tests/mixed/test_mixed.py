"""Mixed precision by sensitivity and post-training quantization, end to end."""
import json

import numpy as np
import pytest
import torch

import shiftquant as sq
from shiftquant.checkpoint import load_model
from shiftquant.mixed import assign_bits, sensitivity
from shiftquant.models.factory import build_model
from shiftquant.train.run import train
from tests.helpers import compose_cfg


def _batches(n=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(16, 1, 16, 16, generator=g) for _ in range(n)]


def test_sensitivity_falls_with_width_is_cached_and_leaves_the_model_alone(tmp_path, monkeypatch):
    torch.manual_seed(0)
    model = build_model("resnet_tiny", 10, 1).eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    recipe = sq.QuantRecipe.preset("shiftquant", act_shift_bits=2)
    sens = sensitivity(model, recipe, _batches(), [0, 3, None], cache=tmp_path / "s.json", progress=False)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    kl = np.asarray(sens.kl)
    assert kl.shape == (len(sens.layers), 3) and (kl[:, 2] == 0).all() and (kl[:, :2] >= 0).all()
    assert (kl[:, 1] < kl[:, 0]).mean() >= 0.75  # 3 shift bits disturb the output less than 0 bits
    # A second call reads every measurement back: nothing is quantized again.
    monkeypatch.setattr("shiftquant.mixed.quantize_model", lambda *a: pytest.fail("recomputed"))
    again = sensitivity(model, recipe, _batches(), [0, 3, None], cache=tmp_path / "s.json", progress=False)
    assert again.kl == sens.kl
    assert sens.plot(tmp_path / "s.png").stat().st_size > 1000 and "s=3" in str(sens)


def test_mixed_deploy_bundle_keeps_exact_parity_with_per_layer_code_widths(tmp_path):
    torch.manual_seed(1)
    model = build_model("resnet20", 10, 1).eval()
    x = torch.randn(8, 1, 16, 16)
    sens = sensitivity(model, sq.QuantRecipe.preset("deploy", act_shift_bits=2), [x], [1, 2, 3], progress=False)
    chosen = assign_bits(sens, bits_per_weight=3.0)
    assert len(set(chosen.widths.values())) > 1 and chosen.bits_per_weight <= 3.0
    recipe = chosen.recipe(sq.QuantRecipe.preset("deploy", act_shift_bits=2))
    sq.quantize_model(model, recipe)
    sq.calibrate(model, [x])
    sq.set_slope(model, 0.0)
    rt = sq.export(model, tmp_path / "mixed.sqb", x)
    with torch.no_grad():
        assert np.array_equal(rt.run(x.numpy()), model(x).numpy())
    bits = {n["module"]: n["weight_quantizer"]["bits"] for n in rt.nodes if n["op"].startswith("shift_")}
    assert bits == {name: w for name, w in chosen.widths.items()}


def test_quant_mixed_budget_runs_sensitivity_assignment_and_qat_in_one_command(tmp_path):
    results = train(compose_cfg(["experiment=quickstart", "float_stage.epochs=3", "trainer.max_epochs=1",
                                 "quant.mixed.budget_bits=2.5", "quant.mixed.candidates=[1,2,3]",
                                 "data.train_subset=320", "calibrate_batches=2"], tmp_path))
    mixed = json.loads((tmp_path / "results.json").read_text())["mixed"]
    assert mixed["bits_per_weight"] <= 2.5 and set(mixed["widths"].values()) <= {1, 2, 3}
    model = load_model(results["checkpoint"])  # the recipe in the checkpoint carries the widths
    got = {name: m.weight_quantizer.quantizer.shift_bits for name, m in sq.quantized_layers(model)}
    assert got == mixed["widths"]
    assert (tmp_path / "sensitivity.png").exists()


def test_zero_epochs_is_post_training_quantization(tmp_path):
    results = train(compose_cfg(["experiment=quickstart", "float_stage.epochs=6", "trainer.max_epochs=0"], tmp_path))
    assert results["ptq"] and results["history"] == [] and results["bn_reestimate"]["batches"] > 0
    assert results["hard_test_acc"] > 0.5 and results["hard_test_acc"] >= results["fp_test_acc"] - 0.15
    model = load_model(results["checkpoint"])  # the calibrated model the run tested
    assert sum(1 for _ in sq.quantized_layers(model)) == 4


@pytest.mark.parametrize("override,key", [("quant.mixed.budget_bits=-1", "quant.mixed.budget_bits"),
                                          ("quant.mixed.candidates=[9]", "quant.mixed.candidates"),
                                          ("quant.overrides={x: {layers: [a]}}", "overrides.x.layers")])
def test_bad_mixed_values_are_refused_before_training(override, key, tmp_path):
    from shiftquant.errors import ConfigError
    from shiftquant.train.run import prepare
    cfg = compose_cfg(["experiment=quickstart", "quant.mixed.budget_bits=2", override], tmp_path)
    with pytest.raises(ConfigError, match=key):
        prepare(cfg)


def test_sensitivity_command_prints_plots_and_assigns(tmp_path, capsys):
    from shiftquant import cli
    torch.manual_seed(0)
    weights = tmp_path / "float.pt"
    torch.save(build_model("resnet_tiny", 10, 1).state_dict(), weights)
    out = tmp_path / "sens"
    assert cli.main(["sensitivity", str(weights), "--model", "resnet_tiny", "--in-chans", "1", "--data", "digits",
                     "--candidates", "0", "3", "--batches", "1", "--budget-bits", "3", "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert "s=0" in text and "s=3" in text and "widths under a budget of 3 bits per weight" in text
    # Both units, named: the shift bits chosen and the bits each stored weight takes (sign included).
    head = next(line for line in text.splitlines() if "shift bits" in line and "bits/weight" in line)
    rows = text.splitlines()[text.splitlines().index(head) + 1:][:4]
    for row in rows:
        width, stored = row.split()[-2:]
        assert width == "float" or int(stored) == int(width) + 1, row  # s shift bits + the sign bit
    table = json.loads((out / "sensitivity_table.json").read_text())
    assert table["candidates"] == [0, 3] and len(table["layers"]) == 4
    assert (out / "sensitivity.png").stat().st_size > 1000
    # A bare weights file without --model is refused with a message (exit status 2).
    assert cli.main(["sensitivity", str(weights)]) == 2
