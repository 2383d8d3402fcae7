"""The full-code activation layout (unsigned, zero plus 2^b - 1 levels: our recipe's default)
exports with exact parity: the bundle records the layout and the runtimes quantize with it."""
import numpy as np
import pytest
import torch

import shiftquant as sq
from tests.export.models import quantized, quantized_pixels

FULL = dict(act_signed=False, act_full_codes=True, residual_bits=None)


@pytest.mark.parametrize("name,bits", [("resnet20", 2), ("cnn", 1), ("mlp", 2)])
def test_full_code_inputs_keep_exact_parity(name, bits, tmp_path):
    model, x = quantized(name, 0, "deploy", weight_shift_bits=2, act_shift_bits=bits, **FULL)
    levels = {len(m.input_quantizer.quantizer.levels()) for _, m in sq.quantized_layers(model)}
    assert levels == {2 ** (bits + 1)}  # every code of the (bits + 1)-bit input code is a level
    sq.set_slope(model, 0.0)
    rt = sq.export(model, tmp_path / "m.sqb", x)
    held_out = torch.randn_like(x) * 2
    with torch.no_grad():
        for batch in (x, held_out):
            assert np.array_equal(rt.run(batch.numpy()), model(batch).numpy())
    specs = [n["input_quantizer"]["quantizer"] for n in rt.nodes if n["op"].startswith("shift_")]
    assert all(q["full_codes"] for q in specs)


def test_full_code_pixel_bundle_is_integer_only_and_exact(tmp_path):
    model, batches, px = quantized_pixels("plain", 0, "deploy", weight_shift_bits=2, act_shift_bits=2, **FULL)
    sq.set_slope(model, 0.0)
    rt = sq.export(model, tmp_path / "p.sqb", torch.zeros(1, *batches["calibration"].shape[1:]), px)
    assert rt.manifest["integer_only"]
    for batch in batches.values():
        with torch.no_grad():
            assert np.array_equal(rt.run(batch), model(px.to_float(batch)).numpy())


def test_full_code_layout_in_onnx(tmp_path):
    model, x = quantized("cnn", 0, "deploy", weight_shift_bits=2, act_shift_bits=2, **FULL)
    assert sq.export_onnx(model, tmp_path / "f.onnx", x) < 1e-4
