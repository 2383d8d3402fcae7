"""Exact parity (atol = 0) between the hard PyTorch model and the bundle's runtime under deploy_exact."""
import numpy as np
import pytest
import torch

import shiftquant as sq
from tests.export.models import quantized

SEEDS = {"mlp": 20, "cnn": 20, "plain": 10, "resnet20": 20, "resnet18": 3}
CONFIGS = [(bits, acts) for bits in (1, 2, 3) for acts in (False, True)]


def hard_and_runtime(name, seed, bits, acts, tmp_path):
    model, x = quantized(name, seed, weight_shift_bits=bits, act_shift_bits=bits if acts else None)
    sq.set_slope(model, 0.0)
    rt = sq.export(model, tmp_path / f"{name}.sqb", x)
    with torch.no_grad():
        ref = model(x).numpy()
    return ref, rt.run(x.numpy()), rt


@pytest.mark.parametrize("name", sorted(SEEDS))
@pytest.mark.parametrize("bits,acts", CONFIGS, ids=[f"s{b}-{'WA' if a else 'W'}" for b, a in CONFIGS])
def test_runtime_equals_pytorch_exactly(name, bits, acts, tmp_path):
    for seed in range(SEEDS[name]):
        ref, out, rt = hard_and_runtime(name, seed, bits, acts, tmp_path)
        assert rt.manifest["exact"]
        assert np.array_equal(out, ref), f"{name} seed {seed}: max |diff| {np.abs(out - ref).max()}"
        assert not np.allclose(out, out.mean())  # a real, varied output


def integer_only_runtimes(name, tmp_path):
    """Weight-only and W+A runtimes of ``name`` (2 shift bits), each checked integer-only and exact."""
    for acts in (False, True):
        ref, out, rt = hard_and_runtime(name, 0, 2, acts, tmp_path)
        assert rt.float_ops == [] and rt.manifest["integer_only"]
        assert np.array_equal(out, ref)
        yield rt


@pytest.mark.parametrize("name", ["mlp", "plain"])
def test_models_without_float_layers_run_integer_only(name, tmp_path):
    for rt in integer_only_runtimes(name, tmp_path):
        # Every shift layer but the last hands the next one its codes through thresholds.
        shift = [n for n in rt.nodes if n["op"].startswith("shift_")]
        assert all(n.get("requant") for n in shift[:-1]) and not shift[-1].get("requant")
        assert all(n.get("input_codes") for n in shift[1:])


@pytest.mark.parametrize("name", ["resnet20", "resnet18"])
def test_resnets_run_integer_only_with_the_residual_grid(name, tmp_path):
    """deploy preset (residual_bits=8): integer adds aligned by shifts, global pooling as a sum."""
    for rt in integer_only_runtimes(name, tmp_path):
        adds = [n for n in rt.nodes if n["op"] == "add"]
        assert adds and all(len(n["shifts"]) == 2 and min(n["shifts"]) == 0 for n in adds)
        assert [n.get("integer") for n in rt.nodes if n["op"] == "adaptive_avg_pool2d"] == [True]
        assert [n["op"] for n in rt.nodes if n.get("input_thresholds")] != []


def test_requantization_equals_the_float_chain_on_every_accumulator(tmp_path):
    """Thresholds against the float chain they replace, over a layer's whole accumulator range."""
    from shiftquant.export.graph import Exporter
    from shiftquant.export.requant import find_chains, thresholds
    from shiftquant.export.runtime import Runtime, level_index

    model, x = quantized("mlp", 3, weight_shift_bits=2, act_shift_bits=2)
    exporter = Exporter(model)
    exporter.build(x)
    manifest, tensors = exporter.unfolded
    rt = Runtime(manifest, tensors)
    (s, chain, t), *_ = find_chains(manifest)
    assert [n["op"] for n in chain] == ["batch_norm", "relu"]
    thr, direction = thresholds(rt, s, chain, t)
    assert (direction < 0).any() and (direction > 0).any()  # the test model has negative BN gains
    bound = s["accumulator_bound"]
    acc = np.arange(-bound, bound + 1, dtype=np.int64)[:, None].repeat(s["weight_shape"][0], 1)
    value = rt.dequantize(s, acc)
    for node in chain:
        value = rt.float_op(node, [value])
    q = t["input_quantizer"]["quantizer"]
    levels = np.round(np.asarray(q["levels"]) / q["resolution"]).astype(np.int64)
    via_thresholds = levels[level_index(acc, thr, direction, -1)]
    assert np.array_equal(via_thresholds, rt.quantize_input(value, t["input_quantizer"]))


def test_every_quantized_layer_runs_as_shift_add(tmp_path):
    _, _, rt = hard_and_runtime("resnet20", 0, 2, True, tmp_path)
    shift_layers = [n for n in rt.nodes if n["op"].startswith("shift_")]
    assert len(shift_layers) == 22  # 19 convs + 2 downsample + fc
    assert all(n["accumulator_bound"] < 2**24 and n["accumulator_bits"] <= 32 for n in shift_layers)
    assert not any(n["op"] in ("conv2d", "linear") for n in rt.nodes)


def test_shift_add_conv_matches_integer_convolution():
    from shiftquant.export.runtime import shift_add_conv
    rng = np.random.default_rng(0)
    a = rng.integers(-128, 128, (2, 4, 7, 9))
    w = rng.choice([0, 1, -1, 2, -2, 8, -64], size=(6, 2, 3, 3))
    acc = shift_add_conv(a, w, (2, 1), (1, 2), (1, 2), groups=2)
    ref = torch.nn.functional.conv2d(torch.from_numpy(a).double(), torch.from_numpy(w).double(), stride=(2, 1),
                                     padding=(1, 2), dilation=(1, 2), groups=2)
    assert np.array_equal(acc, ref.numpy().astype(np.int64))


def test_accumulator_beyond_float32_is_refused(tmp_path):
    from torch import nn
    model = nn.Sequential(nn.Flatten(), nn.Linear(4096, 2))
    sq.quantize_model(model, sq.QuantRecipe.preset("deploy", weight_shift_bits=3))
    with torch.no_grad():
        model[1].weight.fill_(1.0)  # every weight at the top level, every input at the top level
    x = torch.full((1, 1, 64, 64), 100.0)
    sq.calibrate(model, [x])
    with pytest.raises(sq.ExportError, match="2\\^24"):
        sq.export(model.eval(), tmp_path / "big.sqb", x)
