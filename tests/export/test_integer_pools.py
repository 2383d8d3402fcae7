"""Pooling on integers: conv-BN-ReLU-pool networks (LeNet / VGG style) run integer-only.

A max pool moves to after the requantization thresholds, ``maxpool(q(h)) = q(maxpool(h))`` for the
non-decreasing quantizer ``q``; only where everything after the pool in the chain is non-decreasing
per channel (a BatchNorm with a negative gain after the pool keeps it float). An average pool reads
a BatchNorm's output on a power-of-two grid (the recipe's ``residual_bits``): it sums whole
windows of integers, and the next layer's input thresholds divide."""
import shutil

import numpy as np
import pytest
import torch
from torch import nn

import shiftquant as sq
from shiftquant.models import lenet5, vgg_small
from tests.export.models import pixel_batches

PIXELS = sq.PixelInput((0.3,), (0.4,), 255)


def lenet(pool_after_bn: bool = True, pool: str = "max") -> nn.Sequential:
    """LeNet-5 (``shiftquant.models.lenet5``: 28 px, two 2x2 pools, the second in ceil mode); with
    ``pool_after_bn`` false the first block pools before its BatchNorm."""
    model = lenet5(pool=pool)
    if not pool_after_bn:
        conv, bn, relu, first_pool = list(model)[:4]
        model = nn.Sequential(conv, first_pool, bn, relu, *list(model)[4:])
    return model


def _exported(model: nn.Module, tmp_path, signs=(1.0, -1.0), residual_bits=8):
    torch.manual_seed(0)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):  # gains of both signs: some channels decrease
                m.weight.copy_(torch.rand_like(m.weight).add(0.5) * torch.tensor(signs).repeat(8)[:m.num_features])
                m.bias.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
    batches = pixel_batches((6, 1, 28, 28), 0, PIXELS)
    sq.quantize_model(model, sq.QuantRecipe.preset("deploy", weight_shift_bits=3, act_shift_bits=3,
                                                residual_bits=residual_bits))
    sq.calibrate(model, [PIXELS.to_float(batches["calibration"])])
    sq.set_slope(model, 0.0)
    rt = sq.export(model, tmp_path / "m.sqb", torch.zeros(1, 1, 28, 28), PIXELS)
    return rt, np.concatenate(list(batches.values()))


def test_a_lenet_with_max_pools_runs_integer_only_and_exact(tmp_path):
    model = lenet().eval()
    rt, pixels = _exported(model, tmp_path)
    assert rt.manifest["integer_only"], rt.float_ops
    pools = [n for n in rt.nodes if n["op"] == "max_pool2d"]
    assert len(pools) == 2 and all(n["dtype"] != "float32" for n in pools)
    with torch.no_grad():
        assert np.array_equal(rt.run(pixels), model(PIXELS.to_float(pixels)).numpy())


@pytest.mark.parametrize("residual_bits", [8, None])
def test_a_lenet_with_average_pools_pools_integers_on_the_grid(tmp_path, residual_bits):
    """With the grid, the BatchNorms before average pools quantize onto it and the pools sum
    integers; without it the pools average floats, exactly."""
    model = lenet(pool="avg").eval()
    rt, pixels = _exported(model, tmp_path, residual_bits=residual_bits)
    pools = [n for n in rt.nodes if n["op"] == "avg_pool2d"]
    assert len(pools) == 2
    if residual_bits:
        assert rt.manifest["integer_only"], rt.float_ops
        assert all(n["dtype"] != "float32" and n["integer"] for n in pools)
    else:
        assert {n["name"] for n in pools} <= set(rt.float_ops)
    with torch.no_grad():
        assert np.array_equal(rt.run(pixels), model(PIXELS.to_float(pixels)).numpy())


@pytest.mark.skipif(shutil.which("cc") is None, reason="no C compiler")
@pytest.mark.parametrize("make", [lenet, lambda: lenet(pool="avg"), vgg_small], ids=["lenet-max", "lenet-avg", "vgg"])
def test_the_c_backend_pools_the_same_codes(tmp_path, monkeypatch, make):
    monkeypatch.setenv("SHIFTQUANT_CACHE_DIR", str(tmp_path))
    model = make().eval()
    rt, pixels = _exported(model, tmp_path)
    assert rt.manifest["integer_only"], rt.float_ops
    native = sq.load_bundle(rt.source, backend="c")
    assert np.array_equal(native.run_int(pixels)[0], rt.run_int(pixels)[0])
    with torch.no_grad():
        assert np.array_equal(native.run(pixels), model(PIXELS.to_float(pixels)).numpy())


def test_a_pool_before_a_decreasing_batchnorm_stays_float_and_exact(tmp_path):
    """conv -> maxpool -> BN (negative gains) -> ReLU: the max does not commute with the BN, so the
    first block keeps its BatchNorm float (listed), and the logits stay exact."""
    model = lenet(pool_after_bn=False).eval()
    rt, pixels = _exported(model, tmp_path)
    first_bn = next(n for n in rt.nodes if n["op"] == "batch_norm")
    assert first_bn["name"] in rt.float_ops and not rt.manifest["integer_only"]
    reasons = {r.node: r for r in sq.check_exportable(model, torch.zeros(1, 1, 28, 28), PIXELS).float_reasons}
    assert "a max pool before an op that decreases" in reasons[first_bn["name"]].reason
    with torch.no_grad():
        assert np.array_equal(rt.run(pixels), model(PIXELS.to_float(pixels)).numpy())
    # with non-negative gains everywhere, the same network pools codes
    model = lenet(pool_after_bn=False).eval()
    rt, pixels = _exported(model, tmp_path, signs=(1.0, 1.0))
    assert rt.manifest["integer_only"], rt.float_ops
    with torch.no_grad():
        assert np.array_equal(rt.run(pixels), model(PIXELS.to_float(pixels)).numpy())
