"""Hardswish on the integer stream: folded into the requantization thresholds.

Hardswish falls to -0.375 and rises after; for inputs >= 0 PyTorch's float32 kernel is
non-decreasing (checked on every float32 in [0, 3]; above 3 it is the identity). Where the next
quantizer gives every value in [-0.38, 0] one level (unsigned post-activation codes), the quantized
chain is monotone in the accumulator, and thresholds reproduce it exactly; where it tells negative
values apart (a signed quantizer), the Hardswish stays float, with its reason. (With the recipe's
``residual_bits`` a Hardswish module goes on the grid and becomes a table instead:
``test_integer_tables.py``; these tests turn it off.)
"""
import shutil

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import shiftquant as sq
from tests.export.models import deploy_exported, pixel_batches

PIXELS = sq.PixelInput((0.3,), (0.4,), 255)


def mobile_block() -> nn.Sequential:
    """MobileNetV3's stem and a depthwise-separable block: conv-BN-Hardswish, depthwise conv-BN-
    Hardswish, pointwise conv-BN-ReLU, global max pool, a Linear head."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 8, 3, stride=2, padding=1), nn.BatchNorm2d(8), nn.Hardswish(),
                          nn.Conv2d(8, 8, 3, padding=1, groups=8), nn.BatchNorm2d(8), nn.Hardswish(),
                          nn.Conv2d(8, 16, 1), nn.BatchNorm2d(16), nn.ReLU(), nn.MaxPool2d(8),
                          nn.Flatten(), nn.Linear(16, 10)).eval()
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):  # gains of both signs, and inputs reaching the dip
                m.weight.copy_(torch.rand_like(m.weight).add(0.5) * torch.tensor([1.0, -1.0]).repeat(8)[:m.num_features])
                m.bias.uniform_(-1.0, 0.5)
                m.running_var.uniform_(0.5, 2.0)
    return model


def _exported(tmp_path, signed: bool):
    model = mobile_block()
    rt, pixels, _ = deploy_exported(model, (6, 1, 16, 16), PIXELS, tmp_path / "m.sqb", act_signed=signed,
                                    residual_bits=None)
    return model, rt, pixels


def test_hardswish_folds_into_thresholds_before_unsigned_codes(tmp_path):
    model, rt, pixels = _exported(tmp_path, signed=False)
    assert rt.manifest["integer_only"], rt.float_ops
    assert not any(n["op"] == "hardswish" for n in rt.nodes)
    with torch.no_grad():
        assert np.array_equal(rt.run(pixels), model(PIXELS.to_float(pixels)).numpy())


@pytest.mark.skipif(shutil.which("cc") is None, reason="no C compiler")
def test_the_c_backend_runs_the_folded_hardswish(tmp_path, monkeypatch):
    monkeypatch.setenv("SHIFTQUANT_CACHE_DIR", str(tmp_path))
    model, rt, pixels = _exported(tmp_path, signed=False)
    native = sq.load_bundle(rt.source, backend="c")
    with torch.no_grad():
        assert np.array_equal(native.run(pixels), model(PIXELS.to_float(pixels)).numpy())


def test_hardswish_before_signed_codes_stays_float_and_says_why(tmp_path):
    model, rt, pixels = _exported(tmp_path, signed=True)
    swishes = [n["name"] for n in rt.nodes if n["op"] == "hardswish"]
    assert swishes and set(swishes) <= set(rt.float_ops)
    reasons = {r.node: r for r in sq.check_exportable(model, torch.zeros(1, 1, 16, 16), PIXELS).float_reasons}
    bn = next(n for n in rt.nodes if n["name"] == swishes[0])["inputs"][0]  # the chain's first float op
    assert "a Hardswish whose next quantizer tells its negative values apart" in reasons[bn].reason
    with torch.no_grad():
        assert np.array_equal(rt.run(pixels), model(PIXELS.to_float(pixels)).numpy())


def test_thresholds_equal_the_hardswish_chain_on_every_accumulator():
    from shiftquant.export.ops.shift_kernels import level_index
    from shiftquant.export.passes.requant import find_chains, thresholds
    from shiftquant.export.reference.runtime import Runtime
    from shiftquant.export.trace.exporter import Exporter

    model = mobile_block()
    batches = pixel_batches((6, 1, 16, 16), 0, PIXELS)
    sq.quantize_model(model, sq.QuantRecipe.preset("deploy", weight_shift_bits=3, act_shift_bits=3, act_signed=False,
                                                   residual_bits=None))
    sq.calibrate(model, [PIXELS.to_float(batches["calibration"])])
    exporter = Exporter(model)
    exporter.build(torch.zeros(1, 1, 16, 16), PIXELS)
    manifest, tensors = exporter.unfolded
    rt = Runtime(manifest, tensors, strict=False)
    checked = 0
    for s, chain, t in find_chains(manifest):
        if [n["op"] for n in chain] != ["batch_norm", "hardswish"]:
            continue
        thr, direction = thresholds(rt, s, chain, t)
        bound, channels = s["accumulator_bound"], s["weight_shape"][0]
        acc = np.arange(-bound, bound + 1, dtype=np.int64)
        value = rt.dequantize(s, np.tile(acc, channels).reshape(channels, -1).reshape(1, channels, -1, 1))
        for node in chain:
            value = rt.float_op(node, [value])
        expected = rt.quantize_input(value, t["input_quantizer"]).reshape(channels, -1).T
        q = t["input_quantizer"]["quantizer"]
        levels = np.round(np.asarray(q["levels"]) / q["resolution"]).astype(np.int64)
        got = levels[level_index(acc[:, None].repeat(channels, 1), thr, direction, -1)]
        assert np.array_equal(got, expected)
        checked += 1
    assert checked == 2


def test_float32_hardswish_never_decreases_on_non_negative_inputs():
    """Every float32 in [0, 3] (above 3 Hardswish is the identity), in order of their bit patterns."""
    end = int(np.float32(3.0).view(np.int32))
    previous = torch.tensor(-1.0)
    for lo in range(0, end + 1, 1 << 26):
        bits = torch.arange(lo, min(lo + (1 << 26), end + 1), dtype=torch.int32)
        y = F.hardswish(bits.view(torch.float32))
        assert bool((y[1:] >= y[:-1]).all()) and bool(y[0] >= previous)
        previous = y[-1]
